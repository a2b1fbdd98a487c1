import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Tracking records in the schema's `tracking` table (one row per name holding its highest
/// notification id), moved forward by one statement that cannot go back:
/// `INSERT … ON CONFLICT (name) DO UPDATE … WHERE recorded < new`. Concurrent inserts of one id
/// for one name queue on the row's lock; the first commits and the others find the position
/// already there, so exactly one succeeds.
///
/// A tracked save is not part of the group commit: it is one call of `insert_tracked_save`,
/// which runs the group's save function for this one save and then moves the position, in the
/// statement's transaction. A refused position rolls the events back with it (their
/// notification ids are taken under the events' lock, so none is used up).
extension PostgresStore: KeyCommittingProcessRecorder {
    public func insertTracking(_ tracking: Tracking) async throws {
        try tracking.validate()
        try checkOpenForTracking()
        let s = schema
        let (name, id) = (tracking.name, tracking.notificationID)
        _ = try await run { client in
            try await PostgresStore.translatingTrackingConflict(tracking) {
                _ = try await client.query("SELECT \(unescaped: s).insert_tracking(\(name), \(id))", logger: self.logger).collect()
            }
        }
    }

    public func maxTrackingID(_ name: String) async throws -> Int64? {
        try Tracking.validate(name: name)
        try checkOpenForTracking()
        let s = schema
        return try await run { client in
            let rows = try await client.query("SELECT notification_id FROM \(unescaped: s).tracking WHERE name = \(name)",
                                              logger: self.logger).collect()
            return try rows.first?.decode(Int64.self)
        }
    }

    public func hasTrackingID(_ name: String, _ notificationID: Int64) async throws -> Bool {
        guard let recorded = try await maxTrackingID(name) else { return false }
        return notificationID <= recorded
    }

    public func deleteTracking(_ name: String) async throws {
        try Tracking.validate(name: name)
        try checkOpenForTracking()
        let s = schema
        _ = try await run { client in
            _ = try await client.query("DELETE FROM \(unescaped: s).tracking WHERE name = \(name)", logger: self.logger).collect()
        }
    }

    public func trackingPositions(after name: String?, limit: Int) async throws -> [Tracking] {
        try Tracking.validatePage(after: name, limit: limit)
        try checkOpenForTracking()
        let s = schema
        let (after, count) = (name ?? "", Int64(limit))
        return try await run { client in
            // COLLATE "C": by the names' bytes, as the other recorders order them.
            let rows = try await client.query("""
                SELECT name, notification_id FROM \(unescaped: s).tracking
                WHERE name COLLATE "C" > \(after) ORDER BY name COLLATE "C" LIMIT \(count)
                """, logger: self.logger).collect()
            return try rows.map { row in
                let (text, id) = try row.decode((String, Int64).self)
                return Tracking(name: text, notificationID: id)
            }
        }
    }

    public func insertEvents(_ events: [StoredEvent], tracking: Tracking?) async throws -> [Int64] {
        try await insertEvents(events, newKeys: [], tracking: tracking)
    }

