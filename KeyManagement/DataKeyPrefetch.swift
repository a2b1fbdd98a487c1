import Synchronization

/// Data keys a store read together with the records that need them, kept for the key ring's
/// next cache miss on them (``KeyStore/dataKeys(scope:reading:)``): a repository get then costs
/// one read of the store instead of two.
///
/// Keys must never be older than the records being read, so: a read takes ``start()`` before
/// it reads, and ``keep(_:startedAt:)`` keeps nothing if any local change to keys happened since
/// (``forget(_:)``/``forgetAll()`` bump the generation); an entry answers one miss, within
/// ``lifetime`` of its read, and only if it holds the version asked for.
package final class DataKeyPrefetch: Sendable {
    private struct State {
        // Keyed by exact bytes: canonically equivalent spellings are different scopes.
        var byScope: [ExactScope: (keys: [WrappedDataKey], at: ContinuousClock.Instant)] = [:]
        var generation: UInt64 = 0
    }

    private let state = Mutex(State())
    /// How long kept keys may answer a miss; a key ring asks within microseconds of the read.
    package let lifetime: Duration
    /// At most this many scopes are kept (a reader whose key ring never misses fills it up).
    package let capacity: Int

    package init(lifetime: Duration = .seconds(1), capacity: Int = 4_096) {
        self.lifetime = lifetime
        self.capacity = max(1, capacity)
    }

    /// Before a read: when it started, and the generation to hand to ``keep(_:startedAt:)``.
    package func start() -> (at: ContinuousClock.Instant, generation: UInt64) {
        (ContinuousClock.now, state.withLock { $0.generation })
    }

    /// After a read: keeps `keys` unless a local key change happened since `started`.
    package func keep(_ keys: [ExactScope: [WrappedDataKey]], startedAt started: (at: ContinuousClock.Instant, generation: UInt64)) {
        guard !keys.isEmpty else { return }
        state.withLock { s in
            guard s.generation == started.generation else { return }
            if s.byScope.count + keys.count > capacity { s.byScope.removeAll(keepingCapacity: true) }
            for (scope, k) in keys { s.byScope[scope] = (k, started.at) }
        }
    }

    /// The kept keys of `scope` (taken: they answer one miss) if fresh and holding `version`.
    package func take(scope: String, version: UInt32) -> [WrappedDataKey]? {
        state.withLock { s -> [WrappedDataKey]? in
            guard let e = s.byScope.removeValue(forKey: ExactScope(scope)) else { return nil }
            guard ContinuousClock.now - e.at <= lifetime, e.keys.contains(where: { $0.version == version }) else { return nil }
            return e.keys
        }
    }

    /// The kept keys of `scope`, left in place (for tests).
    package func peek(scope: String) -> [WrappedDataKey]? {
        state.withLock { $0.byScope[ExactScope(scope)]?.keys }
    }

    /// Drops the kept keys of scopes this process is changing (a new key, a rotation, a shred);
    /// reads that started before keep none.
    package func forget(_ scopes: [String]) {
        guard !scopes.isEmpty else { return }
        state.withLock { s in
            s.generation &+= 1
            for scope in scopes { s.byScope.removeValue(forKey: ExactScope(scope)) }
        }
    }

    /// Drops every kept key; reads that started before keep none.
    package func forgetAll() {
        state.withLock { s in
            s.generation &+= 1
            s.byScope.removeAll(keepingCapacity: true)
        }
    }
}
