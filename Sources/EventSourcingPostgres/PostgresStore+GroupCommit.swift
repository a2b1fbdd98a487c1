import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Group commit: concurrent saves queue up (in ``PostgresStore/saveQueue``, a `BatchingQueue`)
/// and one task commits them, a group per round trip.
extension PostgresStore {
    /// The committer task and the groups it is committing; the saves waiting for a group are in
    /// ``PostgresStore/saveQueue``.
    struct PendingSaves {
        /// The current committer; a committer replaced after its deadline stops at its next step.
        var drainer: UInt64 = 0
        /// The groups being committed (one, or more while a timed-out one is still stuck).
        var flights: [UInt64: Flight] = [:]
        var nextFlight: UInt64 = 0
    }

    /// How long a group commit waits for the writers of the previous group to queue again.
    static let gatherWindow: TimeAmount = .microseconds(600)

    /// At most this many events per group commit (one round trip); the saves after them wait
    /// for the next group.
    static let eventsPerGroup = 5_000

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
        if withdrawSave(flag) { return }
        enum Action { case none, stop(Flight) }
        let action = pending.withLock { p -> Action in
            guard let f = p.flights.values.first(where: { f in f.members.contains { $0 === flag } }) else { return .none }
            return f.allCancelled ? .stop(f) : .none
        }
        switch action {
        case .none: break
        case .stop(let f):
            replaceDrainer(f.drainer)
            f.handle.cancel()
        }
    }

    /// Withdraws a queued save, failing it with `CancellationError`. Returns false if it is not
    /// waiting (a group has it, or it was withdrawn already).
    @discardableResult
    func withdrawSave(_ flag: CancelFlag) -> Bool {
        let removed = saveQueue.removeWaiting { $0.flag === flag }
        for r in removed { r.continuation.resume(throwing: CancellationError()) }
        return !removed.isEmpty
    }

    /// Waits until `count` saves are queued, or ``gatherWindow`` has passed. After a group of
    /// several saves, its writers were just answered and are encoding their next saves; waiting
    /// for them briefly keeps the groups large (one commit and fsync for all of them).
    func gather(_ count: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            // Resumed once: by the queue when `count` saves wait, or by the timer (which only
            // resumes if it removed the watcher first, so never both).
            guard let token = saveQueue.notify(whenWaiting: count, { c.resume() }) else { return c.resume() }
            executor.loop.scheduleTask(in: PostgresStore.gatherWindow) { [saveQueue] in
                if saveQueue.cancelNotify(token) { c.resume() }
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
            // Replaced after a timeout or cancellation: the new committer goes on.
            guard pending.withLock({ $0.drainer == id }) else { return }
            let batch = saveQueue.nextBatch(maxWeight: PostgresStore.eventsPerGroup) { $0.events.count }
            if batch.isEmpty { return }   // the queue made this task no longer the committer
            let flight = pending.withLock { p -> UInt64 in
                p.nextFlight &+= 1
                p.flights[p.nextFlight] = Flight(members: batch.map(\.flag), handle: handle, drainer: id)
                return p.nextFlight
            }
            // Every caller was cancelled while the group was being taken (cancelSave found it in neither place).
            if batch.allSatisfy(\.flag.isSet) {
                replaceDrainer(id)
                handle.cancel()
            }
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
    /// The task running the group.
    let handle: CancelHandle
    /// The committer or reader that runs it.
    let drainer: UInt64
    /// Whether every caller of the group was cancelled.
    var allCancelled: Bool { members.allSatisfy(\.isSet) }
}

/// Set once when a caller's task is cancelled.
final class CancelFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
