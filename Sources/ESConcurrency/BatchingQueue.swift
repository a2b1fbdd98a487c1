import Synchronization

/// A queue whose requests are served in batches: requests that arrive while a batch is in
/// flight accumulate, and the next batch takes them all (group commit, grouped reads).
///
/// The queue runs nothing itself. The caller whose ``enqueue(_:)`` returns
/// ``Admission/startDraining`` becomes the drainer: it (or a thread or task it starts) calls
/// ``nextBatch(limit:)`` until it returns an empty batch, which hands the drainer role back.
/// At most one drainer exists at a time, so batches never overlap.
///
/// ```swift
/// switch queue.enqueue(request) {
/// case .startDraining: writerThread.async { while case let b = queue.nextBatch(), !b.isEmpty { run(b) } }
/// case .queued: break                      // the drainer will take it
/// case .full, .closed: request.fail(…)     // refused: nothing of it runs
/// }
/// ```
///
/// At most `maxWaiting` requests wait (those of the batch in flight do not count): past that
/// ``enqueue(_:)`` answers ``Admission/full`` instead of queueing, so a store that cannot keep
/// up refuses work instead of holding unbounded memory.
// `public` rather than `package`, with `@inlinable` hot paths: see ResourcePool (the optimizer
// specializes inlinable public generics in client modules, not package ones). No product.
public final class BatchingQueue<Element: Sendable>: Sendable {
    /// What ``enqueue(_:)`` did with a request.
    public enum Admission: Sendable, Equatable {
        /// Queued, and no batch was in flight: the caller is now the drainer.
        case startDraining
        /// Queued behind the batch in flight: the current drainer takes it.
        case queued
        /// Refused: `maxWaiting` requests are already waiting.
        case full
        /// Refused: the queue is closed.
        case closed
    }

    @usableFromInline
    struct State: ~Copyable {
        @usableFromInline var waiting: [Element] = []
        @usableFromInline var draining = false
        @usableFromInline var closed = false
        @usableFromInline var idle: [CheckedContinuation<Void, Never>] = []
        @usableFromInline init() {}
    }

    @usableFromInline let state = Mutex(State())
    /// The most requests that wait at once.
    public let maxWaiting: Int

    /// A queue that lets at most `maxWaiting` (at least 1) requests wait.
    package init(maxWaiting: Int) {
        self.maxWaiting = max(1, maxWaiting)
    }

    /// Queues `element` (see ``Admission``).
    @inlinable
    public func enqueue(_ element: Element) -> Admission {
        state.withLock { s in
            if s.closed { return .closed }
            if s.waiting.count >= maxWaiting { return .full }
            s.waiting.append(element)
            if s.draining { return .queued }
            s.draining = true
            return .startDraining
        }
    }

    /// For the drainer: takes the waiting requests in arrival order, at most `limit` of them.
    /// An empty result means nothing was waiting: the caller is no longer the drainer and must
    /// stop (the next ``enqueue(_:)`` makes a new one).
    @inlinable
    public func nextBatch(limit: Int = .max) -> [Element] {
        let (batch, idle) = state.withLock { s -> ([Element], [CheckedContinuation<Void, Never>]) in
            if s.waiting.isEmpty {
                s.draining = false
                let idle = s.idle
                s.idle = []
                return ([], idle)
            }
            let n = min(max(1, limit), s.waiting.count)
            if n == s.waiting.count {
                let all = s.waiting
                s.waiting = []
                return (all, [])
            }
            let first = Array(s.waiting[..<n])
            s.waiting.removeFirst(n)
            return (first, [])
        }
        for c in idle { c.resume() }
        return batch
    }

    /// Removes the waiting requests that match `predicate` (a request cancelled before its batch
    /// was taken) and returns them; a request already taken by the drainer is not among them.
    package func removeWaiting(where predicate: (Element) -> Bool) -> [Element] {
        state.withLock { s in
            var removed: [Element] = []
            s.waiting.removeAll { e in
                guard predicate(e) else { return false }
                removed.append(e)
                return true
            }
            return removed
        }
    }

    /// The requests waiting for a batch (not those of the batch in flight).
    package var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Whether a drainer is running.
    package var isDraining: Bool { state.withLock { $0.draining } }

    /// Refuses every later request (``Admission/closed``) and returns once no batch is in flight:
    /// the requests queued before the call are served first. Suspends without polling; returns at
    /// once when the queue is idle.
    package func close() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let idleNow = state.withLock { s -> Bool in
                s.closed = true
                if !s.draining { return true }
                s.idle.append(c)
                return false
            }
            if idleNow { c.resume() }
        }
    }
}
