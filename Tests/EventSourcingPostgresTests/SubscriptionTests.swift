import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// How a PostgreSQL store wakes the notification log's subscribers: LISTEN/NOTIFY, and a
    /// re-poll that covers lost notifications and a dead LISTEN session.
    @Suite("PostgreSQL subscriptions")
    struct SubscriptionTests {
        private static func save(_ app: Application, _ n: Int) async throws {
            for i in 0..<n {
                var root = try ledgerSave(nil, save: i, count: 1)
                try await app.save(&root)
            }
        }

        /// The backends LISTENing on `store`'s channel.
        private static func listeners(_ config: PostgresStore.Configuration) async throws -> [Int64] {
            try await withRawClient(config) { client in
                var pids: [Int64] = []
                let rows = try await client.query(PostgresQuery(unsafeSQL: """
                    SELECT pid::bigint FROM pg_stat_activity WHERE query LIKE 'LISTEN "es_commits_\(config.schema)"%'
                    """))
                for try await pid in rows.decode(Int64.self) { pids.append(pid) }
                return pids
            }
        }

        private static func waitForListener(_ config: PostgresStore.Configuration, excluding old: [Int64] = []) async throws -> [Int64] {
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                let pids = try await listeners(config).filter { !old.contains($0) }
                if !pids.isEmpty { return pids }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw EventSourcingError(.databaseUnavailable, "no LISTEN session on the store's channel within 20 s")
        }

        @Test("a commit by another store instance wakes a subscriber through LISTEN/NOTIFY, long before its poll interval")
        func notifyWakes() async throws {
            let config = try freshConfiguration { $0.subscriptionPollInterval = .seconds(600) }
            let key = try MasterKey.generate()
            try await withStore(config) { readerStore in
                let writerStore = try await PostgresStore(configuration: config)
                defer { Task { await writerStore.close() } }
                let reader = try await EncryptedApp.open(readerStore, masterKey: key)
                let writer = try await EncryptedApp.open(writerStore, masterKey: key)
                try await Self.save(writer.app, 2)
                let sub = reader.app.notificationLog.subscribe(after: 2)
                let consumer = Task { try await SubscriptionProbe.take(3, from: sub, within: .seconds(20)) }
                _ = try await Self.waitForListener(config)
                while readerStore.commitSignal.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
                let generation = readerStore.commitSignal.generation
                let saved = ContinuousClock.now
                try await Self.save(writer.app, 3)
                #expect(try await consumer.value.map(\.notification.id) == [3, 4, 5])
                #expect(ContinuousClock.now - saved < .seconds(10))
                // Woken by a notification: the reader store itself committed nothing.
                #expect(readerStore.commitSignal.generation != generation)
            }
        }

        @Test("pg_terminate_backend of the LISTEN session: the subscriber still receives every later event, and LISTEN comes back")
        func listenerKilled() async throws {
            let config = try freshConfiguration { $0.subscriptionPollInterval = .milliseconds(300) }
            let key = try MasterKey.generate()
            try await withStore(config) { readerStore in
                let writerStore = try await PostgresStore(configuration: config)
                defer { Task { await writerStore.close() } }
                let reader = try await EncryptedApp.open(readerStore, masterKey: key)
                let writer = try await EncryptedApp.open(writerStore, masterKey: key)
                try await Self.save(writer.app, 2)
                let consumer = Task { try await SubscriptionProbe.take(12, from: reader.app.notificationLog.subscribe(),
                                                                        within: .seconds(60)) }
                let first = try await Self.waitForListener(config)
                let killed = try await withRawClient(config) { client in
                    try await client.scalar(PostgresQuery(unsafeSQL: "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN (\(first.map(String.init).joined(separator: ","))) ) t"))
                }
                #expect(killed == Int64(first.count))
                // Saved while the session is dead or being opened again: notifications are lost.
                try await Self.save(writer.app, 5)
                let second = try await Self.waitForListener(config, excluding: first)
                #expect(Set(second).isDisjoint(with: first))
                try await Self.save(writer.app, 5)
                let items = try await consumer.value
                #expect(items.map(\.notification.id) == Array(1...12))
                #expect(items.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
            }
        }

        @Test("with no notification at all (the trigger dropped), the re-poll delivers within the poll interval")
        func lostNotificationRepoll() async throws {
            let config = try freshConfiguration { $0.subscriptionPollInterval = .milliseconds(200) }
            let key = try MasterKey.generate()
            try await withStore(config) { store in
                let app = try await EncryptedApp.open(store, masterKey: key)
                try await withRawClient(config) { client in
                    _ = try await client.query(PostgresQuery(unsafeSQL: "DROP TRIGGER events_notify_commit ON \"\(config.schema)\".events"))
                }
                let sub = app.app.notificationLog.subscribe()
                let consumer = Task { try await SubscriptionProbe.take(4, from: sub, within: .seconds(20)) }
                _ = try await Self.waitForListener(config)
                while store.commitSignal.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
                let generation = store.commitSignal.generation
                try await Self.save(app.app, 4)
                let saved = ContinuousClock.now
                #expect(try await consumer.value.map(\.notification.id) == [1, 2, 3, 4])
                #expect(ContinuousClock.now - saved < .seconds(5))
                #expect(store.commitSignal.generation == generation, "a notification arrived although the trigger was dropped")
            }
        }

        @Test("the NOTIFY trigger is installed once, also when a second instance starts on the schema")
        func triggerInstalledOnce() async throws {
            let config = try freshConfiguration()
            try await withStore(config) { _ in
                let second = try await PostgresStore(configuration: config)
                await second.close()
                let n = try await withRawClient(config) { client in
                    try await client.scalar(PostgresQuery(unsafeSQL: """
                        SELECT count(*) FROM pg_trigger WHERE tgname = 'events_notify_commit' AND tgrelid = '"\(config.schema)".events'::regclass
                        """))
                }
                #expect(n == 1)
            }
        }
    }
}
