import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs a ``Projection``: follows the application's notification log from the projection's
/// tracking position and hands it every notification, in log order, in the transactions of a
/// ``ProjectionStore``.
///
/// - **Resumes exactly.** The position is the tracking record the store keeps for the
///   projection's name. With the SQLite or PostgreSQL store as the ``ProjectionStore``, the
///   view's writes and the new position commit in one transaction: each notification is
///   processed exactly once, whenever the process stops. With ``AtLeastOnceProjectionStore``
///   the position is written after the view: at least once.
/// - **Catches up in batches, then follows live.** Up to ``batchSize`` notifications are read
///   (and decrypted) at a time and applied in one transaction; while a full batch is applied,
///   the next one is read (at most two batches in memory); once the log has nothing new, it
///   waits on ``NotificationLog/subscribe(after:topics:pageSize:pollInterval:)`` (woken at once
///   by an in-process commit, or at the recorder's polling bound) and goes on from there.
/// - **Erasure reaches the view.** An erasure record calls ``Projection/erase(keyScope:in:)``
///   (also when ``Projection/topics`` does not name it); a shredded event is skipped (the
///   position moves past it) and never stops the runner.
/// - **Stops on a failure, loses nothing.** When the projection throws, ``run()`` throws
///   `.projectionFailed` naming the projection and the notification; the position stays before
///   that notification (the steps before it in its batch are kept), so running again retries it.
///   An unreadable record (`.integrityFailure`, `.keyUnavailable`, …) stops it the same way,
///   with that error. The error's underlying cause is kept in ``lastFailure``.
///
/// Run it as a task (`try await runner.run()`, cancelled to stop) or in a
/// swift-service-lifecycle `ServiceGroup` (it stops on graceful shutdown). One runner per
/// projection name at a time: a second `run()` of the same runner is refused, and a second
/// runner of the same name on another process fails with `.trackingConflict` at its first
/// commit on a store that shares transactions (SQLite, PostgreSQL).
public final class ProjectionRunner<P: Projection>: Sendable {
    /// The projection.
    public let projection: P
    /// The application whose log is followed.
    public let application: Application
    /// Where the view lives and the position is kept.
    public let store: any ProjectionStore<P.Context>
    /// The most notifications read and applied in one transaction (1 to 10,000).
    public let batchSize: Int
    let logger: Logger

    private struct State {
        /// Whether ``run()`` (or ``reset()``) is under way.
        var running = false
        /// The position known in this process (nil before the first run read it).
        var position: Int64?
        /// The error that stopped the last run, and its cause.
        var failure: EventSourcingError?
        var cause: (any Error)?
        /// How many runs stopped on a failure (a wait tells a failure during it from an older one).
        var failures = 0
    }

    private let state = Mutex(State())
    /// Signalled whenever the position moves, the runner stops, or it fails.
    private let progress = CommitSignal()

    /// Creates a runner; it does nothing until ``run()``.
    /// - Parameters:
    ///   - application: the application whose notification log is followed.
    ///   - projection: the projection; its name is the tracking name.
    ///   - store: where the view lives and the position is kept: the SQLite or PostgreSQL store
    ///     (exactly once), or ``AtLeastOnceProjectionStore``.
    ///   - batchSize: the most notifications applied in one transaction (1 to 10,000; 100 by
    ///     default). Larger batches catch up faster; a SQLite batch holds the store's writer
    ///     while it runs.
    ///   - logger: where failures are logged (the projection and the notification, never the
    ///     data).
    /// - Throws: `.invalidArgument` for a projection name that is not a tracking name
    ///   (``Tracking/validate(name:)``) or a batch size out of range.
    public init(application: Application, projection: P, store: some ProjectionStore<P.Context>, batchSize: Int = 100,
                logger: Logger = Logger(label: "eventsourcing.projection")) throws {
        try Tracking.validate(name: projection.name)
        guard (1...10_000).contains(batchSize) else {
            throw EventSourcingError(.invalidArgument,
                                     "projection \"\(projection.name)\": the batch size must be 1 to 10,000, got \(batchSize)")
        }
        self.projection = projection
        self.application = application
        self.store = store
        self.batchSize = batchSize
        self.logger = logger
    }

    /// The projection's name.
    public var name: String { projection.name }

