/// AES-256-GCM with 96-bit nonces and 128-bit tags, through OpenSSL's EVP API.
///
/// Small on purpose, so it can be checked against published test vectors.
public enum AES256GCM {
    /// The nonce length, in bytes. Other lengths are rejected.
    public static let nonceLength = 12
    /// The tag length, in bytes.
    public static let tagLength = 16

    /// A fresh random nonce from OpenSSL's RNG.
    /// - Throws: ``KeyManagementError`` if the RNG fails.
    public static func randomNonce() throws(KeyManagementError) -> [UInt8] {
        try LibCrypto.randomBytes(nonceLength)
    }

    /// Encrypts and authenticates `plaintext`, returning `ciphertext || tag`.
    /// - Throws: ``KeyManagementError`` with ``KeyManagementError/Code/invalidNonce`` for a nonce
    ///   that is not 12 bytes, ``KeyManagementError/Code/invalidKeyMaterial`` for a key that is not 32 bytes,
    ///   ``KeyManagementError/Code/limitExceeded`` for a plaintext or associated data over 2^31 − 1 bytes.
    public static func seal(_ plaintext: [UInt8], key: KeyMaterial, nonce: [UInt8],
                            aad: [UInt8] = []) throws(KeyManagementError) -> [UInt8] {
        try key.withUnsafeBytes { (k) throws(KeyManagementError) in
            try LibCrypto.aes256GCMSeal(key: k, nonce: nonce, aadParts: [aad], plaintext: plaintext, prefix: [])
        }
    }

    /// Verifies and decrypts `ciphertext || tag`.
    /// - Throws: ``KeyManagementError/Code/authenticationFailed`` when the tag does not verify;
    ///   ``KeyManagementError/Code/invalidNonce`` for a nonce that is not 12 bytes;
    ///   ``KeyManagementError/Code/limitExceeded`` for a ciphertext or associated data over 2^31 − 1 bytes.
    public static func open(_ sealed: [UInt8], key: KeyMaterial, nonce: [UInt8],
                            aad: [UInt8] = []) throws(KeyManagementError) -> [UInt8] {
        let out = try key.withUnsafeBytes { (k) throws(KeyManagementError) in
            try LibCrypto.aes256GCMOpen(key: k, nonce: nonce, aadParts: [aad], sealed: sealed)
        }
        guard let out else { throw KeyManagementError(.authenticationFailed, "AES-256-GCM tag check failed") }
        return out
    }

    /// Encrypts `plaintext` under the concatenation of `aadParts` and returns
    /// `prefix || ciphertext || tag` in a single buffer.
    /// The record format's and the key wrapping's variant, inside this package.
    /// - Throws: as ``seal(_:key:nonce:aad:)``.
    package static func seal(_ plaintext: [UInt8], key: KeyMaterial, nonce: [UInt8],
                             aadParts: [[UInt8]], prefix: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        try key.withUnsafeBytes { (k) throws(KeyManagementError) in
            try LibCrypto.aes256GCMSeal(key: k, nonce: nonce, aadParts: aadParts, plaintext: plaintext, prefix: prefix)
        }
    }

    /// Verifies and decrypts the `ciphertext || tag` that starts at `offset` in `sealed`,
    /// under the concatenation of `aadParts`. Returns `nil` if the tag does not verify.
    /// - Throws: ``KeyManagementError/Code/invalidNonce``, ``KeyManagementError/Code/invalidKeyMaterial``,
    ///   ``KeyManagementError/Code/limitExceeded`` as ``open(_:key:nonce:aad:)``.
    /// The record format's and the key wrapping's variant, inside this package.
    package static func open(_ sealed: [UInt8], from offset: Int, key: KeyMaterial, nonce: [UInt8],
                             aadParts: [[UInt8]]) throws(KeyManagementError) -> [UInt8]? {
        try key.withUnsafeBytes { (k) throws(KeyManagementError) in
            try LibCrypto.aes256GCMOpen(key: k, nonce: nonce, aadParts: aadParts, sealed: sealed, offset: offset)
        }
    }
}
