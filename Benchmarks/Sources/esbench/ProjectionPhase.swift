// The projection phase (--projection): a customer-directory read model fed by a
// ProjectionRunner, exactly once (its rows and its tracking position commit together):
//
// - catch-up: from position 0 over the whole log W1 wrote, into the view, in batches of
//   --projection-batch notifications (events/s, and as a ratio to W3d of the same run, which
//   reads and decodes the same log without writing anything);
//   A decode-only projection (no view SQL) catches up first, for the runner's own cost;
// - live: --live-saves saves one after another, each waiting (ProjectionRunner.wait) until the
//   projection has processed it: the latency from the save's commit (save() returned) to the
//   view's commit holding it, p50/p99.
//
// SQLite: the view is a table in the store's own file (SQLiteViewTransaction). PostgreSQL: a
// table in the store's schema (PostgresViewTransaction).
import BenchDomain
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import PostgresNIO

struct SQLiteDirectoryView: Projection {
    typealias Context = SQLiteViewTransaction
    var name = "bench-directory"
    var table = "bench_directory"   // the growth phase gives each catch-up a table of its own

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("""
            CREATE TABLE IF NOT EXISTS \(table) (
                customer_id TEXT PRIMARY KEY, key_scope TEXT NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL, address TEXT NOT NULL)
            """)
        try tx.execute("CREATE INDEX IF NOT EXISTS \(table)_scope ON \(table) (key_scope)")
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        let e = try item.event(as: Customer.self)
        switch e.event {
        case .registered(let n, let m, let a), .contactUpdated(let n, let m, let a):
            try tx.execute("INSERT OR REPLACE INTO \(table) VALUES (?, ?, ?, ?, ?)",
                           .text(e.originatorID.uuidString), .text(item.keyScope ?? ""), .text(n), .text(m), .text(a))
        }
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {
        try tx.execute("DELETE FROM \(table) WHERE key_scope = ?", .text(keyScope))
    }

    func drop(in tx: SQLiteViewTransaction) async throws { try tx.execute("DROP TABLE IF EXISTS \(table)") }
}

struct PostgresDirectoryView: Projection {
    typealias Context = PostgresViewTransaction
    var name = "bench-directory"
    var table = "bench_directory"

    func setUp(in tx: PostgresViewTransaction) async throws {
        try await tx.execute("""
            CREATE TABLE IF NOT EXISTS \(unescaped: tx.schema).\(unescaped: table) (
                customer_id uuid PRIMARY KEY, key_scope text NOT NULL, name text NOT NULL, email text NOT NULL, address text NOT NULL)
            """)
        try await tx.execute("CREATE INDEX IF NOT EXISTS \(unescaped: table)_scope ON \(unescaped: tx.schema).\(unescaped: table) (key_scope)")
    }

    func process(_ item: LogItem, in tx: PostgresViewTransaction) async throws {
        let e = try item.event(as: Customer.self)
        let scope = item.keyScope ?? ""
        switch e.event {
        case .registered(let n, let m, let a), .contactUpdated(let n, let m, let a):
            try await tx.execute("""
                INSERT INTO \(unescaped: tx.schema).\(unescaped: table) VALUES (\(e.originatorID), \(scope), \(n), \(m), \(a))
                ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, address = EXCLUDED.address
                """)
        }
    }

    func erase(keyScope: String, in tx: PostgresViewTransaction) async throws {
        try await tx.execute("DELETE FROM \(unescaped: tx.schema).\(unescaped: table) WHERE key_scope = \(keyScope)")
    }

    func drop(in tx: PostgresViewTransaction) async throws {
        try await tx.execute("DROP TABLE IF EXISTS \(unescaped: tx.schema).\(unescaped: table)")
    }
}

/// A projection that decodes each event and writes nothing: its catch-up, beside the
/// directory's, tells the runner's own cost (reading, decrypting, one transaction per batch,
/// the tracking record) from the view's SQL.
struct DecodeOnlyView<Context: Sendable>: Projection {
    var name = "bench-decode-only"
    func process(_ item: LogItem, in context: Context) async throws { _ = try item.event(as: Customer.self) }
    func erase(keyScope: String, in context: Context) async throws {}
    func drop(in context: Context) async throws {}
}

