import EventSourcing
import Foundation
import KeyManagement

/// The key-change feed (``KeyChangeFeed``) and the encryption counts (``KeyUsageCounter``):
/// schema 5.
///
/// `key_changes` gets a row, from a trigger and so in the same transaction, whenever a
/// tombstone is written (kind `shred`) and whenever a data key above version 1 is inserted
/// (kind `rotate`); each insert prunes the rows ``KeyChange/retained`` or more positions behind
/// it. `seq` is an INTEGER PRIMARY KEY: the writer is the only one, so positions follow commit
/// order, and since the newest row is never pruned a position is never reused.
/// `key_usage` holds the encryptions reserved per key version; a shred deletes its scope's rows
/// (the same trigger). Neither table holds key material or anything but scope ids, which the
/// tombstones hold already.
extension SQLiteStore {
    // MARK: Key changes

    static let keyChangesSchema = """
        CREATE TABLE IF NOT EXISTS key_changes (
            seq INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            kind TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS key_usage (
            scope TEXT NOT NULL,
            version INTEGER NOT NULL,
            reserved INTEGER NOT NULL,
            PRIMARY KEY (scope, version)
        ) WITHOUT ROWID;
        CREATE TRIGGER IF NOT EXISTS key_changes_shred AFTER INSERT ON tombstones BEGIN
            INSERT INTO key_changes (scope, kind, at) VALUES (NEW.scope, 'shred', NEW.shredded_at);
            DELETE FROM key_changes WHERE seq <= (SELECT max(seq) FROM key_changes) - \(KeyChange.retained);
            DELETE FROM key_usage WHERE scope = NEW.scope;
        END;
        """ + rotationTrigger

    /// Records kind `rotate` for every data key inserted above version 1. Made again if the key
    /// table is rebuilt (`eraseDataKeys`), which drops it.
    static let rotationTrigger = """
        CREATE TRIGGER IF NOT EXISTS key_changes_rotate AFTER INSERT ON data_keys WHEN NEW.version > 1 BEGIN
            INSERT INTO key_changes (scope, kind, at) VALUES (NEW.scope, 'rotate', NEW.created_at);
            DELETE FROM key_changes WHERE seq <= (SELECT max(seq) FROM key_changes) - \(KeyChange.retained);
        END;
        """

    /// Records a key change in the transaction `conn` is in: for operations that change keys
    /// without a tombstone or a new version (retiring old versions records kind `retire`).
    static func recordKeyChange(scope: String, kind: KeyChangeKind, at time: Date,
                                _ conn: SQLiteConnection) throws(EventSourcingError) {
        let s = try conn.statement("INSERT INTO key_changes (scope, kind, at) VALUES (?, ?, ?)")
        s.bind(1, scope)
        s.bind(2, kind.rawValue)
        s.bind(3, time.timeIntervalSince1970)
        try s.run()
        let prune = try conn.statement("DELETE FROM key_changes WHERE seq <= (SELECT max(seq) FROM key_changes) - ?")
        prune.bind(1, KeyChange.retained)
        try prune.run()
    }

    /// Whether `error` says the schema-5 tables are missing (a read-only store over an older
    /// schema, which is read as it is).
    static func isMissingSchema5(_ error: EventSourcingError) -> Bool {
        error.message.contains("no such table: key_changes") || error.message.contains("no such table: key_usage")
    }
}

extension SQLiteStore: KeyChangeFeed {
    public func keyChangeMark() async throws -> Int64 {
        guard hasSchema else { return 0 }
        return try await read { conn in
            do {
                let s = try conn.statement("SELECT max(seq) FROM key_changes")
                defer { s.reset() }
                guard try s.step() else { return 0 }
                if s.isNull(0) { return 0 }
                guard let v = s.integer(0) else {
                    throw KeyManagementError(.storeFailure, "key_changes holds a seq that is \(s.describeColumn(0)), not an integer")
                }
                return v
            } catch let e as EventSourcingError where SQLiteStore.isMissingSchema5(e) {
                return 0
            }
        }
    }

