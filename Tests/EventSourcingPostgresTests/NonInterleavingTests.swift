import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    @Suite("Concurrent writers never interleave their saves")
    struct NonInterleavingTests {
        /// How each writer splits its 1,000 events.
        enum Shape: String, CaseIterable, CustomTestStringConvertible {
            case oneSaveOf1000, hundredSavesOf10
            var saves: Int { self == .oneSaveOf1000 ? 1 : 100 }
            var size: Int { self == .oneSaveOf1000 ? 1_000 : 10 }
            var testDescription: String { self == .oneSaveOf1000 ? "1 save of 1,000" : "100 saves of 10" }
        }

        /// Whether the two writers share one store (one pool, group commit) or each have their own
        /// (two pools, as two application servers: only the table lock orders them).
        enum Topology: String, CaseIterable, CustomTestStringConvertible {
            case oneStore, twoStores
            var testDescription: String { rawValue }
        }

        @Test("Two writers racing 1,000 events each: every save gets one contiguous block of ids, and the ids are 1…2000 with no gap",
              arguments: Shape.allCases, Topology.allCases)
        func twoWritersRace(_ shape: Shape, _ topology: Topology) async throws {
            let config = try freshConfiguration()
            let masterKey = try MasterKey.generate()
            try await withStore(config) { storeA in
                let storeB = topology == .oneStore ? storeA : try await PostgresStore(configuration: config)
                let appA = try await EncryptedApp.open(storeA, masterKey: masterKey)
                let appB = topology == .oneStore ? appA : try await EncryptedApp.open(storeB, masterKey: masterKey)
                let aggregates = [fixedAggregateID(seed: 1, index: 0), fixedAggregateID(seed: 2, index: 0)]

                // Both writers wait at a start line, so their saves really race.
                let ready = Counter()
                let saves = try await withThrowingTaskGroup(of: (Int, [[Recording]]).self) { group in
                    for (w, app) in [appA, appB].enumerated() {
                        group.addTask {
                            var root: AggregateRoot<Ledger>?
                            var out: [[Recording]] = []
                            for s in 1...shape.saves {
                                var r = try ledgerSave(root, id: aggregates[w], save: s, count: shape.size)
                                if s == 1 {
                                    ready.add()
                                    while ready.current < 2 { await Task.yield() }
                                }
                                out.append(try await app.app.save(&r))
                                root = r
                            }
                            return (w, out)
                        }
                    }
                    var byWriter: [[[Recording]]] = [[], []]
                    for try await (w, out) in group { byWriter[w] = out }
                    return byWriter
                }
                if topology == .twoStores { await storeB.close() }

                for (w, writerSaves) in saves.enumerated() {
                    #expect(writerSaves.count == shape.saves)
                    var nextVersion = 1
                    for recordings in writerSaves {
                        let ids = recordings.map(\.notificationID)
                        #expect(recordings.count == shape.size)
                        #expect(isContiguous(ids), "writer \(w)'s save of \(recordings.count) got interleaved ids \(ids.prefix(3))…\(ids.suffix(3))")
                        #expect(recordings.map(\.originatorVersion) == Array(nextVersion..<(nextVersion + shape.size)))
                        #expect(recordings.allSatisfy { $0.originatorID == aggregates[w] })
                        nextVersion += shape.size
                    }
                    let all = writerSaves.flatMap { $0.map(\.notificationID) }
                    #expect(zip(all, all.dropFirst()).allSatisfy { $0 < $1 }, "writer \(w)'s ids are not increasing")
                }
                let all = saves.flatMap { $0.flatMap { $0.map(\.notificationID) } }
                #expect(all.sorted() == Array(1...2_000), "the ids are not exactly 1…2000")
                if shape == .hundredSavesOf10 {
                    // Else the test proved nothing about concurrent saves.
                    let a = saves[0].flatMap { $0.map(\.notificationID) }, b = saves[1].flatMap { $0.map(\.notificationID) }
                    #expect(a.min()! < b.max()! && b.min()! < a.max()!, "the two writers did not overlap in time")
                }

                // The stored log says the same, event by event, and decrypts.
                let log = try await storeA.selectNotifications(start: 1, limit: 10_000, stop: nil, topics: [])
                #expect(log.map(\.id) == Array(1...2_000))
                var reported: [Int64: (UUID, Int)] = [:]
                for r in saves.joined().joined() { reported[r.notificationID] = (r.originatorID, r.originatorVersion) }
                for n in log {
                    let r = reported[n.id]
                    #expect(r?.0 == n.originatorID && r?.1 == n.originatorVersion,
                            "notification \(n.id) is \(n.originatorID) v\(n.originatorVersion), the save reported \(String(describing: r))")
                }
                for (w, id) in aggregates.enumerated() {
                    let root = try await appA.app.repository.get(Ledger.self, id: id)
                    #expect(root.version == 1_000 && root.entries == 1_000, "writer \(w)'s aggregate")
                }
            }
        }
    }
}
