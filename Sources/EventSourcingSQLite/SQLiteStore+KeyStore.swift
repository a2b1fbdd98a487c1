import EventSourcing
import Foundation
import KeyManagement
import Logging

extension SQLiteStore {
    public func masterKeyChecks() async throws -> [MasterKeyCheck] {
        // A read-only store over a new, empty database: no schema, so no checks yet.
        guard hasSchema else { return [] }
        return try await read { conn in
            let s = try conn.statement("SELECT kek_id, sealed, kdf, created_at FROM master_key_checks ORDER BY created_at, kek_id")
            defer { s.reset() }
            var out: [MasterKeyCheck] = []
            while try s.step() {
                guard let kekID = s.textValue(0) else {
                    throw KeyManagementError(.storeFailure, "a master_key_checks row has a kek_id that is \(s.describeColumn(0)), not text")
                }
                let row = "the master_key_checks row of master key \(kekID)"
                guard let sealed = s.blobValue(1) else {
                    throw KeyManagementError(.storeFailure, "\(row) has a sealed check that is \(s.describeColumn(1)), not a BLOB")
                }
                var kdf: KDFParameters?
                if !s.isNull(2) {
                    guard let text = s.textValue(2),
                          let params = try? JSONDecoder().decode(KDFParameters.self, from: Data(text.utf8)) else {
                        throw KeyManagementError(.storeFailure, "\(row) has kdf parameters that do not decode")
                    }
                    kdf = params
                }
                guard let created = s.real(3) else {
                    throw KeyManagementError(.storeFailure, "\(row) has a created_at that is \(s.describeColumn(3)), not a number")
                }
                out.append(MasterKeyCheck(kekID: kekID, sealed: sealed, kdf: kdf, createdAt: Date(timeIntervalSince1970: created)))
            }
            return out
        }
    }

    public func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws {
        let kdf = try check.kdf.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        try await write { conn in
            let s = try conn.statement("INSERT OR IGNORE INTO master_key_checks (kek_id, sealed, kdf, created_at) VALUES (?, ?, ?, ?)")
            s.bind(1, check.kekID)
            s.bind(2, check.sealed)
            s.bind(3, kdf)
            s.bind(4, check.createdAt.timeIntervalSince1970)
            try s.run()
        }
    }

    public func deleteMasterKeyCheck(kekID: String) async throws {
        try await write { conn in
            let s = try conn.statement("DELETE FROM master_key_checks WHERE kek_id = ?")
            s.bind(1, kekID)
            try s.run()
        }
    }