    public func keyChanges(after seq: Int64, limit: Int) async throws -> KeyChangePage {
        guard hasSchema else { return KeyChangePage(changes: [], gap: false) }
        let limit = min(max(1, limit), 10_000)
        return try await read { conn in
            do {
                // A gap: the oldest row kept is more than one past `seq` while rows after it exist.
                let first = try conn.statement("SELECT min(seq), max(seq) FROM key_changes")
                var gap = false
                if try first.step(), let lo = first.integer(0), let hi = first.integer(1) {
                    gap = hi > seq && lo > seq &+ 1
                }
                first.reset()
                if gap { return KeyChangePage(changes: [], gap: true) }
                let s = try conn.statement("SELECT seq, scope, kind, at FROM key_changes WHERE seq > ? ORDER BY seq LIMIT ?")
                defer { s.reset() }
                s.bind(1, seq)
                s.bind(2, limit)
                var out: [KeyChange] = []
                while try s.step() {
                    guard let n = s.integer(0) else {
                        throw KeyManagementError(.storeFailure, "a key_changes row has a seq that is \(s.describeColumn(0)), not an integer")
                    }
                    let row = "key_changes row \(n)"
                    guard let scope = s.textValue(1) else {
                        throw KeyManagementError(.storeFailure, "\(row) has a scope that is \(s.describeColumn(1)), not text")
                    }
                    guard let text = s.textValue(2), let kind = KeyChangeKind(rawValue: text) else {
                        // An unknown kind (a newer library, or a forged row) is read as the
                        // strongest one the scope can still recover from: its keys are evicted.
                        out.append(KeyChange(seq: n, scope: scope, kind: .retire, at: Date(timeIntervalSince1970: s.real(3) ?? 0)))
                        continue
                    }
                    out.append(KeyChange(seq: n, scope: scope, kind: kind, at: Date(timeIntervalSince1970: s.real(3) ?? 0)))
                }
                return KeyChangePage(changes: out, gap: false)
            } catch let e as EventSourcingError where SQLiteStore.isMissingSchema5(e) {
                return KeyChangePage(changes: [], gap: false)
            }
        }
    }
}

extension SQLiteStore: KeyUsageCounter {
    public func reserveEncryptions(scope: String, version: UInt32, count: UInt64, limit: UInt64) async throws -> UInt64? {
        // A version without a row has its first block reserved implicitly (KeyUsage.firstBlock).
        guard let initial = KeyUsage.initialTotal(count: count, limit: limit), let i = Int64(exactly: initial),
              let c = Int64(exactly: count), let l = Int64(exactly: limit) else { return nil }
        // UPDATE, else INSERT, in the write's transaction (no RETURNING: SQLite before 3.35 has none).
        return try await write { conn -> UInt64? in
            let update = try conn.statement(
                "UPDATE key_usage SET reserved = reserved + ?1 WHERE scope = ?2 AND version = ?3 AND reserved <= ?4 - ?1")
            update.bind(1, c)
            update.bind(2, scope)
            update.bind(3, Int64(version))
            update.bind(4, l)
            try update.run()
            let added = conn.changes > 0
            let s = try conn.statement("SELECT reserved FROM key_usage WHERE scope = ? AND version = ?")
            defer { s.reset() }
            s.bind(1, scope)
            s.bind(2, Int64(version))
            guard try s.step() else {
                // No row yet: the first block (implicit) and this reservation.
                let insert = try conn.statement("INSERT INTO key_usage (scope, version, reserved) VALUES (?, ?, ?)")
                insert.bind(1, scope)
                insert.bind(2, Int64(version))
                insert.bind(3, i)
                try insert.run()
                return initial
            }
            guard let total = s.integer(0), let t = UInt64(exactly: total) else {
                throw KeyManagementError(.storeFailure,
                    "the key_usage row of data key v\(version) holds \(s.describeColumn(0)), not a count", scope: scope, keyVersion: version)
            }
            return added ? t : nil   // not added: the version is full
        }
    }

    public func reservedEncryptions(scope: String) async throws -> [UInt32: UInt64] {
        guard hasSchema else { return [:] }
        return try await read { conn in
            do {
                let s = try conn.statement("SELECT version, reserved FROM key_usage WHERE scope = ?")
                defer { s.reset() }
                s.bind(1, scope)
                var out: [UInt32: UInt64] = [:]
                while try s.step() {
                    guard let v = s.integer(0), let version = UInt32(exactly: v), let n = s.integer(1), let count = UInt64(exactly: n) else {
                        throw KeyManagementError(.storeFailure,
                            "a key_usage row holds \(s.describeColumn(0)) with \(s.describeColumn(1)), not a key version and a count",
                            scope: scope)
                    }
                    out[version] = count
                }
                return out
            } catch let e as EventSourcingError where SQLiteStore.isMissingSchema5(e) {
                return [:]
            }
        }
    }
}
