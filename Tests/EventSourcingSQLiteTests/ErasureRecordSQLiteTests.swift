import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite: a shred's erasure record commits with its tombstone")
struct ErasureRecordSQLiteTests {
    /// An encrypted store in `dir` holding two customers (each its own key scope: its id).
    private static func seeded(_ dir: TempDir) async throws -> (EncryptedStore, MasterKey, alice: AggregateRoot<Customer>, bob: UUID) {
        let key = try MasterKey.generate()
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: key)
        var alice = try AggregateRoot<Customer>(.registered(name: "Alice Liddell", email: "alice@example.org", address: "1 Rabbit Hole"))
        var bob = try AggregateRoot<Customer>(.registered(name: "Bob Dylan", email: "bob@example.org", address: "2 Highway 61"))
        try await s.app.save(&alice, &bob)
        return (s, key, alice, bob.id)
    }

    @Test("The record is the log's next notification, at the tombstone's exact time")
    func nextNotification() async throws {
        let dir = try TempDir("erasure")
        let (s, _, alice, _) = try await Self.seeded(dir)
        let receipt = try await s.app.shred(alice)
        let tombstone = try #require(try await s.store.tombstone(scope: alice.keyScope))
        let items = try await readWholeLog(s.app)
        #expect(items.map(\.notification.id) == [1, 2, 3])
        guard case .erased(let scope, let at) = items[2].outcome else {
            Issue.record("not an erasure: \(items[2].outcome)")
            return
        }
        #expect(scope == receipt.keyScope)
        #expect(at == tombstone.shreddedAt)
        #expect(try await s.store.countPlaintextEvents() == 0)
        #expect(try await s.store.statistics().aggregates == 2)
        #expect(try await s.store.statistics().events == 3)
        await s.store.close()
    }

    @Test("A failing insert of the erasure record rolls back the tombstone and the key erasure: nothing changes")
    func oneTransaction() async throws {
        let dir = try TempDir("erasure")
        let (s, key, alice, _) = try await Self.seeded(dir)
        let db = dir.path("events.sqlite")
        try tamper(db, """
            CREATE TRIGGER refuse_erasure BEFORE INSERT ON events WHEN NEW.topic = '\(ErasureRecord.topic)'
            BEGIN SELECT RAISE(ABORT, 'test: the erasure record cannot be written'); END
            """)
        _ = await #expect(throws: (any Error).self) { try await s.app.shred(alice) }
        #expect(try await s.store.tombstone(scope: alice.keyScope) == nil)
        #expect(try await s.store.dataKeys(scope: alice.keyScope).count == 1)
        #expect(try await s.app.notificationLog.maxNotificationID == 2)
        // The key is still there, so the subject still reads (in a fresh keyring: no cache).
        let fresh = try await EncryptedStore.open(db, masterKey: key)
        #expect(try await fresh.app.repository.get(Customer.self, id: alice.id).state.name == "Alice Liddell")
        await fresh.store.close()

        try tamper(db, "DROP TRIGGER refuse_erasure")
        _ = try await s.app.shred(alice)
        #expect(try await readWholeLog(s.app).map(\.isErased) == [false, false, true])
        await s.store.close()
    }

    @Test("A hostile erasure row gives a .failed item naming the notification, and the log read goes on",
          arguments: [
            ("state = CAST('{\"keyScope\":' AS BLOB)", EventSourcingError.Code.decodingFailed),
            ("state = CAST(X'E5530100' || '{\"keyScope\":\"x\",\"shreddedAt\":1.0,\"name\":\"Alice Liddell\"}' AS BLOB)", .decodingFailed),
            ("state = zeroblob(4000000)", .decodingFailed),
            ("originator_version = 7", .databaseCorrupt),
            ("originator_id = randomblob(16)", .databaseCorrupt),
          ])
    func hostileRow(_ change: String, _ code: EventSourcingError.Code) async throws {
        let dir = try TempDir("erasure")
        let (s, _, alice, bob) = try await Self.seeded(dir)
        _ = try await s.app.shred(alice)
        var root = try await s.app.repository.get(Customer.self, id: bob)
        try root.record(.updated(name: "Bob", email: "b@example.org", address: "3"))
        try await s.app.save(&root)
        try tamper(dir.path("events.sqlite"), "UPDATE events SET \(change) WHERE notification_id = 3")

        let items = try await readWholeLog(s.app, page: 2)
        #expect(items.map(\.notification.id) == [1, 2, 3, 4])
        guard case .failed(let f) = items[2].outcome else {
            Issue.record("the hostile row is not .failed: \(items[2].outcome)")
            return
        }
        #expect(f.code == code)
        #expect(f.notificationID == 3)
        #expect(f.topic == ErasureRecord.topic)
        #expect(!f.description.contains("Alice Liddell"))
        guard case .decoded = items[3].outcome else {
            Issue.record("the read did not go on past the hostile row: \(items[3].outcome)")
            return
        }
        await s.store.close()
    }

    @Test("The ledger-v1 fixture still reads, and a shred in it appends the erasure record after its events")
    func ledgerFixture() async throws {
        let dir = try TempDir("compat")
        let fixtures = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        let path = dir.path("ledger.sqlite")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("ledger-v1.sqlite.fixture"), to: URL(fileURLWithPath: path))
        let key = try MasterKey(contentsOfFile: fixtures.appendingPathComponent("ledger-v1.key.fixture").path)
        let s = try await EncryptedStore.open(path, masterKey: key)
        let before = try await readWholeLog(s.app)
        #expect(before.count == 5)
        #expect(before.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        let a = fixedAggregateID(seed: 7, index: 0)
        let receipt = try await s.app.shred(aggregateID: a)
        let after = try await readWholeLog(s.app)
        #expect(after.count == 6)
        #expect(after.filter(\.isShredded).count == receipt.eventsAffected)
        guard case .erased(let scope, _) = try #require(after.last).outcome else {
            Issue.record("no erasure item last")
            return
        }
        #expect(scope == receipt.keyScope)
        #expect(try await s.app.repository.get(Ledger.self, id: fixedAggregateID(seed: 7, index: 1)).version == 3)
        await s.store.close()
    }

    @Test("The read-only store reads the erasure record like any other")
    func readOnly() async throws {
        let dir = try TempDir("erasure")
        let (s, key, alice, _) = try await Self.seeded(dir)
        _ = try await s.app.shred(alice)
        await s.store.close()
        let ro = try SQLiteStore(path: dir.path("events.sqlite"), configuration: .init(readOnly: true))
        let keyring = try await Keyring.open(store: ro, masterKeys: [key])
        let app = Application(recorder: ro, snapshots: ro, mapper: Mapper(keyring: keyring))
        let items = try await readWholeLog(app)
        #expect(items.map(\.isErased) == [false, false, true])
        await ro.close()
    }
}
