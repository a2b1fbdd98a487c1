import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    /// Deadlines are timers on the event loop: one fires when its time comes, not at the next
    /// poll of a checker (which ran every 100 ms and let a 20 ms deadline fire up to 120 ms late).
    @Suite("Deadlines fire on time")
    struct DeadlineTimingTests {
        static let timeout: Duration = .milliseconds(20)
        static let bound: Duration = .milliseconds(50)

        @Test("With a 20 ms operation timeout and the server frozen, reads and saves fail with .databaseUnavailable within 50 ms (at least 8 of 10, on a loaded machine)",
              .enabled(if: PrivateCluster.available), .timeLimit(.minutes(3)))
        func tightDeadline() async throws {
            try await PrivateCluster.with { cluster in
                var config = cluster.configuration
                config.schema = randomSchemaName()
                config.poolSize = 2
                // Saves go straight to the group commit (no master-key look-up first).
                config.allowsPlaintextWrites = true
                // The schema made with a roomy timeout, then opened with the tight one (opening
                // runs a few statements; a loaded machine may take longer than 20 ms: retried).
                let setup = try await PostgresStore(configuration: config)
                await setup.close()
                config.operationTimeout = Self.timeout
                var store: PostgresStore?
                for _ in 0..<20 where store == nil {
                    store = try? await PostgresStore(configuration: config)
                }
                let tight = try #require(store, "could not open the store with a 20 ms timeout in 20 attempts")
                _ = try? await tight.maxNotificationID()
                try cluster.freeze()
                var times: [Duration] = []
                for i in 0..<10 {
                    let start = ContinuousClock.now
                    let e: EventSourcingError?
                    if i % 2 == 0 {
                        e = await #expect(throws: EventSourcingError.self) { _ = try await tight.maxNotificationID() }
                    } else {
                        e = await #expect(throws: EventSourcingError.self) {
                            _ = try await tight.insertEvents([StoredEvent(originatorID: UUID(), originatorVersion: 1,
                                                                          topic: "t", state: [1])])
                        }
                    }
                    times.append(ContinuousClock.now - start)
                    #expect(e?.code == .databaseUnavailable)
                    #expect(e?.message.contains("did not answer within") == true, "\(String(describing: e))")
                }
                try cluster.thaw()
                let onTime = times.filter { $0 < Self.bound }.count
                #expect(onTime >= 8, "deadlines of 20 ms took \(times)")
                #expect(times.allSatisfy { $0 < .milliseconds(500) }, "deadlines of 20 ms took \(times)")
                await tight.close()
            }
        }
    }
}
