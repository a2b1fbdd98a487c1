import EventSourcing
import Foundation

extension SQLiteStore {
    /// A page of snapshots in `(originatorID, version)` order after `cursor`, for verification tools.
    /// - Throws: `.databaseCorrupt` naming a row that does not hold what the library writes
    ///   (an originator id that is not 16 bytes, a version that is not an integer, …): such a
    ///   row is never skipped or read as 0, so a cursor over the pages always moves on.
    public func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent] {
        guard limit > 0 else { return [] }   // SQLite reads a negative LIMIT as none
        let sql = "SELECT originator_id, originator_version, topic, state FROM snapshots"
            + (cursor == nil ? "" : " WHERE (originator_id, originator_version) > (?, ?)")
            + " ORDER BY originator_id, originator_version LIMIT ?"
        let after = cursor.map { ($0.originatorID, $0.originatorVersion) }
        return try await read { conn in
            let s = try conn.statement(sql)
            defer { s.reset() }
            var i: Int32 = 1
            if let after {
                s.bind(1, after.0)
                s.bind(2, after.1)
                i = 3
            }
            s.bind(i, limit)
            var out: [StoredEvent] = []
            while try s.step() {
                out.append(try s.storedRecord(table: "snapshots", originatorID: 0, version: 1, topic: 2, state: 3).event)
            }
            return out
        }
    }

    /// Notifications whose header names `keyScope`, ascending, after notification `after`.
    /// - Throws: `.databaseCorrupt` naming a row that does not hold what the library writes.
    public func selectNotifications(keyScope: String, after: Int64, limit: Int) async throws -> [StoredNotification] {
        try await read { conn in
            let s = try conn.statement("""
                SELECT notification_id, originator_id, originator_version, topic, state FROM events
                WHERE key_scope = ? AND notification_id > ? ORDER BY notification_id LIMIT ?
                """)
            defer { s.reset() }
            s.bind(1, keyScope)
            s.bind(2, after)
            s.bind(3, limit)
            var out: [StoredNotification] = []
            while try s.step() { out.append(try s.storedNotification()) }
            return out
        }
    }

    /// The statistics type (the same for every store).
    public typealias Statistics = StoreStatistics

    /// Counts of what the store holds (all zero for a new, empty database opened read-only).
    public func statistics() async throws -> StoreStatistics {
        let path = self.path
        guard hasSchema else {
            return StoreStatistics(events: 0, aggregates: 0, snapshots: 0, keyScopes: 0, dataKeys: 0, shreddedScopes: 0,
                              bytesOnDisk: (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        }
        return try await read { conn in
            func count(_ sql: String) throws -> Int {
                let s = try conn.statement(sql)
                defer { s.reset() }
                return try s.step() ? s.int(0) : 0
            }
            let size = { (p: String) in (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? 0 }
            return StoreStatistics(events: try count("SELECT count(*) FROM events"),
                              // A shred's erasure record is in the log, but its id is no aggregate's.
                              aggregates: try count("SELECT count(DISTINCT originator_id) FROM events WHERE topic <> '\(ErasureRecord.topic)'"),
                              snapshots: try count("SELECT count(*) FROM snapshots"),
                              // Rows a shred erased have the empty scope (SQLiteStore.eraseDataKeys).
                              keyScopes: try count("SELECT count(DISTINCT scope) FROM data_keys WHERE scope > ''"),
                              dataKeys: try count("SELECT count(*) FROM data_keys WHERE scope > ''"),
                              shreddedScopes: try count("SELECT count(*) FROM tombstones"),
                              bytesOnDisk: size(path) + size(path + "-wal"))
        }
    }
}
