// esbench: the workload driver. Replays ../shared/bench/workload-10k-aggregates.jsonl.gz the way
// the peer script (Python eventsourcing, bench_pyes.py) does and prints one JSON line with the
// same field names: W1 write (one save per event), W2 get every aggregate from a fresh
// application, W3 raw notification log in pages of 500, W3d the same decoded.
//
//   swift run -c release esbench --db /tmp/esbench.sqlite --variant encrypted --sync full [--writers 8] [--readers 8] [--aggs N]
// --readers N splits W2 over N concurrent tasks (the peer reads with one).
// --projection adds the projection phase after W3d (ProjectionPhase.swift): catch-up of an
// exactly-once read model over the log (and its ratio to W3d), then live save-to-view latency.
// --system adds the system phase after that (SystemPhase.swift): a follower process application's
// catch-up over the log (upstream events/s) and live latency from a leader save to the follower's commit.
// --cache-rounds N adds the aggregate-cache phase after W2 (CachePhase.swift): N rounds of gets of
// every aggregate, cache off and on in alternating trials.
// --personal-fields runs only the personal-fields phase (PersonalFieldsPhase.swift): per-record
// encode and decode with 0, 1 and 5 personal fields beside the whole-record pipeline.
// --dictionary SAMPLES.jsonl.gz gives the mapper a preset compression dictionary for the workload's
// two topics, built from the sample events in that file (synthetic: dictionary-samples.jsonl.gz);
// with --variant plain it compresses plaintext records with it (by default plain has no compressor).
// --growth STEP --growth-dir DIR runs one step of the growth phase (GrowthPhase.swift, driven by
// run-growth.sh): seed a store of --aggs aggregates, or measure W2, W3d or a projection's
// catch-up on it, per event, as the store grows.
import BenchDomain
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var backend = "sqlite"         // sqlite | postgres | memory
    var pgURL = ""
    var db = "/tmp/esbench/es.sqlite"
    var variant = "encrypted"     // encrypted (zlib + AES-256-GCM) | plain
    var sync = "full"             // full | normal
    var writers = 1
    var readers = 1
    var w2Rounds = 1
    var storeExecutor = false
    var zlib = "default"          // default | dynamic | fixed (ZlibCompressor.Strategy)
    var aggs = 10_000
    var perAgg = 10
    var workload = ""
    var tag = ""
    var projection = false        // the projection phase (ProjectionPhase.swift)
    var projectionBatch = 100
    var liveSaves = 2_000
    var system = false            // the system phase (SystemPhase.swift)
    var cacheRounds = 0           // the aggregate-cache phase (CachePhase.swift); 0: not run
    var cacheTrials = 3
    var personalFields = false    // the personal-fields phase alone (PersonalFieldsPhase.swift)
    var pfRecords = 1_000
    var pfRounds = 7
    var growth = ""               // the growth phase's step (GrowthPhase.swift); "" : not run
    var growthDir = ""
    var sample = 1_000
    var rounds = 3
    var window = 100_000
    var seedBatch = 500
    var serverPID: Int32?
    var waitTimeout = 1
    var dictionary = ""           // sample events (workload format) for a preset compression dictionary; "": none
}

