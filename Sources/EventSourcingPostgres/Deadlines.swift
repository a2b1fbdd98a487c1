import EventSourcing
import PostgresNIO
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

extension PostgresStore {
    /// Runs `body`, failing with `.databaseUnavailable` after the operation timeout instead of hanging.
    func timed<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        let timeout = configuration.operationTimeout
        let waiters = Waiters<T>()
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            waiters.set([c])
            let handle = CancelHandle()
            // The work runs in a task of its own so the timeout can cancel it (which also gives
            // up a wait for a pool connection) and answer the caller at once.
            let token = deadlines.add(after: timeout) {
                guard waiters.fail(EventSourcingError(.databaseUnavailable,
                    "PostgreSQL did not answer within \(timeout); the operation's outcome is unknown")) else { return }
                handle.cancel()
            }
            handle.set(Task(executorPreference: executor) {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                self.deadlines.remove(token)
                waiters.resume { _ in result }
            })
        }
    }

    /// Runs a query through the pool with the operation timeout and typed errors. The timeout
    /// matters most while the server is down: the pool would otherwise wait for a connection
    /// for as long as it takes (statement_timeout only bounds statements that reached it).
    func run<T: Sendable>(_ body: @escaping @Sendable (PostgresClient) async throws -> T) async throws -> T {
        do {
            return try await timed { try await body(self.client) }
        } catch {
            throw PostgresStore.translate(error, configuration: configuration)
        }
    }

    /// Registers the deadline of a group of saves or reads: its oldest member's start plus the
    /// operation timeout (so one queued behind a stuck group still fails on time). When it
    /// passes, the group's callers fail and `handle`'s task is cancelled.
    /// Only a deadline that fails the group does anything: one that fires just after the group
    /// finished leaves the task (by then on its next group) alone.
    func groupDeadline<T: Sendable>(oldest: ContinuousClock.Instant?, _ waiters: Waiters<T>, _ handle: CancelHandle,
                                    outcome: String, replace: @escaping @Sendable () -> Void) -> UInt64? {
        let timeout = configuration.operationTimeout
        return deadlines.add(after: (oldest ?? .now) + timeout - .now) {
            guard waiters.fail(EventSourcingError(.databaseUnavailable,
                                                  "PostgreSQL did not answer within \(timeout); \(outcome)")) else { return }
            replace()
            handle.cancel()
        }
    }
}

/// Continuations resumed exactly once, by whichever of the work and its deadline comes first.
final class Waiters<T: Sendable>: Sendable {
    private let slot = Mutex<[CheckedContinuation<T, any Error>]?>(nil)

    init(_ continuations: [CheckedContinuation<T, any Error>]? = nil) {
        slot.withLock { $0 = continuations }
    }

    func set(_ continuations: [CheckedContinuation<T, any Error>]) {
        slot.withLock { $0 = continuations }
    }

    /// Resumes continuation `i` with `result(i)`, unless already failed by the deadline.
    /// Returns false if the deadline had already failed them.
    @discardableResult
    func resume(_ result: (Int) -> Result<T, any Error>) -> Bool {
        guard let all = slot.withLock({ $0.take() }) else { return false }
        for (i, c) in all.enumerated() { c.resume(with: result(i)) }
        return true
    }

    /// Returns false if they were already resumed.
    @discardableResult
    func fail(_ error: any Error) -> Bool {
        guard let all = slot.withLock({ $0.take() }) else { return false }
        for c in all { c.resume(throwing: error) }
        return true
    }
}

/// Cancels a task that may not have been created yet when cancellation is asked for.
final class CancelHandle: Sendable {
    private let state = Mutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))

    func set(_ task: Task<Void, Never>) {
        let cancelled = state.withLock { s -> Bool in
            s.task = task
            return s.cancelled
        }
        if cancelled { task.cancel() }
    }

    func cancel() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.cancelled = true
            return s.task
        }
        task?.cancel()
    }
}
