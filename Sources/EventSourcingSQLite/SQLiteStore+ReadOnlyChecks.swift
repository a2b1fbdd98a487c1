import CSQLite
import EventSourcing
import Foundation
import KeyManagement

extension SQLiteStore {
    /// The master-key check records of the store at `path`, oldest first, read without
    /// changing a byte of the database, its `-wal` or its `-shm` file, and without leaving any
    /// new file beside it.
    ///
    /// Check a master key against these before opening the store: opening a store for writing
    /// recovers a WAL left by a crash (or copied with a backup), rewrites the `-shm` file, and
    /// on close checkpoints the WAL into the database and deletes it. A command that then
    /// refuses the key would have changed the files anyway.
    ///
    /// - `-shm` present (the store is open elsewhere, or crashed, or all three files were
    ///   copied): a read-only connection that maps the `-shm` read-only.
    /// - no `-shm`, no or an empty `-wal`: the database file alone holds every commit, and is
    ///   read as immutable.
    /// - no `-shm` but a non-empty `-wal` (a database copied with its WAL only): SQLite cannot
    ///   read that WAL without creating a `-shm`, so the two files are hard-linked (or, where
    ///   links are refused, copied) into a private directory beside the database, read there,
    ///   and the directory is removed.
    /// - Returns: an empty array for a new, empty database (no schema yet) or one whose schema
    ///   has no check records.
    /// - Throws: ``EventSourcingError`` `.databaseUnavailable` if the file is missing or
    ///   unreadable, `.databaseCorrupt` for a file that is not a SQLite database or is
    ///   truncated, `.unsupportedSchema` for a newer schema or a database that is not an event
    ///   store, `.databaseLocked` if another process holds it for longer than `busyTimeout`.
    public static func masterKeyChecks(readingOnly path: String, busyTimeout: Duration = .seconds(5))
        throws(EventSourcingError) -> [MasterKeyCheck] {
        guard access(path, F_OK) == 0 else {
            throw EventSourcingError(.databaseUnavailable, "no database at \(path)")
        }
        try SQLiteFile.validate(path: path)
        let c = busyTimeout.components
        let busy = Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000)
        if access(path + "-shm", F_OK) == 0 {
            return try ReadOnlyDatabase.checks(uri: ReadOnlyDatabase.uri(path, "mode=ro&readonly_shm=1"), path: path, busy: busy)
        }
        if fileSize(path + "-wal") ?? 0 == 0 {
            return try ReadOnlyDatabase.checks(uri: ReadOnlyDatabase.uri(path, "immutable=1"), path: path, busy: busy)
        }
        let copy = try PrivateCopy(of: path)
        defer { copy.remove() }
        return try ReadOnlyDatabase.checks(uri: ReadOnlyDatabase.uri(copy.database, "mode=ro"), path: path, busy: busy)
    }

    private static func fileSize(_ path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int(st.st_size)
    }
}

/// The database and its WAL linked (or copied) into a new private directory beside the
/// database, so SQLite can build a `-shm` there instead of beside the original.
private struct PrivateCopy {
    let directory: String
    let database: String

    init(of path: String) throws(EventSourcingError) {
        let url = URL(fileURLWithPath: path)
        var template = Array((url.deletingLastPathComponent().path + "/.\(url.lastPathComponent).keycheck-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } != nil }
        guard made else {
            throw EventSourcingError(.databaseUnavailable,
                "cannot read \(path) without changing it: its WAL has no -shm file, and no private directory could be made beside it (\(String(cString: strerror(errno))))")
        }
        directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        database = directory + "/db"
        for (from, to) in [(path, database), (path + "-wal", database + "-wal")] {
            if link(from, to) == 0 { continue }
            do {
                try FileManager.default.copyItem(atPath: from, toPath: to)
            } catch {
                remove()
                throw EventSourcingError(.databaseUnavailable, "cannot read \(path) without changing it: \(error.localizedDescription)")
            }
        }
    }

    func remove() {
        for suffix in ["", "-wal", "-shm", "-journal"] { unlink(database + suffix) }
        rmdir(directory)
    }
}

/// A read-only connection used only to read the master-key checks.
private enum ReadOnlyDatabase {
    /// A `file:` URI for `path` with `query`: the path absolute and percent-encoded.
    static func uri(_ path: String, _ query: String) -> String {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "/-._~")
        let encoded = absolute.unicodeScalars.map { s -> String in
            if s.isASCII, allowed.contains(s) { return String(s) }
            return String(s).utf8.map { String(format: "%%%02X", $0) }.joined()
        }.joined()
        return "file:" + encoded + "?" + query
    }

    static func checks(uri: String, path: String, busy: Int32) throws(EventSourcingError) -> [MasterKeyCheck] {
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(uri, &handle, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, nil)
        defer { sqlite3_close_v2(handle) }
        guard rc == SQLITE_OK, let db = handle else { throw SQLiteConnection.error(rc, handle, context: "open \(path)") }
        sqlite3_busy_timeout(db, busy)
        sqlite3_extended_result_codes(db, 1)

        let tables = try rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'") { s in text(s, 0) }
        if tables.contains("es_meta") {
            let version = try rows(db, "SELECT value FROM es_meta WHERE key = 'schema_version'") { s in Int(sqlite3_column_int64(s, 0)) }
            if let v = version.first, v > SQLiteStore.schemaVersion {
                throw EventSourcingError(.unsupportedSchema,
                    "\(path) has schema version \(v); this library reads up to \(SQLiteStore.schemaVersion). Upgrade the library.")
            }
        } else if tables.contains(where: { !$0.hasPrefix("sqlite_") }) {
            throw EventSourcingError(.unsupportedSchema, "\(path) is a SQLite database but not an event store")
        }
        guard tables.contains("master_key_checks") else { return [] }
        return try rows(db, "SELECT kek_id, sealed, kdf, created_at FROM master_key_checks ORDER BY created_at, kek_id") { s in
            var kdf: KDFParameters?
            if sqlite3_column_type(s, 2) != SQLITE_NULL {
                kdf = try? JSONDecoder().decode(KDFParameters.self, from: Data(text(s, 2).utf8))
            }
            let n = Int(sqlite3_column_bytes(s, 1))
            let sealed = n > 0 ? sqlite3_column_blob(s, 1).map { [UInt8](UnsafeRawBufferPointer(start: $0, count: n)) } ?? [] : []
            return MasterKeyCheck(kekID: text(s, 0), sealed: sealed, kdf: kdf,
                                  createdAt: Date(timeIntervalSince1970: sqlite3_column_double(s, 3)))
        }
    }

    private static func text(_ s: OpaquePointer, _ column: Int32) -> String {
        sqlite3_column_text(s, column).map { String(cString: $0) } ?? ""
    }

    private static func rows<T>(_ db: OpaquePointer, _ sql: String, _ row: (OpaquePointer) -> T) throws(EventSourcingError) -> [T] {
        var statement: OpaquePointer?
        let prepared = sqlite3_prepare_v2(db, sql, -1, &statement, nil)
        defer { sqlite3_finalize(statement) }
        guard prepared == SQLITE_OK, let s = statement else { throw SQLiteConnection.error(prepared, db, context: sql) }
        var out: [T] = []
        while true {
            let rc = sqlite3_step(s)
            if rc == SQLITE_ROW { out.append(row(s)); continue }
            if rc == SQLITE_DONE { return out }
            throw SQLiteConnection.error(rc, db, context: sql)
        }
    }
}
