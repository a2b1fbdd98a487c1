import Foundation
import KeyManagement
import Logging
import ServiceLifecycle
import Synchronization

/// Runs the followers of a ``System`` (all of them, or `only` some in this OS process), one
/// task each, started and stopped together.
///
/// - **Exactly once.** Each follower processes each event of each leader once: the events its
///   policy collects and its new position in that leader's log (the tracking record
///   `"<follower> <- <leader>"` in its own store) commit in one transaction. A crash at any
///   point loses nothing and repeats nothing; a new runner (a restarted process) resumes from
///   the tracking records. Followers on other OS processes (one runner each, with `only`)
///   work the same way against a shared database such as PostgreSQL.
/// - **In log order, fairly.** Events of one leader are processed in its log order; a follower
///   with several leaders takes a page (up to ``batchSize`` events) of each in turn, so one
///   leader's backlog does not hold up the others. Once every leader is caught up, it waits for
///   a commit (woken by an in-process commit, else at the recorder's polling bound).
/// - **Erasure crosses the system.** A leader's erasure record makes the key scope shredded
///   in the follower too (see ``ProcessPolicy/erase(keyScope:in:)``), and leaves the erasure
///   record in the follower's own log for its projections and followers.
/// - **Stops on a failure, loses nothing.** When a policy throws (or its events cannot be saved,
///   or a save conflicts with another writer more than ``conflictAttempts`` times), ``run()``
///   stops every follower and throws `.processFailed` naming the follower, the leader, the
///   notification and its topic; the follower's position stays before that event, so running
///   again resumes at it. An unreadable leader record stops it with the read error, naming it.
public final class SystemRunner: Service, Sendable {
    /// The system.
    public let system: System
    /// The followers this runner runs.
    public let followers: [String]
    /// The most notifications read from a leader at once (1 to 10,000).
    public let batchSize: Int
    /// How many times an event is processed, with a fresh context, when saving its events meets
    /// a concurrency conflict on the follower's own aggregates (another writer got there first).
    public static let conflictAttempts = 5
    let logger: Logger

    private struct State {
        var running = false
        /// Positions known in this process, by tracking name.
        var positions: [String: Int64] = [:]
        var failure: EventSourcingError?
        /// The cause of the last `.processFailed` (the policy's own error, or the save's).
        var cause: (any Error)?
        var failures = 0
    }

    private let state = Mutex(State())
    /// Signalled whenever a position moves, the runner stops, or it fails.
    private let progress = CommitSignal()

    /// Creates a runner; it does nothing until ``run()``.
    /// - Parameters:
    ///   - system: the system.
    ///   - only: the followers to run in this process (nil: every process application of the
    ///     system); the others are run elsewhere, or not at all.
    ///   - batchSize: the most notifications read (and decrypted) from a leader at once.
    ///   - logger: where failures are logged (names and notification ids, never data).
    /// - Throws: `.invalidArgument` for a name in `only` that is no process application of the
    ///   system, an empty set of followers, or a batch size out of range.
    public init(system: System, only: Set<String>? = nil, batchSize: Int = 100,
                logger: Logger = Logger(label: "eventsourcing.system")) throws(EventSourcingError) {
        guard (1...10_000).contains(batchSize) else {
            throw EventSourcingError(.invalidArgument, "system runner: the batch size must be 1 to 10,000, got \(batchSize)")
        }
        let all = system.processApplications.map(\.name)
        if let only {
            for name in only.sorted() where !all.contains(name) {
                let what = system.application(name) == nil ? "no member of the system" : "not a process application"
                throw EventSourcingError(.invalidArgument, "system runner: \"\(name)\" is \(what), so it cannot be run")
            }
        }
        let chosen = all.filter { only?.contains($0) ?? true }
        guard !chosen.isEmpty else {
            throw EventSourcingError(.invalidArgument, "system runner: there is no process application to run")
        }
        self.system = system
        self.followers = chosen
        self.batchSize = batchSize
        self.logger = logger
    }

    /// Whether ``run()`` is under way.
    public var isRunning: Bool { state.withLock { $0.running } }

