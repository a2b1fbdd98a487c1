import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

extension PostgresStore {
    public func selectEvents(originatorID: UUID, gt: Int?, lte: Int?, desc: Bool, limit: Int?) async throws -> [StoredEvent] {
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

    public func countEvents(keyScope: String) async throws -> Int {
        let s = schema
        return try await run { client in
            var n: Int64 = 0
            for try await v in try await client.query("SELECT count(*) FROM \(unescaped: s).events WHERE key_scope = \(keyScope)",
                                                      logger: self.logger).decode(Int64.self) { n = v }
            return Int(n)
        }
    }

    // MARK: Snapshots

    public func insertSnapshot(_ snapshot: StoredEvent) async throws {
        if snapshot.keyScope == nil { try await refusePlaintext(snapshot, snapshot: true) }
        let s = schema
        let scope = snapshot.keyScope ?? ""
        let state = snapshot.state.byteBuffer
        let inserted: Int = try await run { client in
            // Not written for a shredded scope, even by a process with a stale cached key.
            var n = 0
            for try await _ in try await client.query("""
                INSERT INTO \(unescaped: s).snapshots (originator_id, originator_version, topic, state, key_scope)
                SELECT \(snapshot.originatorID), \(Int64(snapshot.originatorVersion)), \(snapshot.topic), \(state), NULLIF(\(scope), '')
                WHERE NOT EXISTS (SELECT 1 FROM \(unescaped: s).tombstones WHERE scope = \(scope))
                ON CONFLICT (originator_id, originator_version)
                DO UPDATE SET topic = EXCLUDED.topic, state = EXCLUDED.state, key_scope = EXCLUDED.key_scope
                RETURNING 1
                """, logger: self.logger).decode(Int32.self) { n += 1 }
            return n
        }
        if inserted == 0 {
            throw KeyManagementError(.shredded, "the scope was shredded", scope: scope)
        }
    }

    public func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        let s = schema
        let upper = Int64(lte ?? Int.max)
        return try await run { client in
            var out: StoredEvent?
            for try await (v, t, st) in try await client.query("""
                SELECT originator_version, topic, state FROM \(unescaped: s).snapshots
                WHERE originator_id = \(originatorID) AND originator_version <= \(upper)
                ORDER BY originator_version DESC LIMIT 1
                """, logger: self.logger).decode((Int64, String, ByteBuffer).self) {
                out = StoredEvent(originatorID: originatorID, originatorVersion: Int(v), topic: t, state: st.bytes)
            }
            return out
        }
    }

    public func deleteSnapshots(keyScope: String) async throws -> Int {
        let s = schema
        return try await run { client in
            var n = 0
            for try await _ in try await client.query(
                "DELETE FROM \(unescaped: s).snapshots WHERE key_scope = \(keyScope) RETURNING 1",
                logger: self.logger).decode(Int32.self) { n += 1 }
            return n
        }
    }

    // MARK: Admin

    /// A page of snapshots in `(originatorID, version)` order after `cursor`.
    public func selectSnapshots(after cursor: (UUID, Int)?, limit: Int) async throws -> [StoredEvent] {
        let s = schema
        let lim = Int64(limit)
        return try await run { client in
            var out: [StoredEvent] = []
            // The first page has no lower bound: a stand-in cursor (the nil UUID, version -1)
            // would skip a snapshot stored below it.
            let rows: PostgresRowSequence
            if let c = cursor {
                rows = try await client.query("""
                    SELECT originator_id, originator_version, topic, state FROM \(unescaped: s).snapshots
                    WHERE (originator_id, originator_version) > (\(c.0), \(Int64(c.1)))
                    ORDER BY originator_id, originator_version LIMIT \(lim)
                    """, logger: self.logger)
            } else {
                rows = try await client.query("""
                    SELECT originator_id, originator_version, topic, state FROM \(unescaped: s).snapshots
                    ORDER BY originator_id, originator_version LIMIT \(lim)
                    """, logger: self.logger)
            }
            for try await (oid, ov, t, st) in rows.decode((UUID, Int64, String, ByteBuffer).self) {
                out.append(StoredEvent(originatorID: oid, originatorVersion: Int(ov), topic: t, state: st.bytes))
            }
            return out
        }
    }

    /// Notifications whose header names `keyScope`, ascending, after notification `after`.
    public func selectNotifications(keyScope: String, after: Int64, limit: Int) async throws -> [StoredNotification] {
        let s = schema
        let lim = Int64(limit)
        return try await run { client in
            try await PostgresStore.notifications(try await client.query("""
                SELECT notification_id, originator_id, originator_version, topic, state FROM \(unescaped: s).events
                WHERE key_scope = \(keyScope) AND notification_id > \(after) ORDER BY notification_id LIMIT \(lim)
                """, logger: self.logger))
        }
    }

    /// Counts of what the store holds (sizes from `pg_total_relation_size`).
    public func statistics() async throws -> [String: Int] {
        let s = schema
        return try await run { client in
            var out: [String: Int] = [:]
            for try await (e, a, sn, sc, dk, sh, b) in try await client.query("""
                SELECT (SELECT count(*) FROM \(unescaped: s).events),
                       (SELECT count(DISTINCT originator_id) FROM \(unescaped: s).events),
                       (SELECT count(*) FROM \(unescaped: s).snapshots),
                       (SELECT count(DISTINCT scope) FROM \(unescaped: s).data_keys),
                       (SELECT count(*) FROM \(unescaped: s).data_keys),
                       (SELECT count(*) FROM \(unescaped: s).tombstones),
                       (pg_total_relation_size('\(unescaped: s).events'::regclass) + pg_total_relation_size('\(unescaped: s).snapshots'::regclass))::bigint
                """, logger: self.logger).decode((Int64, Int64, Int64, Int64, Int64, Int64, Int64).self) {
                out = ["events": Int(e), "aggregates": Int(a), "snapshots": Int(sn), "key_scopes": Int(sc),
                       "data_keys": Int(dk), "shredded_scopes": Int(sh), "bytes_on_disk": Int(b)]
            }
            return out
        }
    }
}

extension PostgresStore {
    /// Drops the store's schema and everything in it, then closes the store. Irreversible:
    /// meant for tests and for tearing down throwaway stores.
    public func destroy() async throws {
        let s = schema
        _ = try await run { client in
            try await client.query("DROP SCHEMA IF EXISTS \(unescaped: s) CASCADE", logger: self.logger)
            return 0
        }
        await close()
    }
}
