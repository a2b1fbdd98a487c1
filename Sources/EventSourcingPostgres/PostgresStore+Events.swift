import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Saving events (each save joins a group commit, see PostgresStore+GroupCommit.swift) and reading them.
extension PostgresStore {
    public func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try await insertEvents(events, newKeys: [])
    }

    public var keyStore: any KeyStore { self }

    /// True for this store itself: its data keys and events share one database transaction.
    public func sharesTransactions(with keyStore: any KeyStore) -> Bool { (keyStore as? PostgresStore) === self }

    public func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey]) async throws -> [Int64] {
        guard !events.isEmpty || !newKeys.isEmpty else { return [] }
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        // A shred's erasure record is the one plaintext record such a store takes (exactly its format).
        if let e = events.first(where: { $0.keyScope == nil && !ErasureRecord.matches($0) }) { try await refusePlaintext(e, snapshot: false) }
        forgetPrefetchedKeys(newKeys.map(\.scope))
        let enqueued = ContinuousClock.now
        let flag = CancelFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<[Int64], any Error>) in
                // Cancelled before it was queued: never queued.
                guard !flag.isSet else { return c.resume(throwing: CancellationError()) }
                switch saveQueue.enqueue(PendingSave(events: events, keys: newKeys, continuation: c, enqueued: enqueued, flag: flag)) {
                case .startDraining: startDraining()
                case .queued: break
                case .full:
                    return c.resume(throwing: EventSourcingError(.storeOverloaded,
                        "the save was refused: \(saveQueue.maxWaiting) saves already wait for PostgreSQL (Configuration.maxWaitingWrites); nothing was written"))
                case .closed:
                    return c.resume(throwing: EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed"))
                }
                // Cancelled while being queued: withdrawn here, unless cancelSave or the committer took it.
                if flag.isSet { withdrawSave(flag) }
            }
        } onCancel: {
            cancelSave(flag)
        }
    }

    /// Throws `.plaintextRejected` naming `record` if the store has a master key (unless
    /// ``PostgresStore/Configuration/allowsPlaintextWrites``). A store that has a master key keeps it
    /// (rotation adds the new check before retiring the old), so a positive answer is cached.
    /// A store told to refuse unencrypted records for good (``refusePlaintextWrites()``) refuses
    /// them also with `allowsPlaintextWrites`.
    func refusePlaintext(_ record: StoredEvent, snapshot: Bool) async throws {
        guard !configuration.allowsPlaintextWrites else { return try await refuseIfPlaintextRefused(record, snapshot: snapshot) }
        if !hasMasterKey.load(ordering: .relaxed) {
            let s = schema
            let found: Bool = try await run { client in
                var found = false
                for try await v in try await client.query(
                    "SELECT EXISTS (SELECT 1 FROM \(unescaped: s).master_key_checks)", logger: self.logger).decode(Bool.self) {
                    found = v
                }
                return found
            }
            guard found else { return }
            hasMasterKey.store(true, ordering: .relaxed)
        }
        throw EventSourcingError(.plaintextRejected,
            "unencrypted \(snapshot ? "snapshot" : "event") refused: this store has a master key, so its records must be "
            + "encrypted (give the application's Mapper a Keyring, or set allowsPlaintextWrites for a migration)",
            originatorID: record.originatorID, originatorVersion: record.originatorVersion, topic: record.topic)
    }

    func commit(_ batch: [PendingSave], _ waiters: Waiters<[Int64]>) async {
        var evCounts: [Int32] = [], ids: [UUID] = [], versions: [Int64] = [], topics: [String] = []
        var states: [ByteBuffer] = [], scopes: [String] = []
        var keyCounts: [Int32] = [], kScopes: [String] = [], kVersions: [Int64] = [], kKeks: [String] = []
        var kWrapped: [ByteBuffer] = [], kCreated: [Double] = []
        for save in batch {
            evCounts.append(Int32(save.events.count))
            for e in save.events {
                ids.append(e.originatorID)
                versions.append(Int64(e.originatorVersion))
                topics.append(e.topic)
                states.append(e.state.byteBuffer)
                scopes.append(e.keyScope ?? "")
            }
            keyCounts.append(Int32(save.keys.count))
            for k in save.keys {
                kScopes.append(k.scope)
                kVersions.append(Int64(k.version))
                kKeks.append(k.kekID)
                kWrapped.append(k.wrapped.byteBuffer)
                kCreated.append(k.createdAt.timeIntervalSince1970)
            }
        }
        let s = schema
        let lockMillis = Int64(configuration.lockTimeout.components.seconds * 1000
                               + configuration.lockTimeout.components.attoseconds / 1_000_000_000_000_000)
        do {
            let query: PostgresQuery = """
                SELECT save_index, status, detail, first_id FROM \(unescaped: s).insert_saves(
                    \(lockMillis), \(evCounts), \(ids), \(versions), \(topics), \(states), \(scopes),
                    \(keyCounts), \(kScopes), \(kVersions), \(kKeks), \(kWrapped), \(kCreated))
                """
            let logger = self.logger
            // Collected, then decoded synchronously (no suspension per row).
            let results = try await withCancellableConnection { connection in
                try await connection.query(query, logger: logger).collect().map { try $0.decode((Int32, String, String?, Int64?).self) }
            }
            guard results.count == batch.count else {
                throw EventSourcingError(.recorderFailure, "the save function returned \(results.count) results for \(batch.count) saves")
            }
            waiters.resume { i in
                let (save, r) = (batch[i], results[i])
                return saveOutcome(save.events, status: r.1, detail: r.2, firstID: r.3)
            }
        } catch {
            // Every caller of the group was cancelled (see cancelSave): the connection was
            // closed, so the server rolled the statement back.
            waiters.fail(Task.isCancelled ? CancellationError() : PostgresStore.translate(error, configuration: configuration))
        }
    }

    /// What one save's row of `insert_saves` (or `insert_tracked_save`) says: its notification
    /// ids, or why the server refused it.
    func saveOutcome(_ events: [StoredEvent], status: String, detail: String?, firstID: Int64?) -> Result<[Int64], any Error> {
        switch status {
        case "ok":
            let first = firstID ?? 0
            return .success((0..<Int64(events.count)).map { first + $0 })
        case "conflict":
            return .failure(conflictError(events, detail: detail))
        case "constraint":
            return .failure(constraintError(events, detail: detail))
        case "shredded":
            return .failure(KeyManagementError(.shredded, "the scope was shredded", scope: detail))
        case "key_exists":
            return .failure(KeyManagementError(.keyExists, "data key exists", scope: detail))
        default:
            return .failure(EventSourcingError(.recorderFailure, "unknown save status \(status)"))
        }
    }

    private func conflictError(_ events: [StoredEvent], detail: String?) -> EventSourcingError {
        let parts = (detail ?? "").split(separator: ":")
        let id = parts.first.flatMap { UUID(uuidString: String($0)) }
        let version = parts.count > 1 ? Int(parts[1]) : nil
        let topic = events.first { $0.originatorID == id && $0.originatorVersion == version }?.topic
        return EventSourcingError(.concurrencyConflict, "an event with this originator id and version exists",
                                  originatorID: id ?? events.first?.originatorID, originatorVersion: version, topic: topic,
                                  storeCode: "23505")
    }

    /// A save the server refused for a constraint other than the events' primary key (a NOT
    /// NULL, a CHECK, another unique index, a foreign key added to the schema): `detail` is
    /// `SQLSTATE:constraint name`. The server does not say which of the save's events broke it.
    private func constraintError(_ events: [StoredEvent], detail: String?) -> EventSourcingError {
        let parts = (detail ?? "").split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let state = parts.first.map(String.init) ?? ""
        let constraint = parts.count > 1 && !parts[1].isEmpty ? "constraint \(parts[1])" : "a constraint"
        let first = events.first
        return EventSourcingError(.constraintViolation,
                                  "the save (\(events.count) event\(events.count == 1 ? "" : "s")) broke \(constraint) (\(state))",
                                  originatorID: first?.originatorID, originatorVersion: events.count == 1 ? first?.originatorVersion : nil,
                                  topic: events.count == 1 ? first?.topic : nil, storeCode: state.isEmpty ? nil : state)
    }

    public func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        let (originatorID, gt, lte, limit, desc) = (query.originatorID, query.after, query.upTo, query.limit, query.order == .descending)
        if let limit, limit <= 0 { return [] }
        let s = schema
        let lower = Int64(gt ?? Int.min)
        let upper = Int64(lte ?? Int.max)
        if !desc && limit == nil {
            // What a repository get asks for: grouped with concurrent ones into one query.
            return try await groupedSelect(PendingRead(id: originatorID, gt: lower, lte: upper))
        }
        let lim = Int64(limit ?? Int.max)
        return try await run { client in
            let rows = try await client.query(desc ? """
                SELECT originator_version, topic, state FROM \(unescaped: s).events
                WHERE originator_id = \(originatorID) AND originator_version > \(lower) AND originator_version <= \(upper)
                ORDER BY originator_version DESC LIMIT \(lim)
                """ : """
                SELECT originator_version, topic, state FROM \(unescaped: s).events
                WHERE originator_id = \(originatorID) AND originator_version > \(lower) AND originator_version <= \(upper)
                ORDER BY originator_version ASC LIMIT \(lim)
                """, logger: self.logger)
            // Collected, then decoded synchronously: iterating the rows asynchronously costs a
            // suspension per row.
            let collected = try await rows.collect()
            var out: [StoredEvent] = []
            out.reserveCapacity(collected.count)
            for row in collected {
                let (v, t, st) = try row.decode((Int64, String, ByteBuffer).self)
                out.append(StoredEvent(originatorID: originatorID, originatorVersion: Int(v), topic: t, state: st.bytes))
            }
            return out
        }
    }

    public func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        guard limit > 0 else { return [] }
        let s = schema
        let stopID = stop ?? Int64.max
        let lim = Int64(limit)
        return try await run { client in
            let rows = try await client.query(topics.isEmpty ? """
                SELECT notification_id, originator_id, originator_version, topic, state FROM \(unescaped: s).events
                WHERE notification_id >= \(start) AND notification_id <= \(stopID) ORDER BY notification_id LIMIT \(lim)
                """ : """
                SELECT notification_id, originator_id, originator_version, topic, state FROM \(unescaped: s).events
                WHERE notification_id >= \(start) AND notification_id <= \(stopID) AND topic = ANY(\(topics))
                ORDER BY notification_id LIMIT \(lim)
                """, logger: self.logger)
            return try await PostgresStore.notifications(rows)
        }
    }

    static func notifications(_ rows: PostgresRowSequence) async throws -> [StoredNotification] {
        let collected = try await rows.collect()
        var out: [StoredNotification] = []
        out.reserveCapacity(collected.count)
        for row in collected {
            // Decoded as optionals, so a NULL (possible only if a NOT NULL was dropped outside
            // the library) is refused naming the row, not just the column.
            let (n, id, v, t, st) = try row.decode((Int64, UUID?, Int64?, String?, ByteBuffer?).self)
            guard let id, let v, let t, let st else {
                let column = id == nil ? "originator_id" : v == nil ? "originator_version" : t == nil ? "topic" : "state"
                throw EventSourcingError(.databaseCorrupt, "events row has a NULL \(column)", originatorID: id,
                                         originatorVersion: v.map { Int($0) }, topic: t, notificationID: n)
            }
            out.append(StoredNotification(id: n, originatorID: id, originatorVersion: Int(v), topic: t, state: st.bytes))
        }
        return out
    }

    public func maxNotificationID() async throws -> Int64? {
        let s = schema
        return try await run { client in
            var out: Int64?
            for try await v in try await client.query("SELECT max(notification_id) FROM \(unescaped: s).events",
                                                      logger: self.logger).decode(Int64?.self) { out = v }
            return out
        }
    }
}
