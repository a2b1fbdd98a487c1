import Foundation

/// An unwrapped data key (DEK) for one key scope and version. Encrypts records.
public struct DataKey: Sendable, CustomStringConvertible {
    /// The key scope: an aggregate id or a data-subject id. Stored in plaintext; must not be PII.
    public let scope: String
    /// The key version within the scope, from 1.
    public let version: UInt32
    /// The key bytes.
    public let material: KeyMaterial

    /// Creates a data key (for a ``KeyStore``-independent key source, such as a KMS-backed
    /// record cipher). The material is shared, not copied.
    public init(scope: String, version: UInt32, material: KeyMaterial) {
        self.scope = scope
        self.version = version
        self.material = material
    }

    public var description: String { "DataKey(scope: \(scope), version: \(version))" }
}

/// A data key as stored: wrapped (AES-256-GCM) by a master key. Never holds key bytes in clear.
///
/// `wrapped` is `nonce(12) || ciphertext(32) || tag(16)`; the associated data is
/// ``KeyScope/wrappingAAD(scope:version:kekID:)``.
public struct WrappedDataKey: Sendable, Hashable, Codable {
    /// The key scope.
    public var scope: String
    /// The key version within the scope.
    public var version: UInt32
    /// Id of the master key that wrapped it.
    public var kekID: String
    /// `nonce || ciphertext || tag`.
    public var wrapped: [UInt8]
    /// When this version was created.
    public var createdAt: Date

    /// Creates a record.
    public init(scope: String, version: UInt32, kekID: String, wrapped: [UInt8], createdAt: Date) {
        self.scope = scope
        self.version = version
        self.kekID = kekID
        self.wrapped = wrapped
        self.createdAt = createdAt
    }
}

/// A record that lets a store tell a wrong master key at open, before anything is written.
///
/// `sealed` is `nonce(12) || AES-256-GCM(KEK, "eventsourcing master key check v1") || tag(16)`
/// with associated data `"ESKCV1" || kekID`.
public struct MasterKeyCheck: Sendable, Hashable, Codable {
    /// The master key's id.
    public var kekID: String
    /// The sealed check value.
    public var sealed: [UInt8]
    /// scrypt parameters if the master key is passphrase-derived.
    public var kdf: KDFParameters?
    /// When the check was written.
    public var createdAt: Date

    /// Creates a record.
    public init(kekID: String, sealed: [UInt8], kdf: KDFParameters?, createdAt: Date) {
        self.kekID = kekID
        self.sealed = sealed
        self.kdf = kdf
        self.createdAt = createdAt
    }
}

/// The record left behind when a scope is crypto-shredded: scope and time, no personal data.
public struct Tombstone: Sendable, Hashable, Codable {
    /// The shredded scope.
    public var scope: String
    /// When it was shredded.
    public var shreddedAt: Date
    /// The key versions that were destroyed.
    public var destroyedVersions: [UInt32]

    /// Creates a tombstone.
    public init(scope: String, shreddedAt: Date, destroyedVersions: [UInt32]) {
        self.scope = scope
        self.shreddedAt = shreddedAt
        self.destroyedVersions = destroyedVersions
    }
}

/// Rules and byte encodings for key scope ids.
public enum KeyScope {
    /// The longest scope id, in UTF-8 bytes (the header stores its length in one byte).
    public static let maxLength = 255

    /// Checks a scope id: 1–255 UTF-8 bytes, no control characters.
    /// - Throws: ``KeyManagementError/Code/invalidScope``.
    public static func validate(_ scope: String) throws(KeyManagementError) {
        let n = scope.utf8.count
        guard n > 0, n <= maxLength else {
            throw KeyManagementError(.invalidScope, "a key scope id must be 1–255 UTF-8 bytes, got \(n)")
        }
        // Called on every key look-up: ASCII scopes (the usual, e.g. UUIDs) are checked byte by
        // byte; only others need the Unicode character database.
        let ascii = scope.utf8.allSatisfy { $0 < 0x80 }
        let control = ascii ? scope.utf8.contains { $0 < 0x20 || $0 == 0x7F }
                            : scope.unicodeScalars.contains { $0.properties.generalCategory == .control }
        guard !control else {
            throw KeyManagementError(.invalidScope, "a key scope id must not contain control characters")
        }
    }

    /// Associated data for wrapping a data key:
    /// `"ESDEK1" || len(scope) u8 || scope || version u32 BE || len(kekID) u8 || kekID`.
    ///
    /// `scope` and `kekID` must be at most 255 UTF-8 bytes (the keyring checks scopes with
    /// ``validate(_:)``, and KEK ids are 16 characters); a longer one's length byte wraps.
    public static func wrappingAAD(scope: String, version: UInt32, kekID: String) -> [UInt8] {
        var aad = Array("ESDEK1".utf8)
        let s = Array(scope.utf8)
        let k = Array(kekID.utf8)
        aad.append(UInt8(truncatingIfNeeded: s.count))
        aad += s
        aad += [UInt8(version >> 24 & 0xFF), UInt8(version >> 16 & 0xFF), UInt8(version >> 8 & 0xFF), UInt8(version & 0xFF)]
        aad.append(UInt8(truncatingIfNeeded: k.count))
        aad += k
        return aad
    }
}
