import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Group commit: concurrent saves queue up and one task commits them, a group per round trip.
extension PostgresStore {
    struct PendingSaves {
        var queue: [PendingSave] = []
        var draining = false
        /// The current committer; a committer replaced after its deadline stops at its next step.
        var drainer: UInt64 = 0
        /// The group commit waiting for this many queued saves (see ``gather(_:)``).
        var gathering: (count: Int, continuation: CheckedContinuation<Void, Never>)?
    }

    /// How long a group commit waits for the writers of the previous group to queue again.
    static let gatherWindow: TimeAmount = .microseconds(600)

    struct PendingSave: Sendable {
        var events: [StoredEvent]
        var keys: [WrappedDataKey]
        var continuation: CheckedContinuation<[Int64], any Error>
        var enqueued: ContinuousClock.Instant
    }

    /// Waits until `count` saves are queued, or ``gatherWindow`` has passed. After a group of
    /// several saves, its writers were just answered and are encoding their next saves; waiting
    /// for them briefly keeps the groups large (one commit and fsync for all of them).
    func gather(_ count: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let waiting = pending.withLock { p -> Bool in
                guard p.queue.count < count else { return false }
                p.gathering = (count, c)
                return true
            }
            guard waiting else { return c.resume() }
            executor.loop.scheduleTask(in: PostgresStore.gatherWindow) { [self] in
                self.pending.withLock { p -> CheckedContinuation<Void, Never>? in
                    defer { p.gathering = nil }
                    return p.gathering?.continuation
                }?.resume()
            }
        }
    }

    /// Commits queued saves group by group in one task (`draining` must already be set). A group
    /// that runs past the operation timeout fails its callers, cancels that task (which gives up
    /// a wait for a pool connection) and hands the queue to a new task at once: a query stuck on
    /// a dead connection may not notice the cancellation, and the saves behind it must not wait.
    func startDraining() {
        let id = pending.withLock { p -> UInt64 in
            p.drainer &+= 1
            return p.drainer
        }
        let handle = CancelHandle()
        handle.set(Task(executorPreference: executor) { await self.drain(id, handle) })
    }

    /// Called when a group of committer `id` timed out: a new committer takes over, unless one already did.
    private func replaceDrainer(_ id: UInt64) {
        if pending.withLock({ $0.drainer == id }) { startDraining() }
    }

    private func drain(_ id: UInt64, _ handle: CancelHandle) async {
        var lastGroup = 0
        while true {
            if lastGroup > 1 { await gather(lastGroup) }
            let taken = pending.withLock { p -> [PendingSave]? in
                guard p.drainer == id else { return nil }   // replaced: the new committer goes on
                // At most ~5,000 events per round trip; the rest wait for the next one.
                var n = 0
                var k = 0
                while k < p.queue.count, n < 5_000 {
                    n += p.queue[k].events.count
                    k += 1
                }
                let b = Array(p.queue.prefix(k))
                p.queue.removeFirst(k)
                if b.isEmpty { p.draining = false }
                return b
            }
            guard let batch = taken, !batch.isEmpty else { return }
            let waiters = Waiters(batch.map(\.continuation))
            let token = groupDeadline(oldest: batch.map(\.enqueued).min(), waiters, handle,
                                      outcome: "the save's outcome is unknown") { [weak self] in self?.replaceDrainer(id) }
            await commit(batch, waiters)
            deadlines.remove(token)
            lastGroup = batch.count
        }
    }
}
