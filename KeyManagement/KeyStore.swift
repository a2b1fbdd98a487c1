import Foundation

/// Persistent storage for wrapped data keys, master-key checks and tombstones.
///
/// Implementations must make ``shred(scope:at:)`` atomic (every version deleted and the
/// tombstone written together) and must refuse ``insertDataKey(_:)`` for a scope that has
/// a tombstone, in the same atomic step, so a shredded scope can never get a new key.
///
/// Scope ids are compared by their exact UTF-8 bytes, never by `String` equality (which is
/// Unicode canonical equivalence): "José" with é (U+00E9) and with e + U+0301 are two scopes
/// with two keys. Key any dictionary of scopes by ``ExactScope``. The ``Keyring`` refuses, with
/// ``KeyManagementError/Code/storeFailure``, a look-up answered with another scope's keys.
public protocol KeyStore: Sendable {
    /// Every master-key check in the store, oldest first.
    /// - Throws: ``KeyManagementError/Code/storeFailure``.
    func masterKeyChecks() async throws -> [MasterKeyCheck]
    /// Adds a master-key check (ignored if one with the same `kekID` exists).
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws
    /// Removes the check for `kekID`.
    func deleteMasterKeyCheck(kekID: String) async throws

    /// Every stored version of `scope`'s data key, lowest version first.
    func dataKeys(scope: String) async throws -> [WrappedDataKey]
    /// The same, asked for while reading a record sealed with `version` (see the default).
    func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey]
    /// A hint that the key ring is about to read the keys of `scopes` (the records of a page of
    /// the log need them). A store that pays per call (a hand-over to a reader thread, a round
    /// trip) can read them all at once and answer the ``dataKeys(scope:reading:)`` calls that
    /// follow from what it read, under the same rule: never keys older than the records being
    /// read. The default does nothing.
    func prefetchDataKeys(scopes: [String]) async throws
    /// Adds a data-key version.
    /// - Throws: ``KeyManagementError/Code/keyExists`` if `(scope, version)` exists,
    ///   ``KeyManagementError/Code/shredded`` if the scope has a tombstone.
    func insertDataKey(_ key: WrappedDataKey) async throws
    /// Replaces the wrapping of an existing version (master-key rotation), only if it is
    /// still wrapped by `previousKEKID`. Returns whether it was replaced.
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool
    /// Replaces the wrapping of several existing versions (a page of a master-key rotation),
    /// each only if it is still wrapped by its `previousKEKID`, **all in one transaction**:
    /// either every replacement the conditions allow is kept, or (on an error) none is.
    /// Returns how many were replaced (0…`rewraps.count`).
    /// - Throws: ``KeyManagementError/Code/invalidArgument`` if the batch names a version twice
    ///   (see ``DataKeyRewrap/checkBatch(_:)``), before anything is changed.
    ///
    /// The default calls ``rewrapDataKey(_:previousKEKID:)`` once per key, so a store written
    /// before this method existed keeps working, atomically per key but not per batch, and with
    /// one transaction (one commit) per key. A store that can should implement it with one
    /// transaction; ``InMemoryKeyStore``, `SQLiteStore` and `PostgresStore` do.
    func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int
    /// A page of data keys ordered by `(scope, version)`, strictly after `cursor`.
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey]

    /// The tombstone for `scope`, if it was shredded.
    func tombstone(scope: String) async throws -> Tombstone?
    /// Every tombstone.
    func tombstones() async throws -> [Tombstone]
    /// Deletes every version of `scope`'s key and writes its tombstone, atomically.
    /// Returns the tombstone.
    /// - Throws: ``KeyManagementError/Code/shredded`` if it was already shredded.
    func shred(scope: String, at time: Date) async throws -> Tombstone
    /// Destroys the stored versions of `scope`'s data key below `version` (retiring them after
    /// re-encryption), atomically, never the newest version; returns the versions destroyed,
    /// lowest first (empty when none was below). The lowest version left is then the scope's
    /// minimum decryption version: a read of a version below it is ``KeyManagementError/Code/keyRetired``.
    ///
    /// The store checks nothing about records: `Application.retireKeyVersions(keyScope:below:)`
    /// first checks that no record still needs a version below `version`.
    /// - Throws: ``KeyManagementError/Code/invalidArgument`` if `version` is above the newest
    ///   stored version (that would destroy the one that seals new records),
    ///   ``KeyManagementError/Code/shredded``, ``KeyManagementError/Code/keyNotFound`` for a
    ///   scope with no key, ``KeyManagementError/Code/unsupported`` (the default): nothing is
    ///   changed then.
    func retireDataKeys(scope: String, below version: UInt32) async throws -> [UInt32]
}

