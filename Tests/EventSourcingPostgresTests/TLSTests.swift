import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    /// TLS settings reach the connections: a private CA and a client certificate, against a
    /// cluster of the test's own that accepts its user only over TLS with a certificate that
    /// CA signed for that name (`hostssl … clientcert=verify-full`).
    @Suite("TLS with a private CA and client certificates")
    struct TLSTests {
        static func configuration(_ cluster: PrivateCluster, _ files: PostgresStore.Configuration.TLSFiles) -> PostgresStore.Configuration {
            var c = cluster.configuration
            c.schema = randomSchemaName()
            c.tls = .require
            c.tlsSettings = .files(files)
            c.connectTimeout = .seconds(5)
            c.operationTimeout = .seconds(10)
            return c
        }

        /// The error of opening a store on `configuration`, or nil if it opened.
        static func openingError(_ configuration: PostgresStore.Configuration) async -> (any Error)? {
            do {
                let store = try await PostgresStore(configuration: configuration)
                await store.close()
                return nil
            } catch {
                return error
            }
        }

        /// The error is typed `.databaseUnavailable` and shows no key material.
        static func expectRefused(_ error: (any Error)?, _ certs: TestCertificates, _ what: String) throws {
            let e = try #require(error as? EventSourcingError, "\(what): \(String(describing: error))")
            #expect(e.code == .databaseUnavailable, "\(what): \(e)")
            let text = "\(e) \(String(reflecting: e))"
            for keyFile in [certs.clientKey, certs.serverKey] {
                let pem = try String(contentsOfFile: keyFile, encoding: .utf8)
                let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
                #expect(!text.contains(body) && !text.contains("PRIVATE KEY"), "\(what): the error shows a key")
            }
        }

        @Test("With the private CA and the client certificate a store opens and saves; without the client certificate, or trusting another CA, opening fails with .databaseUnavailable naming no key",
              .enabled(if: PrivateCluster.available), .timeLimit(.minutes(3)))
        func privateCAAndClientCertificate() async throws {
            try await PrivateCluster.with(tls: true) { cluster in
                let certs = TestCertificates(directory: cluster.dir + "/tls")
                let good = Self.configuration(cluster, .init(caFile: certs.caCertificate, certificateFile: certs.clientCertificate,
                                                             privateKeyFile: certs.clientKey))
                let store = try await PostgresStore(configuration: good)
                let app = try await EncryptedApp.open(store, masterKey: try MasterKey.generate()).app
                var ledger = try ledgerSave(nil, save: 1, count: 3)
                try await app.save(&ledger)
                let read = try await app.repository.get(Ledger.self, id: ledger.id)
                #expect(read.entries == ledger.entries)
                try await store.destroy()

                // The same through a URL's libpq parameters.
                let url = "postgres://estest:\(cluster.password)@127.0.0.1:\(cluster.port)/postgres?sslmode=verify-full"
                    + "&sslrootcert=\(certs.caCertificate)&sslcert=\(certs.clientCertificate)&sslkey=\(certs.clientKey)"
                    + "&schema=\(randomSchemaName())"
                let fromURL = try await PostgresStore(configuration: try PostgresStore.Configuration(url: url))
                #expect(try await fromURL.maxNotificationID() == nil)
                try await fromURL.destroy()

                // No client certificate: the server refuses (28000).
                let noClientCert = Self.configuration(cluster, .init(caFile: certs.caCertificate))
                try Self.expectRefused(await Self.openingError(noClientCert), certs, "no client certificate")
                // The server's certificate is not trusted (another CA): the handshake fails.
                let wrongCA = Self.configuration(cluster, .init(caFile: certs.otherCACertificate,
                                                                certificateFile: certs.clientCertificate,
                                                                privateKeyFile: certs.clientKey))
                try Self.expectRefused(await Self.openingError(wrongCA), certs, "another CA")
                // The system trust roots do not know the private CA either.
                var systemRoots = good
                systemRoots.tlsSettings = .systemDefault
                try Self.expectRefused(await Self.openingError(systemRoots), certs, "system trust roots")
            }
        }

        @Test("An unreadable TLS file is .invalidArgument naming the file, before any connection")
        func unreadableFiles() async throws {
            var c = PostgresStore.Configuration(username: "u", password: nil, database: "d", tls: .require)
            let missing = FileManager.default.temporaryDirectory.appendingPathComponent("es-no-such-\(UUID().uuidString).pem").path
            c.tlsSettings = .files(.init(caFile: missing))
            let e = try #require(throws: EventSourcingError.self) { try c.makeTLSConfiguration() }
            #expect(e.code == .invalidArgument && e.message.contains(missing))
            c.tlsSettings = .files(.init(certificateFile: missing))
            let e2 = try #require(throws: EventSourcingError.self) { try c.makeTLSConfiguration() }
            #expect(e2.code == .invalidArgument)
            #expect(throws: EventSourcingError.self) { _ = try PostgresStore.clientConfiguration(for: c) }
        }

        @Test("URL parameters sslrootcert, sslcert, sslkey and sslmode=verify-ca become TLS files")
        func urlParameters() throws {
            let c = try PostgresStore.Configuration(url: "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/a/ca.pem&sslcert=/a/c.pem&sslkey=/a/k.pem")
            #expect(c.tls == .require)
            guard case .files(let f) = c.tlsSettings else {
                Issue.record("expected TLS files, got \(c.tlsSettings)")
                return
            }
            #expect(f == .init(caFile: "/a/ca.pem", certificateFile: "/a/c.pem", privateKeyFile: "/a/k.pem", verifiesHostname: false))
            let plain = try PostgresStore.Configuration(url: "postgres://u@h/d?sslmode=require")
            guard case .systemDefault = plain.tlsSettings else {
                Issue.record("expected the system default, got \(plain.tlsSettings)")
                return
            }
        }
    }
}