    /// The cause of the `.processFailed` error the last run stopped with (the policy's own
    /// error, whose text the message leaves out), nil when it did not stop so. Cleared when a
    /// run starts.
    public var lastFailure: (any Error)? { state.withLock { $0.cause } }

    // MARK: Running

    /// Runs every follower until the task is cancelled or the service group shuts down
    /// gracefully (then it returns normally; an event in flight commits whole or not at all), or
    /// until one fails: then the others are stopped and the failure is thrown.
    /// - Throws: `.processFailed` naming the follower, leader, notification and topic; an
    ///   unreadable leader notification's read error; `.trackingConflict` when another runner of
    ///   the same follower moved its position first; the stores' errors; `.invalidArgument` when
    ///   this runner is already running.
    public func run() async throws {
        let refused = state.withLock { s -> Bool in
            if s.running { return true }
            s.running = true
            s.failure = nil
            s.cause = nil
            return false
        }
        if refused { throw EventSourcingError(.invalidArgument, "system runner: already running; one run at a time") }
        defer {
            state.withLock { $0.running = false }
            progress.signal()
        }
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for name in self.followers {
                        guard let process = self.system.processApplication(name) else { continue }
                        group.addTask { try await self.follow(process) }
                    }
                    // The first failure ends the group, which cancels the others (waitForAll
                    // would wait for every follower first: one that is caught up waits for ever).
                    while try await group.next() != nil {}
                }
            }
        } catch is CancellationError {
            return
        } catch {
            if Task.isCancelled, !(error is EventSourcingError) { return }
            let e = error as? EventSourcingError ?? EventSourcingError(.recorderFailure, "system runner stopped: \(type(of: error))")
            state.withLock { s in
                s.failure = e
                s.failures += 1
            }
            throw e
        }
    }

    /// One leader of a follower, and how far the follower has got in its log.
    private struct Cursor {
        let leader: String
        let log: NotificationLog
        let trackingName: String
        /// The last notification processed.
        var position: Int64
        /// How far the log was looked at (past the position with a topic filter).
        var scanned: Int64
    }

    private func follow(_ process: ProcessApplication) async throws {
        guard let recorder = process.application.recorder as? any ProcessRecorder else { return }
        var cursors: [Cursor] = []
        for leader in system.leaders(of: process.name) {
            guard let app = system.application(leader) else { continue }
            let name = process.trackingName(leader: leader)
            let position = try await recorder.maxTrackingID(name) ?? 0
            cursors.append(Cursor(leader: leader, log: app.notificationLog, trackingName: name, position: position, scanned: position))
            publish(name, position)
        }
        let topics = Self.topics(of: process.policy)
        let waiter = CommitWaiter(cursors.map { $0.log.app.recorder })
        while true {
            try Task.checkCancellation()
            let seen = waiter.generations()
            var worked = false
            // One page of each leader in turn: a backlog of one does not starve the others.
            for i in cursors.indices {
                let page = try await uncancelled { [batchSize, cursor = cursors[i]] in
                    try await cursor.log.readFollowerPage(after: cursor.scanned, topics: topics, limit: batchSize)
                }
                for item in page.items {
                    try Task.checkCancellation()
                    try await handle(item, of: &cursors[i], process: process)
                    worked = true
                }
                cursors[i].scanned = max(cursors[i].scanned, page.scanned, cursors[i].position)
            }
            if !worked {
                try Task.checkCancellation()
                await waiter.wait(since: seen)
            }
        }
    }

    /// The topics read from the leaders: the policy's, plus the erasure records' (all topics when
    /// the policy names none).
    static func topics(of policy: any ProcessPolicy) -> [String] { NotificationLog.followerTopics(policy.topics) }

    /// Runs `body` in a task of its own that the caller's cancellation does not cancel (a
    /// PostgreSQL query cancelled mid-way closes its connection): the cancellation is seen
    /// once it returns.
    private func uncancelled<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await Task { try await body() }.value
    }

    private func publish(_ trackingName: String, _ position: Int64) {
        state.withLock { $0.positions[trackingName] = position }
        progress.signal()
    }

    // MARK: One notification

    private func handle(_ item: LogItem, of cursor: inout Cursor, process: ProcessApplication) async throws {
        let id = item.notification.id
        guard id > cursor.position else {
            throw EventSourcingError(.databaseCorrupt,
                "process application \"\(process.name)\": the log of \"\(cursor.leader)\" returned notification \(id) after \(cursor.position): ids out of order (corrupt index?)",
                notificationID: id)
        }
        let tracking = Tracking(name: cursor.trackingName, notificationID: id)
        switch item.outcome {
        case .decoded:
            let upstream = UpstreamEvent(leader: cursor.leader, item: item)
            try await attempt(process, item: item, leader: cursor.leader, what: "threw at") { context in
                try await process.policy.process(upstream, in: context)
            } commit: { context in
                try await context.commit(tracking: tracking)
            }
        case .shredded:
            // Its content is gone: the position moves past it.
            let app = process.application
            try await uncancelled { try await app.commit([], tracking: tracking) }
        case .failed(var e):
            e.message = "process application \"\(process.name)\" stopped at notification \(id) of \"\(cursor.leader)\", which cannot be read: \(e.message)"
            e.notificationID = id
            logger.error("process application stopped at an unreadable notification",
                         metadata: ["follower": "\(process.name)", "leader": "\(cursor.leader)", "notification": "\(id)"])
            throw e
        case .erased(let scope, let at):
            try await erase(scope: scope, at: at, item: item, leader: cursor.leader, process: process, tracking: tracking)
        }
        cursor.position = id
        publish(cursor.trackingName, id)
    }

    /// Makes `scope`, erased in a leader, shredded in the follower: shreds it in the follower's
    /// keyring if that still has a key for it, deletes the follower's snapshots of it, calls the
    /// policy, and commits the erasure record to the follower's log (unless it holds it already)
    /// with what the policy collected and the tracking record.
    private func erase(scope: String, at: Date, item: LogItem, leader: String, process: ProcessApplication,
                       tracking: Tracking) async throws {
        let app = process.application
        app.mapper.cipher?.invalidate(scope: scope)
        // No cached aggregate of the scope is served after this (a keyring shared with the
        // leader shredded the scope already, without this application's cache knowing).
        app.aggregateCache?.remove(keyScope: scope)
        if let keyring = app.mapper.keyring, try await !keyring.store.dataKeys(scope: scope).isEmpty {
            do {
                _ = try await app.shred(keyScope: scope)
                logger.notice("shredded a key scope erased by a leader",
                              metadata: ["follower": "\(process.name)", "leader": "\(leader)", "scope": "\(scope)"])
            } catch let e as EventSourcingError where e.code == .shredded {
                // Shredded meanwhile (a keyring shared with the leader, or a rerun): done.
            }
        }
        _ = try await app.snapshotRecorder?.deleteSnapshots(keyScope: scope)
        let record = try ErasureRecord(keyScope: scope, shreddedAt: at).storedEvent()
        let policy = process.policy
        try await attempt(process, item: item, leader: leader, what: "threw erasing key scope \(scope) at") { context in
            try await policy.erase(keyScope: scope, in: context)
        } commit: { context in
            let present = try await !app.recorder.selectEvents(originatorID: record.originatorID, limit: 1).isEmpty
            try await context.commit(tracking: tracking, plain: present ? [] : [record])
        }
    }

    /// Runs the policy's `call` with a fresh context, then `commit`s it; again (up to
    /// ``conflictAttempts`` in all) on a concurrency conflict.
    /// - Throws: `.processFailed` for the policy's error, a commit refused for the event's own
    ///   sake (a conflict too many, a shredded scope, …); the stores' errors as they are.
    private func attempt(_ process: ProcessApplication, item: LogItem, leader: String, what: String,
                         _ call: @escaping @Sendable (ProcessingContext) async throws -> Void,
                         commit: @escaping @Sendable (ProcessingContext) async throws -> Void) async throws {
        var attempt = 1
        while true {
            let context = ProcessingContext(application: process.application,
                                            upstream: item.isErased ? nil : UpstreamEvent(leader: leader, item: item))
            do {
                do { try await call(context) } catch { throw PolicyFailure(error: error) }
                try await uncancelled { try await commit(context) }
                return
            } catch {
                // Stopped while the policy ran (whatever it threw then): not a failure of the event.
                if Task.isCancelled { throw CancellationError() }
                let policyThrew = error is PolicyFailure
                let cause = (error as? PolicyFailure)?.error ?? error
                let ese = cause as? EventSourcingError
                if ese?.code == .concurrencyConflict, attempt < Self.conflictAttempts {
                    attempt += 1
                    logger.debug("retrying an event after a concurrency conflict",
                                 metadata: ["follower": "\(process.name)", "leader": "\(leader)",
                                            "notification": "\(item.notification.id)", "attempt": "\(attempt)"])
                    continue
                }
                if !policyThrew, let ese, Self.passedThrough.contains(ese.code) { throw ese }
                throw failed(process, leader: leader, item: item, what: policyThrew ? what : "could not save its events for",
                             cause: cause, attempts: ese?.code == .concurrencyConflict ? attempt : nil)
            }
        }
    }

    /// Store failures a commit throws as they are (not about the event).
    private static let passedThrough: Set<EventSourcingError.Code> = [
        .trackingConflict, .databaseUnavailable, .databaseLocked, .databaseCorrupt, .storeOverloaded,
        .recorderFailure, .unsupportedSchema, .wrongMasterKey, .timedOut,
    ]

    /// The `.processFailed` error: names the follower, the leader, the notification and its
    /// topic, and the cause's type (its text could hold personal data) or an
    /// `EventSourcingError`'s own description (which never does).
    private func failed(_ process: ProcessApplication, leader: String, item: LogItem, what: String, cause: any Error,
                        attempts: Int?) -> EventSourcingError {
        let id = item.notification.id
        let topic = item.notification.topic
        let described = (cause as? EventSourcingError)?.description ?? "\(type(of: cause))"
        let tries = attempts.map { " (after \($0) attempts, each conflicting with another writer)" } ?? ""
        var e = EventSourcingError(.processFailed,
            "process application \"\(process.name)\" \(what) notification \(id) of \"\(leader)\" (topic \(topic))\(tries): \(described); its position stays before it, so running again resumes at that event",
            topic: topic, notificationID: id)
        if let ese = cause as? EventSourcingError {
            e.keyScope = ese.keyScope
            e.originatorID = ese.originatorID
            e.originatorVersion = ese.originatorVersion
        }
        state.withLock { $0.cause = cause }
        logger.error("process application failed", metadata: ["follower": "\(process.name)", "leader": "\(leader)",
                                                              "notification": "\(id)", "topic": "\(topic)", "error": "\(described)"])
        return e
    }

    // MARK: Positions and waiting

    /// `follower`'s position in `leader`'s log: the last notification it processed (nil: none).
    /// - Throws: `.invalidArgument` when `follower` does not follow `leader` in the system; the
    ///   store's errors.
    public func position(of follower: String, leader: String) async throws -> Int64? {
        let process = try pipe(follower, leader)
        guard let recorder = process.application.recorder as? any ProcessRecorder else { return nil }
        return try await recorder.maxTrackingID(process.trackingName(leader: leader))
    }

    private func pipe(_ follower: String, _ leader: String) throws(EventSourcingError) -> ProcessApplication {
        guard let process = system.processApplication(follower) else {
            let what = system.application(follower) == nil ? "no member of the system" : "not a process application"
            throw EventSourcingError(.invalidArgument, "system runner: \"\(follower)\" is \(what)")
        }
        guard system.leaders(of: follower).contains(leader) else {
            throw EventSourcingError(.invalidArgument,
                "system runner: \"\(follower)\" does not follow \"\(leader)\" (its leaders: \(system.leaders(of: follower).joined(separator: ", ")))")
        }
        return process
    }

    /// Read-your-writes across applications: returns once `follower` has processed `leader`'s
    /// notification `notificationID` (and every one before it). Also returns at once when no
    /// notification the follower reads lies between its position and `notificationID`.
    /// Without a run of this runner under way for `follower` in this process, it reads the
    /// follower's tracking record every 100 ms (a runner in another process).
    /// - Throws: `.invalidArgument` when `follower` does not follow `leader`, or for an id below
    ///   1 or past the end of the leader's log; the runner's failure at once when a run stops on
    ///   one during the wait; `.timedOut` naming the pipe, the notification and the position
    ///   reached; `CancellationError`.
    public func wait(for follower: String, toProcess notificationID: Int64, of leader: String, timeout: Duration) async throws {
        let process = try pipe(follower, leader)
        guard notificationID >= 1 else {
            throw EventSourcingError(.invalidArgument, "system runner: notification ids start at 1, got \(notificationID)",
                                     notificationID: notificationID)
        }
        guard let log = system.application(leader)?.notificationLog, let recorder = process.application.recorder as? any ProcessRecorder
        else { return }
        let last = try await log.maxNotificationID ?? 0
        guard notificationID <= last else {
            throw EventSourcingError(.invalidArgument,
                "system runner: notification \(notificationID) is past the end of the log of \"\(leader)\" (its last is \(last)): nothing to wait for",
                notificationID: notificationID)
        }
        let name = process.trackingName(leader: leader)
        let topics = Self.topics(of: process.policy)
        let runsHere = followers.contains(follower)
        let clock = ContinuousClock()
        let deadline = clock.now + min(max(timeout, .zero), .seconds(365 * 86_400))
        let failuresBefore = state.withLock { $0.failures }
        var target = FollowerProgress(log: log, topics: topics, target: notificationID)
        while true {
            let seen = progress.generation
            let (running, known, failure, failures) = state.withLock { ($0.running && runsHere, $0.positions[name], $0.failure, $0.failures) }
            if failures != failuresBefore, let failure { throw failure }
            let position: Int64
            if running, let known { position = known } else { position = try await recorder.maxTrackingID(name) ?? 0 }
            if try await target.reached(position) { return }
            let left = deadline - clock.now
            guard left > .zero else {
                let why = running ? "" : " (it is not run by this runner in this process now)"
                throw EventSourcingError(.timedOut,
                    "system runner: \"\(name)\" had not processed notification \(notificationID) within \(timeout): its position is \(position)" + why,
                    notificationID: notificationID)
            }
            await progress.wait(since: seen, timeout: running ? left : min(left, .milliseconds(100)))
            try Task.checkCancellation()
        }
    }
}

