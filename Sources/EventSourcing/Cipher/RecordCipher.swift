import Foundation
import KeyManagement

/// The data key a record is sealed under, and the wrapped key to persist if it was minted for
/// this write.
public struct SealingKey: Sendable {
    /// The key to encrypt with.
    public var key: DataKey
    /// Set when the key was minted for this write and is not stored yet. The application
    /// persists it with the records (when the recorder shares transactions with the cipher's
    /// key store) or before them, then calls ``RecordCipher/didPersist(_:)``.
    public var minted: WrappedDataKey?

    /// Creates a sealing key.
    public init(key: DataKey, minted: WrappedDataKey? = nil) {
        self.key = key
        self.minted = minted
    }
}

/// The cipher stage's key source, like ``Compressor`` is the compression stage: the
/// ``Mapper`` asks it for the key to seal a scope's records under, and for the key version a
/// record's authenticated header names to open it. `Keyring` is the library's
/// implementation (master keys wrapping per-scope data keys in a `KeyStore`); a KMS- or
/// HSM-backed key source or a test double plugs in here.
///
/// The record format (header, associated data, AES-256-GCM) stays the mapper's: a cipher only
/// hands out keys, so records it seals are read by any cipher that returns the same keys.
public protocol RecordCipher: Sendable {
    /// The key to seal new records of `scope` under: the scope's current key, or a new one
    /// (with ``SealingKey/minted`` set) if the scope has none.
    /// - Parameters:
    ///   - scope: the key scope the records are sealed under.
    ///   - likelyNew: the scope was only just created (a new aggregate's own id): a cipher may
    ///     mint without looking for an existing key, as long as persisting the minted key is
    ///     refused with `KeyManagementError.Code.keyExists` if the scope had one after all.
    /// - Throws: `KeyManagementError` (`.shredded` for a shredded scope, `.keyUnavailable`,
    ///   `.invalidScope`, …) or ``EventSourcingError``; the mapper names the scope.
    func sealingKey(for scope: String, likelyNew: Bool) async throws -> SealingKey

    /// The same, for `encryptions` records about to be sealed under the key: a cipher that
    /// counts its keys' encryptions (`Keyring`, SECURITY.md §10) reserves them, rotating the
    /// scope first when its current key has no room left. The default ignores the count.
    func sealingKey(for scope: String, likelyNew: Bool, encryptions: Int) async throws -> SealingKey

    /// Key `version` of `scope`, as named by a record's authenticated header.
    /// - Throws: `KeyManagementError` (`.shredded`, `.keyNotFound`, `.keyUnavailable`, …) or
    ///   ``EventSourcingError``; the mapper names the record.
    func openingKey(scope: String, version: UInt32) async throws -> DataKey

    /// The key store minted keys are persisted in, or nil for a cipher that never mints (its
    /// keys live elsewhere). The application stores minted keys in the same transaction as the
    /// records when the recorder ``KeyCommittingRecorder/sharesTransactions(with:)`` this store.
    var keyStore: (any KeyStore)? { get }

    /// Persists minted keys on their own, before the records sealed under them are stored.
    /// The default inserts each into ``keyStore``.
    /// - Throws: `KeyManagementError.Code.keyExists` if another writer created a scope's key first.
    func persist(_ keys: [SealingKey]) async throws

    /// Called once minted keys are stored (with the records or on their own), so later writes
    /// use them. The default does nothing.
    func didPersist(_ keys: [SealingKey])

    /// Forgets what is cached for `scope` (after `KeyManagementError.Code.keyExists`: another
    /// writer created its key). The default does nothing.
    func invalidate(scope: String)

    /// A counter that moves whenever a key scope this cipher served may have been shredded or
    /// changed (a shred, an invalidation), or nil when the cipher cannot tell. An application's
    /// aggregate cache reads an aggregate afresh when the counter moved since it was cached: a
    /// cached state can hold personal fields of another subject than the aggregate's own
    /// (``Personal``), whose shred its own key does not show. The default is nil: the cache then
    /// checks only the key of the aggregate's latest record on each hit.
    var erasureGeneration: UInt64? { get }

    /// Applies key changes made by other processes (shreds above all) if it is time to look,
    /// so that ``erasureGeneration`` reflects them: an application calls it before it trusts
    /// its aggregate cache. `Keyring` reads its store's key-change feed at most once per
    /// refresh interval. The default does nothing.
    /// - Throws: what the key store throws when it cannot be read.
    func checkKeyChanges() async throws
}

extension RecordCipher {
    public func sealingKey(for scope: String, likelyNew: Bool, encryptions: Int) async throws -> SealingKey {
        try await sealingKey(for: scope, likelyNew: likelyNew)
    }

    public var keyStore: (any KeyStore)? { nil }

    public func persist(_ keys: [SealingKey]) async throws {
        let minted = keys.compactMap(\.minted)
        guard !minted.isEmpty else { return }
        guard let keyStore else {
            throw KeyManagementError(.storeFailure, "the cipher minted a data key but has no key store to persist it in",
                                     scope: minted[0].scope, keyVersion: minted[0].version)
        }
        for k in minted { try await keyStore.insertDataKey(k) }
        didPersist(keys)
    }

    public func didPersist(_ keys: [SealingKey]) {}

    public func invalidate(scope: String) {}

    public var erasureGeneration: UInt64? { nil }

    public func checkKeyChanges() async throws {}
}

extension Keyring: RecordCipher {
    public func sealingKey(for scope: String, likelyNew: Bool) async throws -> SealingKey {
        let w = try await writeKey(for: scope, likelyNew: likelyNew)
        return SealingKey(key: w.key, minted: w.pending)
    }

    public func sealingKey(for scope: String, likelyNew: Bool, encryptions: Int) async throws -> SealingKey {
        let w = try await writeKey(for: scope, likelyNew: likelyNew, encryptions: encryptions)
        return SealingKey(key: w.key, minted: w.pending)
    }

    public func openingKey(scope: String, version: UInt32) async throws -> DataKey {
        try await readKey(scope: scope, version: version)
    }

    public var keyStore: (any KeyStore)? { store }

    public func persist(_ keys: [SealingKey]) async throws {
        try await persist(keys.map { Keyring.WriteKey(key: $0.key, pending: $0.minted) })
    }

    public func didPersist(_ keys: [SealingKey]) {
        let minted = keys.compactMap(\.minted)
        guard !minted.isEmpty else { return }
        didPersist(minted, material: keys.map(\.key))
    }

    public var erasureGeneration: UInt64? { shredGeneration }

    public func checkKeyChanges() async throws { try await refreshKeyChangesIfDue() }
}