func parseOptions() -> Options {
    var o = Options()
    var it = CommandLine.arguments.dropFirst().makeIterator()
    while let a = it.next() {
        switch a {
        case "--db": o.db = it.next() ?? o.db
        case "--backend": o.backend = it.next() ?? o.backend
        case "--pg-url": o.pgURL = it.next() ?? o.pgURL
        case "--variant": o.variant = it.next() ?? o.variant
        case "--sync": o.sync = it.next() ?? o.sync
        case "--writers": o.writers = Int(it.next() ?? "") ?? 1
        case "--readers": o.readers = max(1, Int(it.next() ?? "") ?? 1)
        case "--w2-rounds": o.w2Rounds = max(1, Int(it.next() ?? "") ?? 1)
        case "--store-executor": o.storeExecutor = true
        case "--zlib": o.zlib = it.next() ?? o.zlib
        case "--pg-schema": if let name = it.next() { pgSchema = name }
        case "--aggs": o.aggs = Int(it.next() ?? "") ?? o.aggs
        case "--per-agg": o.perAgg = Int(it.next() ?? "") ?? o.perAgg
        case "--workload": o.workload = it.next() ?? ""
        case "--tag": o.tag = it.next() ?? ""
        case "--projection": o.projection = true
        case "--projection-batch": o.projectionBatch = Int(it.next() ?? "") ?? o.projectionBatch
        case "--live-saves": o.liveSaves = max(1, Int(it.next() ?? "") ?? o.liveSaves)
        case "--system": o.system = true
        case "--cache-rounds": o.cacheRounds = max(0, Int(it.next() ?? "") ?? 0)
        case "--cache-trials": o.cacheTrials = max(1, Int(it.next() ?? "") ?? 3)
        case "--personal-fields": o.personalFields = true
        case "--pf-records": o.pfRecords = Int(it.next() ?? "") ?? o.pfRecords
        case "--pf-rounds": o.pfRounds = Int(it.next() ?? "") ?? o.pfRounds
        case "--growth": o.growth = it.next() ?? ""
        case "--growth-dir": o.growthDir = it.next() ?? ""
        case "--sample": o.sample = max(1, Int(it.next() ?? "") ?? o.sample)
        case "--rounds": o.rounds = max(1, Int(it.next() ?? "") ?? o.rounds)
        case "--window": o.window = max(1, Int(it.next() ?? "") ?? o.window)
        case "--seed-batch": o.seedBatch = max(1, Int(it.next() ?? "") ?? o.seedBatch)
        case "--server-pid": o.serverPID = Int32(it.next() ?? "")
        case "--wait-timeout": o.waitTimeout = max(1, Int(it.next() ?? "") ?? o.waitTimeout)
        case "--dictionary": o.dictionary = it.next() ?? ""
        case "--help", "-h":
            print("usage: esbench [--backend sqlite|postgres|memory] [--pg-url URL] [--db PATH] [--variant encrypted|plain] [--sync full|normal] [--pg-schema NAME] [--writers N] [--readers N] [--w2-rounds N] [--store-executor] [--zlib default|dynamic|fixed] [--dictionary SAMPLES.jsonl.gz] [--aggs N] [--workload FILE.jsonl.gz] [--tag T] [--projection [--projection-batch N] [--live-saves N]] [--system] [--cache-rounds N [--cache-trials N]] [--personal-fields [--pf-records N] [--pf-rounds N]] [--growth seed|w2-sample|w2-full|w3d|w3d-full|catchup --growth-dir DIR [--sample N] [--rounds N] [--window N] [--seed-batch N] [--server-pid PID] [--wait-timeout S]]")
            exit(0)
        default:
            FileHandle.standardError.write(Data("esbench: unknown argument \(a)\n".utf8))
            exit(64)
        }
    }
    if o.workload.isEmpty {
        let here = URL(fileURLWithPath: #filePath)
        o.workload = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("shared/bench/workload-10k-aggregates.jsonl.gz").path
    }
    return o
}

typealias Payload = (name: String, email: String, address: String)

func loadWorkload(_ path: String, aggs: Int, perAgg: Int) throws -> [[Payload]] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", "gzip -dc \"$0\"", path]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw EventSourcingError(.invalidArgument, "cannot read workload \(path)") }
    struct Row: Decodable { var aggregate: Int; var event: Int; var name: String; var email: String; var address: String }
    var out: [[Payload]] = []
    let decoder = JSONDecoder()
    for line in data.split(separator: UInt8(ascii: "\n")) where !line.isEmpty {
        let r = try decoder.decode(Row.self, from: Data(line))
        if r.aggregate >= aggs { break }
        if r.event >= perAgg { continue }
        if r.event == 0 { out.append([]) }
        out[out.count - 1].append((r.name, r.email, r.address))
    }
    return out
}

