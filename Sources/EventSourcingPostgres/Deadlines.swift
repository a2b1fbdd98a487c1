import Synchronization

/// Operation deadlines for one store, checked by a single background task a few times a second.
///
/// Every query runs under a deadline so nothing waits forever on a dead server (the pool would
/// wait for a connection for as long as it takes). One sleeping timer per query — what this
/// replaced — cost a task, a timer registration and a thread wake-up per query; registering a
/// deadline here is a dictionary insert under a lock. Deadlines fire up to ``granularity`` late.
final class Deadlines: Sendable {
    /// How often expired deadlines are looked for.
    static let granularity: Duration = .milliseconds(100)

    private struct Entry {
        var deadline: ContinuousClock.Instant
        var expire: @Sendable () -> Void
    }

    private struct State {
        var next: UInt64 = 0
        var entries: [UInt64: Entry] = [:]
        var stopped = false
    }

    private let state = Mutex(State())

    /// Registers `expire` to run once `after` has passed, unless ``remove(_:)`` comes first.
    /// Returns nil (and registers nothing) once the checker has stopped.
    func add(after: Duration, expire: @escaping @Sendable () -> Void) -> UInt64? {
        let deadline = ContinuousClock.now + after
        return state.withLock { s -> UInt64? in
            guard !s.stopped else { return nil }
            s.next &+= 1
            s.entries[s.next] = Entry(deadline: deadline, expire: expire)
            return s.next
        }
    }

    func remove(_ token: UInt64?) {
        guard let token else { return }
        _ = state.withLock { $0.entries.removeValue(forKey: token) }
    }

    /// Runs expired entries (outside the lock). Returns false once stopped.
    func fireExpired(now: ContinuousClock.Instant = .now) -> Bool {
        let (expired, running) = state.withLock { s -> ([@Sendable () -> Void], Bool) in
            guard !s.entries.isEmpty else { return ([], !s.stopped) }
            var out: [@Sendable () -> Void] = []
            for (k, e) in s.entries where e.deadline <= now {
                out.append(e.expire)
                s.entries.removeValue(forKey: k)
            }
            return (out, !s.stopped)
        }
        for e in expired { e() }
        return running
    }

    /// Stops the checker. Operations still running end with the closed pool's error instead.
    func stop() {
        state.withLock { s in
            s.stopped = true
            s.entries.removeAll()
        }
    }

    /// The checking loop; runs until ``stop()`` or cancellation.
    static func check(_ deadlines: Deadlines) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: granularity)
            if !deadlines.fireExpired() { return }
        }
    }
}
