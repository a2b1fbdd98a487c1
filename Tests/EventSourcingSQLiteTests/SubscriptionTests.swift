import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// How a SQLite store wakes the notification log's subscribers: its own commits at once, other
/// connections' commits (another instance, another process) by polling within
/// `Configuration.subscriptionPollInterval`.
@Suite("SQLite subscriptions")
struct SQLiteSubscriptionTests {
    private static func config(poll: Duration) -> SQLiteStore.Configuration {
        var c = SQLiteStore.Configuration()
        c.subscriptionPollInterval = poll
        return c
    }

    private static func save(_ app: Application, _ n: Int) async throws {
        for i in 0..<n {
            var root = try ledgerSave(nil, save: i, count: 1)
            try await app.save(&root)
        }
    }

    @Test("the store's own commit wakes a waiting subscriber at once, long before its poll interval")
    func ownCommitWakes() async throws {
        let dir = try TempDir("subscribe-wake")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: MasterKey.generate(),
                                              configuration: Self.config(poll: .seconds(600)))
        #expect(s.store.commitPollInterval == .seconds(600))
        try await Self.save(s.app, 2)
        let sub = s.app.notificationLog.subscribe(after: 2)
        // The bounds are far below the 600 s poll interval, and roomy: the whole suite shares two cores.
        let consumer = Task { try await SubscriptionProbe.take(1, from: sub, within: .seconds(60)) }
        while s.store.commitSignal.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let saved = ContinuousClock.now
        try await Self.save(s.app, 1)
        #expect(try await consumer.value.map(\.notification.id) == [3])
        #expect(ContinuousClock.now - saved < .seconds(60))
        await s.store.close()
    }

    @Test("commits through another SQLiteStore on the same file are seen by polling, within the poll interval")
    func otherInstanceIsPolled() async throws {
        let dir = try TempDir("subscribe-other")
        let key = try MasterKey.generate()
        let path = dir.path("events.sqlite")
        let reader = try await EncryptedStore.open(path, masterKey: key, configuration: Self.config(poll: .milliseconds(200)))
        let writer = try await EncryptedStore.open(path, masterKey: key)
        try await Self.save(writer.app, 3)
        let sub = reader.app.notificationLog.subscribe()
        #expect(try await SubscriptionProbe.take(3, from: sub).map(\.notification.id) == [1, 2, 3])

        let live = reader.app.notificationLog.subscribe(after: 3)
        let consumer = Task { try await SubscriptionProbe.take(5, from: live, within: .seconds(20)) }
        while reader.store.commitSignal.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let generation = reader.store.commitSignal.generation
        try await Self.save(writer.app, 5)
        let saved = ContinuousClock.now
        #expect(try await consumer.value.map(\.notification.id) == [4, 5, 6, 7, 8])
        // The poll interval plus slack for a loaded machine: not a wait for a 600 s poll.
        #expect(ContinuousClock.now - saved < .seconds(3))
        // Found by polling: the reader's store never committed anything, so nothing signalled it.
        #expect(reader.store.commitSignal.generation == generation)
        await writer.store.close()
        await reader.store.close()
    }

    @Test("events written by another process arrive, every one once and in order", .tags(.multiProcess))
    func otherProcess() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("subscribe-process")
        let (db, keyFile) = try await createStoreAndKeyFile(in: dir)
        let reader = try await EncryptedStore.open(db, masterKey: MasterKey(contentsOfFile: keyFile),
                                                   configuration: Self.config(poll: .milliseconds(100)))
        let events = 60
        let consumer = Task { try await SubscriptionProbe.take(events, from: reader.app.notificationLog.subscribe(pageSize: 8),
                                                                within: .seconds(60)) }
        let child = try ChildProcess(agent, ["writer", db, keyFile, "1", String(events), "1,1,3", "2"],
                                     stderrPath: dir.path("writer.stderr"))
        let ready = await child.readLine()
        try #require(ready == "READY", "writer did not start: \(child.stderr)")
        child.writeLine("GO")
        child.closeStdin()
        _ = await child.readRemainingLines()
        let status = await child.waitForExit()
        try #require(status == .exited(0), "writer \(status): \(child.stderr)")
        let items = try await consumer.value
        #expect(items.map(\.notification.id) == Array(1...Int64(events)))
        #expect(items.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        #expect(try await SubscriptionProbe.deliversNothing(reader.app.notificationLog.subscribe(after: Int64(events)),
                                                            within: .milliseconds(300)))
        await reader.store.close()
    }
}
