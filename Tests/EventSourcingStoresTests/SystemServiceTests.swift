import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging
import ServiceLifecycle
import Testing

/// Copies each account opening into an audit entry of the follower's own.
private struct Audit: ProcessPolicy {
    var topics: [String] { ["Account.opened"] }

    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        guard let e = try event.event(if: Account.self), case .opened(let subject, let owner) = e.event else { return }
        var entry = try AggregateRoot<Account>(.opened(subject: subject, owner: "audit: \(owner)"))
        try context.collect(&entry)
    }
}

@Suite("System runner as a swift-service-lifecycle service")
struct SystemServiceTests {
    @Test("A system runner and its SQLite stores in one ServiceGroup: it follows while the group runs, and a graceful shutdown stops it normally before the stores close")
    func runnerInServiceGroup() async throws {
        let dir = try ScratchDir()
        let accountsStore = try SQLiteStore(path: dir.path("accounts.sqlite"))
        let auditStore = try SQLiteStore(path: dir.path("audit.sqlite"))
        let accounts = Application(recorder: accountsStore)
        let audit = try ProcessApplication(name: "audit", application: Application(recorder: auditStore), policy: Audit())
        let system = try System(members: [.application("accounts", accounts), .process(audit)], pipes: [["accounts", "audit"]])
        let runner = try SystemRunner(system: system)
        // Shut down in reverse order: the runner first, then the stores.
        let group = ServiceGroup(services: [accountsStore, auditStore, runner], logger: Logger(label: "test.service-group"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            for i in 0..<5 {
                var account = try AggregateRoot<Account>(.opened(subject: "", owner: "Owner \(i)"))
                let saved = try await accounts.save(&account)
                try await runner.wait(for: "audit", toProcess: saved[0].notificationID, of: "accounts", timeout: .seconds(60))
            }
            #expect(runner.isRunning)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(!runner.isRunning)
        let reopened = try SQLiteStore(path: dir.path("audit.sqlite"))
        #expect(try await reopened.maxTrackingID("audit <- accounts") == 5)
        #expect(try await reopened.maxNotificationID() == 5)
        await reopened.close()
    }
}
