import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    @Suite("Schema creation and versioning")
    struct SchemaTests {
        /// What a store's schema holds, to tell whether opening it changed anything.
        struct Fingerprint: Equatable {
            var meta: [String]
            var tables: [String]
            var functions: [String]
            var events: [String]
        }

        private func fingerprint(_ client: PostgresClient, _ s: String) async throws -> Fingerprint {
            Fingerprint(
                meta: try await client.strings("SELECT key || '=' || value FROM \(unescaped: s).es_meta ORDER BY key"),
                tables: try await client.strings("""
                    SELECT c.relname || ':' || c.xmin::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = \(s) ORDER BY c.relname
                    """),
                // xmin changes whenever CREATE OR REPLACE FUNCTION rewrites the function.
                functions: try await client.strings("""
                    SELECT p.proname || ':' || p.xmin::text || ':' || md5(p.prosrc) FROM pg_proc p
                    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = \(s) ORDER BY p.proname
                    """),
                events: try await client.strings("""
                    SELECT notification_id || ':' || originator_id || ':' || originator_version || ':' || md5(state)
                    FROM \(unescaped: s).events ORDER BY notification_id
                    """))
        }

        @Test("Opening a schema whose es_meta schema_version is 99 fails with .unsupportedSchema and changes nothing")
        func newerSchemaVersionIsRefused() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            // A store with some events, then "upgraded" by a future version of the library.
            let store = try await PostgresStore(configuration: config)
            do {
                let app = try await EncryptedApp.open(store, masterKey: MasterKey.generate())
                var root = try ledgerSave(nil, save: 1, count: 3)
                try await app.app.save(&root)
                await store.close()

                try await withRawClient(config) { client in
                    try await client.query("UPDATE \(unescaped: s).es_meta SET value = 99 WHERE key = 'schema_version'")
                    let before = try await fingerprint(client, s)
                    #expect(before.meta.contains("schema_version=99"))
                    #expect(before.events.count == 3)

                    let error = await #expect(throws: EventSourcingError.self) {
                        let newer = try await PostgresStore(configuration: config)
                        await newer.close()
                    }
                    #expect(error?.code == .unsupportedSchema)
                    #expect(error?.description.contains("99") == true, "the error should name the version found: \(String(describing: error))")
                    let after = try await fingerprint(client, s)
                    #expect(after == before, "opening the newer schema changed it")
                }
            } catch {
                await store.close()
                try? await dropSchema(config)
                throw error
            }
            try await dropSchema(config)
        }

        @Test("Opening a current schema changes nothing (one query); a schema whose start fingerprint differs gets its functions replaced")
        func startStatementsRunOnlyWhenChanged() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            await (try await PostgresStore(configuration: config)).close()
            do {
                try await withRawClient(config) { client in
                    let installed = try await fingerprint(client, s)
                    await (try await PostgresStore(configuration: config)).close()
                    #expect(try await fingerprint(client, s) == installed, "reopening a current schema rewrote something")
                    // What a store of another library version left: its functions are replaced.
                    try await client.query("UPDATE \(unescaped: s).es_meta SET value = 0 WHERE key = 'start_fingerprint'")
                    await (try await PostgresStore(configuration: config)).close()
                    let replaced = try await fingerprint(client, s)
                    #expect(replaced.functions != installed.functions)
                    #expect(replaced.meta == installed.meta, "the fingerprint is written back")
                    // A dropped trigger is found by the same check and put back.
                    try await client.query("DROP TRIGGER events_notify_commit ON \(unescaped: s).events")
                    await (try await PostgresStore(configuration: config)).close()
                    let triggers = try await client.strings("""
                        SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass(\(s + ".events")) AND tgname = 'events_notify_commit'
                        """)
                    #expect(triggers == ["events_notify_commit"])
                }
            } catch {
                try? await dropSchema(config)
                throw error
            }
            try await dropSchema(config)
        }

        @Test("Eight stores opening the same new schema at once all succeed, and the schema works (advisory lock)",
              arguments: 1...3)
        func concurrentOpensOfANewSchema(_ round: Int) async throws {
            let config = try freshConfiguration { $0.poolSize = 2 }
            let stores = try await withThrowingTaskGroup(of: Result<PostgresStore, any Error>.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        do { return .success(try await PostgresStore(configuration: config)) } catch { return .failure(error) }
                    }
                }
                var out: [Result<PostgresStore, any Error>] = []
                for try await r in group { out.append(r) }
                return out
            }
            let opened = stores.compactMap { try? $0.get() }
            for case .failure(let e) in stores { Issue.record("a concurrent open failed: \(e)") }
            do {
                #expect(opened.count == 8)
                if let first = opened.first {
                    let app = try await EncryptedApp.open(first, masterKey: MasterKey.generate())
                    var root = try ledgerSave(nil, save: 1, count: 2)
                    let recs = try await app.app.save(&root)
                    #expect(recs.map(\.notificationID) == [1, 2])
                    // Every store sees the same schema.
                    for other in opened { #expect(try await other.maxNotificationID() == 2) }
                }
                try await withRawClient(config) { client in
                    let meta = try await client.strings("SELECT key || '=' || value FROM \(unescaped: config.schema).es_meta ORDER BY key")
                    // The version, and the fingerprint of the functions and trigger the starts installed.
                    #expect(meta.count == 2)
                    #expect(meta.first == "schema_version=\(PostgresStore.schemaVersion)")
                    #expect(meta.last?.hasPrefix("start_fingerprint=") == true)
                }
            } catch {
                for s in opened { await s.close() }
                try? await dropSchema(config)
                throw error
            }
            for s in opened { await s.close() }
            try await dropSchema(config)
        }

        @Test("A mixed-case schema name works end to end (quoted everywhere) and destroy() removes exactly it")
        func mixedCaseSchema() async throws {
            let config = try freshConfiguration { $0.schema = "T_Mixed" + $0.schema.dropFirst(2) }
            let store = try await PostgresStore(configuration: config)
            do {
                let app = try await EncryptedApp.open(store, masterKey: MasterKey.generate(), snapshotIntervals: [.every(2, for: Ledger.self)])
                var root = try ledgerSave(nil, save: 1, count: 3)
                let recs = try await app.app.save(&root)
                #expect(recs.map(\.notificationID) == [1, 2, 3])
                #expect(try await app.app.repository.get(Ledger.self, id: root.id).version == 3)
                #expect(try await store.selectSnapshot(originatorID: root.id, lte: nil) != nil)
                #expect(try await store.statistics().events == 3)
                _ = try await app.keyring.shred(scope: root.keyScope)
                #expect(try await store.dataKeys(scope: root.keyScope).isEmpty)
                let names = try await withRawClient(config) { client in
                    try await client.strings("SELECT nspname::text FROM pg_namespace WHERE lower(nspname) = lower(\(config.schema))")
                }
                #expect(names == [config.schema], "the schema was created as \(names), not exactly \(config.schema)")
            } catch {
                await destroy(store)
                throw error
            }
            try await store.destroy()
            let left = try await withRawClient(config) { client in
                try await client.scalar("SELECT count(*) FROM pg_namespace WHERE lower(nspname) = lower(\(config.schema))")
            }
            #expect(left == 0)
        }

        @Test("A schema name that is not a plain identifier, set in code, is refused with .invalidArgument before anything is created",
              arguments: ["bad-name", "x; DROP TABLE y", "a.b", "café", String(repeating: "s", count: 64), "\"q_\(UUID().uuidString.prefix(8))\"", ""])
        func badSchemaSetInCode(_ name: String) async throws {
            var config = try PostgresTestServer.configuration()
            config.schema = name
            let refused = await #expect(throws: EventSourcingError.self, "schema \(name)") {
                let store = try await PostgresStore(configuration: config)
                try? await store.destroy()
            }
            #expect(refused?.code == .invalidArgument, "schema \(name)")
            let created = try await withRawClient(config) { client in
                try await client.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = \(name.replacingOccurrences(of: "\"", with: ""))")
            }
            #expect(created == 0, "a schema was created for \(name)")
        }
    }
}
