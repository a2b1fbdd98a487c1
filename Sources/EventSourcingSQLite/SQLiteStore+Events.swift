import EventSourcing
import Foundation
import KeyManagement
import Logging

extension SQLiteStore {
    public func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try await insertEvents(events, newKeys: [])
    }

    public var keyStore: any KeyStore { self }

    /// True for this store itself: its data keys and events share one database transaction.
    public func sharesTransactions(with keyStore: any KeyStore) -> Bool { (keyStore as? SQLiteStore) === self }

    public func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey]) async throws -> [Int64] {
        guard !events.isEmpty || !newKeys.isEmpty else { return [] }
        let refusePlaintext = !configuration.allowsPlaintextWrites
        return try await write { conn in
            try SQLiteStore.insertRows(events, newKeys: newKeys, refusePlaintext: refusePlaintext, conn)
        }
    }

    /// Inserts `newKeys` and `events` on the writer connection, inside the caller's transaction
    /// (a save's savepoint): the body of every event insert, tracked or not.
    static func insertRows(_ events: [StoredEvent], newKeys: [WrappedDataKey], refusePlaintext: Bool,
                           _ conn: SQLiteConnection) throws -> [Int64] {
        // A shred's erasure record is the one plaintext record such a store takes (exactly its format).
        if let e = events.first(where: { $0.keyScope == nil && !ErasureRecord.matches($0) }) {
            try SQLiteStore.refusePlaintext(e, snapshot: false, migrating: !refusePlaintext, conn)
        }
        for key in newKeys { try SQLiteStore.insertDataKey(key, conn) }
        // A scope shredded by another process must not get new records under a key this
        // process still has cached.
        var checked = Set<ExactScope>()   // exact bytes: equivalent spellings are different scopes
        if !events.isEmpty { try SQLiteStore.checkNotificationIDsLeft(events.count, conn) }
        let insert = try conn.statement(
            "INSERT INTO events (originator_id, originator_version, topic, state, key_scope) VALUES (?, ?, ?, ?, ?)")
        var ids: [Int64] = []
        ids.reserveCapacity(events.count)
        for e in events {
            let scope = e.keyScope
            if let scope, checked.insert(ExactScope(scope)).inserted, let t = try SQLiteStore.tombstone(scope, conn) {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let s = try conn.statement(
                "INSERT INTO events (originator_id, originator_version, topic, state, key_scope) VALUES (?, ?, ?, ?, ?)")
            s.bind(1, e.originatorID)
            s.bind(2, e.originatorVersion)
            s.bind(3, e.topic)
            s.bind(4, e.state)
            s.bind(5, scope)
            do { try s.run() } catch {
                guard error.code == .concurrencyConflict || error.code == .constraintViolation else { throw error }
                // Name the record; keep SQLite's code (which constraint failed is in the message).
                let message = error.code == .concurrencyConflict
                    ? "an event with this originator id and version exists" : "the event broke a constraint (\(error.message))"
                throw EventSourcingError(error.code, message, originatorID: e.originatorID,
                                         originatorVersion: e.originatorVersion, topic: e.topic, storeCode: error.storeCode)
            }
            ids.append(conn.lastInsertRowID)
        }
        _ = insert
        return ids
    }

    public func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        let (originatorID, gt, lte, limit) = (query.originatorID, query.after, query.upTo, query.limit)
        if let limit, limit <= 0 { return [] }
        var sql = "SELECT originator_version, topic, state, notification_id, key_scope FROM events WHERE originator_id = ?"
        if gt != nil { sql += " AND originator_version > ?" }
        if lte != nil { sql += " AND originator_version <= ?" }
        sql += query.order == .descending ? " ORDER BY originator_version DESC" : " ORDER BY originator_version ASC"
        if limit != nil { sql += " LIMIT ?" }
        let text = sql
        // What a repository get asks for: the data keys of its scopes are read in the same
        // hand-over to the reader thread, for the key ring's miss that follows (see
        // dataKeys(scope:reading:)).
        let prefetch = limit == nil && query.order == .ascending
        let started = prefetch ? prefetchedKeys.start() : nil
        let (events, keys) = try await read { conn -> ([StoredEvent], [ExactScope: [WrappedDataKey]]) in
            let s = try conn.statement(text)
            var i: Int32 = 1
            s.bind(i, originatorID); i += 1
            if let gt { s.bind(i, gt); i += 1 }
            if let lte { s.bind(i, lte); i += 1 }
            if let limit { s.bind(i, limit) }
            defer { s.reset() }
            var out: [StoredEvent] = []
            var scopes: [String] = []
            var keys: [ExactScope: [WrappedDataKey]] = [:]
            while try s.step() {
                if prefetch, let scope = s.textValue(4), !scope.isEmpty, scopes.count < 4,
                   !scopes.contains(where: { ExactScope($0) == ExactScope(scope) }) {
                    scopes.append(scope)
                    // Read at once, while this statement holds the read transaction open: after
                    // its last row SQLite ends the transaction, and a key query then would begin
                    // another (its WAL read lock, its file locks). The same snapshot, too.
                    keys[ExactScope(scope)] = SQLiteStore.prefetchKeys(scope, conn)
                }
                out.append(try s.storedRecord(table: "events", knownID: originatorID, version: 0, topic: 1, state: 2, rowID: 3).event)
            }
            return (out, keys)
        }
        if let started { prefetchedKeys.keep(keys, startedAt: started) }
        return events
    }

    /// The data keys of `scopes`, read after their records; a scope whose rows cannot be read is
    /// left out (the key ring's own look-up then reports it).
    static func prefetchKeys(_ scopes: [String], _ conn: SQLiteConnection) -> [ExactScope: [WrappedDataKey]] {
        var keys: [ExactScope: [WrappedDataKey]] = [:]
        for scope in scopes { keys[ExactScope(scope)] = prefetchKeys(scope, conn) }
        return keys
    }

    /// The data keys of one scope, read ahead; nil for none, or for rows that cannot be read.
    static func prefetchKeys(_ scope: String, _ conn: SQLiteConnection) -> [WrappedDataKey]? {
        guard let found = try? dataKeys(scope, conn), !found.isEmpty else { return nil }
        return found
    }

    public func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        guard limit > 0 else { return [] }
        var sql = "SELECT notification_id, originator_id, originator_version, topic, state FROM events WHERE notification_id >= ?"
        if stop != nil { sql += " AND notification_id <= ?" }
        if !topics.isEmpty { sql += " AND topic IN (" + Array(repeating: "?", count: topics.count).joined(separator: ", ") + ")" }
        sql += " ORDER BY notification_id LIMIT ?"
        let query = sql
        return try await read { conn in
            let s = try conn.statement(query)
            var i: Int32 = 1
            s.bind(i, start); i += 1
            if let stop { s.bind(i, stop); i += 1 }
            for t in topics { s.bind(i, t); i += 1 }
            s.bind(i, limit)
            defer { s.reset() }
            var out: [StoredNotification] = []
            out.reserveCapacity(min(limit, 1000))
            while try s.step() { out.append(try s.storedNotification()) }
            return out
        }
    }

    public func maxNotificationID() async throws -> Int64? {
        try await read { conn in try SQLiteStore.maxNotificationID(conn) }
    }

    static func maxNotificationID(_ conn: SQLiteConnection) throws(EventSourcingError) -> Int64? {
        let s = try conn.statement("SELECT max(notification_id) FROM events")
        defer { s.reset() }
        guard try s.step(), !s.isNull(0) else { return nil }
        guard let id = s.integer(0) else {
            throw EventSourcingError(.databaseCorrupt, "the events table's last notification_id is \(s.describeColumn(0)), not an integer")
        }
        return id
    }

    /// Refuses a save of `count` events when the notification ids after the last one would pass
    /// `Int64.max`: SQLite would then give the new rows random free ids, out of log order, and a
    /// reader that follows the log would miss them. Only a forged row can put the log there.
    static func checkNotificationIDsLeft(_ count: Int, _ conn: SQLiteConnection) throws(EventSourcingError) {
        guard let last = try maxNotificationID(conn), last > Int64.max - Int64(count) else { return }
        throw EventSourcingError(.databaseCorrupt,
                                 "the events table holds notification id \(last): no room for \(count) more (they stop at \(Int64.max)); the row was not written by this library",
                                 notificationID: last)
    }

    public func countEvents(keyScope: String) async throws -> Int {
        try await read { conn in
            let s = try conn.statement("SELECT count(*) FROM events WHERE key_scope = ?")
            defer { s.reset() }
            s.bind(1, keyScope)
            return try s.step() ? s.int(0) : 0
        }
    }

    public func countPlaintextEvents() async throws -> Int {
        try await read { conn in
            // Erasure records are plaintext by design and hold no personal data: not counted.
            let s = try conn.statement("SELECT count(*) FROM events WHERE key_scope IS NULL AND topic <> ?")
            defer { s.reset() }
            s.bind(1, ErasureRecord.topic)
            return try s.step() ? s.int(0) : 0
        }
    }

    /// Throws `.plaintextRejected` naming `record` if the store has a master key (unless
    /// `migrating`: opened with ``Configuration/allowsPlaintextWrites``), or if it was told to
    /// refuse unencrypted records for good (``refusePlaintextWrites()``, whatever `migrating`).
    /// Read in the write's own transaction, only for a save that holds an unencrypted record: a
    /// refusal set by another process is seen at once, and encrypted saves never pay for it.
    static func refusePlaintext(_ record: StoredEvent, snapshot: Bool, migrating: Bool = false, _ conn: SQLiteConnection) throws {
        let s = try conn.statement("SELECT EXISTS (SELECT 1 FROM master_key_checks), "
            + "EXISTS (SELECT 1 FROM es_meta WHERE key = '\(plaintextRefusedKey)' AND value = 1)")
        defer { s.reset() }
        guard try s.step() else { return }
        if s.int(1) == 1 {
            throw EventSourcingError(.plaintextRejected,
                "unencrypted \(snapshot ? "snapshot" : "event") refused: this store was encrypted and refuses unencrypted records "
                + "for good, also when opened with allowsPlaintextWrites (give the application's Mapper a Keyring)",
                originatorID: record.originatorID, originatorVersion: record.originatorVersion, topic: record.topic)
        }
        guard !migrating, s.int(0) == 1 else { return }
        throw EventSourcingError(.plaintextRejected,
            "unencrypted \(snapshot ? "snapshot" : "event") refused: this store has a master key, so its records must be "
            + "encrypted (give the application's Mapper a Keyring, or open the store with allowsPlaintextWrites for a migration)",
            originatorID: record.originatorID, originatorVersion: record.originatorVersion, topic: record.topic)
    }
}