    /// The topics read from the log: the projection's, plus the erasure records' (all topics
    /// when the projection names none).
    public var topics: [String] { NotificationLog.followerTopics(projection.topics) }

    /// Whether ``run()`` is under way.
    public var isRunning: Bool { state.withLock { $0.running } }

    /// The cause of the error the last run stopped with (the projection's own error for
    /// `.projectionFailed`), nil when it did not fail. Cleared when a run starts.
    public var lastFailure: (any Error)? { state.withLock { $0.cause } }

    /// The notification id up to which the view holds every notification, as the store records
    /// it; nil for none.
    public var position: Int64? {
        get async throws { try await store.projectionPosition(name) }
    }

    // MARK: Running

    /// Follows the log until the task is cancelled or the service group shuts down gracefully
    /// (then it returns normally, after the batch in flight has committed or been rolled back),
    /// or until it fails.
    /// - Throws: `.projectionFailed` when the projection throws (naming it and the
    ///   notification); the read error of an unreadable notification (naming it);
    ///   `.trackingConflict` when another runner of the same name moved the position first; the
    ///   store's errors; `.invalidArgument` when this runner is already running.
    public func run() async throws {
        try begin()
        defer { end() }
        do {
            try await cancelWhenGracefulShutdown { try await self.follow() }
        } catch is CancellationError {
            return
        } catch {
            if Task.isCancelled, !(error is EventSourcingError) { return }
            fail(error)
            throw state.withLock { $0.failure } ?? error
        }
    }

    /// Deletes the view (``Projection/drop(in:)``) and the tracking position, in one transaction
    /// where the store allows, so the next ``run()`` processes the log from the start. Events
    /// of a scope shredded meanwhile read as shredded then: the rebuilt view never sees them.
    /// - Throws: `.invalidArgument` while the runner runs (stop it first); `.projectionFailed`
    ///   when the drop throws (nothing changed where the store shares transactions); the
    ///   store's errors.
    public func reset() async throws {
        try begin()
        defer { end() }
        let projection = self.projection
        try await viewCall("while dropping its view for a rebuild", resettingTracking: true) { try await projection.drop(in: $0) }
        state.withLock { $0.position = nil }
        logger.notice("projection reset for a rebuild", metadata: ["projection": "\(name)"])
    }

    /// ``reset()``, then ``run()``: rebuilds the view from the start of the log.
    public func rebuild() async throws {
        try await reset()
        try await run()
    }

    private func begin() throws(EventSourcingError) {
        let refused = state.withLock { s -> Bool in
            if s.running { return true }
            s.running = true
            s.failure = nil
            s.cause = nil
            return false
        }
        if refused {
            throw EventSourcingError(.invalidArgument,
                                     "projection \"\(name)\" is already running (or resetting) in this runner: one run at a time")
        }
    }

    private func end() {
        state.withLock { $0.running = false }
        progress.signal()
    }

    private func fail(_ error: any Error) {
        state.withLock { s in
            if s.failure == nil {
                s.failure = error as? EventSourcingError
                    ?? EventSourcingError(.recorderFailure, "projection \"\(name)\" stopped: \(type(of: error))")
                s.cause = error
                s.failures += 1
            }
        }
        progress.signal()
    }

    /// Runs one of the projection's calls outside a notification (set-up, drop) in a transaction
    /// of its store; a throw of the projection's stops the runner as a failure `what`.
    private func viewCall(_ what: String, resettingTracking: Bool,
                          _ call: @escaping @Sendable (P.Context) async throws -> Void) async throws {
        do {
            try await store.projectionTransaction(name, resettingTracking: resettingTracking) { context in
                do { try await call(context) } catch { throw ProjectionCallFailure(error: error) }
            }
        } catch let f as ProjectionCallFailure {
            throw failed(f.error, what: what, notification: nil)
        }
    }

