import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    @Suite("PostgreSQL: a shred's erasure record commits with its tombstone")
    struct ErasureRecordPostgresTests {
        @Test("A failing insert of the erasure record rolls back the tombstone and the key deletion; once it can be written, the shred leaves exactly one")
        func oneTransaction() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
                let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
                var root = try AggregateRoot<Customer>(.registered(name: "Alice Liddell", email: "alice@example.org", address: "1 Rabbit Hole"))
                try await app.save(&root)
                try await withRawClient(config) { client in
                    _ = try await client.query("""
                        CREATE FUNCTION \(unescaped: s).refuse_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN RAISE EXCEPTION 'test: the erasure record cannot be written'; END $$
                        """)
                    _ = try await client.query("""
                        CREATE TRIGGER refuse_erasure BEFORE INSERT ON \(unescaped: s).events FOR EACH ROW
                        WHEN (NEW.topic = 'eventsourcing.erasure/1') EXECUTE FUNCTION \(unescaped: s).refuse_erasure()
                        """)
                    _ = await #expect(throws: (any Error).self) { try await app.shred(root) }
                    #expect(try await store.tombstone(scope: root.keyScope) == nil)
                    #expect(try await store.dataKeys(scope: root.keyScope).count == 1)
                    #expect(try await client.scalar("SELECT count(*) FROM \(unescaped: s).events") == 1)
                    _ = try await client.query("DROP TRIGGER refuse_erasure ON \(unescaped: s).events")
                }
                let receipt = try await app.shred(root)
                let items = try await app.notificationLog.read(start: 1, limit: 10)
                #expect(items.map(\.notification.id) == [1, 2])
                guard case .erased(let scope, let at) = items[1].outcome else {
                    Issue.record("not an erasure: \(items[1].outcome)")
                    return
                }
                #expect(scope == receipt.keyScope)
                #expect(at == (try await store.tombstone(scope: scope))?.shreddedAt)
                _ = await #expect(throws: EventSourcingError.self) { try await app.shred(root) }
                #expect(try await store.maxNotificationID() == 2)
                #expect(try await store.countPlaintextEvents() == 0)
                #expect(try await store.statistics().aggregates == 1)
            }
        }
    }
}
