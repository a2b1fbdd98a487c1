import Foundation
import Logging
import Synchronization

/// Retiring old versions of a scope's data key (after its records were re-encrypted).
extension Keyring {
    /// Destroys the stored versions of `scope`'s data key below `version` (never the newest) and
    /// drops them from this keyring's cache (their bytes are zeroized once no reader holds them).
    /// Afterwards a read of such a version throws ``KeyManagementError/Code/keyRetired``.
    ///
    /// This checks no record: call `Application.retireKeyVersions(keyScope:below:)`, which
    /// first checks that no record or personal field still needs one of them. Other processes
    /// drop their cached copies when they next check the key-change feed, or when the key
    /// leaves their cache (SECURITY.md §7.7).
    /// - Returns: the versions destroyed, lowest first.
    /// - Throws: what ``KeyStore/retireDataKeys(scope:below:)`` throws; nothing is changed then.
    @discardableResult
    public func retire(scope: String, below version: UInt32) async throws -> [UInt32] {
        try KeyScope.validate(scope)
        let retired = try await store.retireDataKeys(scope: scope, below: version)
        evictRetired(scope: scope, below: version)
        logger.info("retired data key versions", metadata: ["scope": "\(scope)", "versions": "\(retired.count)"])
        return retired
    }

    /// Drops cached versions of `scope` below `version` (after another process retired them).
    public func evictRetired(scope: String, below version: UInt32) {
        let exact = ExactScope(scope)
        state.withLock { s in
            for ck in s.cache.keys where ck.scope == exact && ck.version < version { s.cache.removeValue(forKey: ck) }
            if let current = s.current[exact], current < version { s.current.removeValue(forKey: exact) }
            if let minted = s.minted[exact], minted.key.version < version { s.minted.removeValue(forKey: exact) }
        }
    }

    /// The newest stored version of `scope`'s data key, read from the store (not the cache: a
    /// rotation by another process counts), and that key.
    /// - Throws: ``KeyManagementError/Code/shredded``, ``KeyManagementError/Code/keyNotFound``
    ///   for a scope that never had a key, ``KeyManagementError/Code/keyUnavailable``.
    public func newestKey(scope: String) async throws -> DataKey {
        try KeyScope.validate(scope)
        let stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        guard let newest = stored.max(by: { $0.version < $1.version }) else {
            if let t = try await store.tombstone(scope: scope) {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            throw KeyManagementError(.keyNotFound, "the scope has no data key", scope: scope)
        }
        return try await readKey(scope: scope, version: newest.version)
    }

    /// The stored versions of `scope`'s data key, lowest first (empty for none).
    public func storedVersions(scope: String) async throws -> [UInt32] {
        try KeyScope.validate(scope)
        return try Keyring.only(scope, try await store.dataKeys(scope: scope)).map(\.version).sorted()
    }
}
