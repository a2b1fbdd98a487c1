import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("Stores written by earlier versions")
struct CompatibilityTests {
    /// A copy of the fixture store (schema 1, written by the library at commit 206f3f0) and its key.
    private static func fixture() throws -> (TempDir, String, MasterKey) {
        let dir = try TempDir("compat")
        let fixtures = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        let path = dir.path("ledger.sqlite")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("ledger-v1.sqlite.fixture"),
                                         to: URL(fileURLWithPath: path))
        let key = try MasterKey(contentsOfFile: fixtures.appendingPathComponent("ledger-v1.key.fixture").path)
        return (dir, path, key)
    }

    @Test("Records written when topics came from reflection read back, and today's rule derives the same topics")
    func reflectionTopicsStillRead() async throws {
        let (dir, path, key) = try Self.fixture()
        _ = dir
        let store = try SQLiteStore(path: path)   // migrates schema 1 to the current schema
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        let a = fixedAggregateID(seed: 7, index: 0)
        let b = fixedAggregateID(seed: 7, index: 1)
        #expect(try await app.repository.get(Ledger.self, id: a).version == 2)
        #expect(try await app.repository.get(Ledger.self, id: b).version == 3)
        let stored = try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: [])
        #expect(stored.count == 5)
        for n in stored {
            let event = try await app.mapper.decode(n.storedEvent, as: Ledger.self)
            #expect(Ledger.topic(of: event.event) == n.topic, "topic of notification \(n.id)")
        }
        // New events append under the same topic, after the old ones.
        var root = try await app.repository.get(Ledger.self, id: a)
        try root.record(.entry(save: 9, item: 1, of: 1))
        try await app.save(&root)
        #expect(try await store.selectEvents(originatorID: a).map(\.topic) == ["Ledger.entry", "Ledger.entry", "Ledger.entry"])
        await store.close()
    }
}
