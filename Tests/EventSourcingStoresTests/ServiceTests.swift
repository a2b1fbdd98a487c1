import EventSourcing
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement
import Logging
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

/// Runs `service` in a ServiceGroup, checks it is still open while the group runs, triggers a
/// graceful shutdown, and returns once the group has finished.
private func runUntilGracefulShutdown(_ service: any Service, whileRunning: @Sendable () async throws -> Void) async throws {
    let group = ServiceGroup(services: [service], logger: Logger(label: "test.service-group"))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        try await whileRunning()
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

@Suite("Stores as swift-service-lifecycle services")
struct ServiceTests {
    @Test("SQLiteStore in a ServiceGroup: open while the group runs, closed after a graceful shutdown")
    func sqliteGraceful() async throws {
        let dir = try ScratchDir()
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let app = Application(recorder: store)
        try await runUntilGracefulShutdown(store) {
            var account = try AggregateRoot<Account>(.opened(subject: "", owner: "Running"))
            try await app.save(&account)
        }
        var after = try AggregateRoot<Account>(.opened(subject: "", owner: "After"))
        let error = try await #require(throws: EventSourcingError.self) { try await app.save(&after) }
        #expect(error.code == .databaseUnavailable)
        let readError = try await #require(throws: EventSourcingError.self) { try await store.maxNotificationID() }
        #expect(readError.code == .databaseUnavailable)
    }

    @Test("EncryptedStore in a ServiceGroup: closed after a graceful shutdown")
    func encryptedGraceful() async throws {
        let dir = try ScratchDir()
        let store = try await EncryptedStore.open(url: "sqlite:" + dir.path("events.sqlite"), masterKey: try MasterKey.generate())
        try await runUntilGracefulShutdown(store) {
            var account = try AggregateRoot<Account>(.opened(subject: "subj-svc", owner: "Running"))
            try await store.application.save(&account)
        }
        var after = try AggregateRoot<Account>(.opened(subject: "subj-svc-2", owner: "After"))
        let error = try await #require(throws: EventSourcingError.self) { try await store.application.save(&after) }
        #expect(error.code == .databaseUnavailable)
    }

    @Test("run() waits for the graceful-shutdown trigger (it has not closed the store before it), then closes")
    func waitsForTrigger() async throws {
        let dir = try ScratchDir()
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await store.run() }
                // run() is suspended in gracefulShutdown(): the store still answers.
                for _ in 0..<20 {
                    await Task.yield()
                    _ = try await store.maxNotificationID()
                }
                trigger.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
        let error = try await #require(throws: EventSourcingError.self) { try await store.maxNotificationID() }
        #expect(error.code == .databaseUnavailable)
    }

    @Test("Cancelling run() also closes the store, and run() returns normally")
    func cancellation() async throws {
        let dir = try ScratchDir()
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let task = Task { try await store.run() }
        _ = try await store.maxNotificationID()
        task.cancel()
        try await task.value
        let error = try await #require(throws: EventSourcingError.self) { try await store.maxNotificationID() }
        #expect(error.code == .databaseUnavailable)
    }
}
