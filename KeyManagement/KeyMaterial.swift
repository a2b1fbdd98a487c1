/// Secret key bytes that are zeroized when released and never print themselves.
///
/// The bytes live in memory owned by this object, outside Swift's copy-on-write arrays,
/// so no stray copies are left behind by the library; `deinit` overwrites them with
/// `OPENSSL_cleanse`. `description` and `debugDescription` are redacted.
public final class KeyMaterial: @unchecked Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    // @unchecked: the buffer is written only in `init` and read-only afterwards; deinit
    // runs when no other reference exists. Immutable shared state is safe to share.
    private let buffer: UnsafeMutableRawBufferPointer

    /// The number of key bytes.
    public var count: Int { buffer.count }

    /// The longest key ``init(randomCount:)`` creates, in bytes. Keys in this library are 32 bytes.
    public static let maxRandomCount = 1024

    /// Creates `count` fresh random bytes from OpenSSL's RNG.
    /// - Throws: ``KeyManagementError/Code/invalidKeyMaterial`` unless `count` is 1…``maxRandomCount``
    ///   (nothing is allocated then); ``KeyManagementError/Code/cryptoFailure`` if the RNG fails.
    public init(randomCount count: Int = 32) throws(KeyManagementError) {
        guard count >= 1, count <= KeyMaterial.maxRandomCount else {
            throw KeyManagementError(.invalidKeyMaterial,
                                     "random key material must be 1–\(KeyMaterial.maxRandomCount) bytes, asked for \(count)")
        }
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        // On failure deinit still runs (every stored property is set) and frees the buffer.
        try LibCrypto.randomFill(buffer)
    }

    /// Allocates `count` bytes and lets `fill` write the key straight into them, so no other
    /// copy of the key exists. If `fill` throws, whatever it wrote is zeroized by `deinit`.
    init(count: Int, filling fill: (UnsafeMutableRawBufferPointer) throws(KeyManagementError) -> Void) throws(KeyManagementError) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(0, count), alignment: 16)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        try fill(buffer)
    }

    /// Takes ownership of `bytes`, zeroizing the caller's array.
    public init(consuming bytes: inout [UInt8]) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        bytes.withUnsafeBytes { src in
            if let s = src.baseAddress, let d = buffer.baseAddress { d.copyMemory(from: s, byteCount: src.count) }
        }
        LibCrypto.cleanse(&bytes)
    }

    /// Derives key bytes with scrypt.
    init(scryptPassword password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64) throws(KeyManagementError) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 16)
        // On failure deinit still runs (every stored property is set) and frees the buffer.
        try LibCrypto.scrypt(password: password, salt: salt, n: n, r: r, p: p, into: buffer)
    }

    deinit {
        LibCrypto.cleanse(buffer)
        buffer.deallocate()
    }

    /// Gives read access to the key bytes for the duration of `body`. Do not let them escape.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(buffer))
    }

    /// Compares two keys in constant time.
    public func constantTimeEquals(_ other: KeyMaterial) -> Bool {
        guard count == other.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<count { diff |= buffer[i] ^ other.buffer[i] }
        return diff == 0
    }

    public var description: String { "KeyMaterial(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
}
