import Foundation
import Logging
import Synchronization

/// Writing: the current key of a scope, minting its first key, and the persist handshake.
extension Keyring {
    // MARK: Writing

    /// The current data key for `scope`, minting version 1 if the scope never had one.
    /// - Throws: ``KeyManagementError/Code/shredded`` if the scope was shredded (never mints a
    ///   new key for it); ``KeyManagementError/Code/invalidScope``; ``KeyManagementError/Code/keyUnavailable``
    ///   if the current version is wrapped by a master key that is not loaded.
    ///
    /// With `likelyNew` (a scope that was only just created, such as a new aggregate's own id),
    /// version 1 is minted without reading the store first. That is safe because persisting
    /// a key is atomic with the checks: a store refuses it with ``KeyManagementError/Code/keyExists``
    /// if the scope already has a key (then ``invalidate(scope:)`` and ask again without the hint)
    /// and with ``KeyManagementError/Code/shredded`` if the scope was shredded.
    package func writeKey(for scope: String, likelyNew: Bool = false) async throws -> WriteKey {
        let exact = ExactScope(scope)
        // Shreds and rotations made by other processes first (at most once per interval).
        try await refreshKeyChangesIfDue()
        if let hit = cachedCurrent(exact) { return WriteKey(key: hit, pending: nil) }
        if let m = state.withLock({ $0.minted[exact] }) { return WriteKey(key: m.key, pending: m.wrapped) }
        try KeyScope.validate(scope)
        if likelyNew {
            if let when = state.withLock({ $0.shredded[exact] }) {
                throw KeyManagementError(.shredded, "cannot write to a shredded scope", scope: scope, shreddedAt: when)
            }
            return try mintFirst(scope: scope)
        }
        let generation = state.withLock { $0.erasures }
        let stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        if let latest = stored.last {
            let key = try unwrap(latest)
            state.withLock { s in
                // Not cached if a shred was applied meanwhile (the store answered before it).
                guard s.erasures == generation else { return }
                s.put(key)
                s.current[exact] = max(s.current[exact] ?? 0, key.version)
            }
            return WriteKey(key: key, pending: nil)
        }
        if let t = try await store.tombstone(scope: scope) {
            state.withLock { $0.shredded[exact] = t.shreddedAt }
            throw KeyManagementError(.shredded, "cannot write to a shredded scope", scope: scope, shreddedAt: t.shreddedAt)
        }
        return try mintFirst(scope: scope)
    }

    /// Mints version 1 of `scope`'s key, pending until a store persists it.
    private func mintFirst(scope: String) throws -> WriteKey {
        let (key, wrapped) = try mint(scope: scope, version: 1)
        let exact = ExactScope(scope)
        let chosen = state.withLock { s -> (key: DataKey, wrapped: WrappedDataKey) in
            if let earlier = s.minted[exact] { return earlier }   // another task minted meanwhile
            s.minted[exact] = (key, wrapped)
            return (key, wrapped)
        }
        return WriteKey(key: chosen.key, pending: chosen.wrapped)
    }

    /// Records that minted keys were persisted, so later writes use them without a store read.
    package func didPersist(_ keys: [WrappedDataKey], material: [DataKey]) {
        state.withLock { s in
            for k in material where keys.contains(where: { ExactScope.same($0.scope, k.scope) && $0.version == k.version }) {
                let scope = ExactScope(k.scope)
                s.put(k)
                s.current[scope] = max(s.current[scope] ?? 0, k.version)
                if s.minted[scope]?.key.version == k.version { s.minted.removeValue(forKey: scope) }
            }
        }
    }

    /// Persists minted keys through the key store (for recorders that cannot store keys in
    /// the same transaction as events).
    /// - Throws: ``KeyManagementError/Code/keyExists`` if another writer created the scope's key first.
    package func persist(_ pending: [WriteKey]) async throws {
        for w in pending {
            guard let p = w.pending else { continue }
            try await store.insertDataKey(p)
        }
        didPersist(pending.compactMap(\.pending), material: pending.map(\.key))
    }

    /// Forgets everything cached for `scope` (after a conflict, or a change made by another process).
    public func invalidate(scope: String) {
        state.withLock { s in
            s.evict(ExactScope(scope))
            s.erasures &+= 1
        }
    }

    /// A counter that moves on every shred through this keyring and every
    /// ``invalidate(scope:)`` (a change another process made): a cache of data decrypted with
    /// this keyring's keys (an application's aggregate cache) that was filled at an older
    /// value may hold what a shred has erased since, and must be read afresh.
    public var shredGeneration: UInt64 { state.withLock { $0.erasures } }
}