func peakRSS() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return kb * 1024
    }
    return 0
}

func resetPeakRSS() {
    // Freed memory stays mapped by malloc; the reset still measures the new phase's peak from here.
    if let f = fopen("/proc/self/clear_refs", "w") {
        fputs("5", f)
        fclose(f)
    }
}

func removeDB(_ path: String) {
    for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func cpuTime() -> Double {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + Double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6
}

/// The store under test, as the protocols the workload needs.
protocol BenchStore: ApplicationRecorder, SnapshotRecorder, KeyStore {
    func finish() async -> Int   // closes; returns the size on disk
}

extension SQLiteStore: BenchStore {
    func finish() async -> Int {
        await checkpointTruncate()
        await close()
        return (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}

extension PostgresStore: BenchStore {
    func finish() async -> Int {
        let size = (try? await statistics().bytesOnDisk) ?? 0
        await close()
        return size
    }
}

/// The in-memory recorder with an in-memory key store.
final class MemoryStore: BenchStore {
    let recorder = InMemoryRecorder()
    let keys = InMemoryKeyStore()
    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await recorder.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        try await recorder.selectEvents(query)
    }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await recorder.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await recorder.maxNotificationID() }
    func insertSnapshot(_ snapshot: StoredEvent) async throws { try await recorder.insertSnapshot(snapshot) }
    func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? { try await recorder.selectSnapshot(originatorID: originatorID, lte: lte) }
    func deleteSnapshots(keyScope: String) async throws -> Int { try await recorder.deleteSnapshots(keyScope: keyScope) }
    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await keys.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await keys.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await keys.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await keys.dataKeys(scope: scope) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await keys.insertDataKey(key) }
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool { try await keys.rewrapDataKey(key, previousKEKID: previousKEKID) }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] { try await keys.dataKeys(after: cursor, limit: limit) }
    func tombstone(scope: String) async throws -> Tombstone? { try await keys.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await keys.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await keys.shred(scope: scope, at: time) }
    func finish() async -> Int { 0 }
}

nonisolated(unsafe) var memoryStore: MemoryStore?
nonisolated(unsafe) var pgSchema = "esbench_" + String(UInt32.random(in: 0...UInt32.max), radix: 16)

func makeApp(_ o: Options, masterKey: MasterKey?) async throws -> (any BenchStore, Application) {
    let store: any BenchStore
    switch o.backend {
    case "postgres":
        var config = try PostgresStore.Configuration(url: o.pgURL)
        config.schema = pgSchema
        config.poolSize = max(o.writers + 2, o.readers + 2, 4)
        store = try await PostgresStore(configuration: config)
    case "memory":
        let m = memoryStore ?? MemoryStore()
        memoryStore = m
        store = m
    default:
        store = try SQLiteStore(path: o.db, configuration: .init(synchronous: o.sync == "normal" ? .normal : .full))
    }
    let mapper: Mapper
    if let masterKey {
        let keyring = try await Keyring.open(store: store, masterKeys: [masterKey])
        let strategy: ZlibCompressor.Strategy = switch o.zlib {
        case "fixed": .fixed
        case "dynamic": .dynamic
        default: ZlibCompressor.defaultStrategy
        }
        mapper = Mapper(keyring: keyring, configuration: .init(compressor: ZlibCompressor(strategy: strategy),
                                                               compressionDictionaries: try dictionaries(o)))
    } else if !o.dictionary.isEmpty {
        // Plaintext with the dictionary: what the dictionary alone saves.
        mapper = Mapper(configuration: .init(compressionDictionaries: try dictionaries(o)))
    } else {
        mapper = Mapper(configuration: .init(compressor: nil))
    }
    return (store, Application(recorder: store, mapper: mapper))
}

