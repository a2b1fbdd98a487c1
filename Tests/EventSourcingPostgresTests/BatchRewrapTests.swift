import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// `PostgresStore.rewrapDataKeys`: one statement (one transaction) per batch. (That a failed
    /// batch changes no row is `StoreTwinTests`, over both stores.)
    @Suite("Batch rewrap")
    struct BatchRewrapTests {
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
