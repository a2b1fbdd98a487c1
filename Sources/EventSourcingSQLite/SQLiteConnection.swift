import CSQLite
import EventSourcing
import Foundation

/// The one place that calls the system libsqlite3: a connection, its cached prepared
/// statements, and error mapping. Not thread-safe: each connection is used by one thread at
/// a time (the store's writer queue, or one reader borrowed from the pool).
final class SQLiteConnection {
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]
    /// A read model's prepared statements (SQLiteViewTransaction), bounded (ViewStatementCache).
    let viewStatements = ViewStatementCache()
    let path: String

    /// Opens (creating when `create`) the database at `path`.
    convenience init(path: String, create: Bool, busyTimeoutMillis: Int32) throws(EventSourcingError) {
        var flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX
        if create { flags |= SQLITE_OPEN_CREATE }
        try self.init(name: path, flags: flags, path: path, busyTimeoutMillis: busyTimeoutMillis)
    }

    /// Opens a read-only connection through a `file:` URI (`mode=ro`, `immutable=1`, …) that
    /// reads the database at `path`; errors name `path`, never the URI.
    convenience init(readOnlyURI uri: String, path: String, busyTimeoutMillis: Int32) throws(EventSourcingError) {
        try self.init(name: uri, flags: SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, path: path,
                      busyTimeoutMillis: busyTimeoutMillis)
    }

    /// The oldest SQLite library the store's SQL runs on: 3.24.0 (`INSERT … ON CONFLICT … DO`).
    static let minimumLibraryVersion: Int32 = 3_024_000

    /// Refuses a SQLite library older than ``minimumLibraryVersion`` (`number` as
    /// `sqlite3_libversion_number()` gives it), naming both versions.
    static func checkLibraryVersion(_ number: Int32 = sqlite3_libversion_number(), path: String) throws(EventSourcingError) {
        guard number < minimumLibraryVersion else { return }
        func dotted(_ n: Int32) -> String { "\(n / 1_000_000).\(n / 1_000 % 1_000).\(n % 1_000)" }
        throw EventSourcingError(.databaseUnavailable,
            "cannot open \(path): the SQLite library is \(dotted(number)); this store needs \(dotted(minimumLibraryVersion)) or newer")
    }

    private init(name: String, flags: Int32, path: String, busyTimeoutMillis: Int32) throws(EventSourcingError) {
        self.path = path
        try SQLiteConnection.checkLibraryVersion(path: path)
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(name, &handle, flags, nil)
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
        viewStatements.finalizeAll()
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

    /// Prepares `sql`, which must hold exactly one statement (`flags`: `sqlite3_prepare_v3`'s).
    /// - Throws: `.invalidArgument` when `sql` holds more than one statement or none; the
    ///   SQLite error of a statement that does not compile.
    func prepareOne(_ sql: String, flags: UInt32) throws -> OpaquePointer {
        var s: OpaquePointer?
        let (rc, trailing) = sql.withCString { text -> (Int32, Bool) in
            var tail: UnsafePointer<CChar>?
            let rc = sqlite3_prepare_v3(db, text, -1, flags, &s, &tail)
            guard rc == SQLITE_OK, let tail, tail.pointee != 0 else { return (rc, false) }
            // What follows the statement must be nothing but white space, `;` and comments.
            var next: OpaquePointer?
            let rest = sqlite3_prepare_v2(db, tail, -1, &next, nil)
            defer { if let next { sqlite3_finalize(next) } }
            return (rc, rest != SQLITE_OK || next != nil)
        }
        guard rc == SQLITE_OK else {
            let error = SQLiteConnection.error(rc, db, context: "prepare")
            if let s { sqlite3_finalize(s) }
            throw error
        }
        guard let s, !trailing else {
            if let s { sqlite3_finalize(s) }
            throw EventSourcingError(.invalidArgument, s == nil ? "the SQL holds no statement"
                                     : "the SQL holds more than one statement: run them one at a time")
        }
        return s
    }

    /// Makes the statement running on this connection (on another thread) stop with
    /// `SQLITE_INTERRUPT`; a no-op when none runs. The only method safe to call from a thread
    /// other than the one using the connection, and only while the connection is open.
    func interrupt() {
        if let db { sqlite3_interrupt(db) }
    }

    /// Rows changed by the last statement.
    var changes: Int { Int(sqlite3_changes(db)) }

    /// The rowid of the last inserted row.
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(db) }

    /// Whether a transaction is open.
    var inTransaction: Bool { sqlite3_get_autocommit(db) == 0 }

    func error(_ rc: Int32, context: String) -> EventSourcingError { SQLiteConnection.error(rc, db, context: context) }

    static func error(_ rc: Int32, _ db: OpaquePointer?, context: String) -> EventSourcingError {
        // Extended result codes are on for every open connection; a failed open reports the
        // extended code through the handle.
        var code = rc
        if code & ~0xFF == 0, let db, sqlite3_extended_errcode(db) & 0xFF == rc { code = sqlite3_extended_errcode(db) }
        let primary = code & 0xFF
        let text = db.flatMap { sqlite3_errmsg($0) }.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(code))
        let message = "SQLite: \(text) (code \(code))"
        let storeCode = SQLiteResultCode.describe(code)
        switch primary {
        case SQLITE_BUSY, SQLITE_LOCKED:
            return EventSourcingError(.databaseLocked, message + "; the database is locked by another connection",
                                      storeCode: storeCode)
        case SQLITE_NOTADB, SQLITE_CORRUPT, SQLITE_FORMAT:
            return EventSourcingError(.databaseCorrupt, message, storeCode: storeCode)
        case SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH, SQLITE_FULL, SQLITE_IOERR:
            return EventSourcingError(.databaseUnavailable, message, storeCode: storeCode)
        case SQLITE_CONSTRAINT:
            // Only the events' (originator_id, originator_version) key is a concurrency conflict;
            // any other constraint (NOT NULL, CHECK, a trigger, another table's or index's key) is not.
            let conflict = (code == sqliteConstraintUnique || code == sqliteConstraintPrimaryKey)
                && uniqueKey(text) == "events.originator_id, events.originator_version"
            return EventSourcingError(conflict ? .concurrencyConflict : .constraintViolation, message, storeCode: storeCode)
        default:
            _ = context
            return EventSourcingError(.recorderFailure, message, storeCode: storeCode)
        }
    }

    /// `SQLITE_CONSTRAINT_UNIQUE`, `SQLITE_CONSTRAINT_PRIMARYKEY` (sqlite3.h defines them as
    /// expressions, which Swift does not import).
    static let sqliteConstraintUnique: Int32 = SQLITE_CONSTRAINT | 8 << 8
    static let sqliteConstraintPrimaryKey: Int32 = SQLITE_CONSTRAINT | 6 << 8

    /// The columns of the key a UNIQUE or PRIMARY KEY failure names, as SQLite writes them
    /// (`"UNIQUE constraint failed: data_keys.scope, data_keys.version"` gives
    /// `"data_keys.scope, data_keys.version"`); nil for any other message.
    static func uniqueKey(_ errorMessage: String) -> String? {
        let prefix = "UNIQUE constraint failed: "
        guard errorMessage.hasPrefix(prefix) else { return nil }
        return String(errorMessage.dropFirst(prefix.count))
    }

    /// Whether `error` is the failure of a UNIQUE or PRIMARY KEY constraint on exactly `key`
    /// (`"table.column, table.column"`), as made by ``error(_:_:context:)``.
    static func isUniqueViolation(_ error: EventSourcingError, key: String) -> Bool {
        guard error.storeCode == SQLiteResultCode.describe(sqliteConstraintUnique)
                || error.storeCode == SQLiteResultCode.describe(sqliteConstraintPrimaryKey) else { return false }
        return error.message.hasPrefix("SQLite: UNIQUE constraint failed: \(key) (code ")
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
    // Typed reads: nil unless the column holds that storage class (SQLite stores any value in
    // any column; a row written outside the library may hold TEXT where an integer belongs).
    // Call one of them before any other read of the column: the untyped reads convert it.

    /// The column's value if it is an INTEGER.
    func integer(_ c: Int32) -> Int64? {
        sqlite3_column_type(handle, c) == SQLITE_INTEGER ? sqlite3_column_int64(handle, c) : nil
    }
    /// The column's value if it is a REAL (or an INTEGER, which a REAL column may hold).
    func real(_ c: Int32) -> Double? {
        let t = sqlite3_column_type(handle, c)
        return t == SQLITE_FLOAT || t == SQLITE_INTEGER ? sqlite3_column_double(handle, c) : nil
    }
    /// The column's value if it is TEXT of valid UTF-8 (with no NUL, which would cut it short).
    func textValue(_ c: Int32) -> String? {
        guard sqlite3_column_type(handle, c) == SQLITE_TEXT else { return nil }
        let n = Int(sqlite3_column_bytes(handle, c))
        guard n > 0 else { return "" }
        guard let p = sqlite3_column_text(handle, c) else { return nil }
        // SQLite ends the text with a NUL after its n bytes; a NUL before that would cut it short.
        guard memchr(p, 0, n) == nil else { return nil }
        return p.withMemoryRebound(to: CChar.self, capacity: n + 1) { String(validatingCString: $0) }
    }
    /// The column's value if it is a BLOB.
    func blobValue(_ c: Int32) -> [UInt8]? {
        guard sqlite3_column_type(handle, c) == SQLITE_BLOB else { return nil }
        return blob(c)
    }
    /// The column's value if it is a BLOB of 16 bytes.
    func uuidValue(_ c: Int32) -> UUID? {
        guard sqlite3_column_type(handle, c) == SQLITE_BLOB else { return nil }
        return uuid(c)
    }
    /// What the column holds, for an error message: its storage class and size, never its value.
    func describeColumn(_ c: Int32) -> String {
        switch sqlite3_column_type(handle, c) {
        case SQLITE_NULL: return "NULL"
        case SQLITE_INTEGER: return "the integer \(sqlite3_column_int64(handle, c))"
        case SQLITE_FLOAT: return "a REAL"
        case SQLITE_TEXT: return "TEXT of \(sqlite3_column_bytes(handle, c)) bytes"
        default: return "a BLOB of \(sqlite3_column_bytes(handle, c)) bytes"
        }
    }

    func uuid(_ c: Int32) -> UUID? {
        guard sqlite3_column_bytes(handle, c) == 16, let p = sqlite3_column_blob(handle, c) else { return nil }
        let b = UnsafeRawBufferPointer(start: p, count: 16)
        return UUID(uuid: (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]))
    }
}
