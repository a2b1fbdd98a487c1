import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

// Rows the library never writes, put into a store's file the way a tool outside the library
// would (SQLite keeps any value in any column): every read must refuse them with a typed error
// naming the row, never read them as 0 or "", skip them, trap, or page forever.

/// Runs `sql` on the database at `path` through a connection of its own.
func tamper(_ path: String, _ sql: String) throws {
    let c = try SQLiteConnection(path: path, create: false, busyTimeoutMillis: 5_000)
    defer { c.close() }
    try c.execute(sql)
}

/// `id` as an SQL blob literal.
func blobLiteral(_ id: UUID) -> String {
    "X'" + withUnsafeBytes(of: id.uuid) { $0.map { String(format: "%02x", $0) }.joined() } + "'"
}

/// A record with a plaintext-looking state (the store does not look inside it).
func rawEvent(_ id: UUID, _ version: Int, topic: String = "Ledger.Entry") -> StoredEvent {
    StoredEvent(originatorID: id, originatorVersion: version, topic: topic, state: [0x01, 0x02, 0x03])
}

@Suite("SQLite: rows written outside the library are refused with typed errors naming them")
struct HostileRowTests {
    // MARK: schema_version

    @Test("An es_meta schema_version that is not a version refuses the open with a typed error and changes no byte",
          arguments: [
            ("-1", EventSourcingError.Code.databaseCorrupt),
            ("-9223372036854775808", .databaseCorrupt),
            ("0", .databaseCorrupt),
            ("'one'", .databaseCorrupt),
            ("1.5", .databaseCorrupt),
            ("X'01'", .databaseCorrupt),
            ("9223372036854775807", .unsupportedSchema),
          ])
    func badSchemaVersion(_ value: String, _ code: EventSourcingError.Code) async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        _ = try await store.insertEvents([rawEvent(fixedAggregateID(seed: 301, index: 1), 1)])
        await store.close()
        try tamper(db, "UPDATE es_meta SET value = \(value) WHERE key = 'schema_version'")
        try await expectOpenRefused(db, code)
    }

    @Test("An es_meta table without a schema_version row refuses the open with databaseCorrupt (no migration over the tables)")
    func missingSchemaVersion() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        await store.close()
        try tamper(db, "DELETE FROM es_meta")
        try await expectOpenRefused(db, .databaseCorrupt)
    }

    /// Opens `path` expecting `code`; the file and its -wal/-shm must be exactly as before.
    private func expectOpenRefused(_ path: String, _ code: EventSourcingError.Code,
                                   sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let before = databaseFiles(path).map { ($0.suffix, $0.bytes, fileExists(path + $0.suffix)) }
        let error = #expect(throws: EventSourcingError.self, sourceLocation: sourceLocation) { _ = try SQLiteStore(path: path) }
        #expect(error?.code == code, "\(String(describing: error))", sourceLocation: sourceLocation)
        for (suffix, bytes, existed) in before {
            #expect(fileExists(path + suffix) == existed && fileBytes(path + suffix) == bytes,
                    "\(suffix.isEmpty ? "the file" : suffix) changed", sourceLocation: sourceLocation)
        }
    }

    // MARK: Data keys

    @Test("Data-key, tombstone and master-key-check rows of the wrong storage class are refused with storeFailure")
    func keyStoreRowsOfTheWrongClass() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: MasterKey.generate())
        var r = try ledgerSave(nil, id: fixedAggregateID(seed: 303, index: 1), save: 1, count: 1)
        try await s.app.save(&r)
        let scope = r.keyScope
        _ = try await s.store.shred(scope: "shredded-scope", at: Date())

        try tamper(db, "UPDATE data_keys SET wrapped = 'not a blob' WHERE scope = '\(scope)'")
        let wrapped = await #expect(throws: KeyManagementError.self) { _ = try await s.store.dataKeys(scope: scope) }
        #expect(wrapped?.code == .storeFailure && wrapped?.scope == scope && wrapped?.keyVersion == 1, "\(String(describing: wrapped))")
        #expect(wrapped?.message.contains("TEXT of 10 bytes") == true)

        try tamper(db, "UPDATE data_keys SET wrapped = X'00', kek_id = X'6b656b' WHERE scope = '\(scope)'")
        let kek = await #expect(throws: KeyManagementError.self) { _ = try await s.store.dataKeys(after: nil, limit: 10) }
        #expect(kek?.code == .storeFailure && kek?.scope == scope && kek?.message.contains("kek_id") == true, "\(String(describing: kek))")

        try tamper(db, "UPDATE tombstones SET destroyed_versions = '1,x'")
        let listed = await #expect(throws: KeyManagementError.self) { _ = try await s.store.tombstones() }
        #expect(listed?.code == .storeFailure && listed?.scope == "shredded-scope", "\(String(describing: listed))")
        try tamper(db, "UPDATE tombstones SET destroyed_versions = '', shredded_at = 'yesterday'")
        let one = await #expect(throws: KeyManagementError.self) { _ = try await s.store.tombstone(scope: "shredded-scope") }
        #expect(one?.code == .storeFailure && one?.scope == "shredded-scope", "\(String(describing: one))")

        try tamper(db, "UPDATE master_key_checks SET kdf = '{\"not\": \"kdf\"}'")
        let kdf = await #expect(throws: KeyManagementError.self) { _ = try await s.store.masterKeyChecks() }
        #expect(kdf?.code == .storeFailure && kdf?.message.contains("kdf") == true, "\(String(describing: kdf))")
        try tamper(db, "UPDATE master_key_checks SET kdf = NULL, created_at = X'00'")
        let checks = await #expect(throws: KeyManagementError.self) { _ = try await s.store.masterKeyChecks() }
        #expect(checks?.code == .storeFailure && checks?.message.contains("created_at") == true, "\(String(describing: checks))")
        await s.store.close()
    }

    @Test("Shredding a scope with a data-key row whose version is not a key version erases every row of it")
    func shredDeletesAnUnreadableKeyRow() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        for v in [UInt32(1), 2] {
            try await store.insertDataKey(WrappedDataKey(scope: "subject-1", version: v, kekID: "k", wrapped: [1, 2, 3],
                                                         createdAt: Date()))
        }
        try tamper(db, "UPDATE data_keys SET version = 4294967298 WHERE version = 2")
        let t = try await store.shred(scope: "subject-1", at: Date())
        #expect(t.destroyedVersions == [1])
        #expect(try await store.dataKeys(after: nil, limit: 10).isEmpty)
        // A shred erases key rows in place (SQLiteStore.eraseDataKeys): what is left of them holds
        // no scope, no master-key id and no key bytes.
        let rest = try await store.read { conn in
            let q = try conn.statement("SELECT count(*) FROM data_keys WHERE scope <> '' OR kek_id <> '' OR length(wrapped) > 0")
            defer { q.reset() }
            return try q.step() ? q.int(0) : -1
        }
        #expect(rest == 0)
        await store.close()
    }

    // MARK: Events and snapshots

    @Test("An event's originator_version stored as TEXT is databaseCorrupt naming the row, not version 0")
    func eventVersionAsText() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let id = fixedAggregateID(seed: 304, index: 1)
        let ids = try await store.insertEvents([rawEvent(id, 1), rawEvent(id, 2)])
        try tamper(db, "UPDATE events SET originator_version = 'two' WHERE notification_id = \(ids[1])")

        let events = await #expect(throws: EventSourcingError.self) { _ = try await store.selectEvents(originatorID: id) }
        #expect(events?.code == .databaseCorrupt && events?.originatorID == id && events?.notificationID == ids[1],
                "\(String(describing: events))")
        #expect(events?.message.contains("originator_version") == true && events?.message.contains("TEXT of 3 bytes") == true)
        let log = await #expect(throws: EventSourcingError.self) { _ = try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: []) }
        #expect(log?.code == .databaseCorrupt && log?.notificationID == ids[1] && log?.originatorID == id, "\(String(describing: log))")
        let app = Application(recorder: store, snapshots: store, mapper: Mapper())
        let get = await #expect(throws: EventSourcingError.self) { _ = try await app.repository.get(Ledger.self, id: id) }
        #expect(get?.code == .databaseCorrupt && get?.notificationID == ids[1], "\(String(describing: get))")
        await store.close()
    }

    @Test("An event's topic, state or version of the wrong storage class is databaseCorrupt naming the row",
          arguments: [
            ("topic = X'4c65646765722e456e747279'", "topic"),
            ("topic = 'Ledger.' || char(0) || 'x'", "topic"),
            ("topic = CAST(X'ff' AS TEXT)", "topic"),
            ("state = 'not a blob'", "state"),
            ("state = 7", "state"),
            ("originator_version = 1.5", "originator_version"),
            ("originator_version = X'01'", "originator_version"),
          ])
    func eventColumnOfTheWrongClass(_ assignment: String, _ column: String) async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let id = fixedAggregateID(seed: 305, index: 1)
        let ids = try await store.insertEvents([rawEvent(id, 1), rawEvent(id, 2), rawEvent(id, 3)])
        try tamper(db, "UPDATE events SET \(assignment) WHERE notification_id = \(ids[1])")
        for read in ["events", "log"] {
            let e = await #expect(throws: EventSourcingError.self) {
                if read == "events" { _ = try await store.selectEvents(originatorID: id) }
                else { _ = try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: []) }
            }
            #expect(e?.code == .databaseCorrupt && e?.notificationID == ids[1] && e?.originatorID == id,
                    "\(read): \(String(describing: e))")
            #expect(e?.message.contains(column) == true, "\(read): \(String(describing: e))")
            if column != "originator_version" { #expect(e?.originatorVersion == 2) }
        }
        await store.close()
    }

    @Test("An originator_id that is not 16 bytes is an error naming the row in every events read, never skipped")
    func eventOriginatorIDNot16Bytes() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let id = fixedAggregateID(seed: 306, index: 1)
        let ids = try await store.insertEvents([rawEvent(id, 1), rawEvent(id, 2)])
        try tamper(db, """
            UPDATE events SET key_scope = 'subject-1';
            UPDATE events SET originator_id = X'0102030405' WHERE notification_id = \(ids[0]);
            """)
        let byScope = await #expect(throws: EventSourcingError.self) { _ = try await store.selectNotifications(keyScope: "subject-1", after: 0, limit: 10) }
        #expect(byScope?.code == .databaseCorrupt && byScope?.notificationID == ids[0], "\(String(describing: byScope))")
        #expect(byScope?.message.contains("BLOB of 5 bytes") == true)
        let log = await #expect(throws: EventSourcingError.self) { _ = try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: []) }
        #expect(log?.code == .databaseCorrupt && log?.notificationID == ids[0], "\(String(describing: log))")
        await store.close()
    }

    @Test("A snapshot version stored as TEXT stops the snapshot cursor with databaseCorrupt (it read as 0 and paged forever)")
    func snapshotVersionAsTextStopsTheCursor() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let ids = (0..<3).map { fixedAggregateID(seed: 307, index: $0) }
        for id in ids { try await store.insertSnapshot(rawEvent(id, 4, topic: "Ledger.snapshot")) }
        try tamper(db, "UPDATE snapshots SET originator_version = 'four' WHERE originator_id = \(blobLiteral(ids[1]))")

        let (pages, stopped) = await pageSnapshots(store)
        #expect(stopped?.code == .databaseCorrupt && stopped?.originatorID == ids[1], "\(String(describing: stopped))")
        #expect(stopped?.message.contains("originator_version") == true)
        #expect(pages.map(\.originatorID) == [ids[0]])
        let one = await #expect(throws: EventSourcingError.self) { _ = try await store.selectSnapshot(originatorID: ids[1], lte: nil) }
        #expect(one?.code == .databaseCorrupt && one?.originatorID == ids[1], "\(String(describing: one))")
        await store.close()
    }

    @Test("A snapshot whose originator_id is not 16 bytes stops the snapshot cursor with an error naming it, instead of being skipped")
    func snapshotOriginatorIDNot16Bytes() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let ids = (0..<2).map { fixedAggregateID(seed: 308, index: $0) }
        for id in ids { try await store.insertSnapshot(rawEvent(id, 9, topic: "Ledger.snapshot")) }
        try tamper(db, "UPDATE snapshots SET originator_id = X'ffffffffff' WHERE originator_id = \(blobLiteral(ids[1]))")
        let (pages, stopped) = await pageSnapshots(store)
        #expect(stopped?.code == .databaseCorrupt && stopped?.originatorVersion == 9, "\(String(describing: stopped))")
        #expect(stopped?.message.contains("X'ffffffffff'") == true, "\(String(describing: stopped))")
        #expect(pages.map(\.originatorID) == [ids[0]])
        await store.close()
    }

    @Test("A NULL in a column the library always fills (a table rebuilt without NOT NULL) is databaseCorrupt, not \"\"")
    func nullWhereAValueIsRequired() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let id = fixedAggregateID(seed: 309, index: 1)
        try await store.insertSnapshot(rawEvent(id, 2, topic: "Ledger.snapshot"))
        try tamper(db, """
            CREATE TABLE loose (originator_id BLOB, originator_version INTEGER, topic TEXT, state BLOB, key_scope TEXT,
                                PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID;
            INSERT INTO loose SELECT originator_id, originator_version, NULL, state, key_scope FROM snapshots;
            DROP TABLE snapshots;
            ALTER TABLE loose RENAME TO snapshots;
            """)
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.selectSnapshot(originatorID: id, lte: nil) }
        #expect(e?.code == .databaseCorrupt && e?.originatorID == id && e?.originatorVersion == 2, "\(String(describing: e))")
        #expect(e?.message.contains("topic") == true && e?.message.contains("NULL") == true)
        await store.close()
    }

    /// Pages through the snapshots one at a time, as `esctl verify` does, for at most 10 pages:
    /// the pages read and the error that stopped them.
    private func pageSnapshots(_ store: SQLiteStore) async -> ([StoredEvent], EventSourcingError?) {
        var cursor: SnapshotCursor?
        var pages: [StoredEvent] = []
        for _ in 0..<10 {
            do {
                guard let last = try await store.selectSnapshots(after: cursor, limit: 1).last else { return (pages, nil) }
                if let cursor, cursor == SnapshotCursor(after: last) {
                    Issue.record("the snapshot cursor did not move on from \(cursor)")
                    return (pages, nil)
                }
                pages.append(last)
                cursor = SnapshotCursor(after: last)
            } catch let e as EventSourcingError {
                return (pages, e)
            } catch {
                Issue.record("unexpected \(error)")
                return (pages, nil)
            }
        }
        Issue.record("10 pages of snapshots and still going")
        return (pages, nil)
    }

    // MARK: Overflow

    @Test("A forged snapshot at originator_version Int64.max: record and apply throw invalidEvent naming the aggregate (no overflow trap)")
    func versionAtInt64Max() async throws {
        let dir = try TempDir("hostile")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let app = Application(recorder: store, snapshots: store, mapper: Mapper())
        let id = fixedAggregateID(seed: 310, index: 1)
        var root = try ledgerSave(nil, id: id, save: 1, count: 2)
        try await app.save(&root)
        try await app.takeSnapshot(Ledger.self, id: id)
        try tamper(db, "UPDATE snapshots SET originator_version = 9223372036854775807")

        let forged = try await app.repository.get(Ledger.self, id: id)
        #expect(forged.version == Int.max)
        var recorded = forged
        let record = #expect(throws: EventSourcingError.self) { try recorded.record(.entry(save: 2, item: 1, of: 1)) }
        #expect(record?.code == .invalidEvent && record?.originatorID == id, "\(String(describing: record))")
        #expect(recorded.pendingEvents.isEmpty && recorded.version == Int.max)
        var applied = forged
        let next = DomainEvent(originatorID: id, originatorVersion: Int.min, timestamp: Date(), event: Ledger.Event.entry(save: 2, item: 1, of: 1))
        let apply = #expect(throws: EventSourcingError.self) { try applied.apply(next) }
        #expect(apply?.code == .invalidEvent && apply?.originatorID == id, "\(String(describing: apply))")
        await store.close()
    }
}
