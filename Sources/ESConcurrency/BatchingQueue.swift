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
        /// Called once `waiting` reaches `count` (see ``notify(whenWaiting:_:)``).
        @usableFromInline var watcher: (count: Int, token: UInt64, wake: @Sendable () -> Void)?
        @usableFromInline var nextToken: UInt64 = 0
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
        let (admission, wake) = state.withLock { s -> (Admission, (@Sendable () -> Void)?) in
            if s.closed { return (.closed, nil) }
            if s.waiting.count >= maxWaiting { return (.full, nil) }
            s.waiting.append(element)
            var wake: (@Sendable () -> Void)?
            if let w = s.watcher, s.waiting.count >= w.count {
                wake = w.wake
                s.watcher = nil
            }
            if s.draining { return (.queued, wake) }
            s.draining = true
            return (.startDraining, wake)
        }
        wake?()
        return admission
    }

    /// For the drainer, between batches: calls `wake` (once, on the enqueuing thread) as soon as
    /// `count` requests wait, so it can take a larger batch than the ones waiting now (group
    /// commit: the writers just answered are about to save again). Returns nil, registering
    /// nothing, if `count` already wait; otherwise a token for ``cancelNotify(_:)``, which the
    /// drainer calls when it stops waiting (a timer). One watcher at a time: a new one replaces
    /// the last.
    package func notify(whenWaiting count: Int, _ wake: @escaping @Sendable () -> Void) -> UInt64? {
        state.withLock { s in
            guard s.waiting.count < count else { return nil }
            s.nextToken &+= 1
            s.watcher = (count, s.nextToken, wake)
            return s.nextToken
        }
    }

    /// Removes the watcher `token` registered; true if it was still registered (its `wake` was
    /// not called and now never will be).
    @discardableResult
    package func cancelNotify(_ token: UInt64) -> Bool {
        state.withLock { s in
            guard let w = s.watcher, w.token == token else { return false }
            s.watcher = nil
            return true
        }
    }

    /// For the drainer: takes the waiting requests in arrival order, at most `limit` of them.
    /// An empty result means nothing was waiting: the caller is no longer the drainer and must
    /// stop (the next ``enqueue(_:)`` makes a new one).
    @inlinable
    public func nextBatch(limit: Int = .max) -> [Element] {
        nextBatch(limit: limit, maxWeight: nil, weight: { _ in 0 })
    }

    /// Like ``nextBatch(limit:)``, and the batch's total `weight` (e.g. events per save) stays
    /// within `maxWeight`: requests are taken while the total so far is below it, so a batch
    /// always has at least one request however heavy.
    @inlinable
    public func nextBatch(limit: Int = .max, maxWeight: Int?, weight: (Element) -> Int) -> [Element] {
        let (batch, idle) = state.withLock { s -> ([Element], [CheckedContinuation<Void, Never>]) in
            if s.waiting.isEmpty {
                s.draining = false
                let idle = s.idle
                s.idle = []
                return ([], idle)
            }
            var n = min(max(1, limit), s.waiting.count)
            if let maxWeight {
                var total = 0
                var k = 0
                while k < n, k == 0 || total < maxWeight {
                    total &+= max(0, weight(s.waiting[k]))
                    k += 1
                }
                n = k
            }
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