/// The workload's topics, each with a dictionary built from the sample events in `--dictionary`
/// (a file in the workload's format, made by generate-workload.py with another seed: synthetic
/// events, never the ones measured). Empty without the option.
func dictionaries(_ o: Options) throws -> [String: CompressionDictionary] {
    guard !o.dictionary.isEmpty else { return [:] }
    let samples = try loadWorkload(o.dictionary, aggs: .max, perAgg: o.perAgg)
    let events: [Customer.Event] = samples.flatMap { per in
        per.enumerated().map { i, p in
            i == 0 ? .registered(name: p.name, email: p.email, address: p.address)
                : .contactUpdated(name: p.name, email: p.email, address: p.address)
        }
    }
    let dictionary = try CompressionDictionary.events(events, of: Customer.self)
    return ["Customer.registered": dictionary, "Customer.contactUpdated": dictionary]
}

func writeAggregates(_ app: Application, _ payloads: ArraySlice<[Payload]>) async throws -> [UUID] {
    var ids: [UUID] = []
    ids.reserveCapacity(payloads.count)
    for per in payloads {
        guard let first = per.first else { continue }
        var c = try AggregateRoot<Customer>(.registered(name: first.name, email: first.email, address: first.address))
        try await app.save(&c)
        for p in per.dropFirst() {
            try c.record(.contactUpdated(name: p.name, email: p.email, address: p.address))
            try await app.save(&c)
        }
        ids.append(c.id)
    }
    return ids
}

