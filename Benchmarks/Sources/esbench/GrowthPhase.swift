// The growth phase (--growth STEP --growth-dir DIR): how the data path's costs grow as a store
// fills (issue 18). Benchmarks/run-growth.sh runs one STEP per process, so each memory figure
// is a fresh process's peak:
//
//   seed        a new store of --aggs aggregates, --per-agg events each (one data subject each,
//               the aggregate's own key scope), saved --seed-batch aggregates per save (one
//               transaction); the payloads are the workload's, reused cyclically. Writes the
//               master key (DIR/master.key, 0600) and the aggregate ids (DIR/ids, 16 bytes each)
//               for the other steps. Seeding speed is not a measured figure.
//   w2-sample   W2 of a fixed random sample of --sample aggregates (the same draw at every size):
//               --rounds rounds, each a fresh store connection and application (cold key cache);
//   w2-full     W2 of every aggregate, one pass: rate and peak RSS;
//   w3d         the log read in pages of 500, every record decrypted and decoded: a window of
//               --window events at the start and one at the end of the log, --rounds each
//               (each round a fresh store connection and application: a cold key cache);
//   w3d-full    the same over the whole log, one pass: rate and peak RSS;
//   catchup     a decode-only projection, then the customer directory (ProjectionPhase.swift),
//               catching up from position 0 over the whole log (names and tables suffixed with
//               --tag, so a second run starts from 0 again), waited for in ProjectionRunner.wait
//               calls of --wait-timeout seconds (1; the resident set after each tenth is reported).
//
// One JSON line per measure: {"bench":"growth","backend","events","aggs","measure",…} with
// events/s, wall and CPU (user+sys, getrusage, all threads of this process) µs per event and,
// with --server-pid (the postmaster of a PostgreSQL cluster no one else uses), the server's CPU
// µs per event from /proc (the postmaster, its live children and the children it reaped).
import BenchDomain
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
#if canImport(Glibc)
import Glibc
#endif

/// A small deterministic generator (SplitMix64), so the sample is the same draw at every size and run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Resident set now (VmRSS), bytes.
func currentRSS() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return (line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) * 1024
    }
    return 0
}

/// CPU seconds (user+sys) of process `pid`, its reaped children, and its live children (one
/// level: a postmaster's backends and background workers), from /proc; nil when unreadable.
func serverCPU(_ pid: Int32) -> Double? {
    let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
    func fields(_ p: String) -> [Substring]? {
        guard let s = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(after: close)...].split(separator: " ")   // fields 3… (state first)
    }
    // After the ")": index 0 is field 3, so utime (14) is 11, stime 12, cutime 13, cstime 14.
    guard let own = fields("\(pid)"), own.count > 14 else { return nil }
    var ticks = [11, 12, 13, 14].reduce(0.0) { $0 + (Double(own[$1]) ?? 0) }
    let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    for child in children.split(separator: " ") {
        if let f = fields(String(child)), f.count > 12 { ticks += (Double(f[11]) ?? 0) + (Double(f[12]) ?? 0) }
    }
    return ticks / tick
}

/// Read system calls of this process so far (syscr of /proc/self/io: SQLite's page reads from
/// the OS, PostgreSQL's socket reads); 0 when unreadable.
func readSyscalls() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/io", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("syscr:") {
        return line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    }
    return 0
}

/// Wall, process CPU, read system calls and (with a server pid) server CPU of `body`.
struct Cost {
    var wall = 0.0
    var cpu = 0.0
    var reads = 0
    var server: Double?

    static func measure<T>(_ o: Options, _ body: () async throws -> T) async rethrows -> (Cost, T) {
        let s0 = o.serverPID.flatMap(serverCPU)
        let r0 = readSyscalls()
        let c0 = cpuTime()
        let t0 = now()
        let value = try await body()
        let t1 = now()
        let c1 = cpuTime()
        let r1 = readSyscalls()
        let s1 = o.serverPID.flatMap(serverCPU)
        var cost = Cost(wall: t1 - t0, cpu: c1 - c0, reads: r1 - r0)
        if let s0, let s1 { cost.server = s1 - s0 }
        return (cost, value)
    }
}

