import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A key-encryption key (KEK): wraps every data key, never encrypts events itself.
///
/// Loaded from a key file, an environment variable or a passphrase. Its ``id`` is a
/// one-way fingerprint of the key, so the same key always has the same id and a store
/// can tell which master key wrapped each data key.
public struct MasterKey: Sendable, CustomStringConvertible {
    /// Fingerprint of the key: 16 hex digits of SHA-256 over a domain label and the key.
    public let id: String
    /// The key bytes.
    public let material: KeyMaterial
    /// For passphrase-derived keys, the scrypt parameters needed to derive it again.
    public let kdf: KDFParameters?

    /// Wraps existing key material.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` unless it is 32 bytes.
    public init(material: KeyMaterial, kdf: KDFParameters? = nil) throws(KeyManagementError) {
        guard material.count == 32 else {
            throw KeyManagementError(.invalidKeyMaterial, "a master key must be 32 bytes, got \(material.count)")
        }
        self.material = material
        self.kdf = kdf
        self.id = MasterKey.fingerprint(material)
    }

    /// A new random master key from OpenSSL's RNG.
    /// - Throws: ``KeyManagementError`` if the RNG fails.
    public static func generate() throws(KeyManagementError) -> MasterKey {
        try MasterKey(material: KeyMaterial(randomCount: 32))
    }

    /// Reads a key file holding either exactly 32 raw bytes or their base64 text.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if the file cannot be read,
    ///   ``KeyManagementError/Code/invalidKeyMaterial`` if it holds anything else.
    public init(contentsOfFile path: String) throws(KeyManagementError) {
        guard var data = FileManager.default.contents(atPath: path).map({ [UInt8]($0) }) else {
            throw KeyManagementError(.keySourceUnavailable, "cannot read master key file \(path)")
        }
        defer { LibCrypto.cleanse(&data) }
        try self.init(encoded: &data, source: "master key file \(path)")
    }

    /// Reads a base64-encoded key from an environment variable.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if it is unset,
    ///   ``KeyManagementError/Code/invalidKeyMaterial`` if it is not base64 of 32 bytes.
    public init(environmentVariable name: String,
                environment: [String: String] = ProcessInfo.processInfo.environment) throws(KeyManagementError) {
        guard let value = environment[name], !value.isEmpty else {
            throw KeyManagementError(.keySourceUnavailable, "environment variable \(name) is not set")
        }
        var bytes = Array(value.utf8)
        defer { LibCrypto.cleanse(&bytes) }
        try self.init(encoded: &bytes, source: "environment variable \(name)")
    }

    /// Parses 32 raw bytes or base64 text (surrounding whitespace ignored), zeroizing temporaries.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial``.
    public init(encoded bytes: inout [UInt8], source: String = "master key") throws(KeyManagementError) {
        if bytes.count == 32, !bytes.allSatisfy({ MasterKey.isBase64Character($0) }) {
            var raw = bytes
            try self.init(material: KeyMaterial(consuming: &raw))
            return
        }
        var text = bytes.filter { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) }
        defer { LibCrypto.cleanse(&text) }
        guard var decoded = Data(base64Encoded: Data(text)).map({ [UInt8]($0) }) else {
            throw KeyManagementError(.invalidKeyMaterial, "\(source) is neither 32 raw bytes nor base64")
        }
        guard decoded.count == 32 else {
            LibCrypto.cleanse(&decoded)
            throw KeyManagementError(.invalidKeyMaterial, "\(source) must hold 32 bytes, it decodes to \(decoded.count)")
        }
        try self.init(material: KeyMaterial(consuming: &decoded))
    }

    /// Derives a master key from a passphrase with scrypt.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` for an empty passphrase or bad parameters.
    public init(passphrase: String, parameters: KDFParameters) throws(KeyManagementError) {
        guard !passphrase.isEmpty else {
            throw KeyManagementError(.invalidKeyMaterial, "the passphrase is empty")
        }
        var pw = Array(passphrase.utf8)
        defer { LibCrypto.cleanse(&pw) }
        let material = try KeyMaterial(scryptPassword: pw, salt: parameters.salt,
                                       n: parameters.n, r: parameters.r, p: parameters.p)
        try self.init(material: material, kdf: parameters)
    }

    /// The key as base64 text, for writing a key file. Handle the result as a secret.
    public func base64EncodedKey() -> String {
        material.withUnsafeBytes { Data($0).base64EncodedString() }
    }

    /// Writes the key as base64 to a new file created with mode 0600.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if the file exists or cannot be created.
    public func writeKeyFile(to path: String) throws(KeyManagementError) {
        var text = Array((base64EncodedKey() + "\n").utf8)
        defer { LibCrypto.cleanse(&text) }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KeyManagementError(.keySourceUnavailable,
                                     "cannot create key file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == text.count, fsync(fd) == 0 else {
            throw KeyManagementError(.keySourceUnavailable, "cannot write key file \(path)")
        }
    }

    public var description: String { "MasterKey(id: \(id))" }

    static func fingerprint(_ material: KeyMaterial) -> String {
        var input = Array("eventsourcing.kek-id.v1".utf8)
        material.withUnsafeBytes { input.append(contentsOf: $0) }
        defer { LibCrypto.cleanse(&input) }
        return LibCrypto.sha256(input).prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    private static func isBase64Character(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
            || c == 0x2B || c == 0x2F || c == 0x3D || c == 0x0A || c == 0x0D || c == 0x20
    }
}

/// scrypt parameters for a passphrase-derived master key. Stored beside the key check so
/// the same passphrase derives the same key again; none of it is secret.
public struct KDFParameters: Sendable, Hashable, Codable {
    /// The salt (16 random bytes by default).
    public var salt: [UInt8]
    /// CPU/memory cost (a power of two).
    public var n: UInt64
    /// Block size.
    public var r: UInt64
    /// Parallelism.
    public var p: UInt64

    /// Creates parameters.
    public init(salt: [UInt8], n: UInt64 = 1 << 15, r: UInt64 = 8, p: UInt64 = 1) {
        self.salt = salt
        self.n = n
        self.r = r
        self.p = p
    }

    /// Fresh parameters with a random 16-byte salt and n = 2^15, r = 8, p = 1.
    /// - Throws: ``KeyManagementError`` if the RNG fails.
    public static func random(n: UInt64 = 1 << 15) throws(KeyManagementError) -> KDFParameters {
        try KDFParameters(salt: LibCrypto.randomBytes(16), n: n)
    }
}
