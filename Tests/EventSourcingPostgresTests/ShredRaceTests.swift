import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    @Suite("KeyManagement on PostgreSQL: shredding races")
    struct ShredRaceTests {
        static let rounds = 150

        /// What the racing writer tried.
        enum Writer: String, CaseIterable, CustomTestStringConvertible {
            /// The first save of a new aggregate: mints the scope's first key, stored with the events.
            case firstSave
            /// A key rotation: stores version 2 of the scope's key.
            case rotation
            var testDescription: String { rawValue }
        }

        @Test("A shred racing a save that stores a new key for the same scope never leaves a key behind the tombstone (150 rounds)",
              arguments: Writer.allCases)
        func shredVersusNewKey(_ writer: Writer) async throws {
            let config = try freshConfiguration()
            let masterKey = try MasterKey.generate()
            try await withStore(config) { shredderStore in
                // The writer and the shredder are separate stores (two pools, two keyrings), as two processes.
                let writerStore = try await PostgresStore(configuration: config)
                let shredder = try await EncryptedApp.open(shredderStore, masterKey: masterKey)
                let writing = try await EncryptedApp.open(writerStore, masterKey: masterKey)
                var outcomes: [String: Int] = [:]
                do {
                    for round in 1...Self.rounds {
                        var root = try ledgerSave(nil, save: round, count: 2)
                        let scope = root.keyScope
                        if writer == .rotation {
                            // The scope exists (version 1) before the race.
                            try await writing.app.save(&root)
                            root = try ledgerSave(root, save: round, count: 1)
                        }
                        let pending = root
                        let keyring = writing.keyring
                        // A random head start for one side or the other, so both orders happen.
                        let jitter = Int.random(in: -4_000...4_000)
                        async let written: String = {
                            if jitter < 0 { try await Task.sleep(for: .microseconds(-jitter)) }
                            var r = pending
                            do {
                                switch writer {
                                case .firstSave: try await writing.app.save(&r)
                                case .rotation: _ = try await keyring.rotate(scope: scope)
                                }
                                return "written"
                            } catch let e as EventSourcingError where e.code == .shredded {
                                return "refused"
                            } catch let e as KeyManagementError where e.code == .shredded {
                                return "refused"
                            }
                        }()
                        async let shredded: Tombstone = {
                            if jitter > 0 { try await Task.sleep(for: .microseconds(jitter)) }
                            return try await shredder.keyring.shred(scope: scope)
                        }()
                        let (w, tombstone) = try await (written, shredded)
                        outcomes[w, default: 0] += 1

                        // Whatever the order, the scope ends with a tombstone and no key, seen from either store.
                        #expect(tombstone.scope == scope)
                        let versionsBefore: [UInt32] = writer == .rotation ? [1] : []
                        let versionsWritten: [UInt32] = writer == .rotation ? [1, 2] : [1]
                        #expect(tombstone.destroyedVersions == (w == "written" ? versionsWritten : versionsBefore),
                                "round \(round): \(w), the shred destroyed \(tombstone.destroyedVersions)")
                        for store in [shredderStore, writerStore] {
                            let keys = try await store.dataKeys(scope: scope)
                            #expect(keys.isEmpty, "round \(round): \(keys.count) key(s) \(keys.map(\.version)) survive the tombstone of \(scope)")
                            #expect(try await store.tombstone(scope: scope) != nil, "round \(round): no tombstone")
                        }
                        // The writer's keyring may still cache the key (or a minted one): the store refuses anyway.
                        var again = try AggregateRoot<Ledger>(id: root.id, .entry(save: 0, item: 1, of: 1))
                        let shredded2 = await #expect(throws: EventSourcingError.self, "round \(round): a write after the shred") {
                            try await writing.app.save(&again)
                        }
                        #expect(shredded2?.code == .shredded, "round \(round): a write after the shred")
                    }
                } catch {
                    await writerStore.close()
                    throw error
                }
                await writerStore.close()
                // Both orders happened, else the race was not exercised.
                #expect((outcomes["written"] ?? 0) + (outcomes["refused"] ?? 0) == Self.rounds, "\(outcomes)")
                #expect((outcomes["written"] ?? 0) > 0 && (outcomes["refused"] ?? 0) > 0,
                        "only one order happened in \(Self.rounds) rounds: \(outcomes)")
                print("shred race (\(writer.rawValue)): \(outcomes)")
            }
        }

    }
}
