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
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` unless it is 32 bytes; for `kdf`,
    ///   what ``KDFParameters/validate()`` throws.
    public init(material: KeyMaterial, kdf: KDFParameters? = nil) throws(KeyManagementError) {
        guard material.count == 32 else {
            throw KeyManagementError(.invalidKeyMaterial, "a master key must be 32 bytes, got \(material.count)")
        }
        try kdf?.validate()
        self.material = material
        self.kdf = kdf
        self.id = MasterKey.fingerprint(material)
    }

    /// A new random master key from OpenSSL's RNG.
    /// - Throws: ``KeyManagementError`` if the RNG fails.
    public static func generate() throws(KeyManagementError) -> MasterKey {
        try MasterKey(material: KeyMaterial(randomCount: 32))
    }

    /// The longest key text accepted, in bytes. A master key is 32 raw bytes or 44 base64
    /// characters; the rest leaves room for whitespace. Longer input is refused, and a key file
    /// is never read past this (so a huge file or a device cannot exhaust memory).
    public static let maxEncodedLength = 4096

    /// Reads a key file holding either exactly 32 raw bytes or their base64 text.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if the file cannot be read,
    ///   ``KeyManagementError/Code/invalidKeyMaterial`` if it holds anything else, or more than
    ///   ``maxEncodedLength`` bytes.
    public init(contentsOfFile path: String) throws(KeyManagementError) {
        var data = try MasterKey.readKeyFile(path)
        try self.init(encoded: &data, source: "master key file \(path)")
    }

    /// The file's bytes, read with `read(2)` into one buffer (no `Data` copy) and never more
    /// than ``maxEncodedLength`` + 1 of them. The caller zeroizes the result.
    static func readKeyFile(_ path: String) throws(KeyManagementError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw KeyManagementError(.keySourceUnavailable,
                                     "cannot read master key file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maxEncodedLength + 1)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return read(fd, base + filled, b.count - filled)
            }
            if n > 0 {
                filled += n
            } else if n == 0 {
                break
            } else if errno != EINTR {
                let reason = String(cString: strerror(errno))
                LibCrypto.cleanse(&buffer)
                throw KeyManagementError(.keySourceUnavailable, "cannot read master key file \(path): \(reason)")
            }
        }
        guard filled <= maxEncodedLength else {
            LibCrypto.cleanse(&buffer)
            throw KeyManagementError(.invalidKeyMaterial,
                "master key file \(path) is longer than \(maxEncodedLength) bytes: it is not a master key")
        }
        // In place: the bytes past `filled` were never written, and the buffer is not reallocated.
        buffer.removeSubrange(filled...)
        return buffer
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
        try self.init(encoded: &bytes, source: "environment variable \(name)")
    }

    /// Parses 32 raw bytes or base64 text (spaces, tabs, CR and LF ignored) and zeroizes
    /// `bytes`, whether it succeeds or not. The key is decoded straight into its own buffer, so
    /// no other copy of it is made.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial``, also for more than ``maxEncodedLength`` bytes.
    public init(encoded bytes: inout [UInt8], source: String = "master key") throws(KeyManagementError) {
        defer { LibCrypto.cleanse(&bytes) }
        // Array.withUnsafeBytes rethrows untyped errors; a Result keeps the type.
        let parsed = bytes.withUnsafeBytes { text in
            Result { () throws(KeyManagementError) in try MasterKey.parse(text, source: source) }
        }
        try self.init(material: parsed.get())
    }

    /// The key in `text`: 32 raw bytes, or base64 decoded into the key's own buffer.
    static func parse(_ text: UnsafeRawBufferPointer, source: String) throws(KeyManagementError) -> KeyMaterial {
        guard text.count <= maxEncodedLength else {
            throw KeyManagementError(.invalidKeyMaterial,
                "\(source) is \(text.count) bytes, longer than any master key (at most \(maxEncodedLength))")
        }
        if text.count == 32, !text.allSatisfy({ MasterKey.isBase64Character($0) }) {
            return try KeyMaterial(count: 32) { out in out.copyMemory(from: text) }
        }
        guard let count = Base64.decodedCount(text) else {
            throw KeyManagementError(.invalidKeyMaterial, "\(source) is neither 32 raw bytes nor base64")
        }
        guard count == 32 else {
            throw KeyManagementError(.invalidKeyMaterial, "\(source) must hold 32 bytes, it decodes to \(count)")
        }
        return try KeyMaterial(count: 32) { (out) throws(KeyManagementError) in
            guard Base64.decode(text, into: out) else {
                throw KeyManagementError(.invalidKeyMaterial, "\(source) is neither 32 raw bytes nor base64")
            }
        }
    }

    /// Derives a master key from a passphrase with scrypt.
    ///
    /// The parameters are checked before scrypt runs, so parameters read from a tampered key
    /// store cannot make this run for hours or allocate gigabytes.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` for an empty passphrase or malformed
    ///   parameters, ``KeyManagementError/Code/limitExceeded`` for parameters beyond the bounds of
    ///   ``KDFParameters/validate()``.
    public init(passphrase: String, parameters: KDFParameters) throws(KeyManagementError) {
        try parameters.validate()
        guard !passphrase.isEmpty else {
            throw KeyManagementError(.invalidKeyMaterial, "the passphrase is empty")
        }
        var pw = Array(passphrase.utf8)
        defer { LibCrypto.cleanse(&pw) }
        let material = try KeyMaterial(scryptPassword: pw, salt: parameters.salt,
                                       n: parameters.n, r: parameters.r, p: parameters.p)
        try self.init(material: material, kdf: parameters)
    }

    /// The key as base64 text, for writing a key file. Handle the result as a secret: unlike
    /// every buffer inside the library, the returned `String` cannot be zeroized.
    public func base64EncodedKey() -> String {
        var text = material.withUnsafeBytes { Base64.encode($0) }
        defer { LibCrypto.cleanse(&text) }
        return String(decoding: text, as: UTF8.self)
    }

    /// Writes the key as base64 to a new file created with mode 0600.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if the file exists or cannot be created.
    public func writeKeyFile(to path: String) throws(KeyManagementError) {
        var text = material.withUnsafeBytes { Base64.encode($0, newline: true) }
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
    /// - Throws: what ``validate()`` throws for `n`; ``KeyManagementError`` if the RNG fails.
    public static func random(n: UInt64 = 1 << 15) throws(KeyManagementError) -> KDFParameters {
        var parameters = KDFParameters(salt: [], n: n)
        try parameters.validate()
        parameters.salt = try LibCrypto.randomBytes(16)
        return parameters
    }

    // Bounds far above what this library writes (n = 2^15, r = 8, p = 1: 32 MiB of memory and
    // about 0.1 s), and above every setting `random(n:)` could derive a key with before they
    // existed, so that parameters read from a tampered store cannot make opening run for hours
    // or allocate gigabytes.

    /// The largest `n` accepted.
    public static let maxN: UInt64 = 1 << 20
    /// The largest `r` accepted.
    public static let maxR: UInt64 = 32
    /// The largest `p` accepted.
    public static let maxP: UInt64 = 16
    /// The most memory scrypt may need, `128 · n · r` bytes: 512 MiB.
    public static let maxMemory: UInt64 = 512 << 20
    /// The largest `n · r · p`, which the time scrypt takes is proportional to: 64 times the default's.
    public static let maxWork: UInt64 = 1 << 24
    /// The longest salt accepted, in bytes.
    public static let maxSaltLength = 1024

    /// Checks the parameters before anything derives a key with them.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` unless `n` is a power of two
    ///   above 1 and `r` and `p` are at least 1; ``KeyManagementError/Code/limitExceeded`` if `n`,
    ///   `r`, `p`, the memory `128 · n · r`, the work `n · r · p` or the salt length is beyond its bound.
    public func validate() throws(KeyManagementError) {
        guard n >= 2, n & (n - 1) == 0 else {
            throw KeyManagementError(.invalidKeyMaterial, "scrypt n must be a power of two above 1, got \(n)")
        }
        guard r >= 1, p >= 1 else {
            throw KeyManagementError(.invalidKeyMaterial, "scrypt r and p must be at least 1, got r = \(r), p = \(p)")
        }
        guard n <= Self.maxN, r <= Self.maxR, p <= Self.maxP else {
            throw KeyManagementError(.limitExceeded,
                "scrypt parameters n = \(n), r = \(r), p = \(p) exceed the bounds n ≤ \(Self.maxN), r ≤ \(Self.maxR), p ≤ \(Self.maxP)")
        }
        // No overflow: n ≤ 2^20, r ≤ 2^5 and p ≤ 2^4 here.
        guard 128 * n * r <= Self.maxMemory else {
            throw KeyManagementError(.limitExceeded,
                "scrypt parameters n = \(n), r = \(r) need \((128 * n * r) >> 20) MiB, more than \(Self.maxMemory >> 20) MiB")
        }
        guard n * r * p <= Self.maxWork else {
            throw KeyManagementError(.limitExceeded,
                "scrypt parameters n = \(n), r = \(r), p = \(p) cost n·r·p = \(n * r * p), more than \(Self.maxWork)")
        }
        guard salt.count <= Self.maxSaltLength else {
            throw KeyManagementError(.limitExceeded,
                "the scrypt salt is \(salt.count) bytes, more than \(Self.maxSaltLength)")
        }
    }
}
