import EventSourcing
import Foundation
import NIOSSL
import PostgresNIO

extension PostgresStore.Configuration {
    /// Whom to trust and who to be when TLS is used (``tls`` `.prefer` or `.require`).
    public enum TLSSettings: Sendable {
        /// The system's trust roots, full verification (certificate chain and host name), no
        /// client certificate.
        case systemDefault
        /// A swift-nio-ssl configuration of the application's own (a private CA, a client
        /// certificate, pinned ciphers…), used as given.
        case configuration(TLSConfiguration)
        /// PEM files, as libpq's `sslrootcert`, `sslcert` and `sslkey`.
        case files(TLSFiles)
    }

    /// PEM files for TLS. Paths are not secrets (they appear in errors); the key file's
    /// contents never do.
    public struct TLSFiles: Sendable, Hashable {
        /// Trusted certificate authorities (a private CA); nil for the system's trust roots.
        public var caFile: String?
        /// The client certificate (chain) to present; nil for none.
        public var certificateFile: String?
        /// The client certificate's private key; required with ``certificateFile``.
        public var privateKeyFile: String?
        /// Whether the server's certificate must name the host connected to (libpq's
        /// `verify-full`); false checks the chain only (`verify-ca`).
        public var verifiesHostname: Bool

        public init(caFile: String? = nil, certificateFile: String? = nil, privateKeyFile: String? = nil,
                    verifiesHostname: Bool = true) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.privateKeyFile = privateKeyFile
            self.verifiesHostname = verifiesHostname
        }
    }

    /// The swift-nio-ssl client configuration for ``tlsSettings``, the files read now.
    /// - Throws: `EventSourcingError` `.invalidArgument` naming the file that cannot be read
    ///   or parsed (never its contents).
    public func makeTLSConfiguration() throws -> TLSConfiguration {
        switch tlsSettings {
        case .systemDefault:
            return .makeClientConfiguration()
        case .configuration(let c):
            return c
        case .files(let f):
            var c = TLSConfiguration.makeClientConfiguration()
            if !f.verifiesHostname { c.certificateVerification = .noHostnameVerification }
            if let ca = f.caFile {
                c.trustRoots = .certificates(try Self.certificates(ca, what: "CA"))
            }
            switch (f.certificateFile, f.privateKeyFile) {
            case (nil, nil):
                break
            case (let cert?, let key?):
                c.certificateChain = try Self.certificates(cert, what: "client certificate").map { .certificate($0) }
                do {
                    c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
                } catch {
                    // NIOSSL's error names the failure, never key bytes; it is not repeated
                    // here in full all the same.
                    throw EventSourcingError(.invalidArgument,
                        "cannot read the TLS client private key file \(key) (a PEM private key, unencrypted)")
                }
            case (_?, nil):
                throw EventSourcingError(.invalidArgument, "a TLS client certificate file needs its private key file (sslkey)")
            case (nil, _?):
                throw EventSourcingError(.invalidArgument, "a TLS client private key file needs its certificate file (sslcert)")
            }
            return c
        }
    }

    private static func certificates(_ path: String, what: String) throws -> [NIOSSLCertificate] {
        let certs: [NIOSSLCertificate]
        do {
            certs = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw EventSourcingError(.invalidArgument, "cannot read the TLS \(what) file \(path) (PEM certificates)")
        }
        guard !certs.isEmpty else {
            throw EventSourcingError(.invalidArgument, "the TLS \(what) file \(path) holds no PEM certificate")
        }
        return certs
    }

    /// postgres-nio's TLS setting for this configuration.
    func clientTLS() throws -> PostgresClient.Configuration.TLS {
        switch tls {
        case .disable: return .disable
        case .prefer: return .prefer(try makeTLSConfiguration())
        case .require: return .require(try makeTLSConfiguration())
        }
    }
}
