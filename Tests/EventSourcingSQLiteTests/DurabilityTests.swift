import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite durability settings")
struct DurabilityTests {
    private static let inspect = """
        import sqlite3, sys
        c = sqlite3.connect(sys.argv[1])
        print(c.execute("PRAGMA journal_mode").fetchone()[0])
        print(c.execute("SELECT value FROM es_meta WHERE key = 'schema_version'").fetchone()[0])
        print(c.execute("SELECT count(*) FROM events").fetchone()[0])
        c.close()
        """

    @Test("The default configuration commits with synchronous FULL, and the file is in WAL mode")
    func defaultIsFullAndWAL() async throws {
        #expect(SQLiteStore.Configuration().synchronous == .full)
        #expect(SQLiteStore.Synchronous.full.rawValue == "FULL")
        let dir = try TempDir("durability")
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: MasterKey.generate())
        #expect(s.store.configuration.synchronous == .full)
        var c = try AggregateRoot<Customer>(.registered(name: "A", email: "B", address: "C"))
        try await s.app.save(&c)
        await s.store.close()
        let out = try await TestEnvironment.python(Self.inspect, [db], in: dir)
        #expect(out.split(separator: "\n") == ["wal", "\(SQLiteStore.schemaVersion)", "1"])
    }

    @Test("A store opened with synchronous NORMAL works and is in WAL mode")
    func normalIsAccepted() async throws {
        let dir = try TempDir("durability")
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: MasterKey.generate(),
                                              configuration: .init(synchronous: .normal))
        #expect(s.store.configuration.synchronous == .normal)
        var c = try AggregateRoot<Customer>(.registered(name: "A", email: "B", address: "C"))
        try c.record(.updated(name: "A2", email: "B2", address: "C2"))
        let recorded = try await s.app.save(&c)
        #expect(recorded.map(\.notificationID) == [1, 2])
        #expect(try await s.app.repository.get(Customer.self, id: c.id).name == "A2")
        await s.store.close()
        let out = try await TestEnvironment.python(Self.inspect, [db], in: dir)
        #expect(out.split(separator: "\n") == ["wal", "\(SQLiteStore.schemaVersion)", "2"])
    }
}
