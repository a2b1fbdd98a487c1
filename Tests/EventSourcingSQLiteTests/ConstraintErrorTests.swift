import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite: only the events' (originator id, version) key is a concurrency conflict; every error carries SQLite's code")
struct ConstraintErrorTests {
    private func openStore(_ dir: TempDir) throws -> (SQLiteStore, String) {
        let db = dir.path("events.sqlite")
        return (try SQLiteStore(path: db), db)
    }

    @Test("A repeated (originator id, version) is concurrencyConflict naming the record, with SQLITE_CONSTRAINT_UNIQUE (2067)")
    func eventKeyConflict() async throws {
        let dir = try TempDir("constraint")
        let (store, _) = try openStore(dir)
        let id = fixedAggregateID(seed: 330, index: 1)
        _ = try await store.insertEvents([rawEvent(id, 1)])
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(id, 2), rawEvent(id, 1, topic: "Ledger.Again")]) }
        #expect(e?.code == .concurrencyConflict && e?.originatorID == id && e?.originatorVersion == 1 && e?.topic == "Ledger.Again",
                "\(String(describing: e))")
        #expect(e?.storeCode == "SQLITE_CONSTRAINT_UNIQUE (2067)")
        #expect(try await store.selectEvents(originatorID: id).count == 1)
        await store.close()
    }

    @Test("A unique index added on another column of events is constraintViolation, not concurrencyConflict")
    func anotherUniqueIndex() async throws {
        let dir = try TempDir("constraint")
        let (store, db) = try openStore(dir)
        try tamper(db, "CREATE UNIQUE INDEX one_per_topic ON events (topic)")
        let a = fixedAggregateID(seed: 331, index: 1), b = fixedAggregateID(seed: 331, index: 2)
        _ = try await store.insertEvents([rawEvent(a, 1, topic: "Ledger.Opened")])
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(b, 1, topic: "Ledger.Opened")]) }
        #expect(e?.code == .constraintViolation && e?.originatorID == b && e?.originatorVersion == 1, "\(String(describing: e))")
        #expect(e?.storeCode == "SQLITE_CONSTRAINT_UNIQUE (2067)")
        #expect(e?.message.contains("events.topic") == true)
        #expect(try await store.selectEvents(originatorID: b).isEmpty)
        await store.close()
    }

    @Test("NOT NULL, another table's primary key and a trigger's abort during a save are constraintViolation with their extended codes",
          arguments: [
            ("INSERT INTO tombstones (scope, shredded_at, destroyed_versions) VALUES ('x', NULL, '')", "SQLITE_CONSTRAINT_NOTNULL (1299)"),
            ("INSERT INTO data_keys (scope, version, kek_id, wrapped, created_at) VALUES ('taken', 1, 'k', X'00', 0)",
             "SQLITE_CONSTRAINT_PRIMARYKEY (1555)"),
            ("SELECT RAISE(ABORT, 'refused by a trigger')", "SQLITE_CONSTRAINT_TRIGGER (1811)"),
          ])
    func otherConstraints(_ triggerBody: String, _ storeCode: String) async throws {
        let dir = try TempDir("constraint")
        let (store, db) = try openStore(dir)
        try await store.insertDataKey(WrappedDataKey(scope: "taken", version: 1, kekID: "k", wrapped: [1], createdAt: Date()))
        try tamper(db, "CREATE TRIGGER hostile AFTER INSERT ON events WHEN NEW.topic = 'Ledger.Hostile' BEGIN \(triggerBody); END")
        let id = fixedAggregateID(seed: 332, index: 1)
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(id, 1), rawEvent(id, 2, topic: "Ledger.Hostile")]) }
        #expect(e?.code == .constraintViolation && e?.originatorID == id && e?.originatorVersion == 2 && e?.topic == "Ledger.Hostile",
                "\(String(describing: e))")
        #expect(e?.storeCode == storeCode)
        #expect(try await store.selectEvents(originatorID: id).isEmpty)
        await store.close()
    }

    @Test("A data key that exists is still KeyManagementError.keyExists, alone and with events")
    func dataKeyConflict() async throws {
        let dir = try TempDir("constraint")
        let (store, _) = try openStore(dir)
        let key = WrappedDataKey(scope: "subject-1", version: 1, kekID: "k", wrapped: [1], createdAt: Date())
        try await store.insertDataKey(key)
        let alone = await #expect(throws: KeyManagementError.self) { try await store.insertDataKey(key) }
        #expect(alone?.code == .keyExists && alone?.scope == "subject-1" && alone?.keyVersion == 1)
        let id = fixedAggregateID(seed: 333, index: 1)
        let withEvents = await #expect(throws: KeyManagementError.self) { _ = try await store.insertEvents([rawEvent(id, 1)], newKeys: [key]) }
        #expect(withEvents?.code == .keyExists && withEvents?.scope == "subject-1")
        #expect(try await store.selectEvents(originatorID: id).isEmpty)
        await store.close()
    }

    @Test("A lock held past the busy timeout is databaseLocked with SQLITE_BUSY (5)")
    func busyCarriesItsCode() async throws {
        let dir = try TempDir("constraint")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db, configuration: .init(busyTimeout: .milliseconds(50)))
        let holder = try SQLiteConnection(path: db, create: false, busyTimeoutMillis: 0)
        try holder.execute("BEGIN IMMEDIATE")
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(fixedAggregateID(seed: 334, index: 1), 1)]) }
        #expect(e?.code == .databaseLocked && e?.storeCode == "SQLITE_BUSY (5)", "\(String(describing: e))")
        try holder.execute("ROLLBACK")
        holder.close()
        await store.close()
    }

    @Test("Result codes are named as in sqlite3.h, with their number")
    func codeNames() {
        #expect(SQLiteResultCode.describe(19) == "SQLITE_CONSTRAINT (19)")
        #expect(SQLiteResultCode.describe(1299) == "SQLITE_CONSTRAINT_NOTNULL (1299)")
        #expect(SQLiteResultCode.describe(2067) == "SQLITE_CONSTRAINT_UNIQUE (2067)")
        #expect(SQLiteResultCode.describe(5) == "SQLITE_BUSY (5)")
        // An extended code newer than the table: its primary code's name, its own number.
        #expect(SQLiteResultCode.describe(10 | 40 << 8) == "SQLITE_IOERR (10250)")
    }
}
