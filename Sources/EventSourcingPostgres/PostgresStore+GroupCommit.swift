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
        /// The groups being committed (one, or more while a timed-out one is still stuck).
        var flights: [UInt64: Flight] = [:]
        var nextFlight: UInt64 = 0
    }

    /// How long a group commit waits for the writers of the previous group to queue again.
    static let gatherWindow: TimeAmount = .microseconds(600)

    struct PendingSave: Sendable {
        var events: [StoredEvent]
        var keys: [WrappedDataKey]
        var continuation: CheckedContinuation<[Int64], any Error>
        var enqueued: ContinuousClock.Instant
        /// Set when the caller's task is cancelled.
        var flag: CancelFlag
    }

    /// A save's caller was cancelled. A save still queued is withdrawn (it throws
    /// `CancellationError` and nothing of it is sent). A save already sent in a group cannot be
    /// withdrawn alone: once every caller of that group has been cancelled, the group's query is
    /// stopped (its task cancelled, which closes the connection, so the server rolls the
    /// statement back) and they throw `CancellationError`; until then it runs on for the
    /// others, and each caller gets its save's outcome (a save that committed says so).
    func cancelSave(_ flag: CancelFlag) {
        flag.set()
        enum Action { case none, withdraw(CheckedContinuation<[Int64], any Error>), stop(Flight) }
        let action = pending.withLock { p -> Action in
            if let i = p.queue.firstIndex(where: { $0.flag === flag }) {
                return .withdraw(p.queue.remove(at: i).continuation)
            }
            for (key, var f) in p.flights where f.members.contains(where: { $0 === flag }) {
                f.live -= 1
                p.flights[key] = f
                return f.live == 0 ? .stop(f) : .none
            }
            return .none
        }
        switch action {
        case .none: break
        case .withdraw(let c): c.resume(throwing: CancellationError())
        case .stop(let f):
            replaceDrainer(f.drainer)
            f.handle.cancel()
        }
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

    /// Called when a group of committer `id` timed out or was cancelled: a new committer takes
    /// over, unless one already did.
    func replaceDrainer(_ id: UInt64) {
        if pending.withLock({ $0.drainer == id }) { startDraining() }
    }

    private func drain(_ id: UInt64, _ handle: CancelHandle) async {
        var lastGroup = 0
        while true {
            if lastGroup > 1 { await gather(lastGroup) }
            let taken = pending.withLock { p -> ([PendingSave], UInt64)? in
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
                if b.isEmpty {
                    p.draining = false
                    return (b, 0)
                }
                p.nextFlight &+= 1
                p.flights[p.nextFlight] = Flight(members: b.map(\.flag), live: b.count, handle: handle, drainer: id)
                return (b, p.nextFlight)
            }
            guard let (batch, flight) = taken, !batch.isEmpty else { return }
            let waiters = Waiters(batch.map(\.continuation))
            let token = groupDeadline(oldest: batch.map(\.enqueued).min(), waiters, handle,
                                      outcome: "the save's outcome is unknown") { [weak self] in self?.replaceDrainer(id) }
            await commit(batch, waiters)
            deadlines.remove(token)
            _ = pending.withLock { $0.flights.removeValue(forKey: flight) }
            lastGroup = batch.count
        }
    }
}

/// A group of saves or reads in flight, for stopping it once all its callers are cancelled.
struct Flight: Sendable {
    let members: [CancelFlag]
    /// Members not cancelled yet.
    var live: Int
    /// The task running the group.
    let handle: CancelHandle
    /// The committer or reader that runs it.
    let drainer: UInt64
}

/// Set once when a caller's task is cancelled.
final class CancelFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
