import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

extension PostgresStore {
    public func countPlaintextEvents() async throws -> Int {
        let s = schema
        return try await run { client in
            var n: Int64 = 0
            // Erasure records are plaintext by design and hold no personal data: not counted.
            for try await v in try await client.query(
                "SELECT count(*) FROM \(unescaped: s).events WHERE key_scope IS NULL AND topic <> \(ErasureRecord.topic)",
                logger: self.logger).decode(Int64.self) { n = v }
            return Int(n)
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
    public func statistics() async throws -> StoreStatistics {
        let s = schema
        return try await run { client in
            var out = StoreStatistics(events: 0, aggregates: 0, snapshots: 0, keyScopes: 0, dataKeys: 0, shreddedScopes: 0,
                                      bytesOnDisk: 0)
            for try await (e, a, sn, sc, dk, sh, b) in try await client.query("""
                SELECT (SELECT count(*) FROM \(unescaped: s).events),
                       (SELECT count(DISTINCT originator_id) FROM \(unescaped: s).events WHERE topic <> \(ErasureRecord.topic)),
                       (SELECT count(*) FROM \(unescaped: s).snapshots),
                       (SELECT count(DISTINCT scope) FROM \(unescaped: s).data_keys),
                       (SELECT count(*) FROM \(unescaped: s).data_keys),
                       (SELECT count(*) FROM \(unescaped: s).tombstones),
                       (pg_total_relation_size('\(unescaped: s).events'::regclass) + pg_total_relation_size('\(unescaped: s).snapshots'::regclass))::bigint
                """, logger: self.logger).decode((Int64, Int64, Int64, Int64, Int64, Int64, Int64).self) {
                out = StoreStatistics(events: Int(e), aggregates: Int(a), snapshots: Int(sn), keyScopes: Int(sc),
                                      dataKeys: Int(dk), shreddedScopes: Int(sh), bytesOnDisk: Int(b))
            }
            return out
        }
    }

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
