import EventSourcing
import EventSourcingPostgres
import Foundation
import PostgresNIO
import Synchronization
import Testing

/// What the steps of a batch were called for, in order.
final class PostgresBatchCalls: Sendable {
    let ids = Mutex<[Int64]>([])
    func record(_ id: Int64) { ids.withLock { $0.append(id) } }
}

struct PostgresBatchStepFailure: Error {}

extension PostgresTests {
@Suite("PostgreSQL projection batches: no savepoint per step unless a step throws")
struct ProjectionBatchTests {
    /// Steps 1...n counting themselves in `seen`; the `failing` step writes its row, then either
    /// throws or runs a statement the server refuses (which aborts the transaction).
    static func batch(_ n: Int64, failing: Int64, serverError: Bool, calls: PostgresBatchCalls) -> ProjectionBatch<PostgresViewTransaction> {
        ProjectionBatch(name: "batch", steps: (1...n).map { id in
            .init(notificationID: id, body: { tx in
                calls.record(id)
                try await tx.execute("""
                    INSERT INTO \(unescaped: tx.schema).seen VALUES (\(tx.notificationID), 1)
                    ON CONFLICT (notification_id) DO UPDATE SET times = seen.times + 1
                    """)
                guard id == failing else { return }
                if serverError {
                    try await tx.execute("INSERT INTO \(unescaped: tx.schema).seen VALUES (\(tx.notificationID), 1)")
                } else {
                    throw PostgresBatchStepFailure()
                }
            })
        })
    }

    @Test("A step that throws, or whose statement the server refuses, after the fast run: the batch is run again with a savepoint per step; the steps before it are kept once, its writes undone, the position before it", arguments: [false, true])
    func failureAfterFastRun(serverError: Bool) async throws {
        let config = try freshConfiguration()
        try await withStore(config) { store in
            try await store.projectionTransaction("setup", resettingTracking: false) { tx in
                try await tx.execute("CREATE TABLE \(unescaped: tx.schema).seen (notification_id bigint PRIMARY KEY, times int NOT NULL)")
            }
            let calls = PostgresBatchCalls()
            let outcome = try await store.applyProjectionBatch(Self.batch(6, failing: 4, serverError: serverError, calls: calls))
            #expect(outcome.committedThrough == 3)
            #expect(outcome.failure?.notificationID == 4)
            if serverError {
                #expect(outcome.failure?.error is PSQLError)
            } else {
                #expect(outcome.failure?.error is PostgresBatchStepFailure)
            }
            #expect(calls.ids.withLock { $0 } == [1, 2, 3, 4, 1, 2, 3, 4])
            let rows = try await withRawClient(config) { client in
                try await client.strings("SELECT notification_id || ':' || times FROM \"\(unescaped: config.schema)\".seen ORDER BY 1")
            }
            #expect(rows == ["1:1", "2:1", "3:1"])
            #expect(try await store.maxTrackingID("batch") == 3)

            // A batch without failure: each step once, no redo.
            let clean = PostgresBatchCalls()
            let batch = ProjectionBatch<PostgresViewTransaction>(name: "batch", steps: (4...6).map { id in
                .init(notificationID: id, body: { tx in
                    clean.record(id)
                    try await tx.execute("INSERT INTO \(unescaped: tx.schema).seen VALUES (\(tx.notificationID), 1)")
                })
            })
            let done = try await store.applyProjectionBatch(batch)
            #expect(done.committedThrough == 6 && done.failure == nil)
            #expect(clean.ids.withLock { $0 } == [4, 5, 6])
            #expect(try await store.maxTrackingID("batch") == 6)
        }
    }
}
}
