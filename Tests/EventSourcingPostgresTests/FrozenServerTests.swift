import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Synchronization
import Testing

extension PostgresTests {
    @Suite("The server stops answering", .tags(.slow))
    struct FrozenServerTests {
        static let operationTimeout: Duration = .seconds(2)
        static let slack: Duration = .seconds(2)

        /// `body`'s result, or nil if it has not finished after `limit` (it is then left running:
        /// a call that ignores cancellation must fail this test, not hang it).
        static func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async -> T) async -> T? {
            let first = FirstAnswer<T?>()
            return await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
                first.slot.withLock { $0 = c }
                Task {
                    let value = await body()
                    first.answer(value)
                }
                Task {
                    try? await Task.sleep(for: limit)
                    first.answer(nil)
                }
            }
        }

        /// A continuation resumed once, by whichever answers first.
        final class FirstAnswer<T: Sendable>: Sendable {
            let slot = Mutex<CheckedContinuation<T, Never>?>(nil)
            func answer(_ value: T) { slot.withLock { $0.take() }?.resume(returning: value) }
        }

        /// How a call ended, and how long it took.
        static func timed(_ body: () async throws -> Void) async -> (Duration, EventSourcingError.Code?, String?) {
            let clock = ContinuousClock()
            let start = clock.now
            do {
                try await body()
                return (clock.now - start, nil, nil)
            } catch let e as EventSourcingError {
                return (clock.now - start, e.code, "\(e)")
            } catch {
                return (clock.now - start, nil, "\(error)")
            }
        }

        @Test("Saves and reads issued while the server is frozen (SIGSTOP) each fail with .databaseUnavailable within their own operation timeout, also those queued behind a stuck one; after it thaws, saves and reads work again",
              .enabled(if: PrivateCluster.available), .timeLimit(.minutes(3)))
        func frozenServer() async throws {
            try await PrivateCluster.with(run)
        }

        private func run(_ cluster: PrivateCluster) async throws {
            var config = cluster.configuration
            config.schema = randomSchemaName()
            config.operationTimeout = Self.operationTimeout
            config.connectTimeout = .seconds(2)
            config.poolSize = 4
            let masterKey = try MasterKey.generate()
            let store = try await PostgresStore(configuration: config)
            let app = try await EncryptedApp.open(store, masterKey: masterKey).app
            var before = try ledgerSave(nil, save: 1, count: 2)
            try await app.save(&before)

            try cluster.freeze()
            // Three waves, each started while the one before is still stuck: with a committer or
            // reader stuck on its query, the later calls must not wait behind it.
            var outcomes: [(String, Duration, EventSourcingError.Code?, String?)] = []
            let limit = Self.operationTimeout + Self.slack * 2
            let beforeID = before.id
            for wave in 1...3 {
                async let save = Self.within(limit) {
                    await Self.timed {
                        var r = try ledgerSave(nil, save: wave, count: 3)
                        try await app.save(&r)
                    }
                }
                async let read = Self.within(limit) {
                    await Self.timed { _ = try await app.repository.get(Ledger.self, id: beforeID) }
                }
                let (s, r) = await (save, read)
                guard let s, let r else {
                    Issue.record("wave \(wave): a call was still waiting after \(limit) (save done: \(s != nil), read done: \(r != nil))")
                    try? cluster.thaw()
                    await store.close()
                    return
                }
                outcomes.append(("save \(wave)", s.0, s.1, s.2))
                outcomes.append(("read \(wave)", r.0, r.1, r.2))
            }
            for (what, took, code, message) in outcomes {
                #expect(code == .databaseUnavailable, "\(what): \(message ?? "succeeded") while the server was frozen")
                #expect(took <= Self.operationTimeout + Self.slack, "\(what) took \(took)")
            }

            try cluster.thaw()
            // Once it answers again, new calls work (the stuck ones finish or fail on their own).
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(30)
            var after = try ledgerSave(nil, save: 9, count: 2)
            var saved = false
            while !saved, clock.now < deadline {
                do {
                    try await app.save(&after)
                    saved = true
                } catch let e as EventSourcingError where e.code == .databaseUnavailable {
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            #expect(saved, "no save succeeded within 30 s of the thaw")
            #expect(try await app.repository.get(Ledger.self, id: after.id).entries == 2)
            #expect(try await app.repository.get(Ledger.self, id: before.id).entries == 2)
            await store.close()
        }
    }
}