/// The policy's own error, told apart from the store's.
private struct PolicyFailure: Error {
    let error: any Error
}

/// Waits for a commit to any of several recorders: on their commit signals (deduplicated: one
/// store may serve several applications), at most their polling bound; recorders that do not
/// signal are polled every ``NotificationLog/defaultPollInterval``.
private struct CommitWaiter: Sendable {
    let signals: [CommitSignal]
    let interval: Duration?

    init(_ recorders: [any ApplicationRecorder]) {
        var signals: [CommitSignal] = []
        var interval: Duration?
        func bound(_ d: Duration) { interval = interval.map { min($0, d) } ?? d }
        for r in recorders {
            if let n = r as? any CommitNotifying {
                if !signals.contains(where: { $0 === n.commitSignal }) { signals.append(n.commitSignal) }
                if let own = n.commitPollInterval { bound(own) }
            } else {
                bound(NotificationLog.defaultPollInterval)
            }
        }
        self.signals = signals
        self.interval = interval
    }

    /// Read before reading the logs.
    func generations() -> [UInt64] { signals.map(\.generation) }

    /// Returns once a signal moved past `seen`, the interval passed, or the task is cancelled.
    func wait(since seen: [UInt64]) async {
        if signals.isEmpty {
            try? await Task.sleep(for: interval ?? NotificationLog.defaultPollInterval)
            return
        }
        if signals.count == 1 {
            await signals[0].wait(since: seen[0], timeout: interval)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            for (signal, generation) in zip(signals, seen) {
                group.addTask { await signal.wait(since: generation, timeout: interval) }
            }
            await group.next()
            group.cancelAll()
        }
    }
}
