import CSQLite
import EventSourcing
import Foundation

/// The one place that calls the system libsqlite3: a connection, its cached prepared
/// statements, and error mapping. Not thread-safe: each connection is used by one thread at
/// a time (the store's writer queue, or one reader borrowed from the pool).
final class SQLiteConnection {
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]
    let path: String

    /// Opens (creating when `create`) the database at `path`.
    init(path: String, create: Bool, busyTimeoutMillis: Int32) throws(EventSourcingError) {
        self.path = path
        var handle: OpaquePointer?
        var flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX
        if create { flags |= SQLITE_OPEN_CREATE }
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        db = handle
        guard rc == SQLITE_OK else {
            let err = SQLiteConnection.error(rc, handle, context: "open \(path)")
            sqlite3_close_v2(handle)
            db = nil
            throw err
        }
        sqlite3_busy_timeout(handle, busyTimeoutMillis)
        sqlite3_extended_result_codes(handle, 1)
    }

    deinit { close() }

    func close() {
        for (_, s) in statements { sqlite3_finalize(s) }
        statements.removeAll()
        if let db { sqlite3_close_v2(db) }
        db = nil
    }

    /// Runs one or more statements that return no rows.
    func execute(_ sql: String) throws(EventSourcingError) {
        var msg: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &msg)
        if let msg { sqlite3_free(msg) }
        guard rc == SQLITE_OK else { throw SQLiteConnection.error(rc, db, context: sql) }
    }

    /// A prepared statement from the cache, reset and with bindings cleared.
    func statement(_ sql: String) throws(EventSourcingError) -> Statement {
        if let s = statements[sql] {
            sqlite3_reset(s)
            sqlite3_clear_bindings(s)
            return Statement(handle: s, connection: self)
        }
        var s: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &s, nil)
        guard rc == SQLITE_OK, let s else { throw SQLiteConnection.error(rc, db, context: sql) }
        statements[sql] = s
        return Statement(handle: s, connection: self)
    }

    /// Rows changed by the last statement.
    var changes: Int { Int(sqlite3_changes(db)) }

    /// The rowid of the last inserted row.
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(db) }

    /// Whether a transaction is open.
    var inTransaction: Bool { sqlite3_get_autocommit(db) == 0 }

    func error(_ rc: Int32, context: String) -> EventSourcingError { SQLiteConnection.error(rc, db, context: context) }

    static func error(_ rc: Int32, _ db: OpaquePointer?, context: String) -> EventSourcingError {
        let primary = rc & 0xFF
        let text = db.flatMap { sqlite3_errmsg($0) }.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
        let message = "SQLite: \(text) (code \(rc))"
        switch primary {
        case SQLITE_BUSY, SQLITE_LOCKED:
            return EventSourcingError(.databaseLocked, message + "; the database is locked by another connection")
        case SQLITE_NOTADB, SQLITE_CORRUPT, SQLITE_FORMAT:
            return EventSourcingError(.databaseCorrupt, message)
        case SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH, SQLITE_FULL, SQLITE_IOERR:
            return EventSourcingError(.databaseUnavailable, message)
        case SQLITE_CONSTRAINT:
            return EventSourcingError(.concurrencyConflict, message)
        default:
            _ = context
            return EventSourcingError(.recorderFailure, message)
        }
    }
}

/// A prepared statement borrowed from a ``SQLiteConnection``'s cache.
struct Statement {
    let handle: OpaquePointer
    unowned let connection: SQLiteConnection

    func bind(_ i: Int32, _ v: Int64) { sqlite3_bind_int64(handle, i, v) }
    func bind(_ i: Int32, _ v: Int) { sqlite3_bind_int64(handle, i, Int64(v)) }
    func bind(_ i: Int32, _ v: Double) { sqlite3_bind_double(handle, i, v) }
    func bind(_ i: Int32, _ v: String) { sqlite3_bind_text(handle, i, v, -1, es_sqlite_transient()) }
    func bind(_ i: Int32, _ v: String?) {
        if let v { bind(i, v) } else { sqlite3_bind_null(handle, i) }
    }
    func bind(_ i: Int32, _ v: [UInt8]) {
        _ = v.withUnsafeBytes { b in
            // A zero-length blob must still be a blob, not NULL.
            sqlite3_bind_blob(handle, i, b.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(b.count), es_sqlite_transient())
        }
    }
    func bind(_ i: Int32, _ v: UUID) {
        var u = v.uuid
        _ = withUnsafeBytes(of: &u) { b in sqlite3_bind_blob(handle, i, b.baseAddress, 16, es_sqlite_transient()) }
    }

    /// Advances to the next row; false when done.
    func step() throws(EventSourcingError) -> Bool {
        let rc = sqlite3_step(handle)
        if rc == SQLITE_ROW { return true }
        if rc == SQLITE_DONE { return false }
        let err = connection.error(rc, context: "step")
        sqlite3_reset(handle)
        throw err
    }

    /// Runs a statement that returns no rows.
    func run() throws(EventSourcingError) {
        _ = try step()
        sqlite3_reset(handle)
    }

    func reset() { sqlite3_reset(handle) }

    func int64(_ c: Int32) -> Int64 { sqlite3_column_int64(handle, c) }
    func int(_ c: Int32) -> Int { Int(sqlite3_column_int64(handle, c)) }
    func double(_ c: Int32) -> Double { sqlite3_column_double(handle, c) }
    func isNull(_ c: Int32) -> Bool { sqlite3_column_type(handle, c) == SQLITE_NULL }
    func text(_ c: Int32) -> String {
        guard let p = sqlite3_column_text(handle, c) else { return "" }
        return String(cString: p)
    }
    func blob(_ c: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(handle, c))
        guard n > 0, let p = sqlite3_column_blob(handle, c) else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: p, count: n))
    }
    func uuid(_ c: Int32) -> UUID? {
        guard sqlite3_column_bytes(handle, c) == 16, let p = sqlite3_column_blob(handle, c) else { return nil }
        let b = UnsafeRawBufferPointer(start: p, count: 16)
        return UUID(uuid: (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]))
    }
}
