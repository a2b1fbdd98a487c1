import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// A store over the application's own `PostgresClient`, which the application runs.
    @Suite("An injected PostgresClient")
    struct InjectedClientTests {
        @Test("A store over a client the test runs creates its schema, saves and reads encrypted aggregates; close() leaves the client running",
              .timeLimit(.minutes(2)))
        func injectedClient() async throws {
            let config = try freshConfiguration()
            let client = PostgresClient(configuration: try PostgresStore.clientConfiguration(for: config))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await client.run() }
                let store = try await PostgresStore(client: client, configuration: config)
                #expect(store.usesInjectedClient)
                let app = try await EncryptedApp.open(store, masterKey: try MasterKey.generate()).app
                var ledger = try ledgerSave(nil, save: 1, count: 4)
                try await app.save(&ledger)
                #expect(try await app.repository.get(Ledger.self, id: ledger.id).entries == ledger.entries)
                #expect(try await store.maxNotificationID() == 4)
                await store.close()
                // The store is closed, the client is not: it still answers.
                await #expect(throws: EventSourcingError.self) { _ = try await store.maxNotificationID() }
                var tables: [String] = []
                for try await t in try await client.query(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = \(config.schema) ORDER BY 1").decode(String.self) {
                    tables.append(t)
                }
                #expect(tables == ["data_keys", "es_meta", "events", "key_changes", "key_usage", "master_key_checks", "snapshots",
                                   "tombstones", "tracking"])
                // A second store over the same client opens the existing schema.
                let again = try await PostgresStore(client: client, configuration: config)
                #expect(try await again.maxNotificationID() == 4)
                try await again.destroy()
                group.cancelAll()
            }
        }

        @Test("A client built without the store's session settings still works (lone reads through the server function)",
              .timeLimit(.minutes(2)))
        func plainClient() async throws {
            let config = try freshConfiguration()
            var clientConfig = PostgresClient.Configuration(host: config.host, port: config.port, username: config.username,
                                                            password: config.password, database: config.database, tls: .disable)
            clientConfig.options.maximumConnections = 4
            let client = PostgresClient(configuration: clientConfig)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await client.run() }
                let store = try await PostgresStore(client: client, configuration: config, logger: quietLogger)
                let app = try await EncryptedApp.open(store, masterKey: try MasterKey.generate()).app
                var ledger = try ledgerSave(nil, save: 1, count: 2)
                try await app.save(&ledger)
                #expect(try await app.repository.get(Ledger.self, id: ledger.id).entries == ledger.entries)
                try await store.destroy()
                group.cancelAll()
            }
        }

        @Test("A client nobody runs: opening fails with .databaseUnavailable within the operation timeout, saying to run it",
              .timeLimit(.minutes(1)))
        func clientNotRunning() async throws {
            var config = try freshConfiguration()
            config.operationTimeout = .milliseconds(500)
            let client = PostgresClient(configuration: try PostgresStore.clientConfiguration(for: config))
            let start = ContinuousClock.now
            let e = await #expect(throws: EventSourcingError.self) {
                _ = try await PostgresStore(client: client, configuration: config)
            }
            #expect(e?.code == .databaseUnavailable)
            #expect(e?.message.contains("client.run()") == true)
            #expect(ContinuousClock.now - start < .seconds(5))
        }
    }
}
