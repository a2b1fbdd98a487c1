import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    @Suite("A reader tailing the notification log")
    struct TailingReaderTests {
        static let writers = 4
        static let singleSaves = 250
        /// After every this many single-event saves, a writer also makes one save of `multiSize` events.
        static let multiEvery = 50
        static let multiSize = 5
        static var eventsPerWriter: Int { singleSaves + (singleSaves / multiEvery) * multiSize }

        @Test("While 4 writers save, a reader following selectNotifications(start: last + 1, limit: 100) sees every event exactly once, in order, with no gap")
        func tailingReaderSeesEverything() async throws {
            let config = try freshConfiguration()
            let masterKey = try MasterKey.generate()
            try await withStore(config) { storeA in
                // Two writer stores (as two application servers) and a reader store of its own.
                let storeB = try await PostgresStore(configuration: config)
                let readerStore = try await PostgresStore(configuration: config)
                let apps = [try await EncryptedApp.open(storeA, masterKey: masterKey),
                            try await EncryptedApp.open(storeB, masterKey: masterKey)]
                let total = Self.writers * Self.eventsPerWriter
                let writersDone = Flag()

                let reader = Task { () throws -> [StoredNotification] in
                    var seen: [StoredNotification] = []
                    var last: Int64 = 0
                    var gaps: [String] = []
                    let deadline = ContinuousClock.now + .seconds(120)
                    while ContinuousClock.now < deadline {
                        let doneBefore = writersDone.isSet
                        let page = try await readerStore.selectNotifications(start: last + 1, limit: 100, stop: nil, topics: [])
                        #expect(page.count <= 100)
                        for n in page {
                            if n.id != last + 1 { gaps.append("after \(last) came \(n.id)") }
                            last = n.id
                            seen.append(n)
                        }
                        // Once the writers had finished before a read that found nothing, nothing more will come.
                        if page.isEmpty {
                            if doneBefore { break }
                            try await Task.sleep(for: .milliseconds(1))
                        }
                    }
                    #expect(gaps.isEmpty, "the reader saw gaps (it would never go back for the missing ids): \(gaps.prefix(5))")
                    return seen
                }

                let recordings = try await withThrowingTaskGroup(of: [Recording].self) { group in
                    for w in 0..<Self.writers {
                        let app = apps[w % apps.count].app
                        group.addTask {
                            var out: [Recording] = []
                            var roots: [AggregateRoot<Ledger>?] = Array(repeating: nil, count: 5)
                            var save = 0
                            for i in 0..<Self.singleSaves {
                                let index = i % roots.count
                                save += 1
                                var r = try ledgerSave(roots[index], id: fixedAggregateID(seed: w + 1, index: index), save: save, count: 1)
                                out += try await app.save(&r)
                                roots[index] = r
                                if (i + 1) % Self.multiEvery == 0 {
                                    save += 1
                                    var m = try ledgerSave(roots[index], id: fixedAggregateID(seed: w + 1, index: index),
                                                           save: save, count: Self.multiSize)
                                    let recs = try await app.save(&m)
                                    #expect(isContiguous(recs.map(\.notificationID)), "a multi-event save was interleaved")
                                    out += recs
                                    roots[index] = m
                                }
                            }
                            return out
                        }
                    }
                    var all: [Recording] = []
                    for try await r in group { all += r }
                    return all
                }
                writersDone.set()
                let seen = try await reader.value
                await storeB.close()
                await readerStore.close()

                #expect(recordings.count == total)
                #expect(seen.count == total, "the reader saw \(seen.count) of \(total) events")
                #expect(seen.map(\.id) == Array(1...Int64(total)), "the reader did not see exactly 1…\(total) in order")
                #expect(Set(seen.map(\.id)).count == seen.count, "the reader saw an event twice")
                var reported: [Int64: Recording] = [:]
                for r in recordings { reported[r.notificationID] = r }
                #expect(reported.count == total, "two saves reported the same notification id")
                for n in seen {
                    let r = reported[n.id]
                    #expect(r?.originatorID == n.originatorID && r?.originatorVersion == n.originatorVersion,
                            "notification \(n.id) is \(n.originatorID) v\(n.originatorVersion), its save reported \(String(describing: r))")
                }
                // Each aggregate's events come in version order in the log.
                var lastVersion: [UUID: Int] = [:]
                for n in seen {
                    #expect(n.originatorVersion == (lastVersion[n.originatorID] ?? 0) + 1,
                            "\(n.originatorID) v\(n.originatorVersion) out of order at \(n.id)")
                    lastVersion[n.originatorID] = n.originatorVersion
                }
            }
        }
    }
}
