import EventSourcing
import Foundation
import KeyManagement

/// Tracking records (schema 4's `tracking` table: one row per name holding its highest
/// notification id). Every write goes through the writer, in its own savepoint of a group
/// commit, so a tracked save's events, keys and position commit together or not at all; the
/// writer holds the database's write lock (BEGIN IMMEDIATE), so the check against the recorded
/// position and the update are never interleaved with another process's.
extension SQLiteStore: KeyCommittingProcessRecorder {
    public func insertTracking(_ tracking: Tracking) async throws {
        try tracking.validate()
        try await write { conn in try SQLiteStore.insertTrackingRow(tracking, conn) }
    }

    public func maxTrackingID(_ name: String) async throws -> Int64? {
        try Tracking.validate(name: name)
        // A read-only store over a new database, or over a store written before schema 4, has
        // no tracking table: no name was ever recorded there.
        guard hasSchema else { return nil }
        let checkTable = readOnlyAccess != nil
        return try await read { conn in
            if checkTable, try !SQLiteStore.hasTrackingTable(conn) { return nil }
            return try SQLiteStore.recordedTrackingID(name, conn)
        }
    }

    public func hasTrackingID(_ name: String, _ notificationID: Int64) async throws -> Bool {
        guard let recorded = try await maxTrackingID(name) else { return false }
        return notificationID <= recorded
    }

    public func deleteTracking(_ name: String) async throws {
        try Tracking.validate(name: name)
        try await write { conn in
            let s = try conn.statement("DELETE FROM tracking WHERE name = ?")
            s.bind(1, name)
            try s.run()
        }
    }

    public func trackingPositions(after name: String?, limit: Int) async throws -> [Tracking] {
        try Tracking.validatePage(after: name, limit: limit)
        guard hasSchema else { return [] }
        let checkTable = readOnlyAccess != nil
        return try await read { conn in
            if checkTable, try !SQLiteStore.hasTrackingTable(conn) { return [] }
            // The primary key's BINARY collation orders names by their UTF-8 bytes.
            let s = try conn.statement(name == nil
                ? "SELECT name, notification_id FROM tracking ORDER BY name LIMIT ?"
                : "SELECT name, notification_id FROM tracking WHERE name > ? ORDER BY name LIMIT ?")
            defer { s.reset() }
            if let name {
                s.bind(1, name)
                s.bind(2, Int64(limit))
            } else {
                s.bind(1, Int64(limit))
            }
            var page: [Tracking] = []
            while try s.step() {
                guard let text = s.textValue(0), let id = s.integer(1) else {
                    throw EventSourcingError(.databaseCorrupt,
                        "a tracking row holds \(s.describeColumn(0)) as its name and \(s.describeColumn(1)) as its notification id")
                }
                page.append(Tracking(name: text, notificationID: id))
            }
            return page
        }
    }

    public func insertEvents(_ events: [StoredEvent], tracking: Tracking?) async throws -> [Int64] {
        try await insertEvents(events, newKeys: [], tracking: tracking)
    }

    public func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey], tracking: Tracking?) async throws -> [Int64] {
        guard let tracking else { return try await insertEvents(events, newKeys: newKeys) }
        try tracking.validate()
        let refusePlaintext = !configuration.allowsPlaintextWrites
        // One write: its savepoint is rolled back whole if the events or the position are refused.
        return try await write { conn in
            let ids = try SQLiteStore.insertRows(events, newKeys: newKeys, refusePlaintext: refusePlaintext, conn)
            try SQLiteStore.insertTrackingRow(tracking, conn)
            return ids
        }
    }

    /// Moves `tracking.name`'s position to `tracking.notificationID`, inside the caller's transaction.
    /// - Throws: `.trackingConflict` if it is not higher than the recorded one (nothing is written).
    static func insertTrackingRow(_ tracking: Tracking, _ conn: SQLiteConnection) throws {
        try tracking.checkFollows(try recordedTrackingID(tracking.name, conn))
        let s = try conn.statement(
            "INSERT INTO tracking (name, notification_id) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET notification_id = excluded.notification_id")
        s.bind(1, tracking.name)
        s.bind(2, tracking.notificationID)
        try s.run()
    }

    /// The highest notification id recorded for `name`, nil for none.
    /// - Throws: `.databaseCorrupt` for a row that does not hold an integer (only a write
    ///   outside the library can put one there), naming the tracking name.
    static func recordedTrackingID(_ name: String, _ conn: SQLiteConnection) throws(EventSourcingError) -> Int64? {
        let s = try conn.statement("SELECT notification_id FROM tracking WHERE name = ?")
        defer { s.reset() }
        s.bind(1, name)
        guard try s.step() else { return nil }
        guard let id = s.integer(0) else {
            throw EventSourcingError(.databaseCorrupt,
                                     "the tracking row of \"\(name)\" holds \(s.describeColumn(0)), not a notification id")
        }
        return id
    }

    static func hasTrackingTable(_ conn: SQLiteConnection) throws(EventSourcingError) -> Bool {
        let s = try conn.statement("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tracking'")
        defer { s.reset() }
        return try s.step()
    }
}
