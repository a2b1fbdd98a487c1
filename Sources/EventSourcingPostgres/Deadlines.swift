import EventSourcing
import NIOCore
import PostgresNIO
import Synchronization

/// Operation deadlines for one store, each a timer on the event loop of the store's connections
/// (`EventLoop.scheduleTask(in:)`), cancelled when its operation finishes first.
///
/// Every query runs under a deadline so nothing waits forever on a dead server (the pool would
/// wait for a connection for as long as it takes). Deadlines are registered from the store's
/// tasks, which run on that event loop: scheduling and cancelling a timer there is a heap
/// insert and removal on the loop's own thread, with no wake-up of another thread. A deadline
/// fires when its time comes (within the loop's timer resolution), not at the next poll.
final class Deadlines: Sendable {
    /// A registered deadline; ``Deadlines/remove(_:)`` cancels its timer.
    struct Token: Sendable {
        fileprivate let scheduled: Scheduled<Void>
    }

    let loop: any EventLoop
    private let stopped = Atomic<Bool>(false)

    init(loop: any EventLoop) {
        self.loop = loop
    }

    /// Registers `expire` to run on the event loop once `after` has passed, unless
    /// ``remove(_:)`` comes first. Returns nil (and registers nothing) once stopped.
    func add(after: Duration, expire: @escaping @Sendable () -> Void) -> Token? {
        guard !stopped.load(ordering: .relaxed) else { return nil }
        let c = after.components
        // Saturating: a huge timeout is "never" rather than a trap.
        let (whole, o1) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (ns, o2) = whole.addingReportingOverflow(c.attoseconds / 1_000_000_000)
        let delay: TimeAmount = o1 || o2 ? .nanoseconds(.max) : .nanoseconds(max(0, ns))
        return Token(scheduled: loop.scheduleTask(in: delay) { [self] in
            if !stopped.load(ordering: .relaxed) { expire() }
        })
    }

    /// Cancels the timer of `token` (nothing happens if it has fired).
    func remove(_ token: Token?) {
        token?.scheduled.cancel()
    }

    /// Stops: later deadlines are not registered, and timers still pending do nothing when they
    /// fire. Operations still running end with the closed pool's error instead.
    func stop() {
        stopped.store(true, ordering: .relaxed)
    }
}

extension PostgresStore {
    /// Runs `body`, failing with `.databaseUnavailable` after the operation timeout instead of
    /// hanging. A cancelled caller cancels `body`'s task (see ``run(_:)``, which then closes the
    /// connection so the server stops the query) and gets `CancellationError`, unless the work
    /// finished first.
    func timed<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        let timeout = configuration.operationTimeout
        let waiters = Waiters<T>()
        let handle = CancelHandle()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
                waiters.set([c])
                // The work runs in a task of its own, on the connections' event loop, so the
                // timeout can cancel it (which also gives up a wait for a pool connection) and
                // answer the caller at once; its timer is set and cancelled on that loop.
                handle.set(Task(executorPreference: executor) {
                    let token = self.deadlines.add(after: timeout) {
                        guard waiters.fail(EventSourcingError(.databaseUnavailable,
                            "PostgreSQL did not answer within \(timeout); the operation's outcome is unknown")) else { return }
                        handle.cancel()
                    }
                    let result: Result<T, any Error>
                    do { result = .success(try await body()) } catch {
                        // Cancelled by the caller (the deadline has answered it already otherwise).
                        result = .failure(Task.isCancelled ? CancellationError() : error)
                    }
                    self.deadlines.remove(token)
                    waiters.resume { _ in result }
                })
            }
        } onCancel: {
            handle.cancel()
        }
    }

    /// Runs a query through the pool with the operation timeout and typed errors. The timeout
    /// matters most while the server is down: the pool would otherwise wait for a connection
    /// for as long as it takes (statement_timeout only bounds statements that reached it).
    func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await timed { try await self.withCancellableConnection(body) }
        } catch {
            throw PostgresStore.translate(error, configuration: configuration)
        }
    }

    /// Leases a connection for `body`. If the task is cancelled while `body` runs, the
    /// connection is closed: postgres-nio (1.33) does not stop a running query when its task is
    /// cancelled, and the server ends a query whose client has gone (at once when the backend
    /// is writing to it; while it computes or waits, within `client_connection_check_interval`,
    /// which this store's own connections set, see ``clientConfiguration(for:)``). The
    /// transaction is rolled back, so a cancelled write writes nothing. The pool opens a new
    /// connection in its place.
    func withCancellableConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await client.withConnection { connection in
            let closing = Mutex<EventLoopFuture<Void>?>(nil)
            let result: Result<T, any Error>
            do {
                result = .success(try await withTaskCancellationHandler {
                    try await body(connection)
                } onCancel: {
                    closing.withLock { $0 = connection.close() }
                })
            } catch {
                result = .failure(error)
            }
            // A connection closed by a cancellation goes back to the pool only once it is
            // closed, so the pool drops it instead of lending it, half-closed, to the next call.
            if let closed = closing.withLock({ $0 }) { try? await closed.get() }
            return try result.get()
        }
    }

    /// Registers the deadline of a group of saves or reads: its oldest member's start plus the
    /// operation timeout (so one queued behind a stuck group still fails on time). When it
    /// passes, the group's callers fail and `handle`'s task is cancelled.
    /// Only a deadline that fails the group does anything: one that fires just after the group
    /// finished leaves the task (by then on its next group) alone.
    func groupDeadline<T: Sendable>(oldest: ContinuousClock.Instant?, _ waiters: Waiters<T>, _ handle: CancelHandle,
                                    outcome: String, replace: @escaping @Sendable () -> Void) -> Deadlines.Token? {
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
