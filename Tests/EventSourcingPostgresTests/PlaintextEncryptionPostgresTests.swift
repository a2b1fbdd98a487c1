import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    @Suite("Encrypting a plaintext PostgreSQL store")
    struct PlaintextEncryptionPostgresTests {
        @Test("After the pass the store refuses plaintext for good, also to stores opened with allowsPlaintextWrites (cached or not)")
        func refusesPlaintextAfterwards() async throws {
            let config = try freshConfiguration { $0.allowsPlaintextWrites = true }
            try await withStore(config) { store in
                let plain = Application(recorder: store, snapshots: store, mapper: Mapper(configuration: .init(compressor: nil)))
                var ids: [UUID] = []
                for i in 0..<6 {
                    var c = try AggregateRoot<Customer>(.registered(name: "PII-name-\(i)", email: "e\(i)@example.org", address: "a"))
                    try await plain.save(&c)
                    if i % 2 == 0 { try await plain.takeSnapshot(Customer.self, id: c.id) }
                    ids.append(c.id)
                }
                let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
                let app = Application(recorder: store, snapshots: store,
                                      mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
                // In the migration, a store opened with allowsPlaintextWrites still takes plaintext.
                var during = try AggregateRoot<Customer>(.registered(name: "PII-during", email: "d@example.org", address: "a"))
                try await plain.save(&during)
                ids.append(during.id)
                #expect(try await store.refusesPlaintextWrites() == false)

                let report = try await app.encryptPlaintextRecords(options: .init(pageSize: 4))
                #expect(report.eventsEncrypted == 7 && report.snapshotsEncrypted == 3 && report.failed == 0)
                #expect(report.plaintextLeft == 0 && report.plaintextRefused)
                #expect(try await store.countPlaintextEvents() == 0)

                var late = try AggregateRoot<Customer>(.registered(name: "late", email: "l@example.org", address: "a"))
                await #expect { try await plain.save(&late) } throws: { ($0 as? EventSourcingError)?.code == .plaintextRejected }
                // Another store on the same schema, which has not seen the refusal yet, reads it.
                let other = try await PostgresStore(configuration: config)
                do {
                    let otherPlain = Application(recorder: other, snapshots: other)
                    await #expect { try await otherPlain.save(&late) } throws: { ($0 as? EventSourcingError)?.code == .plaintextRejected }
                    let snapshot = StoredEvent(originatorID: ids[1], originatorVersion: 1, topic: Customer.snapshotTopic,
                                               state: [0xE5, 0x53, 0x01, 0x04] + Array("{}".utf8))
                    await #expect { try await other.insertSnapshot(snapshot) } throws: {
                        ($0 as? EventSourcingError)?.code == .plaintextRejected
                    }
                } catch {
                    await other.close()
                    throw error
                }
                await other.close()
                // Every aggregate reads back through a mapper that refuses plaintext.
                let strict = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
                for id in ids { #expect(try await strict.repository.get(Customer.self, id: id).email.hasSuffix("@example.org")) }
            }
        }
    }
}
