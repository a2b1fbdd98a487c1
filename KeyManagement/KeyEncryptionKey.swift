import Foundation

/// A master key, wherever it lives: wraps and unwraps data keys, and has a stable id.
///
/// Three kinds ship with the library:
/// - ``MasterKey``: 32 bytes in this process (a key file, an environment variable, a passphrase).
/// - ``PKCS11MasterKey``: an AES-256 key inside a PKCS#11 token (an HSM); the key never leaves it.
/// - ``CommandMasterKey``: an external program that wraps and unwraps over a line protocol
///   (Vault transit, a cloud KMS, a company tool), in the spirit of git's credential helpers.
///
/// ``Keyring`` uses nothing else of a master key: ``wrap(_:aad:)`` seals each new data key
/// (32 bytes), ``unwrap(_:aad:)`` opens it again, and the store's master-key check record is
/// the constant `eventsourcing master key check v1` wrapped the same way under its own
/// associated data. The associated data binds every wrapped key to its scope, version and
/// master-key id, so an implementation must authenticate it (an AEAD).
///
/// Rules for an implementation:
/// - ``id`` is stable for the same key and differs between keys, and is found without the key
///   bytes leaving wherever they live. It is stored beside every wrapped data key: at most 64
///   printable ASCII characters.
/// - ``unwrap(_:aad:)`` returns nil when the bytes do not authenticate under this key and
///   `aad` (a wrong key, tampered bytes): the keyring reports that as a failed integrity check,
///   or as the wrong master key for a check record. It throws only when the key itself cannot
///   be reached (a token removed, a helper that fails), so that is never mistaken for a wrong key.
/// - Calls may block (a token, a helper process); they are made from any thread, concurrently.
public protocol KeyEncryptionKey: Sendable, CustomStringConvertible {
    /// Stable id of the key, stored with each data key it wraps and with its check record.
    var id: String { get }
    /// What kind of key this is, for messages: `local`, `pkcs11`, `command`.
    var kind: String { get }
    /// For a passphrase-derived key, the scrypt parameters stored with its check record.
    var kdf: KDFParameters? { get }
    /// Seals `plaintext` (a data key, or the check constant) with `aad` authenticated.
    /// - Throws: ``KeyManagementError`` if the key cannot be reached or refuses.
    func wrap(_ plaintext: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8]
    /// Opens what ``wrap(_:aad:)`` sealed; nil if it does not authenticate under this key and `aad`.
    /// The caller zeroizes the result.
    /// - Throws: ``KeyManagementError`` if the key cannot be reached or refuses.
    func unwrap(_ wrapped: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8]?
}

extension KeyEncryptionKey {
    public var kdf: KDFParameters? { nil }
}

/// Ids of master keys that live outside the process: a 4-character prefix naming the kind, then
/// 12 hex digits of SHA-256 over a domain label and what identifies the key: 16 characters,
/// like a local key's id, so that a rewrap from one kind to another keeps the `kek_id` column's
/// size (SQLite rewraps in place only when the row keeps its size: see SQLiteStore's
/// `eraseDataKeys`). 48 bits tell apart the few master keys of one store; the prefix (`p`,
/// `c` and `-` are not hex digits) keeps them apart from local keys' ids.
enum KeyEncryptionKeyID {
    /// The longest id a master key may have.
    static let maxLength = 64

    static func derive(prefix: String, domain: String, parts: [[UInt8]]) -> String {
        var input = Array(domain.utf8)
        for part in parts {
            // Length-prefixed, so parts cannot run into each other.
            withUnsafeBytes(of: UInt32(truncatingIfNeeded: part.count).bigEndian) { input.append(contentsOf: $0) }
            input.append(contentsOf: part)
        }
        return prefix + LibCrypto.sha256(input).prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    /// Whether `id` may be stored as a master-key id: 1 to 64 printable ASCII characters.
    static func isValid(_ id: String) -> Bool {
        let u = Array(id.utf8)
        return !u.isEmpty && u.count <= maxLength && u.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }
}

extension MasterKey: KeyEncryptionKey {
    /// `local`.
    public var kind: String { "local" }

    /// AES-256-GCM with a random 96-bit nonce: `nonce (12) | ciphertext | tag (16)`.
    public func wrap(_ plaintext: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        let nonce = try AES256GCM.randomNonce()
        return try AES256GCM.seal(plaintext, key: material, nonce: nonce, aadParts: [aad], prefix: nonce)
    }

    /// Opens `nonce | ciphertext | tag`; nil if it is too short to be one or does not authenticate.
    public func unwrap(_ wrapped: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8]? {
        guard wrapped.count >= AES256GCM.nonceLength + AES256GCM.tagLength else { return nil }
        return try AES256GCM.open(wrapped, from: AES256GCM.nonceLength, key: material,
                                  nonce: Array(wrapped[0..<AES256GCM.nonceLength]), aadParts: [aad])
    }
}