func run() async throws {
    let o = parseOptions()
    if o.personalFields { return try await personalFieldsPhase(o) }
    if !o.growth.isEmpty { return try await growthPhase(o) }
    try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: o.db).deletingLastPathComponent().path,
                                            withIntermediateDirectories: true)
    removeDB(o.db)
    var payloads = try loadWorkload(o.workload, aggs: o.aggs, perAgg: o.perAgg)
    let nEvents = payloads.reduce(0) { $0 + $1.count }
    let masterKey = o.variant == "plain" ? nil : try MasterKey.generate()
    var res: [String: Any] = ["backend": o.backend, "variant": o.variant, "sqlite_sync": o.sync, "writers": o.writers, "readers": o.readers, "store_executor": o.storeExecutor, "zlib": o.zlib,
                              "aggs": payloads.count, "events": nEvents, "tag": o.tag]

    // W1 (or W1c with several writers): one save per event.
    var (store, app) = try await makeApp(o, masterKey: masterKey)
    let cpu0 = cpuTime()
    let t0 = now()
    var ids: [UUID] = []
    if o.writers <= 1 {
        let application = app
        let all = payloads[...]
        ids = try await withTaskExecutorPreference(o.storeExecutor ? ((store as? PostgresStore)?.taskExecutor ?? (store as? SQLiteStore)?.taskExecutor) : nil) {
            try await writeAggregates(application, all)
        }
    } else {
        let chunk = (payloads.count + o.writers - 1) / o.writers
        let slices = stride(from: 0, to: payloads.count, by: chunk).map { payloads[$0..<min($0 + chunk, payloads.count)] }
        let application = app
        ids = try await withThrowingTaskGroup(of: [UUID].self) { group in
            for s in slices { group.addTask { try await writeAggregates(application, s) } }
            var all: [UUID] = []
            for try await part in group { all += part }
            return all
        }
    }
    let t1 = now()
    res[o.writers <= 1 ? "w1_s" : "w1c_s"] = t1 - t0
    res[o.writers <= 1 ? "w1_ev_s" : "w1c_ev_s"] = Double(nEvents) / (t1 - t0)
    res["w1_proc_cpu_s"] = cpuTime() - cpu0
    res["max_notification_id"] = try await store.maxNotificationID() ?? 0
    res["size_bytes"] = await store.finish()
    payloads = []
    resetPeakRSS()

    // W2: a fresh application (cold key cache) gets every aggregate. With --w2-rounds N, N
    // times (each with a fresh application), reporting the median round.
    var w2Times: [Double] = []
    var w2CPU: [Double] = []
    for round in 0..<o.w2Rounds {
        if round > 0 { _ = await store.finish() }
        (store, app) = try await makeApp(o, masterKey: masterKey)
        var replayed = 0
        let cpu2 = cpuTime()
        let t2 = now()
        if o.readers <= 1 {
            let application = app
            let all = ids
            replayed = try await withTaskExecutorPreference(o.storeExecutor ? ((store as? PostgresStore)?.taskExecutor ?? (store as? SQLiteStore)?.taskExecutor) : nil) {
                var n = 0
                for id in all { n += try await application.repository.get(Customer.self, id: id).version }
                return n
            }
        } else {
            // Several readers: the aggregates split into that many tasks, each getting its share in turn.
            let chunk = (ids.count + o.readers - 1) / o.readers
            let application = app
            replayed = try await withThrowingTaskGroup(of: Int.self) { group in
                for start in stride(from: 0, to: ids.count, by: chunk) {
                    let part = ids[start..<min(start + chunk, ids.count)]
                    group.addTask {
                        var n = 0
                        for id in part { n += try await application.repository.get(Customer.self, id: id).version }
                        return n
                    }
                }
                var all = 0
                for try await n in group { all += n }
                return all
            }
        }
        let t3 = now()
        guard replayed == nEvents else { throw EventSourcingError(.recorderFailure, "replayed \(replayed) of \(nEvents)") }
        w2Times.append(t3 - t2)
        w2CPU.append(cpuTime() - cpu2)
    }
    let mid = w2Times.indices.sorted { w2Times[$0] < w2Times[$1] }[w2Times.count / 2]
    res["w2_rounds"] = o.w2Rounds
    res["w2_s"] = w2Times[mid]
    res["w2_ev_s"] = Double(nEvents) / w2Times[mid]
    res["w2_proc_cpu_s"] = w2CPU[mid]

    // The aggregate-cache phase: repeated gets of the same aggregates, cache off and on.
    if o.cacheRounds > 0 { try await cachePhase(o, store: store, app: app, ids: ids, events: nEvents, res: &res) }

    // W3: the raw notification log, pages of 500.
    var start: Int64 = 1
    var count = 0
    let t4 = now()
    while true {
        let page = try await app.notificationLog.select(start: start, limit: 500)
        guard let last = page.last else { break }
        count += page.count
        start = last.id + 1
    }
    let t5 = now()
    guard count == nEvents else { throw EventSourcingError(.recorderFailure, "W3 saw \(count) of \(nEvents)") }
    res["w3_s"] = t5 - t4
    res["w3_ev_s"] = Double(count) / (t5 - t4)

    // W3d: the same, every notification decrypted, decompressed and decoded to a domain event.
    start = 1
    count = 0
    var stateBytes = 0
    let t6 = now()
    while true {
        let page = try await app.notificationLog.select(start: start, limit: 500)
        guard let last = page.last else { break }
        for n in page {
            stateBytes += n.state.count
            _ = try await app.mapper.decode(n.storedEvent, as: Customer.self, notificationID: n.id)
        }
        count += page.count
        start = last.id + 1
    }
    let t7 = now()
    res["w3d_s"] = t7 - t6
    res["w3d_ev_s"] = Double(count) / (t7 - t6)
    res["avg_state_bytes"] = Double(stateBytes) / Double(max(count, 1))
    res["peak_rss_bytes"] = peakRSS()

    // The projection phase: a read model's catch-up over the same log, then live latency.
    if o.projection { try await projectionPhase(o, store: store, app: app, res: &res) }
    // The system phase: a follower process application's catch-up over the same log, then live latency.
    if o.system {
        let registered = (res["aggs"] as? Int ?? 0) + (o.projection ? o.liveSaves : 0)
        try await systemPhase(o, store: store, app: app, registered: registered, res: &res)
    }
    _ = await store.finish()
    let data = try JSONSerialization.data(withJSONObject: res, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

do {
    try await run()
} catch {
    FileHandle.standardError.write(Data("esbench: \(error)\n".utf8))
    exit(1)
}
