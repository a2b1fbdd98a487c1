import EventSourcing
import Foundation

/// The SQLite store's schema: each table and index written once, in the forward migrations, and
/// the checks that read the stored version before anything is written.
extension SQLiteStore {
    // MARK: Schema

    static func prepare(_ conn: SQLiteConnection, configuration: Configuration) throws(EventSourcingError) {
        // Read first: a file that is not a database, or a newer schema, fails here before any write.
        let found = try storedSchemaVersion(conn)
        // Changing the journal mode can return SQLITE_BUSY without waiting (when other processes
        // open the same new file at once): retry it for the busy timeout.
        let deadline = ContinuousClock.now + configuration.busyTimeout
        while true {
            do {
                try conn.execute("PRAGMA journal_mode = WAL")
                break
            } catch where error.code == .databaseLocked && ContinuousClock.now < deadline {
                usleep(10_000)
            }
        }
        try conn.execute("PRAGMA synchronous = \(configuration.synchronous.rawValue)")
        // Deleted key rows are overwritten with zeros, not just unlinked (crypto-shredding).
        try conn.execute("PRAGMA secure_delete = ON")
        guard found < schemaVersion else { return }
        try conn.execute("BEGIN IMMEDIATE")
        do {
            // Read again under the write lock: another process may have created or migrated
            // the schema since the first read.
            let current = try storedSchemaVersion(conn)
            if current < schemaVersion {
                for version in (current + 1)...schemaVersion {
                    try conn.execute(migrations[version - 1])
                }
                try conn.execute("INSERT OR REPLACE INTO es_meta (key, value) VALUES ('schema_version', \(schemaVersion))")
            }
            try conn.execute("COMMIT")
        } catch {
            try? conn.execute("ROLLBACK")
            throw error
        }
    }

    /// The schema version stored in the database, 0 for an empty database.
    /// - Throws: `.unsupportedSchema` for a newer schema or a database that is not an event store;
    ///   `.databaseCorrupt` for an event store whose schema version is missing, not an integer
    ///   or below 1 (only the migration writes it, with the tables, in one transaction).
    static func storedSchemaVersion(_ conn: SQLiteConnection) throws(EventSourcingError) -> Int {
        var tables: [String] = []
        let list = try conn.statement("SELECT name FROM sqlite_master WHERE type = 'table'")
        while try list.step() { tables.append(list.text(0)) }
        list.reset()
        var found = 0
        if tables.contains("es_meta") {
            let v = try conn.statement("SELECT value FROM es_meta WHERE key = 'schema_version'")
            defer { v.reset() }
            guard try v.step() else {
                throw EventSourcingError(.databaseCorrupt, "\(conn.path) has an es_meta table without a schema_version")
            }
            guard let stored = v.integer(0), stored >= 1 else {
                throw EventSourcingError(.databaseCorrupt,
                    "\(conn.path) has a schema_version that is \(v.describeColumn(0)), not a schema version (1 or more)")
            }
            found = Int(clamping: stored)
            if found > schemaVersion {
                throw EventSourcingError(.unsupportedSchema,
                    "\(conn.path) has schema version \(found); this library reads up to \(schemaVersion). Upgrade the library.")
            }
        } else if !tables.filter({ !$0.hasPrefix("sqlite_") }).isEmpty {
            throw EventSourcingError(.unsupportedSchema, "\(conn.path) is a SQLite database but not an event store")
        }
        return found
    }

    /// Forward migrations: entry `i` takes schema `i` to `i + 1`.
    static let migrations: [String] = [
        """
        CREATE TABLE IF NOT EXISTS es_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE events (
            notification_id INTEGER PRIMARY KEY,
            originator_id BLOB NOT NULL,
            originator_version INTEGER NOT NULL,
            topic TEXT NOT NULL,
            state BLOB NOT NULL,
            key_scope TEXT,
            UNIQUE (originator_id, originator_version)
        );
        -- No index on key_scope: it would add a random B-tree write to every commit; the
        -- admin queries that filter by scope (count, export) scan instead.
        CREATE TABLE snapshots (
            originator_id BLOB NOT NULL,
            originator_version INTEGER NOT NULL,
            topic TEXT NOT NULL,
            state BLOB NOT NULL,
            key_scope TEXT,
            PRIMARY KEY (originator_id, originator_version)
        ) WITHOUT ROWID;
        CREATE INDEX snapshots_key_scope ON snapshots (key_scope) WHERE key_scope IS NOT NULL;
        CREATE TABLE data_keys (
            scope TEXT NOT NULL,
            version INTEGER NOT NULL,
            kek_id TEXT NOT NULL,
            wrapped BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (scope, version)
        ) WITHOUT ROWID;
        CREATE TABLE tombstones (
            scope TEXT PRIMARY KEY,
            shredded_at REAL NOT NULL,
            destroyed_versions TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE master_key_checks (
            kek_id TEXT PRIMARY KEY,
            sealed BLOB NOT NULL,
            kdf TEXT,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
        // 2: unencrypted events, found without a scan (a partial index: encrypted rows never enter it).
        """
        CREATE INDEX IF NOT EXISTS events_plaintext ON events (notification_id) WHERE key_scope IS NULL;
        """,
        // 3: data keys in a rowid table, so a shred erases a key in place at a cost that does not
        // grow with the store (SQLiteStore+KeyStore.swift: `eraseDataKeys`, `rowidDataKeys`).
        // Copying the rows in order leaves no stale copy of any key in the new table; the old
        // table's pages are freed, and secure_delete zeroes them.
        rowidDataKeys,
        // 4: tracking records (SQLiteStore+Tracking.swift): one row per name holding the highest
        // notification id its follower processed, so the table grows with names, not with events.
        """
        CREATE TABLE IF NOT EXISTS tracking (
            name TEXT PRIMARY KEY,
            notification_id INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
        // 5: the key-change feed and the encryption counts (SQLiteStore+KeyChanges.swift).
        keyChangesSchema,
    ]

    /// Schema 3's migration: `data_keys` as a rowid table, its rows copied in order (a new table
    /// built by appends holds no stale copy of any key; the old one's freed pages are zeroed).
    static let rowidDataKeys = """
        ALTER TABLE data_keys RENAME TO data_keys_v2;
        CREATE TABLE data_keys (
            scope TEXT NOT NULL,
            version INTEGER NOT NULL,
            kek_id TEXT NOT NULL,
            wrapped BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (scope, version)
        );
        INSERT INTO data_keys (scope, version, kek_id, wrapped, created_at)
            SELECT scope, version, kek_id, wrapped, created_at FROM data_keys_v2 ORDER BY scope, version;
        DROP TABLE data_keys_v2;
        """
}