func growthPhase(_ o: Options) async throws {
    let dir = o.growthDir
    guard !dir.isEmpty else { throw EventSourcingError(.invalidArgument, "--growth needs --growth-dir DIR") }
    var o = o
    o.db = dir + "/es.sqlite"
    let keyFile = dir + "/master.key"
    let idsFile = dir + "/ids"
    var base: [String: Any] = ["bench": "growth", "backend": o.backend, "variant": "encrypted", "tag": o.tag]

    func emit(_ measure: String, _ fields: [String: Any]) throws {
        var line = base
        line["measure"] = measure
        for (k, v) in fields { line[k] = v }
        let data = try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }
    /// The per-event figures of a measured pass over `events` events.
    func perEvent(_ c: Cost, _ events: Int) -> [String: Any] {
        var f: [String: Any] = ["events_measured": events, "s": c.wall, "ev_s": Double(events) / c.wall,
                                "wall_us_ev": c.wall * 1e6 / Double(events), "cpu_us_ev": c.cpu * 1e6 / Double(events),
                                "read_syscalls_ev": Double(c.reads) / Double(events)]
        if let s = c.server { f["server_cpu_us_ev"] = s * 1e6 / Double(events) }
        return f
    }

    if o.growth == "seed" {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        removeDB(o.db)
        try? FileManager.default.removeItem(atPath: keyFile)
        let pool = try loadWorkload(o.workload, aggs: 10_000, perAgg: o.perAgg)
        guard !pool.isEmpty else { throw EventSourcingError(.invalidArgument, "the workload \(o.workload) has no aggregates") }
        let masterKey = try MasterKey.generate()
        try masterKey.writeKeyFile(to: keyFile)
        let (store, app) = try await makeApp(o, masterKey: masterKey)
        var ids = [UInt8]()
        ids.reserveCapacity(o.aggs * 16)
        let t0 = now()
        var next = 0
        while next < o.aggs {
            let n = min(max(1, o.seedBatch), o.aggs - next)
            var roots: [AggregateRoot<Customer>] = []
            roots.reserveCapacity(n)
            for k in next..<(next + n) {
                let per = pool[k % pool.count]
                var c = try AggregateRoot<Customer>(.registered(name: per[0].name, email: per[0].email, address: per[0].address))
                for p in per.dropFirst() { try c.record(.contactUpdated(name: p.name, email: p.email, address: p.address)) }
                roots.append(c)
            }
            try await app.save(&roots)
            for r in roots { withUnsafeBytes(of: r.id.uuid) { ids.append(contentsOf: $0) } }
            next += n
        }
        let seconds = now() - t0
        let events = Int(try await store.maxNotificationID() ?? 0)
        try Data(ids).write(to: URL(fileURLWithPath: idsFile))
        base["events"] = events
        base["aggs"] = o.aggs
        try emit("seed", ["seed_s": seconds, "size_bytes": await store.finish(), "seed_batch": o.seedBatch])
        return
    }

    // Every other step reads the seeded store.
    let masterKey = try MasterKey(contentsOfFile: keyFile)
    let raw = try Data(contentsOf: URL(fileURLWithPath: idsFile))
    let ids: [UUID] = (0..<(raw.count / 16)).map { i in
        raw.withUnsafeBytes { UUID(uuid: $0.loadUnaligned(fromByteOffset: i * 16, as: uuid_t.self)) }
    }
    let perAgg = o.perAgg
    base["aggs"] = ids.count
    base["events"] = ids.count * perAgg

    /// CPU µs per event of each tenth of a pass (`mark` called after each unit of work): whether
    /// the cost drifts as one process reads on.
    final class Segments {
        let total: Int
        let unit: Int
        var done = 0
        var lastDone = 0
        var last = cpuTime()
        var values: [Double] = []
        var rss: [Double] = []   // VmRSS (MB) at the end of each tenth
        init(total: Int, eventsPerUnit: Int) { (self.total, self.unit) = (total, eventsPerUnit) }
        func mark(_ n: Int = 1) {
            let step = max(1, total / 10)
            let before = done / step
            done += n
            if done / step > before || done == total, done > lastDone {
                let t = cpuTime()
                values.append((t - last) * 1e6 / Double((done - lastDone) * unit))
                rss.append(Double(currentRSS()) / 1_048_576)
                (last, lastDone) = (t, done)
            }
        }
    }

    /// Gets `which` aggregates from a fresh store connection and application; checks the versions.
    func w2(_ which: [UUID], segments: Segments? = nil) async throws -> Cost {
        let (store, app) = try await makeApp(o, masterKey: masterKey)
        let (cost, versions) = try await Cost.measure(o) {
            var n = 0
            for id in which {
                n += try await app.repository.get(Customer.self, id: id).version
                segments?.mark()
            }
            return n
        }
        _ = await store.finish()
        guard versions == which.count * perAgg else {
            throw EventSourcingError(.recorderFailure, "growth W2 replayed \(versions) of \(which.count * perAgg) events")
        }
        return cost
    }

    /// Reads and decodes notifications `first…` (`count` of them) in pages of 500.
    func w3d(_ app: Application, first: Int64, count: Int, segments: Segments? = nil) async throws -> Int {
        var start = first
        var seen = 0
        while seen < count {
            let page = try await app.notificationLog.select(start: start, limit: min(500, count - seen))
            guard let last = page.last else { break }
            for n in page { _ = try await app.mapper.decode(n.storedEvent, as: Customer.self, notificationID: n.id) }
            seen += page.count
            segments?.mark(page.count)
            start = last.id + 1
        }
        return seen
    }

    func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
    /// The median round's figures, and every round's events/s and CPU µs/event.
    func rounds(_ costs: [Cost], events: Int) -> [String: Any] {
        let mid = costs.indices.sorted { costs[$0].wall < costs[$1].wall }[costs.count / 2]
        var f = perEvent(costs[mid], events)
        f["rounds"] = costs.count
        f["ev_s_rounds"] = costs.map { Double(events) / $0.wall }
        f["cpu_us_ev_rounds"] = costs.map { $0.cpu * 1e6 / Double(events) }
        if costs.allSatisfy({ $0.server != nil }) { f["server_cpu_us_ev_rounds"] = costs.map { ($0.server ?? 0) * 1e6 / Double(events) } }
        return f
    }

    switch o.growth {
    case "w2-sample":
        // A fixed draw: a partial Fisher-Yates shuffle of the indexes with a constant seed.
        var rng = SplitMix64(state: 20_261_130)
        var order = Array(ids.indices)
        let k = min(o.sample, order.count)
        for i in 0..<k { order.swapAt(i, Int.random(in: i..<order.count, using: &rng)) }
        let sample = order[0..<k].map { ids[$0] }
        var costs: [Cost] = []
        for _ in 0..<o.rounds { costs.append(try await w2(sample)) }
        var f = rounds(costs, events: k * perAgg)
        f["sample_aggs"] = k
        f["peak_rss_mb"] = Double(peakRSS()) / 1_048_576
        try emit("w2_sample", f)

    case "w2-full":
        let before = currentRSS()
        let segments = Segments(total: ids.count, eventsPerUnit: perAgg)
        let cost = try await w2(ids, segments: segments)
        var f = perEvent(cost, ids.count * perAgg)
        f["cpu_us_ev_tenths"] = segments.values
        f["rss_mb_tenths"] = segments.rss
        f["rss_before_mb"] = Double(before) / 1_048_576
        f["peak_rss_mb"] = Double(peakRSS()) / 1_048_576
        try emit("w2_full", f)

    case "w3d":
        // Each round a fresh store connection and application: a cold key cache, as in W2.
        let (store0, app0) = try await makeApp(o, masterKey: masterKey)
        let last = try await app0.notificationLog.maxNotificationID ?? 0
        _ = await store0.finish()
        let window = min(o.window, Int(last))
        for (measure, first) in [("w3d_window_start", Int64(1)), ("w3d_window_end", last - Int64(window) + 1)] {
            var costs: [Cost] = []
            for _ in 0..<o.rounds {
                let (store, app) = try await makeApp(o, masterKey: masterKey)
                let (cost, seen) = try await Cost.measure(o) { try await w3d(app, first: first, count: window) }
                _ = await store.finish()
                guard seen == window else {
                    throw EventSourcingError(.recorderFailure, "growth W3d read \(seen) of \(window) notifications from \(first)")
                }
                costs.append(cost)
            }
            var f = rounds(costs, events: window)
            f["first_notification"] = first
            try emit(measure, f)
        }

    case "w3d-full":
        let (store, app) = try await makeApp(o, masterKey: masterKey)
        let last = Int(try await app.notificationLog.maxNotificationID ?? 0)
        let before = currentRSS()
        let segments = Segments(total: last, eventsPerUnit: 1)
        let (cost, seen) = try await Cost.measure(o) { try await w3d(app, first: 1, count: last, segments: segments) }
        guard seen == last else { throw EventSourcingError(.recorderFailure, "growth W3d read \(seen) of \(last) notifications") }
        var f = perEvent(cost, last)
        f["cpu_us_ev_tenths"] = segments.values
        f["rss_mb_tenths"] = segments.rss
        f["rss_before_mb"] = Double(before) / 1_048_576
        f["peak_rss_mb"] = Double(peakRSS()) / 1_048_576
        try emit("w3d_full", f)
        _ = await store.finish()

    case "catchup":
        let (store, app) = try await makeApp(o, masterKey: masterKey)
        guard let last = try await app.notificationLog.maxNotificationID else {
            throw EventSourcingError(.recorderFailure, "the growth catch-up needs a seeded store")
        }
        let suffix = o.tag.isEmpty ? "0" : o.tag.filter { $0.isLetter || $0.isNumber }
        /// The resident set (MB) as the catch-up passes each tenth of the log: whether memory keeps growing.
        var rssTenths: [Double] = []
        func catchUp<P: Projection>(_ p: P, in s: some ProjectionStore<P.Context>) async throws -> Cost {
            let runner = try ProjectionRunner(application: app, projection: p, store: s, batchSize: o.projectionBatch)
            rssTenths = []
            let started = now()
            let (cost, _) = try await Cost.measure(o) {
                let task = Task { try await runner.run() }
                do {
                    for tenth in 1...10 {
                        // In waits of --wait-timeout seconds (1 by default), again until there. Before
                        // bc5768d each wake-up of a wait left its timeout's sleep pending until that
                        // timeout's deadline, so one long wait held memory per batch; the library now
                        // sleeps in 1 s slices, and these waits keep the runs comparable with earlier ones.
                        while true {
                            do {
                                try await runner.wait(until: last * Int64(tenth) / 10, timeout: .seconds(o.waitTimeout))
                                break
                            } catch let e as EventSourcingError where e.code == .timedOut {
                                guard now() - started < 7200 else { throw e }
                            }
                        }
                        rssTenths.append(Double(currentRSS()) / 1_048_576)
                    }
                } catch {
                    task.cancel()
                    _ = try? await task.value
                    throw error
                }
                task.cancel()
                try await task.value
            }
            return cost
        }
        let decodeOnly: Cost
        let directory: Cost
        var decodeOnlyRSS: [Double] = []
        switch store {
        case let s as SQLiteStore:
            decodeOnly = try await catchUp(DecodeOnlyView<SQLiteViewTransaction>(name: "growth-decode-only-\(suffix)"), in: s)
            decodeOnlyRSS = rssTenths
            directory = try await catchUp(SQLiteDirectoryView(name: "growth-directory-\(suffix)", table: "growth_directory_\(suffix)"), in: s)
        case let s as PostgresStore:
            decodeOnly = try await catchUp(DecodeOnlyView<PostgresViewTransaction>(name: "growth-decode-only-\(suffix)"), in: s)
            decodeOnlyRSS = rssTenths
            directory = try await catchUp(PostgresDirectoryView(name: "growth-directory-\(suffix)", table: "growth_directory_\(suffix)"), in: s)
        default:
            throw EventSourcingError(.invalidArgument, "--growth catchup needs the sqlite or postgres backend")
        }
        var f = perEvent(decodeOnly, Int(last))
        f["projection_batch"] = o.projectionBatch
        f["rss_mb_tenths"] = decodeOnlyRSS
        f["wait_timeout_s"] = o.waitTimeout
        try emit("catchup_decode_only", f)
        f = perEvent(directory, Int(last))
        f["projection_batch"] = o.projectionBatch
        f["rss_mb_tenths"] = rssTenths
        f["wait_timeout_s"] = o.waitTimeout
        f["peak_rss_mb"] = Double(peakRSS()) / 1_048_576
        try emit("catchup_directory", f)
        _ = await store.finish()

    default:
        throw EventSourcingError(.invalidArgument, "--growth: unknown step \(o.growth) (seed, w2-sample, w2-full, w3d, w3d-full, catchup)")
    }
}