    private func follow() async throws {
        let projection = self.projection
        try await viewCall("while setting up its view", resettingTracking: false) { try await projection.setUp(in: $0) }
        var position = try await store.projectionPosition(name) ?? 0
        publish(position)
        let topics = self.topics
        // How far the log was looked at: with a topic filter, past the position (ids of other
        // topics), so a wake-up does not scan them again (readPage).
        var scanned = position
        // While a full batch is applied, the next one is read (and decrypted) meanwhile: at
        // most two batches in memory. A page read (short) runs in a task of its own that is
        // never cancelled, only awaited: PostgreSQL closes the connection of a cancelled query,
        // which can fail the next call that gets it from the pool; the cancellation is seen
        // once the page is read. A run ends with no read of its own still running.
        var prefetch: Task<FollowerPage, any Error>?
        do {
            try await followLog(from: &position, scanned: &scanned, topics: topics, prefetch: &prefetch)
        } catch {
            if let pending = prefetch { _ = try? await pending.value }
            throw error
        }
    }

    private func followLog(from position: inout Int64, scanned: inout Int64, topics: [String],
                           prefetch: inout Task<FollowerPage, any Error>?) async throws {
        let log = application.notificationLog
        while scanned < Int64.max {
            try Task.checkCancellation()
            let page: FollowerPage
            do {
                let pending = prefetch ?? Task { [scanned] in try await self.readPage(after: scanned, topics: topics) }
                prefetch = nil
                page = try await pending.value
            } catch {
                if Task.isCancelled { throw CancellationError() }
                throw error
            }
            try Task.checkCancellation()
            var items = page.items
            scanned = max(scanned, page.scanned)
            if items.isEmpty {
                // Caught up: wait for the next item to commit, then read on in batches.
                var live = log.subscribe(after: scanned, topics: topics, pageSize: 1).makeAsyncIterator()
                guard let next = try await live.next() else { return }
                items = [next]
            } else if items.count == batchSize, let last = items.last?.notification.id {
                // Applying succeeds only with every item: the next page starts after the last.
                let after = max(scanned, last)
                prefetch = Task { try await self.readPage(after: after, topics: topics) }
            }
            position = try await apply(items, after: position)
            scanned = max(scanned, position)
        }
        // The last possible notification id was processed: nothing can follow.
        try await Task.sleep(for: .seconds(365 * 86_400))
    }

    /// Reads up to ``batchSize`` items of `topics` after `scanned`
    /// (``NotificationLog/readFollowerPage(after:topics:limit:)``).
    private func readPage(after scanned: Int64, topics: [String]) async throws -> FollowerPage {
        try await application.notificationLog.readFollowerPage(after: scanned, topics: topics, limit: batchSize)
    }

    /// Applies `items` (ascending ids after `position`) in one batch; returns the new position.
    private func apply(_ items: [LogItem], after position: Int64) async throws -> Int64 {
        let projection = self.projection
        var steps: [ProjectionBatch<P.Context>.Step] = []
        steps.reserveCapacity(items.count)
        var unreadable: EventSourcingError?
        var previous = position
        for item in items {
            let id = item.notification.id
            guard id > previous else {
                throw EventSourcingError(.databaseCorrupt,
                    "projection \"\(name)\": the log returned notification \(id) after \(previous): ids out of order (corrupt index?)",
                    notificationID: id)
            }
            previous = id
            switch item.outcome {
            case .decoded:
                steps.append(.init(notificationID: id, body: { context in
                    do { try await projection.process(item, in: context) } catch { throw ProjectionCallFailure(error: error) }
                }))
            case .erased(let scope, _):
                steps.append(.init(notificationID: id, isErasure: true, body: { context in
                    do { try await projection.erase(keyScope: scope, in: context) } catch { throw ProjectionCallFailure(error: error) }
                }))
            case .shredded:
                steps.append(.init(notificationID: id, body: nil))
            case .failed(var e):
                e.message = "projection \"\(name)\" stopped at notification \(id), which cannot be read: \(e.message)"
                e.notificationID = id
                unreadable = e
            }
            if unreadable != nil { break }
        }
        var newPosition = position
        if !steps.isEmpty {
            let outcome = try await store.applyProjectionBatch(ProjectionBatch(name: name, steps: steps))
            if let through = outcome.committedThrough {
                newPosition = through
                publish(through)
            }
            if let (id, error) = outcome.failure {
                let cause = (error as? ProjectionCallFailure)?.error ?? error
                guard error is ProjectionCallFailure else { throw cause }
                let item = items.first { $0.notification.id == id }
                throw failed(cause, what: item.map(describe) ?? "", notification: id)
            }
        }
        if let unreadable { throw unreadable }
        return newPosition
    }