    public func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey], tracking: Tracking?) async throws -> [Int64] {
        guard let tracking else { return try await insertEvents(events, newKeys: newKeys) }
        try tracking.validate()
        try checkOpenForTracking()
        if events.isEmpty && newKeys.isEmpty {
            try await insertTracking(tracking)
            return []
        }
        if let e = events.first(where: { $0.keyScope == nil && !ErasureRecord.matches($0) }) { try await refusePlaintext(e, snapshot: false) }
        forgetPrefetchedKeys(newKeys.map(\.scope))
        let ids = events.map(\.originatorID), versions = events.map { Int64($0.originatorVersion) }
        let topics = events.map(\.topic), states = events.map(\.state.byteBuffer), scopes = events.map { $0.keyScope ?? "" }
        let kScopes = newKeys.map(\.scope), kVersions = newKeys.map { Int64($0.version) }, kKeks = newKeys.map(\.kekID)
        let kWrapped = newKeys.map(\.wrapped.byteBuffer), kCreated = newKeys.map(\.createdAt.timeIntervalSince1970)
        let (name, trackingID) = (tracking.name, tracking.notificationID)
        let s = schema
        let timeout = configuration.lockTimeout.components
        let (ms, overflow) = timeout.seconds.multipliedReportingOverflow(by: 1000)
        let lockMillis = overflow ? Int64.max : max(0, ms &+ timeout.attoseconds / 1_000_000_000_000_000)
        let query: PostgresQuery = """
            SELECT r_status, r_detail, r_first_id FROM \(unescaped: s).insert_tracked_save(
                \(lockMillis), \(ids), \(versions), \(topics), \(states), \(scopes),
                \(kScopes), \(kVersions), \(kKeks), \(kWrapped), \(kCreated), \(name), \(trackingID))
            """
        let result = try await run { client in
            try await PostgresStore.translatingTrackingConflict(tracking) {
                let rows = try await client.query(query, logger: self.logger).collect()
                guard rows.count == 1 else {
                    throw EventSourcingError(.recorderFailure, "the tracked save function returned \(rows.count) results for one save")
                }
                return try rows[0].decode((String, String?, Int64?).self)
            }
        }
        switch saveOutcome(events, status: result.0, detail: result.1, firstID: result.2) {
        case .success(let ids):
            return ids
        case .failure(var e as EventSourcingError) where e.code == .concurrencyConflict || e.code == .constraintViolation:
            e.message += "; the tracking record was not written"
            throw e
        case .failure(let e):
            throw e
        }
    }

    private func checkOpenForTracking() throws {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
    }

    /// Runs `body`, turning the server's `ES005` (raised by `insert_tracking` with the recorded
    /// id as its message) into `.trackingConflict` naming the name and both ids.
    static func translatingTrackingConflict<T>(_ tracking: Tracking, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let p as PSQLError where p.code == .server && p.serverInfo?[.sqlState] == "ES005" {
            let recorded = p.serverInfo?[.message].flatMap { Int64($0) } ?? tracking.notificationID
            throw Tracking.conflict(name: tracking.name, recorded: recorded, refused: tracking.notificationID)
        }
    }
}

extension PostgresSchema {
    /// `insert_tracking(name, id)` moves a name's position forward or raises `ES005` with the
    /// recorded id as its message; `insert_tracked_save(…)` runs `insert_saves` for one save
    /// and, if it is stored, `insert_tracking`, in the calling statement's transaction (so
    /// `ES005` there rolls the events back too). Replaced on every start, like `insert_saves`.
    static func trackingFunctions(_ s: String) -> [String] {
        [
            """
            CREATE OR REPLACE FUNCTION \(s).insert_tracking(t_name text, t_id bigint) RETURNS void
            LANGUAGE plpgsql
            AS $fn$
            DECLARE
                recorded bigint;
            BEGIN
                INSERT INTO \(s).tracking AS t (name, notification_id) VALUES (t_name, t_id)
                    ON CONFLICT (name) DO UPDATE SET notification_id = EXCLUDED.notification_id
                    WHERE t.notification_id < EXCLUDED.notification_id;
                IF NOT FOUND THEN
                    SELECT t.notification_id INTO recorded FROM \(s).tracking t WHERE t.name = t_name;
                    RAISE EXCEPTION USING ERRCODE = 'ES005', MESSAGE = coalesce(recorded::text, '');
                END IF;
            END
            $fn$
            """,
            """
            CREATE OR REPLACE FUNCTION \(s).insert_tracked_save(
                lock_ms bigint, ids uuid[], versions bigint[], topics text[], states bytea[], scopes text[],
                k_scopes text[], k_versions bigint[], k_keks text[], k_wrapped bytea[], k_created float8[],
                t_name text, t_id bigint)
            RETURNS TABLE (r_status text, r_detail text, r_first_id bigint)
            LANGUAGE plpgsql
            AS $fn$
            BEGIN
                SELECT x.status, x.detail, x.first_id INTO r_status, r_detail, r_first_id
                    FROM \(s).insert_saves(lock_ms, ARRAY[coalesce(array_length(ids, 1), 0)], ids, versions, topics, states, scopes,
                                           ARRAY[coalesce(array_length(k_scopes, 1), 0)], k_scopes, k_versions, k_keks,
                                           k_wrapped, k_created) x;
                IF r_status = 'ok' THEN
                    PERFORM \(s).insert_tracking(t_name, t_id);
                END IF;
                RETURN NEXT;
            END
            $fn$
            """,
        ]
    }
}
