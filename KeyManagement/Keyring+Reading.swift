import Foundation
import Logging
import Synchronization

/// Reading: any version of a scope's key, through the cache.
extension Keyring {
    // MARK: Reading

    /// The data key `version` of `scope`.
    /// - Throws: ``KeyManagementError/Code/shredded`` (with the time) if the scope was shredded;
    ///   ``KeyManagementError/Code/keyNotFound`` if no such version exists;
    ///   ``KeyManagementError/Code/keyUnavailable`` if its master key is not loaded.
    public func readKey(scope: String, version: UInt32) async throws -> DataKey {
        let exact = ExactScope(scope)
        // Shreds and retirements made by other processes first (at most once per interval).
        try await refreshKeyChangesIfDue()
        if let hit = state.withLock({ $0.get(exact, version) }) {
            instruments.cacheHit()
            return hit
        }
        instruments.cacheMiss()
        try KeyScope.validate(scope)
        if let when = state.withLock({ $0.shredded[exact] }) {
            throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, keyVersion: version, shreddedAt: when)
        }
        // A shred applied while the store is read makes what it returns stale: not cached then.
        let generation = state.withLock { $0.erasures }
        var stored = try await store.dataKeys(scope: scope, reading: version)
        if stored.contains(where: { !ExactScope.same($0.scope, scope) }) {
            // An answer from keys read ahead that mixed up canonically equivalent spellings (a
            // cache keyed by `String`): ask the store's own look-up, which must be exact.
            stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        }
        guard let record = stored.first(where: { $0.version == version }) else {
            if let t = try await store.tombstone(scope: scope) {
                state.withLock { $0.shredded[exact] = t.shreddedAt }
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, keyVersion: version, shreddedAt: t.shreddedAt)
            }
            // Versions are numbered from 1 and only retiring removes the lowest ones: a version
            // from 1 up to below the lowest one stored was retired (the scope's minimum
            // decryption version). Version 0 never existed.
            if let lowest = stored.map(\.version).min(), version >= 1, version < lowest {
                throw KeyManagementError(.keyRetired,
                    "data key v\(version) of the scope was retired (its minimum decryption version is v\(lowest))",
                    scope: scope, keyVersion: version)
            }
            throw KeyManagementError(.keyNotFound, "no such data key", scope: scope, keyVersion: version)
        }
        let key = try unwrap(record)
        state.withLock { s in if s.erasures == generation { s.put(key) } }
        return key
    }

    /// Tells the store which keys ``readKey(scope:version:)`` is about to need (the records of a
    /// page of the log), leaving out those cached or known shredded, so a store that reads
    /// keys in batches reads them in one call (``KeyStore/prefetchDataKeys(scopes:)``). Only a
    /// hint: a failure here is ignored, and each read still checks and reports its own key.
    public func prefetch(_ wanted: [(scope: String, version: UInt32)]) async {
        guard wanted.count > 1 else { return }
        var seen = Set<ExactScope>()
        let missing = state.withLock { s -> [String] in
            var out: [String] = []
            for (scope, version) in wanted {
                let exact = ExactScope(scope)
                guard s.cache[CacheKey(scope: exact, version: version)] == nil, s.shredded[exact] == nil,
                      seen.insert(exact).inserted else { continue }
                out.append(scope)
            }
            return out
        }
        guard !missing.isEmpty else { return }
        try? await store.prefetchDataKeys(scopes: missing)
    }
}
