@testable import EventSourcingSQLite
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// What the steps of a batch were called for, in order.
final class BatchCalls: Sendable {
    let ids = Mutex<[Int64]>([])
    func record(_ id: Int64) { ids.withLock { $0.append(id) } }
}

struct BatchStepFailure: Error {}

@Suite("SQLite projection batches: one hand-over per batch, savepoints only after a failure, a bounded statement cache")
struct SQLiteProjectionBatchTests {
    static func store(_ dir: TempDir) async throws -> EncryptedStore {
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: try MasterKey.generate())
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            try tx.execute("CREATE TABLE seen (notification_id INTEGER PRIMARY KEY, times INTEGER NOT NULL)")
        }
        return s
    }

    /// Steps 1...n counting themselves in `seen`; `failing` writes its row, then throws
    /// (`failures` times, then it succeeds).
    static func batch(_ n: Int64, failing: Int64?, failures: Int = .max, calls: BatchCalls) -> ProjectionBatch<SQLiteViewTransaction> {
        let left = Mutex(failures)
        return ProjectionBatch(name: "batch", steps: (1...n).map { id in
            .init(notificationID: id, body: { tx in
                calls.record(id)
                try tx.execute("INSERT INTO seen VALUES (?, 1) ON CONFLICT (notification_id) DO UPDATE SET times = times + 1",
                               .integer(tx.notificationID))
                if id == failing, left.withLock({ f -> Bool in f -= 1; return f >= 0 }) { throw BatchStepFailure() }
            })
        })
    }

    static func seen(_ s: EncryptedStore) async throws -> [[SQLiteValue]] {
        try await s.store.readView { try $0.query("SELECT notification_id, times FROM seen ORDER BY notification_id").map(\.values) }
    }

    @Test("A step that throws after the fast run: the batch is rolled back and run again with a savepoint per step; the steps before it are kept once, its own write is undone, the position is the one before it")
    func failureAfterFastRun() async throws {
        let dir = try TempDir("projection-batch-redo")
        let s = try await Self.store(dir)
        let calls = BatchCalls()
        let outcome = try await s.store.applyProjectionBatch(Self.batch(6, failing: 4, calls: calls))
        #expect(outcome.committedThrough == 3)
        #expect(outcome.failure?.notificationID == 4)
        #expect(outcome.failure?.error is BatchStepFailure)
        // The fast run (1...4), then the careful one up to the failing step; nothing after it.
        #expect(calls.ids.withLock { $0 } == [1, 2, 3, 4, 1, 2, 3, 4])
        #expect(try await Self.seen(s) == [[1, 1], [2, 1], [3, 1]])
        #expect(try await s.store.maxTrackingID("batch") == 3)
        await s.store.close()
    }

    @Test("A step that throws only in the fast run: the careful run goes on past it and keeps the whole batch, each step once")
    func failureOnlyInFastRun() async throws {
        let dir = try TempDir("projection-batch-flaky")
        let s = try await Self.store(dir)
        let calls = BatchCalls()
        let outcome = try await s.store.applyProjectionBatch(Self.batch(5, failing: 2, failures: 1, calls: calls))
        #expect(outcome.committedThrough == 5)
        #expect(outcome.failure == nil)
        #expect(calls.ids.withLock { $0 } == [1, 2, 1, 2, 3, 4, 5])
        #expect(try await Self.seen(s) == (1...5).map { [.integer($0), 1] })
        #expect(try await s.store.maxTrackingID("batch") == 5)
        await s.store.close()
    }

    @Test("The first step failing keeps nothing and records no position; a batch without failure runs each step once")
    func firstStepAndCleanBatch() async throws {
        let dir = try TempDir("projection-batch-first")
        let s = try await Self.store(dir)
        let calls = BatchCalls()
        let outcome = try await s.store.applyProjectionBatch(Self.batch(3, failing: 1, calls: calls))
        #expect(outcome.committedThrough == nil)
        #expect(outcome.failure?.notificationID == 1)
        #expect(try await Self.seen(s).isEmpty)
        #expect(try await s.store.maxTrackingID("batch") == nil)

        let clean = BatchCalls()
        let done = try await s.store.applyProjectionBatch(Self.batch(3, failing: nil, calls: clean))
        #expect(done.committedThrough == 3 && done.failure == nil)
        #expect(clean.ids.withLock { $0 } == [1, 2, 3])
        #expect(try await Self.seen(s) == [[1, 1], [2, 1], [3, 1]])
        await s.store.close()
    }

    @Test("The view's statements are kept on the connection, at most ViewStatementCache.capacity of them and none of long SQL")
    func statementCacheIsBounded() async throws {
        let dir = try TempDir("projection-statement-cache")
        let s = try await Self.store(dir)
        let before = try await s.store.write { $0.viewStatements.count }
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            for i in 0..<3 { _ = try tx.query("SELECT count(*) FROM seen WHERE notification_id > ?", .integer(Int64(i))) }
        }
        #expect(try await s.store.write { $0.viewStatements.count } == before + 1, "the same SQL is kept once")
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            for i in 0..<(ViewStatementCache.capacity * 3) {
                let rows = try tx.query("SELECT \(i) AS i, count(*) FROM seen")
                #expect(rows.first?["i"] == .integer(Int64(i)))
            }
            let long = "SELECT 1 /*" + String(repeating: "x", count: ViewStatementCache.maxSQLBytes) + "*/"
            #expect(try tx.query(long).first?[0] == .integer(1))
        }
        let count = try await s.store.write { conn in conn.viewStatements.count }
        #expect(count == ViewStatementCache.capacity)
        let long = "SELECT 1 /*" + String(repeating: "x", count: ViewStatementCache.maxSQLBytes) + "*/"
        #expect(try await s.store.write { $0.viewStatements.take(long) != nil } == false, "long SQL is not kept")
        // The most recently used are the ones kept.
        let last = "SELECT \(ViewStatementCache.capacity * 3 - 1) AS i, count(*) FROM seen"
        #expect(try await s.store.write { $0.viewStatements.take(last) != nil })
        await s.store.close()
    }

    @Test("Refused SQL is never kept, so it is refused every time")
    func refusedSQLNotKept() async throws {
        let dir = try TempDir("projection-statement-refused")
        let s = try await Self.store(dir)
        for _ in 0..<2 {
            let e = await #expect(throws: EventSourcingError.self) {
                try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in try tx.execute("SAVEPOINT x") }
            }
            #expect(e?.code == .invalidArgument)
        }
        #expect(try await s.store.write { $0.viewStatements.take("SAVEPOINT x") != nil } == false)
        await s.store.close()
    }

    @Test("A kept query whose table was dropped and made again with other columns returns the new columns")
    func keptStatementAfterSchemaChange() async throws {
        let dir = try TempDir("projection-statement-schema")
        let s = try await Self.store(dir)
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            try tx.execute("CREATE TABLE v (a INTEGER)")
            try tx.execute("INSERT INTO v VALUES (1)")
            let rows = try tx.query("SELECT * FROM v")
            #expect(rows.first?.columns == ["a"])
        }
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            try tx.execute("DROP TABLE v")
            try tx.execute("CREATE TABLE v (a INTEGER, b TEXT, c REAL)")
            try tx.execute("INSERT INTO v VALUES (2, 'two', 2.5)")
            let rows = try tx.query("SELECT * FROM v")
            #expect(rows.first?.columns == ["a", "b", "c"])
            #expect(rows.first?.values == [2, "two", 2.5])
        }
        await s.store.close()
    }
}
