import ESTestSupport
import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// Tracking records in a SQLite file: schema 4's `tracking` table, made for new stores and by
/// the migration of existing ones; read-only stores that predate it; positions that survive a
/// reopen; a row the library never writes.
@Suite("SQLite tracking records")
struct TrackingSQLiteTests {
    static func fixture(_ dir: TempDir) throws -> (path: String, key: MasterKey) {
        let fixtures = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        let path = dir.path("ledger.sqlite")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("ledger-v1.sqlite.fixture"), to: URL(fileURLWithPath: path))
        return (path, try MasterKey(contentsOfFile: fixtures.appendingPathComponent("ledger-v1.key.fixture").path))
    }

    @Test("The schema-1 fixture opened read-only answers maxTrackingID nil and changes no byte; opened for writing, it is migrated and tracks")
    func fixtureStore() async throws {
        let dir = try TempDir("tracking")
        let (path, key) = try Self.fixture(dir)
        let before = ReadOnlyStoreTests.directory(path)
        let readOnly = try SQLiteStore(path: path, configuration: .init(readOnly: true))
        #expect(try await readOnly.maxTrackingID("projection") == nil)
        #expect(try await readOnly.hasTrackingID("projection", 1) == false)
        let refused = await #expect(throws: EventSourcingError.self) {
            try await readOnly.insertTracking(Tracking(name: "projection", notificationID: 1))
        }
        #expect(refused?.code == .databaseUnavailable)
        await readOnly.close()
        #expect(ReadOnlyStoreTests.directory(path) == before, "the schema-1 file was changed")

        let store = try SQLiteStore(path: path)   // migrates schema 1 to the current schema
        #expect(try scalar(path, "SELECT value FROM es_meta WHERE key = 'schema_version'") == "\(SQLiteStore.schemaVersion)")
        #expect(try scalar(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tracking'") == "1")
        #expect(try await store.maxTrackingID("projection") == nil)
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: try await Keyring.open(store: store, masterKeys: [key])))
        #expect(try await app.notificationLog.read(start: 1, limit: 10).count == 5)
        let ids = try await store.insertEvents([], tracking: Tracking(name: "projection", notificationID: 5))
        #expect(ids.isEmpty)
        #expect(try await store.maxTrackingID("projection") == 5)
        await store.close()
    }

    @Test("A read-only store over a new, empty database answers maxTrackingID nil and creates nothing")
    func emptyReadOnly() async throws {
        let dir = try TempDir("tracking")
        let path = dir.path("empty.sqlite")
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        let store = try SQLiteStore(path: path, configuration: .init(readOnly: true))
        #expect(try await store.maxTrackingID("p") == nil)
        await store.close()
        #expect(ReadOnlyStoreTests.directory(path) == ["empty.sqlite": []])
    }

    @Test("Positions survive closing and reopening, and a read-only store reads them")
    func persisted() async throws {
        let dir = try TempDir("tracking")
        let path = dir.path("events.sqlite")
        let store = try SQLiteStore(path: path)
        let id = UUID()
        let event = StoredEvent(originatorID: id, originatorVersion: 1, topic: "Thing.happened", state: [1, 2, 3])
        #expect(try await store.insertEvents([event], tracking: Tracking(name: "upstream", notificationID: 41)) == [1])
        try await store.insertTracking(Tracking(name: "view", notificationID: 1))
        await store.close()

        let again = try SQLiteStore(path: path)
        #expect(try await again.maxTrackingID("upstream") == 41)
        #expect(try await again.maxTrackingID("view") == 1)
        let e = await #expect(throws: EventSourcingError.self) {
            try await again.insertTracking(Tracking(name: "upstream", notificationID: 41))
        }
        #expect(e?.code == .trackingConflict)
        await again.close()

        let readOnly = try SQLiteStore(path: path, configuration: .init(readOnly: true))
        #expect(try await readOnly.maxTrackingID("upstream") == 41)
        #expect(try await readOnly.hasTrackingID("upstream", 41))
        await readOnly.close()
    }

    @Test("A tracking row that does not hold an integer (written outside the library) fails with databaseCorrupt naming the name")
    func hostileRow() async throws {
        let dir = try TempDir("tracking")
        let path = dir.path("events.sqlite")
        let store = try SQLiteStore(path: path)
        try await store.insertTracking(Tracking(name: "view", notificationID: 3))
        try tamper(path, "UPDATE tracking SET notification_id = 'three' WHERE name = 'view'")
        let read = await #expect(throws: EventSourcingError.self) { _ = try await store.maxTrackingID("view") }
        #expect(read?.code == .databaseCorrupt)
        #expect(read?.message.contains("\"view\"") == true, "\(String(describing: read))")
        let write = await #expect(throws: EventSourcingError.self) {
            try await store.insertEvents([StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: "T.t", state: [1])],
                                         tracking: Tracking(name: "view", notificationID: 4))
        }
        #expect(write?.code == .databaseCorrupt)
        #expect(try await store.maxNotificationID() == nil, "the refused tracked insert wrote an event")
        await store.close()
    }

    @Test("A tracked save that fails in a group commit fails alone: the plain saves of its group commit")
    func failsAloneInGroup() async throws {
        let dir = try TempDir("tracking")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        try await store.insertTracking(Tracking(name: "proc", notificationID: 10))
        let ids = (0..<20).map { _ in UUID() }
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for (i, id) in ids.enumerated() {
                group.addTask {
                    let e = StoredEvent(originatorID: id, originatorVersion: 1, topic: "T.t", state: [UInt8(i)])
                    // Every other save is tracked with a refused position.
                    return (try? await i.isMultiple(of: 2)
                        ? store.insertEvents([e], tracking: Tracking(name: "proc", notificationID: 10))
                        : store.insertEvents([e])) != nil
                }
            }
            var all: [Bool] = []
            for await ok in group { all.append(ok) }
            return all
        }
        #expect(outcomes.filter { $0 }.count == 10)
        #expect(try await store.selectNotifications(start: 1, limit: 100, stop: nil, topics: []).map(\.id) == Array(1...10))
        #expect(try await store.maxTrackingID("proc") == 10)
        await store.close()
    }
}