extension KeyStore {
    /// Refuses: a store written before retiring existed keeps every version.
    public func retireDataKeys(scope: String, below version: UInt32) async throws -> [UInt32] {
        throw KeyManagementError(.unsupported, "this key store cannot retire data-key versions; nothing was changed",
                                 scope: scope, keyVersion: version)
    }

    /// Checks a retirement against the stored versions (lowest first) before anything changes:
    /// the versions below `version` to destroy.
    /// - Throws: as ``retireDataKeys(scope:below:)`` does (`.keyNotFound`, `.invalidArgument`).
    public static func versionsToRetire(_ stored: [UInt32], scope: String, below version: UInt32) throws(KeyManagementError) -> [UInt32] {
        guard let newest = stored.max() else {
            throw KeyManagementError(.keyNotFound, "the scope has no data key; nothing was retired", scope: scope)
        }
        guard version <= newest else {
            throw KeyManagementError(.invalidArgument,
                "cannot retire versions below v\(version): the newest version is v\(newest), which is never retired; nothing was retired",
                scope: scope, keyVersion: version)
        }
        return stored.filter { $0 < version }.sorted()
    }
}

extension KeyStore {
    /// The stored versions of `scope`'s data key, when the key ring needs `version` to read a
    /// record. By default the same as ``dataKeys(scope:)``; a store that reads keys together with
    /// the records that need them (saving a round trip) answers from those. It must never answer
    /// with keys older than the records being read.
    public func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey] {
        try await dataKeys(scope: scope)
    }

    public func prefetchDataKeys(scopes: [String]) async throws {}
}

extension KeyStore {
    /// One conditional rewrap after another, each its own transaction (see the requirement).
    public func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        try DataKeyRewrap.checkBatch(rewraps)
        var replaced = 0
        for r in rewraps where try await rewrapDataKey(r.key, previousKEKID: r.previousKEKID) { replaced += 1 }
        return replaced
    }
}

/// One data key of a batch rewrap: its new wrapping, and the master key that must still wrap
/// the stored version for the new wrapping to replace it.
public struct DataKeyRewrap: Sendable, Hashable {
    /// The version with its new wrapping (`scope` and `version` name the stored row).
    public var key: WrappedDataKey
    /// Id of the master key the stored version must still be wrapped by.
    public var previousKEKID: String

    /// Creates a rewrap.
    public init(_ key: WrappedDataKey, previousKEKID: String) {
        self.key = key
        self.previousKEKID = previousKEKID
    }

    /// Checks that a batch names each `(scope, version)` at most once (scopes compared by their
    /// bytes). Two rewraps of one version in one transaction would depend on the order a store
    /// applies them in (one SQL statement applies them in no defined order), so a batch that
    /// names one twice is refused. Implementations of ``KeyStore/rewrapDataKeys(_:)`` call this
    /// before changing anything.
    /// - Throws: ``KeyManagementError/Code/invalidArgument`` naming the repeated version.
    public static func checkBatch(_ rewraps: [DataKeyRewrap]) throws(KeyManagementError) {
        guard rewraps.count > 1 else { return }
        struct Position: Hashable { var scope: ExactScope; var version: UInt32 }
        var seen = Set<Position>(minimumCapacity: rewraps.count)
        for r in rewraps where !seen.insert(Position(scope: ExactScope(r.key.scope), version: r.key.version)).inserted {
            throw KeyManagementError(.invalidArgument,
                "a batch of rewraps names data key v\(r.key.version) of this scope twice; nothing was rewrapped",
                scope: r.key.scope, keyVersion: r.key.version)
        }
    }
}

/// A position in the `(scope, version)` order of data keys.
public struct DataKeyCursor: Sendable, Hashable {
    /// The scope of the last key seen.
    public var scope: String
    /// The version of the last key seen.
    public var version: UInt32

    /// Creates a cursor.
    public init(scope: String, version: UInt32) {
        self.scope = scope
        self.version = version
    }
}
