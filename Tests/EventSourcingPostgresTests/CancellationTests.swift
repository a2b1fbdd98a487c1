import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// A cancelled read or save stops its query on the server and throws `CancellationError`;
    /// a cancelled save writes nothing. Each call here is blocked behind a table lock another
    /// connection holds (until the test releases it), then its task is cancelled after 100 ms.
    @Suite("Task cancellation")
    struct CancellationTests {
        /// Holds `LOCK TABLE <schema>.events IN ACCESS EXCLUSIVE MODE` in an open transaction on a
        /// connection of its own until ``release()``.
        final class TableLock: Sendable {
            private let release_: AsyncStream<Void>.Continuation
            let holder: Task<Void, any Error>

            init(_ configuration: PostgresStore.Configuration) async throws {
                let (locked, lockedC) = AsyncStream.makeStream(of: Void.self)
                let (release, releaseC) = AsyncStream.makeStream(of: Void.self)
                release_ = releaseC
                holder = Task {
                    defer { lockedC.finish() }
                    try await withRawClient(configuration) { client in
                        try await client.withTransaction(logger: quietLogger) { conn in
                            try await conn.query("LOCK TABLE \"\(unescaped: configuration.schema)\".events IN ACCESS EXCLUSIVE MODE",
                                                 logger: quietLogger)
                            lockedC.yield()
                            for await _ in release { break }
                        }
                    }
                }
                for await _ in locked { return }
                try await holder.value   // the lock was not taken: its error
            }

            func release() async throws {
                release_.yield()
                release_.finish()
                try await holder.value
            }
        }

        /// Cancels `body`'s task after 100 ms and expects `CancellationError` within a second of that;
        /// then expects no query of the store's schema still running on the server within a second.
        static func expectCancelled<T: Sendable>(_ config: PostgresStore.Configuration, _ what: String, checkServer: Bool = true,
                                                 _ body: @escaping @Sendable () async throws -> T) async throws {
            let task = Task { try await body() }
            try await Task.sleep(for: .milliseconds(100))
            let cancelled = ContinuousClock.now
            task.cancel()
            let outcome = await firstOutcome(within: .seconds(3)) { try await task.value }
            let elapsed = ContinuousClock.now - cancelled
            switch outcome {
            case nil: Issue.record("\(what): still running 3 s after its task was cancelled")
            case .success: Issue.record("\(what): finished although blocked and cancelled")
            case .failure(let error): #expect(error is CancellationError, "\(what): \(error)")
            }
            #expect(elapsed < .seconds(1), "\(what): answered \(elapsed) after cancellation")
            guard checkServer else { return }
            // The server stops the query (the connection is closed; the backend notices within
            // client_connection_check_interval).
            var running: Int64 = -1
            let deadline = ContinuousClock.now + .seconds(1)
            repeat {
                running = try await withRawClient(config) { client in
                    try await client.scalar("""
                        SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active'
                        AND query LIKE \("%" + config.schema + "%") AND query NOT LIKE 'LOCK TABLE%'
                        """)
                }
                if running == 0 { break }
                try await Task.sleep(for: .milliseconds(50))
            } while ContinuousClock.now < deadline
            #expect(running == 0, "\(what): its query is still running on the server")
        }

        static func configuration() throws -> PostgresStore.Configuration {
            try freshConfiguration {
                $0.operationTimeout = .seconds(8)
                $0.lockTimeout = .seconds(8)
                $0.poolSize = 4
            }
        }

        @Test("A cancelled read (a page of notifications, a single aggregate, a count) stops its query and throws CancellationError",
              .timeLimit(.minutes(2)))
        func cancelledReads() async throws {
            let config = try Self.configuration()
            try await withStore(config) { store in
                let id = UUID()
                _ = try await store.insertEvents([StoredEvent(originatorID: id, originatorVersion: 1, topic: "t", state: [1])])
                let lock = try await TableLock(config)
                do {
                    try await Self.expectCancelled(config, "selectNotifications") {
                        try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: [])
                    }
                    try await Self.expectCancelled(config, "selectEvents (grouped read)") {
                        try await store.selectEvents(originatorID: id)
                    }
                    try await Self.expectCancelled(config, "maxNotificationID") { try await store.maxNotificationID() }
                } catch {
                    try? await lock.release()
                    throw error
                }
                try await lock.release()
                // The store goes on: a new connection replaces each closed one.
                #expect(try await store.selectEvents(originatorID: id).count == 1)
                #expect(try await store.maxNotificationID() == 1)
            }
        }

        @Test("A cancelled save blocked behind a lock throws CancellationError, stops its query and writes nothing",
              .timeLimit(.minutes(2)))
        func cancelledSave() async throws {
            let config = try Self.configuration()
            try await withStore(config) { store in
                let lock = try await TableLock(config)
                let id = UUID()
                do {
                    try await Self.expectCancelled(config, "insertEvents") {
                        try await store.insertEvents([StoredEvent(originatorID: id, originatorVersion: 1, topic: "t", state: [1])])
                    }
                } catch {
                    try? await lock.release()
                    throw error
                }
                try await lock.release()
                #expect(try await store.maxNotificationID() == nil)
                #expect(try await store.selectEvents(originatorID: id).isEmpty)
                // Later saves go through.
                #expect(try await store.insertEvents([StoredEvent(originatorID: id, originatorVersion: 1, topic: "t", state: [2])]) == [1])
            }
        }

        @Test("A save cancelled while still queued behind another group is withdrawn: CancellationError, nothing written",
              .timeLimit(.minutes(2)))
        func cancelledQueuedSave() async throws {
            let config = try Self.configuration()
            try await withStore(config) { store in
                let lock = try await TableLock(config)
                let first = UUID(), second = UUID()
                // The first save's group is stuck on the lock; the second queues behind it.
                let stuck = Task { try await store.insertEvents([StoredEvent(originatorID: first, originatorVersion: 1, topic: "t", state: [1])]) }
                do {
                    try await Task.sleep(for: .milliseconds(100))
                    // (The server still runs the first save's query: not checked.)
                    try await Self.expectCancelled(config, "queued insertEvents", checkServer: false) {
                        try await store.insertEvents([StoredEvent(originatorID: second, originatorVersion: 1, topic: "t", state: [1])])
                    }
                } catch {
                    try? await lock.release()
                    throw error
                }
                try await lock.release()
                #expect(try await stuck.value == [1])
                #expect(try await store.selectEvents(originatorID: second).isEmpty)
                #expect(try await store.maxNotificationID() == 1)
            }
        }

        @Test("Waiting saves and reads are bounded: past maxWaitingWrites/maxWaitingReads a call fails at once with storeOverloaded and writes nothing",
              .timeLimit(.minutes(2)))
        func boundedWaiting() async throws {
            var config = try Self.configuration()
            config.maxWaitingWrites = 2
            config.maxWaitingReads = 2
            try await withStore(config) { store in
                let known = UUID()
                _ = try await store.insertEvents([StoredEvent(originatorID: known, originatorVersion: 1, topic: "t", state: [1])])
                let lock = try await TableLock(config)
                let ids = (0..<4).map { _ in UUID() }
                func save(_ k: Int) async throws -> [Int64] {
                    try await store.insertEvents([StoredEvent(originatorID: ids[k], originatorVersion: 1, topic: "t", state: [UInt8(k)])])
                }
                // The first save's group is stuck on the lock; two more wait for the next group.
                let inFlight = Task { try await save(0) }
                try await Task.sleep(for: .milliseconds(200))
                let waiting = [Task { try await save(1) }, Task { try await save(2) }]
                try await Task.sleep(for: .milliseconds(200))
                let refusedSave = await #expect(throws: EventSourcingError.self) { try await save(3) }
                // The same for grouped reads of whole aggregates.
                let readInFlight = Task { try await store.selectEvents(originatorID: known) }
                try await Task.sleep(for: .milliseconds(200))
                let readsWaiting = [Task { try await store.selectEvents(originatorID: known) },
                                    Task { try await store.selectEvents(originatorID: known) }]
                try await Task.sleep(for: .milliseconds(200))
                let refusedRead = await #expect(throws: EventSourcingError.self) { try await store.selectEvents(originatorID: known) }
                try await lock.release()
                #expect(refusedSave?.code == .storeOverloaded)
                #expect(refusedRead?.code == .storeOverloaded)
                #expect(refusedSave?.message.contains("maxWaitingWrites") == true)
                // Everything admitted went through; the refused save wrote nothing.
                var saved = [try await inFlight.value]
                for t in waiting { saved.append(try await t.value) }
                #expect(Set(saved.flatMap { $0 }) == [2, 3, 4])
                #expect(try await readInFlight.value.count == 1)
                for t in readsWaiting { #expect(try await t.value.count == 1) }
                #expect(try await store.selectEvents(originatorID: ids[3]).isEmpty)
                #expect(try await store.maxNotificationID() == 4)
            }
        }
    }
}
