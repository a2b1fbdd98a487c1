import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// `PostgresStore.rewrapDataKeys`: one statement (one transaction) per batch.
    @Suite("Batch rewrap")
    struct BatchRewrapTests {
        private static func wrapped(_ scope: String, _ version: UInt32, _ kek: String, _ byte: UInt8) -> WrappedDataKey {
            WrappedDataKey(scope: scope, version: version, kekID: kek, wrapped: Array(repeating: byte, count: 60),
                           createdAt: Date(timeIntervalSince1970: 1_700_000_000))
        }

        @Test("A batch that fails part-way changes no row: the rows before the failure are rolled back with it")
        func failedBatchChangesNothing() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let scopes = (0..<6).map { "s\($0)" }
                for scope in scopes { try await store.insertDataKey(Self.wrapped(scope, 1, "old", 1)) }
                // A failure the store cannot see coming, at the fourth row of the batch.
                try await withRawClient(config) { client in
                    _ = try await client.query("""
                        CREATE FUNCTION \(unescaped: s).refuse_s3() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN IF NEW.scope = 's3' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$
                        """)
                    _ = try await client.query("""
                        CREATE TRIGGER refuse_s3 BEFORE UPDATE ON \(unescaped: s).data_keys
                        FOR EACH ROW EXECUTE FUNCTION \(unescaped: s).refuse_s3()
                        """)
                }
                let before = try await store.dataKeys(after: nil, limit: 100)
                await #expect(throws: (any Error).self) {
                    try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") })
                }
                #expect(try await store.dataKeys(after: nil, limit: 100) == before)

                try await withRawClient(config) { client in
                    _ = try await client.query("DROP TRIGGER refuse_s3 ON \(unescaped: s).data_keys")
                }
                #expect(try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") }) == 6)
                #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == "new" && $0.wrapped == Array(repeating: 2, count: 60) })
            }
        }

        @Test("A master-key rotation sends one UPDATE per page, not one per key")
        func oneStatementPerPage() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let old = try MasterKey.generate(), new = try MasterKey.generate()
                let keyring = try await Keyring.open(store: store, masterKeys: [old], logger: quietLogger)
                for i in 0..<40 { try await keyring.persist([keyring.writeKey(for: "scope-\(i)")]) }
                // The table's update counter: statements that updated rows leave one tuple update
                // per row either way, so count the statements through a statement-level trigger.
                try await withRawClient(config) { client in
                    _ = try await client.query("CREATE TABLE \(unescaped: s).update_statements (n int NOT NULL)")
                    _ = try await client.query("""
                        CREATE FUNCTION \(unescaped: s).count_update() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN INSERT INTO \(unescaped: s).update_statements VALUES (1); RETURN NULL; END $$
                        """)
                    _ = try await client.query("""
                        CREATE TRIGGER count_update AFTER UPDATE ON \(unescaped: s).data_keys
                        FOR EACH STATEMENT EXECUTE FUNCTION \(unescaped: s).count_update()
                        """)
                }
                let progress = try await keyring.rotateMasterKey(to: new, pageSize: 10)
                #expect(progress.rewrapped == 40)
                let (statements, rewrapped) = try await withRawClient(config) { client in
                    (try await client.scalar("SELECT count(*) FROM \(unescaped: s).update_statements"),
                     try await client.scalar("SELECT count(*) FROM \(unescaped: s).data_keys WHERE kek_id = \(new.id)"))
                }
                #expect(statements == 4)
                #expect(rewrapped == 40)
                let reopened = try await Keyring.open(store: store, masterKeys: [new], logger: quietLogger)
                for i in 0..<40 { _ = try await reopened.readKey(scope: "scope-\(i)", version: 1) }
            }
        }
    }
}
