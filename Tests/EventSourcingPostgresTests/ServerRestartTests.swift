import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Synchronization
import Testing

extension PostgresTests {
    @Suite("The server restarts mid-run", .tags(.slow))
    struct ServerRestartTests {
        static let writers = 3
        static let operationTimeout: Duration = .seconds(10)
        /// Slack on top of the operation timeout for a save to come back.
        static let slack: Duration = .seconds(5)

        /// One save attempt: a new aggregate of `size` events.
        struct Attempt: Sendable {
            let aggregate: UUID
            let size: Int
            let startedAfterRestart: Bool
            let took: Duration
            /// The notification ids when acknowledged.
            let ids: [Int64]?
            let error: String?
            let code: EventSourcingError.Code?
        }

        @Test("A restart (pg_ctl restart -m immediate) mid-run: in-flight saves fail with .databaseUnavailable within the operation timeout, later saves succeed, every acknowledged save is there and none is partial",
              .enabled(if: PrivateCluster.available), .timeLimit(.minutes(3)))
        func restartMidRun() async throws {
            try await PrivateCluster.with(run)
        }

        private func run(_ cluster: PrivateCluster) async throws {
            var config = cluster.configuration
            config.schema = randomSchemaName()
            config.operationTimeout = Self.operationTimeout
            config.connectTimeout = .seconds(3)
            config.lockTimeout = .seconds(5)
            let masterKey = try MasterKey.generate()
            let store = try await PostgresStore(configuration: config)
            let app = try await EncryptedApp.open(store, masterKey: masterKey).app

            let attempts = Collected<Attempt>()
            let acked = Counter()
            let ackedAfterRestart = Counter()
            let restarted = Flag()
            let stop = Flag()
            let writers = (0..<Self.writers).map { w in
                Task {
                    let clock = ContinuousClock()
                    var i = 0
                    while !stop.isSet {
                        i += 1
                        let size = 1 + (i + w) % 4   // 1…4 events: multi-event saves must be all-or-nothing
                        let after = restarted.isSet
                        var root: AggregateRoot<Ledger>
                        do { root = try ledgerSave(nil, save: i, count: size) } catch { return }
                        let started = clock.now
                        do {
                            let recs = try await app.save(&root)
                            attempts.append(Attempt(aggregate: root.id, size: size, startedAfterRestart: after, took: clock.now - started,
                                                    ids: recs.map(\.notificationID), error: nil, code: nil))
                            acked.add()
                            if after { ackedAfterRestart.add() }
                        } catch {
                            attempts.append(Attempt(aggregate: root.id, size: size, startedAfterRestart: after, took: clock.now - started,
                                                    ids: nil, error: "\(error)", code: (error as? EventSourcingError)?.code))
                            try? await Task.sleep(for: .milliseconds(20))
                        }
                    }
                }
            }

            func waitUntil(_ what: String, within limit: Duration, _ condition: () -> Bool) async throws {
                let deadline = ContinuousClock.now + limit
                while !condition() {
                    guard ContinuousClock.now < deadline else {
                        throw ChildProcessError(description: "timed out waiting for \(what)")
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
            }

            do {
                try await waitUntil("100 saves before the restart", within: .seconds(60)) { acked.current >= 100 }
                // A restart that lands between two group commits interrupts nothing (the pool just
                // reconnects), so restart again, up to 5 times, until one has interrupted a save.
                var restarts = 0
                var restartTook = Duration.zero
                repeat {
                    let restartClock = ContinuousClock()
                    let restartStarted = restartClock.now
                    let before = ackedAfterRestart.current
                    try await cluster.restartImmediately()
                    restarted.set()
                    restarts += 1
                    restartTook = restartClock.now - restartStarted
                    try await waitUntil("100 saves after the restart", within: .seconds(60)) {
                        ackedAfterRestart.current >= before + 100
                    }
                } while restarts < 5 && !attempts.all.contains(where: { $0.ids == nil })
                stop.set()
                for w in writers { await w.value }
                print("server restart: \(restarts) restart(s), the last took \(restartTook); \(attempts.count) save attempts, \(acked.current) acknowledged")
            } catch {
                stop.set()
                for w in writers { await w.value }
                await store.close()
                throw ChildProcessError(description: "\(error)\n--- server log ---\n\(cluster.serverLog.suffix(3000))")
            }
            await store.close()

            let all = attempts.all
            let failed = all.filter { $0.ids == nil }
            // The restart really interrupted saves, and each failure was a clear, typed error.
            #expect(!failed.isEmpty, "no save failed: the restart did not interrupt the writers")
            for f in failed {
                #expect(f.code == .databaseUnavailable, "a save failed with \(f.error ?? "?")")
            }
            print("server restart: \(failed.count) failed saves, e.g. \(failed.prefix(2).map { $0.error ?? "" })")
            // None hung.
            let slowest = all.map(\.took).max() ?? .zero
            #expect(slowest <= Self.operationTimeout + Self.slack, "a save took \(slowest)")
            #expect(ackedAfterRestart.current >= 100)

            // Every acknowledged save is there in full, with the ids it was given; every failed save
            // is there in full or not at all; nothing else is there, and the log has no gap.
            let reader = try await PostgresStore(configuration: config)
            do {
                let readerApp = try await EncryptedApp.open(reader, masterKey: masterKey).app
                var log: [StoredNotification] = []
                while true {
                    let page = try await reader.selectNotifications(start: (log.last?.id ?? 0) + 1, limit: 1_000, stop: nil, topics: [])
                    if page.isEmpty { break }
                    log += page
                }
                #expect(log.map(\.id) == Array(1...Int64(log.count)), "the log has gaps")
                var byAggregate: [UUID: [StoredNotification]] = [:]
                for n in log { byAggregate[n.originatorID, default: []].append(n) }
                let attempted = Dictionary(all.map { ($0.aggregate, $0) }, uniquingKeysWith: { a, _ in a })
                #expect(Set(byAggregate.keys).isSubset(of: Set(attempted.keys)), "the log holds events of aggregates never saved")
                var lostAcked = 0, partial = 0, failedButStored = 0
                for a in all {
                    let stored = byAggregate[a.aggregate] ?? []
                    if let ids = a.ids {
                        if stored.map(\.id) != ids { lostAcked += 1 }
                        #expect(stored.map(\.originatorVersion) == Array(1...a.size))
                    } else if !stored.isEmpty {
                        failedButStored += 1
                        if stored.count != a.size { partial += 1 }
                        #expect(stored.map(\.originatorVersion) == Array(1...a.size), "a failed save is partly stored")
                    }
                }
                #expect(lostAcked == 0, "\(lostAcked) acknowledged saves are missing or changed")
                #expect(partial == 0, "\(partial) saves are partly stored")
                print("server restart: \(failedButStored) failed saves were committed after all (outcome unknown to the writer)")
                // Everything stored decrypts.
                for (id, events) in byAggregate.prefix(50) {
                    let root = try await readerApp.repository.get(Ledger.self, id: id)
                    #expect(root.version == events.count)
                }
            } catch {
                try? await reader.destroy()
                throw error
            }
            try await reader.destroy()
        }
    }
}
