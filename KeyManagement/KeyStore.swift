import Foundation

/// Persistent storage for wrapped data keys, master-key checks and tombstones.
///
/// Implementations must make ``shred(scope:at:)`` atomic (every version deleted and the
/// tombstone written together) and must refuse ``insertDataKey(_:)`` for a scope that has
/// a tombstone, in the same atomic step, so a shredded scope can never get a new key.
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
    /// Adds a data-key version.
    /// - Throws: ``KeyManagementError/Code/keyExists`` if `(scope, version)` exists,
    ///   ``KeyManagementError/Code/shredded`` if the scope has a tombstone.
    func insertDataKey(_ key: WrappedDataKey) async throws
    /// Replaces the wrapping of an existing version (master-key rotation), only if it is
    /// still wrapped by `previousKEKID`. Returns whether it was replaced.
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool
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
}

extension KeyStore {
    /// The stored versions of `scope`'s data key, when the key ring needs `version` to read a
    /// record. By default the same as ``dataKeys(scope:)``; a store that reads keys together with
    /// the records that need them (saving a round trip) answers from those. It must never answer
    /// with keys older than the records being read.
    public func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey] {
        try await dataKeys(scope: scope)
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