/// The `q` quantile (0...1) of ascending `sorted` values (nearest rank).
func quantile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((q * Double(sorted.count)).rounded(.up))
    return sorted[min(max(rank, 1), sorted.count) - 1]
}

/// Catches a decode-only projection up over the log; its events/s.
func decodeOnlyCatchUp<S: ProjectionStore>(store: S, app: Application, o: Options, through last: Int64) async throws -> Double {
    let runner = try ProjectionRunner(application: app, projection: DecodeOnlyView<S.Context>(), store: store, batchSize: o.projectionBatch)
    let t0 = now()
    let task = Task { try await runner.run() }
    do { try await runner.wait(until: last, timeout: .seconds(3600)) } catch {
        task.cancel()
        _ = try? await task.value
        throw error
    }
    let seconds = now() - t0
    task.cancel()
    try await task.value
    return Double(last) / seconds
}

/// Runs both measurements with `projection` in `store`; adds the `projection_*` fields to `res`.
func measureProjection<P: Projection>(_ projection: P, store: some ProjectionStore<P.Context>, app: Application,
                                      o: Options, res: inout [String: Any]) async throws {
    // The decode-only projection first (it leaves no view): the runner's cost without view SQL.
    if let last = try await app.notificationLog.maxNotificationID {
        res["projection_decode_only_catchup_ev_s"] = try await decodeOnlyCatchUp(store: store, app: app, o: o, through: last)
    }
    let runner = try ProjectionRunner(application: app, projection: projection, store: store, batchSize: o.projectionBatch)
    guard let last = try await app.notificationLog.maxNotificationID else {
        throw EventSourcingError(.recorderFailure, "the projection phase needs the events W1 wrote")
    }
    // Catch-up: from position 0 to the last notification W1 wrote.
    let cpu0 = cpuTime()
    let t0 = now()
    let task = Task { try await runner.run() }
    do {
        try await runner.wait(until: last, timeout: .seconds(3600))
        let t1 = now()
        let caughtUp = Double(last) / (t1 - t0)
        res["projection_batch"] = o.projectionBatch
        res["projection_catchup_s"] = t1 - t0
        res["projection_catchup_ev_s"] = caughtUp
        res["projection_catchup_proc_cpu_s"] = cpuTime() - cpu0
        if let w3d = res["w3d_ev_s"] as? Double, w3d > 0 { res["projection_catchup_vs_w3d"] = caughtUp / w3d }

        // Live: each save waits until the view holds it (commit to processed).
        var latencies: [Double] = []
        var saves: [Double] = []
        latencies.reserveCapacity(o.liveSaves)
        for i in 0..<o.liveSaves {
            var c = try AggregateRoot<Customer>(.registered(name: "Live Customer \(i)", email: "live\(i)@example.org",
                                                           address: "\(i) Live Street"))
            let s0 = now()
            let recordings = try await app.save(&c)
            let committed = now()
            guard let id = recordings.last?.notificationID else { throw EventSourcingError(.recorderFailure, "a save recorded nothing") }
            try await runner.wait(until: id, timeout: .seconds(60))
            latencies.append(now() - committed)
            saves.append(committed - s0)
        }
        latencies.sort()
        saves.sort()
        res["projection_live_saves"] = o.liveSaves
        res["projection_live_p50_ms"] = quantile(latencies, 0.50) * 1000
        res["projection_live_p99_ms"] = quantile(latencies, 0.99) * 1000
        res["projection_live_max_ms"] = (latencies.last ?? 0) * 1000
        res["projection_live_save_p50_ms"] = quantile(saves, 0.50) * 1000
    } catch {
        task.cancel()
        _ = try? await task.value
        throw error
    }
    task.cancel()
    try await task.value
}

/// The projection phase on `store` (SQLite or PostgreSQL).
func projectionPhase(_ o: Options, store: any BenchStore, app: Application, res: inout [String: Any]) async throws {
    switch store {
    case let s as SQLiteStore:
        try await measureProjection(SQLiteDirectoryView(), store: s, app: app, o: o, res: &res)
    case let s as PostgresStore:
        try await measureProjection(PostgresDirectoryView(), store: s, app: app, o: o, res: &res)
    default:
        throw EventSourcingError(.invalidArgument, "--projection needs the sqlite or postgres backend")
    }
}
