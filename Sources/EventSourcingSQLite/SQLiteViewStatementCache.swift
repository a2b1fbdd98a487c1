import CSQLite
import EventSourcing

/// A read model's prepared statements on one connection (``SQLiteViewTransaction``), so a
/// projection's SQL is compiled once rather than once per notification.
///
/// Bounded: at most ``capacity`` statements, each of SQL at most ``maxSQLBytes`` bytes (longer
/// SQL is prepared, run and finalized each time); when full, the statement used longest ago is
/// finalized. Not thread-safe, like its connection: used only by the thread (or the view
/// transaction, under its lock) that uses the connection.
final class ViewStatementCache {
    /// The most statements kept.
    static let capacity = 32
    /// The longest SQL kept, in UTF-8 bytes.
    static let maxSQLBytes = 4_096

    private var entries: [String: (handle: OpaquePointer, used: UInt64)] = [:]
    private var uses: UInt64 = 0

    /// How many statements are kept.
    var count: Int { entries.count }

    /// A kept statement for `sql`, marked as used now; nil when none is kept.
    func take(_ sql: String) -> OpaquePointer? {
        guard var entry = entries[sql] else { return nil }
        uses &+= 1
        entry.used = uses
        entries[sql] = entry
        return entry.handle
    }

    /// Keeps `handle` (prepared from `sql`, reset) when `sql` is short enough, finalizing the
    /// statement used longest ago when full. Returns whether it was kept (if not, the caller
    /// finalizes it).
    func keep(_ sql: String, _ handle: OpaquePointer) -> Bool {
        guard sql.utf8.count <= Self.maxSQLBytes else { return false }
        if entries.count >= Self.capacity, let oldest = entries.min(by: { $0.value.used < $1.value.used }) {
            sqlite3_finalize(oldest.value.handle)
            entries[oldest.key] = nil
        }
        uses &+= 1
        entries[sql] = (handle, uses)
        return true
    }

    /// Finalizes every kept statement (before the connection closes).
    func finalizeAll() {
        for (_, e) in entries { sqlite3_finalize(e.handle) }
        entries.removeAll()
    }
}

extension SQLiteConnection {
    /// Runs `body` with a prepared statement for `sql` (one statement) from the connection's
    /// bounded cache of a read model's statements (prepared and kept on a miss, after `check`
    /// accepted `sql`); resets it and clears its bindings afterwards, whatever `body` did, so it
    /// holds no lock or snapshot.
    /// - Throws: `check`'s errors; `.invalidArgument` when `sql` holds more than one statement
    ///   or none; the SQLite error of a statement that does not compile; `body`'s errors.
    func withViewStatement<T>(_ sql: String, check: () throws -> Void, _ body: (Statement) throws -> T) throws -> T {
        let handle: OpaquePointer
        var kept = true
        if let cached = viewStatements.take(sql) {
            handle = cached
        } else {
            try check()
            handle = try prepareOne(sql, flags: UInt32(SQLITE_PREPARE_PERSISTENT))
            kept = viewStatements.keep(sql, handle)
        }
        defer {
            if kept {
                sqlite3_reset(handle)
                sqlite3_clear_bindings(handle)
            } else {
                sqlite3_finalize(handle)
            }
        }
        return try body(Statement(handle: handle, connection: self))
    }
}
