import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Reads of whole aggregates (what a repository get asks for), grouped like saves: a read that
/// arrives while another group's query runs joins the next group, and a group is one query. The
/// same query returns the data keys of the scopes those events are sealed with, so a key ring
/// with a cold cache needs no second round trip (see ``PostgresStore/dataKeys(scope:reading:)``).
extension PostgresStore {
    /// The reader task and the groups it is reading; the reads waiting for a group are in
    /// ``PostgresStore/readQueue`` (a `BatchingQueue`).
    struct PendingReads {
        /// The current reader task; one replaced after its deadline stops at its next step.
        var drainer: UInt64 = 0
        /// The groups being read (one, or more while a timed-out one is still stuck).
        var flights: [UInt64: Flight] = [:]
        var nextFlight: UInt64 = 0
    }

    struct PendingRead: Sendable {
        var id: UUID
        var gt: Int64
        var lte: Int64
        var continuation: CheckedContinuation<[StoredEvent], any Error>?
        var enqueued = ContinuousClock.now
        /// Set when the caller's task is cancelled.
        var flag = CancelFlag()
    }

    /// At most this many aggregates per grouped query.
    static let readGroupLimit = 256

    func groupedSelect(_ read: PendingRead) async throws -> [StoredEvent] {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        let flag = read.flag
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<[StoredEvent], any Error>) in
                guard !flag.isSet else { return c.resume(throwing: CancellationError()) }
                var r = read
                r.continuation = c
                switch readQueue.enqueue(r) {
                case .startDraining: startReading()
                case .queued: break
                case .full:
                    return c.resume(throwing: EventSourcingError(.storeOverloaded,
                        "the read was refused: \(readQueue.maxWaiting) reads already wait for PostgreSQL (Configuration.maxWaitingReads)"))
                case .closed:
                    return c.resume(throwing: EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed"))
                }
                // Cancelled while being queued: withdrawn here, unless cancelRead or the reader took it.
                if flag.isSet { withdrawRead(flag) }
            }
        } onCancel: {
            cancelRead(flag)
        }
    }

    /// Withdraws a queued read, failing it with `CancellationError`. Returns false if it is not
    /// waiting (a group has it, or it was withdrawn already).
    @discardableResult
    private func withdrawRead(_ flag: CancelFlag) -> Bool {
        let removed = readQueue.removeWaiting { $0.flag === flag }
        for r in removed { r.continuation?.resume(throwing: CancellationError()) }
        return !removed.isEmpty
    }

    /// A read's caller was cancelled: a queued read is withdrawn; a group in flight is stopped
    /// (its connection closed) once all its callers are cancelled, as for saves (see
    /// ``cancelSave(_:)``). A cancelled read throws `CancellationError`.
    private func cancelRead(_ flag: CancelFlag) {
        flag.set()
        if withdrawRead(flag) { return }
        let stop = pendingReads.withLock { p -> Flight? in
            p.flights.values.first { f in f.members.contains { $0 === flag } && f.allCancelled }
        }
        if let stop { stopReadGroup(stop) }
    }

    private func stopReadGroup(_ f: Flight) {
        replaceReader(f.drainer)
        f.handle.cancel()
    }

    private func startReading() {
        let id = pendingReads.withLock { p -> UInt64 in
            p.drainer &+= 1
            return p.drainer
        }
        let handle = CancelHandle()
        handle.set(Task(executorPreference: executor) { await self.drainReads(id, handle) })
    }

    private func replaceReader(_ id: UInt64) {
        if pendingReads.withLock({ $0.drainer == id }) { startReading() }
    }

    private func drainReads(_ id: UInt64, _ handle: CancelHandle) async {
        while true {
            // Replaced after a timeout or cancellation: the new reader goes on.
            guard pendingReads.withLock({ $0.drainer == id }) else { return }
            let group = readQueue.nextBatch(limit: PostgresStore.readGroupLimit)
            if group.isEmpty { return }   // the queue made this task no longer the reader
            let f = Flight(members: group.map(\.flag), handle: handle, drainer: id)
            let flight = pendingReads.withLock { p -> UInt64 in
                p.nextFlight &+= 1
                p.flights[p.nextFlight] = f
                return p.nextFlight
            }
            // Every caller was cancelled while the group was being taken (cancelRead found it in neither place).
            if f.allCancelled { stopReadGroup(f) }
            let waiters = Waiters(group.compactMap(\.continuation))
            let token = groupDeadline(oldest: group.map(\.enqueued).min(), waiters, handle,
                                      outcome: "the read failed") { [weak self] in self?.replaceReader(id) }
            do {
                let events = try await selectGroup(group)
                waiters.resume { .success(events[$0]) }
            } catch {
                // Every caller of the group was cancelled (see cancelRead).
                waiters.fail(Task.isCancelled ? CancellationError() : PostgresStore.translate(error, configuration: configuration))
            }
            deadlines.remove(token)
            _ = pendingReads.withLock { $0.flights.removeValue(forKey: flight) }
        }
    }

    /// One query for the whole group: each aggregate's events in version order, then the keys.
    private func selectGroup(_ group: [PendingRead]) async throws -> [[StoredEvent]] {
        let ids = group.map(\.id), gts = group.map(\.gt), ltes = group.map(\.lte)
        // Taken before the query: the keys are at least this old, and a local change to any
        // scope's keys from now on makes this read keep none of them.
        let started = prefetchedKeys.start()
        var collected: [ReadAggregateStatement.Row]
        if group.count == 1, preparedReads.load(ordering: .acquiring) {
            // Most gets are alone (one reader, or readers that do not overlap): a prepared
            // statement, parsed once per connection, answers them in about half the time of
            // the function, whose array handling only pays off for several aggregates.
            do {
                collected = try await preparedRead(ReadAggregateStatement(id: ids[0], gt: gts[0], lte: ltes[0]))
            } catch let error as PSQLError where error.code == .server {
                // Whatever the server refused, the function may still answer (see preparedRead).
                let n = preparedReadFallbacks.wrappingAdd(1, ordering: .relaxed).newValue
                let state = error.serverInfo?[.sqlState] ?? "?"
                let message = "a read of one aggregate failed as a prepared statement (\(state)); it is read through the server function"
                // Once loudly: a pooler that drops the connection settings makes every lone read land here.
                if n == 1 { logger.warning("\(message)") } else { logger.debug("\(message)") }
                collected = try await functionRead(ids: ids, gts: gts, ltes: ltes)
            }
        } else {
            collected = try await functionRead(ids: ids, gts: gts, ltes: ltes)
        }
        var out = [[StoredEvent]](repeating: [], count: group.count)
        var keys: [ExactScope: [WrappedDataKey]] = [:]
        var unreadable = Set<ExactScope>()
        for (i, v, topic, state, scope, created) in collected {
            if i == 0, let scope, let created {
                // A version that is not a key version is not truncated: the scope's keys are not
                // kept, and the key ring's look-up (dataKeys(scope:)) refuses the row, naming the
                // scope. This read of events, grouped with others, does not fail for it.
                guard let version = UInt32(exactly: v) else {
                    unreadable.insert(ExactScope(scope))
                    continue
                }
                // Here `topic` is the key's KEK id (the columns are shared).
                keys[ExactScope(scope), default: []].append(WrappedDataKey(scope: scope, version: version, kekID: topic,
                                                               wrapped: state.bytes, createdAt: Date(timeIntervalSince1970: created)))
            } else if i >= 1, i <= Int64(group.count) {
                out[Int(i - 1)].append(StoredEvent(originatorID: group[Int(i - 1)].id, originatorVersion: Int(v),
                                                   topic: topic, state: state.bytes))
            } else {
                throw EventSourcingError(.recorderFailure, "a grouped read returned row \(i) for \(group.count) aggregates")
            }
        }
        for scope in unreadable { keys.removeValue(forKey: scope) }
        prefetchedKeys.keep(keys, startedAt: started)
        return out
    }

    private func functionRead(ids: [UUID], gts: [Int64], ltes: [Int64]) async throws -> [ReadAggregateStatement.Row] {
        let query: PostgresQuery = "SELECT * FROM \(unescaped: schema).read_aggregates(\(ids), \(gts), \(ltes))"
        let logger = self.logger
        return try await withCancellableConnection { connection in
            try await connection.query(query, logger: logger).collect().map { try $0.decode(ReadAggregateStatement.Row.self) }
        }
    }

    private func preparedRead(_ statement: ReadAggregateStatement) async throws -> [ReadAggregateStatement.Row] {
        let logger = self.logger
        return try await withCancellableConnection { connection in
            do {
                var rows: [ReadAggregateStatement.Row] = []
                for try await row in try await connection.execute(statement, logger: logger) { rows.append(row) }
                return rows
            } catch let error as PSQLError where error.code == .server {
                // postgres-nio remembers a failed preparation (a statement timeout while a lock
                // blocked it, a schema dropped and made again) for as long as the connection
                // lives, and fails every later run of the statement on it with the same error.
                // Closing the connection lets the pool open a clean one.
                try? await connection.close()
                throw error
            }
        }
    }

    /// Keys read with the events being decoded, if fresh and holding `version`; else from the table.
    public func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey] {
        let hit = prefetchedKeys.take(scope: scope, version: version)
        if let hit { return hit }
        return try await dataKeys(scope: scope)
    }

    /// Drops prefetched keys of scopes this process is changing (new key, rotation, shred).
    func forgetPrefetchedKeys(_ scopes: [String]) {
        prefetchedKeys.forget(scopes)
    }
}
