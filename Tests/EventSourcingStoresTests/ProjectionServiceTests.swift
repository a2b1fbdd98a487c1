import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging
import ServiceLifecycle
import Testing

/// Account owners, in the SQLite store's own file.
private struct Owners: Projection {
    let name = "owners"

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("CREATE TABLE IF NOT EXISTS owners (id TEXT PRIMARY KEY, owner TEXT NOT NULL)")
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        let e = try item.event(as: Account.self)
        switch e.event {
        case .opened(_, let owner), .renamed(let owner):
            try tx.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", .text(e.originatorID.uuidString), .text(owner))
        }
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {}
    func drop(in tx: SQLiteViewTransaction) async throws { try tx.execute("DROP TABLE IF EXISTS owners") }
}

@Suite("Projection runners as swift-service-lifecycle services")
struct ProjectionServiceTests {
    @Test("A runner and its SQLite store in one ServiceGroup: the runner follows the log while the group runs, and a graceful shutdown stops it normally before the store closes")
    func runnerInServiceGroup() async throws {
        let dir = try ScratchDir()
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let app = Application(recorder: store)
        let runner = try ProjectionRunner(application: app, projection: Owners(), store: store)
        let projections = try ProjectionGroup([runner])
        // Shut down in reverse order: the projections first, then the store.
        let group = ServiceGroup(services: [store, projections], logger: Logger(label: "test.service-group"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            for i in 0..<5 {
                var account = try AggregateRoot<Account>(.opened(subject: "", owner: "Owner \(i)"))
                let saved = try await app.save(&account)
                try await projections.wait(for: "owners", until: saved[0].notificationID, timeout: .seconds(60))
            }
            #expect(runner.isRunning)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(!runner.isRunning)
        #expect(runner.lastFailure == nil)
        let reopened = try SQLiteStore(path: dir.path("events.sqlite"))
        #expect(try await reopened.maxTrackingID("owners") == 5)
        let rows = try await reopened.readView { try $0.query("SELECT count(*) FROM owners") }
        #expect(rows.first?[0] == .integer(5))
        await reopened.close()
    }
}