    private func describe(_ item: LogItem) -> String {
        if case .erased(let scope, _) = item.outcome { return "erasing key scope \(scope)" }
        return "processing topic \(item.notification.topic)"
    }

    /// The `.projectionFailed` error for the projection's `error`: names the projection and the
    /// notification, and the error's type (its text could hold the view's personal data), or an
    /// `EventSourcingError`'s own description (which never does). Keeps the cause.
    private func failed(_ error: any Error, what: String, notification: Int64?) -> EventSourcingError {
        let cause = (error as? EventSourcingError)?.description ?? "\(type(of: error))"
        let at = notification.map { " at notification \($0)" } ?? ""
        var e = EventSourcingError(.projectionFailed,
            "projection \"\(name)\" threw\(at) \(what): \(cause); the runner stopped with the position before it, so running again retries it",
            notificationID: notification)
        if let ese = error as? EventSourcingError { e.keyScope = ese.keyScope }
        state.withLock { s in
            if s.failure == nil { s.failures += 1 }
            s.failure = e
            s.cause = error
        }
        logger.error("projection failed", metadata: ["projection": "\(name)", "notification": "\(notification.map { "\($0)" } ?? "-")",
                                                      "error": "\(cause)"])
        return e
    }

    private func publish(_ position: Int64) {
        state.withLock { $0.position = position }
        progress.signal()
    }

    // MARK: Waiting

    /// Returns once the view reflects notification `notificationID` (and every one before it):
    /// read-your-writes after a save (`wait(until: recordings.last!.notificationID, …)`).
    ///
    /// Also returns at once when no notification the projection reads lies between its position
    /// and `notificationID` (events of other topics). Without a run of this runner under way in
    /// this process, it reads the store's position every 100 ms (a runner in another process,
    /// or one about to be started).
    /// - Throws: `.invalidArgument` for an id below 1 or past the end of the log (nothing has
    ///   that id yet); the runner's error at once when a run stops on a failure during the
    ///   wait; `.timedOut` naming the projection, the notification and the position reached
    ///   (and the failure the last run stopped on, if it did) when `timeout` passes first;
    ///   `CancellationError`.
    public func wait(until notificationID: Int64, timeout: Duration) async throws {
        guard notificationID >= 1 else {
            throw EventSourcingError(.invalidArgument,
                                     "projection \"\(name)\": notification ids start at 1, got \(notificationID)",
                                     notificationID: notificationID)
        }
        let log = application.notificationLog
        let last = try await log.maxNotificationID ?? 0
        guard notificationID <= last else {
            throw EventSourcingError(.invalidArgument,
                "projection \"\(name)\": notification \(notificationID) is past the end of the log (its last is \(last)): nothing to wait for",
                notificationID: notificationID)
        }
        let clock = ContinuousClock()
        let deadline = clock.now + min(max(timeout, .zero), .seconds(365 * 86_400))
        let topics = self.topics
        let failuresBefore = state.withLock { $0.failures }
        var target = FollowerProgress(log: log, topics: topics, target: notificationID)
        while true {
            let seen = progress.generation
            let (running, known, failure, failures) = state.withLock { ($0.running, $0.position, $0.failure, $0.failures) }
            // A run that stopped on a failure during this wait: it will not get there.
            if !running, failures != failuresBefore, let failure { throw failure }
            let position: Int64
            if running, let known { position = known } else { position = try await store.projectionPosition(name) ?? 0 }
            // At the target, or nothing this projection reads between its position and it.
            if try await target.reached(position) { return }
            let left = deadline - clock.now
            guard left > .zero else {
                var why = running ? "" : " (no run of this runner is under way in this process)"
                if !running, let failure { why = " (its last run stopped: \(failure.code) at notification \(failure.notificationID.map { "\($0)" } ?? "-"))" }
                throw EventSourcingError(.timedOut,
                    "projection \"\(name)\" had not processed notification \(notificationID) within \(timeout): its position is \(position)" + why,
                    notificationID: notificationID)
            }
            await progress.wait(since: seen, timeout: running ? left : min(left, .milliseconds(100)))
            try Task.checkCancellation()
        }
    }
}

extension ProjectionRunner: Service {}

/// The projection's own error, told apart from the store's.
struct ProjectionCallFailure: Error {
    let error: any Error
}