    public func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        // An empty scope is no scope (KeyScope.validate refuses it): the rows a shred erased.
        guard !scope.isEmpty else { return [] }
        return try await read { conn in try SQLiteStore.dataKeys(scope, conn) }
    }

    /// Keys read with the events being decoded (see `selectEvents`), if fresh and holding
    /// `version`; else from the table.
    public func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey] {
        if let kept = prefetchedKeys.take(scope: scope, version: version) { return kept }
        return try await dataKeys(scope: scope)
    }

    /// Reads the keys of `scopes` in one hand-over to a reader thread, for the key ring's
    /// misses on them that follow (a page of the log being decrypted).
    public func prefetchDataKeys(scopes: [String]) async throws {
        let scopes = scopes.filter { !$0.isEmpty }.prefix(SQLiteStore.prefetchScopesPerCall)
        guard !scopes.isEmpty else { return }
        let started = prefetchedKeys.start()
        let keys = try await read { conn in SQLiteStore.prefetchKeys(Array(scopes), conn) }
        prefetchedKeys.keep(keys, startedAt: started)
    }

    /// The most scopes one ``prefetchDataKeys(scopes:)`` reads.
    static let prefetchScopesPerCall = 1_000

    static func dataKeys(_ scope: String, _ conn: SQLiteConnection) throws -> [WrappedDataKey] {
        let s = try conn.statement("SELECT scope, version, kek_id, wrapped, created_at FROM data_keys WHERE scope = ? ORDER BY version")
        defer { s.reset() }
        s.bind(1, scope)
        var out: [WrappedDataKey] = []
        while try s.step() { out.append(try s.wrappedDataKey(asked: scope)) }
        return out
    }

    public func insertDataKey(_ key: WrappedDataKey) async throws {
        try await write { conn in try SQLiteStore.insertDataKey(key, conn) }
    }

    public func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        try await write { conn in
            let s = try conn.statement("UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE scope = ? AND version = ? AND kek_id = ?")
            s.bind(1, key.kekID)
            s.bind(2, key.wrapped)
            s.bind(3, key.scope)
            s.bind(4, Int64(key.version))
            s.bind(5, previousKEKID)
            try s.run()
            return conn.changes == 1
        }
    }

    public func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        // Rows erased by a shred have the empty scope, which sorts first: a page starts after it.
        let sql = "SELECT scope, version, kek_id, wrapped, created_at FROM data_keys"
            + (cursor == nil ? " WHERE scope > ''" : " WHERE (scope, version) > (?, ?) AND scope > ''") + " ORDER BY scope, version LIMIT ?"
        return try await read { conn in
            let s = try conn.statement(sql)
            defer { s.reset() }
            var i: Int32 = 1
            if let cursor {
                s.bind(1, cursor.scope)
                s.bind(2, Int64(cursor.version))
                i = 3
            }
            s.bind(i, limit)
            var out: [WrappedDataKey] = []
            // A row that cannot be read exactly stops the page with an error (naming its scope):
            // skipped or truncated, it would send the cursor back to where it was.
            while try s.step() { out.append(try s.wrappedDataKey(asked: cursor?.scope)) }
            return out
        }
    }

    public func tombstone(scope: String) async throws -> Tombstone? {
        try await read { conn in try SQLiteStore.tombstone(scope, conn) }
    }

    public func tombstones() async throws -> [Tombstone] {
        try await read { conn in
            let s = try conn.statement("SELECT scope, shredded_at, destroyed_versions FROM tombstones ORDER BY shredded_at, scope")
            defer { s.reset() }
            var out: [Tombstone] = []
            while try s.step() { out.append(try s.tombstoneRow()) }
            return out
        }
    }

    public func shred(scope: String, at time: Date) async throws -> Tombstone {
        let t = try await write { conn -> Tombstone in
            if let t = try SQLiteStore.tombstone(scope, conn) {
                throw KeyManagementError(.shredded, "the scope was already shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let q = try conn.statement("SELECT version FROM data_keys WHERE scope = ? ORDER BY version")
            q.bind(1, scope)
            // Every row of the scope is erased below, also one whose version is not a key version
            // (written outside the library); the tombstone lists the versions that are.
            var versions: [UInt32] = []
            var unreadable = 0
            while try q.step() {
                if let v = q.integer(0), let version = UInt32(exactly: v) { versions.append(version) } else { unreadable += 1 }
            }
            q.reset()
            if unreadable > 0 {
                self.logger.warning("shred: \(unreadable) data_keys row(s) of the scope had a version that is not a key version; erased, not listed in the tombstone",
                                    metadata: ["scope": "\(scope)"])
            }
            try SQLiteStore.eraseDataKeys(scope: scope, conn)
            let ins = try conn.statement("INSERT INTO tombstones (scope, shredded_at, destroyed_versions) VALUES (?, ?, ?)")
            ins.bind(1, scope)
            ins.bind(2, time.timeIntervalSince1970)
            ins.bind(3, versions.map(String.init).joined(separator: ","))
            try ins.run()
            // The erasure record, in this transaction: it gets the next notification id, and no
            // failure can leave the tombstone without it (or it without the tombstone).
            try SQLiteStore.insertErasureRecord(ErasureRecord(keyScope: scope, shreddedAt: time), conn)
            return Tombstone(scope: scope, shreddedAt: time, destroyedVersions: versions)
        }
        // The old pages that held the rows leave the database file and the WAL with a checkpoint
        // (bounded: SQLiteStore+Scrub.swift).
        await scrubAfterErasure()
        return t
    }

    /// Inserts `erasure`'s record into the notification log (see ``ErasureRecord``). A row
    /// already at its coordinates (only a forged one can be: a scope is shredded once) is left
    /// as it is, so it can never keep a scope from being shredded.
    static func insertErasureRecord(_ erasure: ErasureRecord, _ conn: SQLiteConnection) throws {
        let e = try erasure.storedEvent()
        try checkNotificationIDsLeft(1, conn)
        let s = try conn.statement("""
            INSERT INTO events (originator_id, originator_version, topic, state, key_scope) VALUES (?, ?, ?, ?, NULL)
            ON CONFLICT (originator_id, originator_version) DO NOTHING
            """)
        s.bind(1, e.originatorID)
        s.bind(2, e.originatorVersion)
        s.bind(3, e.topic)
        s.bind(4, e.state)
        try s.run()
    }

    // MARK: Rows

    /// Erases every `data_keys` row of `scope` in place, at a cost that does not grow with the
    /// table, and so that no copy of the wrapped keys stays anywhere in the database file.
    ///
    /// Why no copy can survive: `data_keys` is a rowid table (schema 3). Nothing ever deletes one
    /// of its rows, so no leaf page ever becomes underfull and SQLite never rebalances its leaves
    /// (the rebalancing that copies cells into other pages' unused space, where secure_delete
    /// cannot reach them). New keys get the next rowid and are appended at the right edge, where
    /// SQLite splits with its "quick balance" (the new cell goes alone to a new page; no existing
    /// cell moves). A rewrap changes `kek_id` and `wrapped` to values of the same sizes, which
    /// SQLite overwrites in place. Its interior pages and its (scope, version) index hold rowids
    /// and scopes, never key bytes. So each wrapped key has exactly one copy in the table,
    /// inside its own cell.
    ///
    /// The erasure overwrites that copy in place with zeros, then shrinks the row to an empty
    /// erased row (scope '', version = -rowid, kek_id '', wrapped X'', created_at 0): SQLite drops
    /// the old cell, which secure_delete zeroes, and writes the small one on the same page (a
    /// smaller row always fits, so nothing is rebalanced). Readers skip the empty scope. An
    /// erased row costs about 30 bytes (table and index) and is never removed: removing it
    /// could rebalance the leaves.
    static func eraseDataKeys(scope: String, _ conn: SQLiteConnection) throws {
        let zero = try conn.statement(
            "UPDATE data_keys SET wrapped = zeroblob(length(wrapped)) WHERE scope = ? AND typeof(wrapped) = 'blob'")
        zero.bind(1, scope)
        try zero.run()
        let sql = "UPDATE data_keys SET scope = '', version = -rowid, kek_id = '', wrapped = X'', created_at = 0 WHERE scope = ?"
        let erase: Statement
        do {
            erase = try conn.statement(sql)
        } catch where error.message.contains("no such column: rowid") {
            // The key table is back in its schema-2 layout (WITHOUT ROWID): an older version of
            // the library, still running against this store after it was migrated, rebuilt it in
            // its own shred. Convert it again, in this transaction (its stale copies go with the
            // old table's pages), then erase.
            try conn.execute(rowidDataKeys)
            // Dropping the old table dropped its trigger: the feed keeps recording rotations.
            try conn.execute(rotationTrigger)
            erase = try conn.statement(sql)
        }
        erase.bind(1, scope)
        try erase.run()
    }

    static func insertDataKey(_ key: WrappedDataKey, _ conn: SQLiteConnection) throws {
        if let t = try tombstone(key.scope, conn) {
            throw KeyManagementError(.shredded, "the scope was shredded", scope: key.scope, shreddedAt: t.shreddedAt)
        }
        let s = try conn.statement("INSERT INTO data_keys (scope, version, kek_id, wrapped, created_at) VALUES (?, ?, ?, ?, ?)")
        s.bind(1, key.scope)
        s.bind(2, Int64(key.version))
        s.bind(3, key.kekID)
        s.bind(4, key.wrapped)
        s.bind(5, key.createdAt.timeIntervalSince1970)
        do { try s.run() } catch where SQLiteConnection.isUniqueViolation(error, key: "data_keys.scope, data_keys.version") {
            throw KeyManagementError(.keyExists, "data key exists", scope: key.scope, keyVersion: key.version)
        }
    }

    static func tombstone(_ scope: String, _ conn: SQLiteConnection) throws -> Tombstone? {
        let s = try conn.statement("SELECT scope, shredded_at, destroyed_versions FROM tombstones WHERE scope = ?")
        defer { s.reset() }
        s.bind(1, scope)
        return try s.step() ? s.tombstoneRow(asked: scope) : nil
    }
}
