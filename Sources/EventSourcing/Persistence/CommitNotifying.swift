import Synchronization

/// A recorder that wakes the notification log's subscribers when it commits, so a
/// subscription (``NotificationLog/subscribe(after:topics:pageSize:pollInterval:)``) sees a
/// new item at once instead of at its next poll.
///
/// A recorder signals ``commitSignal`` after every commit that may have added notifications
/// (a signal too many costs a subscriber one empty read; one too few delays it until its next
/// poll). Commits the recorder cannot see (another process writing the same database, a lost
/// database notification) are found by polling: a subscriber reads again at least every
/// ``commitPollInterval``.
///
/// Recorders that do not adopt this protocol are polled at the subscription's `pollInterval`.
public protocol CommitNotifying: Sendable {
    /// Signalled after each commit. Reading it may start the recorder's own wake-up machinery
    /// (PostgreSQL: a LISTEN connection).
    var commitSignal: CommitSignal { get }

    /// The longest a subscriber waits for ``commitSignal`` before it reads the log again
    /// anyway: the bound on how late a commit the signal does not see is noticed. Nil when
    /// every commit signals (an in-process store nobody else writes to).
    var commitPollInterval: Duration? { get }
}

/// Wakes the tasks that wait for a commit: a generation counter that ``signal()`` moves on,
/// and the waiters of the generation before.
///
/// A waiter reads ``generation`` *before* it reads the log, and then waits with
/// ``wait(since:timeout:)`` for it to move on: a commit between the read and the wait is not
/// lost (the generation has moved already, so the wait returns at once).
public final class CommitSignal: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// Creates a signal at generation 0.
    public init() {}

    /// How many times ``signal()`` was called (wrapping).
    public var generation: UInt64 { state.withLock { $0.generation } }

    /// How many tasks wait now (for tests and statistics).
    public var waiting: Int { state.withLock { $0.waiters.count } }

    /// Moves the generation on and wakes every waiter. Cheap when nobody waits (one lock).
    public func signal() {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.generation &+= 1
            guard !s.waiters.isEmpty else { return [] }
            let w = Array(s.waiters.values)
            s.waiters.removeAll(keepingCapacity: true)
            return w
        }
        for c in woken { c.resume() }
    }

    /// Returns once ``generation`` differs from `seen`, when `timeout` has passed (nil: no
    /// timeout), or when the task is cancelled, whichever comes first. Never throws: the
    /// caller checks `Task.isCancelled`.
    public func wait(since seen: UInt64, timeout: Duration?) async {
        guard let timeout else { return await waitForChange(since: seen) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitForChange(since: seen) }
            group.addTask { await Self.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    /// The longest single sleep of a timeout. A cancelled `Task.sleep` returns at once, but the
    /// runtime keeps its timer (and what it holds) until the original deadline: a wait with a
    /// long timeout that a commit ends early left ~0.7 kB behind for the whole timeout, and a
    /// runner that waits once per batch grew by that every batch (`esbench --growth`). Sleeping
    /// in slices bounds what a cancelled wait leaves to one slice.
    static let sleepSlice: Duration = .seconds(1)

    /// Sleeps for `timeout` in slices of at most ``sleepSlice``; returns early when cancelled.
    static func sleep(for timeout: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while !Task.isCancelled {
            let left = clock.now.duration(to: deadline)
            guard left > .zero else { return }
            try? await Task.sleep(for: min(left, sleepSlice))
        }
    }

    private func waitForChange(since seen: UInt64) async {
        let id = state.withLock { s -> UInt64 in
            s.nextWaiter &+= 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                // A cancellation before this point set the flag first, so it is seen here; one
                // after it finds the continuation in the table.
                let now = state.withLock { s -> Bool in
                    if s.generation != seen || Task.isCancelled { return true }
                    s.waiters[id] = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
