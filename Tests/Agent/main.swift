// es-test-agent: a child process for the SQLite crash-consistency and multi-process tests.
//
//   es-test-agent save-loop DBPATH KEYFILE AGGREGATES
//       Saves forever, round-robin over AGGREGATES fixed aggregates (seed 0), 1–3 events per
//       save. After each acknowledged save prints `ACK <uuid> <version-after-save>`.
//   es-test-agent writer DBPATH KEYFILE SEED COUNT PATTERN AGGREGATES
//       Prints `READY`, waits for a `GO` line on stdin, then appends COUNT events round-robin
//       over AGGREGATES fixed aggregates of SEED, in saves whose sizes cycle through PATTERN
//       (comma-separated, e.g. `1,1,1,1,1,5`). After each save prints
//       `IDS <uuid> <first-version> <notification id> …`; at the end `DONE`.
//
// Both open an existing store and master key; the test creates them before spawning.
// Every line goes out with one write(2) on an unbuffered descriptor, so a line the test
// reads was complete before the agent could be killed. Errors go to stderr, exit status 1.
//
// The aggregate and the id scheme come from ESTestSupport, shared with the tests that read
// what the agent wrote.

import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func emit(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            exit(3)  // the test stopped reading: nothing useful left to do
        }
        off += n
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("es-test-agent: " + message + "\n").utf8))
    exit(1)
}

func openApplication(db: String, keyFile: String) async throws -> Application {
    let store = try SQLiteStore(path: db)
    let key = try MasterKey(contentsOfFile: keyFile)
    let keyring = try await Keyring.open(store: store, masterKeys: [key])
    return Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
}

/// The stored root of `id`, or nil if it has no events yet.
func load(_ app: Application, _ id: UUID) async throws -> AggregateRoot<Ledger>? {
    do { return try await app.repository.get(Ledger.self, id: id) } catch let e as EventSourcingError where e.code == .aggregateNotFound {
        return nil
    }
}

func saveLoop(_ args: [String]) async throws {
    guard args.count == 3, let n = Int(args[2]), n > 0 else { fail("usage: save-loop DBPATH KEYFILE AGGREGATES") }
    let app = try await openApplication(db: args[0], keyFile: args[1])
    var roots: [AggregateRoot<Ledger>?] = Array(repeating: nil, count: n)
    var loaded = Array(repeating: false, count: n)
    var save = 0
    var i = 0
    while true {
        let index = i % n
        i += 1
        let id = fixedAggregateID(seed: 0, index: index)
        if !loaded[index] {
            // Continues where the last (killed) run left off, including saves it never acknowledged.
            roots[index] = try await load(app, id)
            loaded[index] = true
        }
        save += 1
        var root = try ledgerSave(roots[index], id: id, save: save, count: Int.random(in: 1...3))
        try await app.save(&root)
        roots[index] = root
        emit("ACK \(id.uuidString.lowercased()) \(root.version)")
    }
}

func writer(_ args: [String]) async throws {
    guard args.count == 6, let seed = Int(args[2]), let count = Int(args[3]), let n = Int(args[5]), n > 0 else {
        fail("usage: writer DBPATH KEYFILE SEED COUNT PATTERN AGGREGATES")
    }
    let pattern = args[4].split(separator: ",").compactMap { Int($0) }
    guard !pattern.isEmpty, pattern.allSatisfy({ $0 > 0 }) else { fail("bad PATTERN \(args[4])") }
    let app = try await openApplication(db: args[0], keyFile: args[1])
    var roots: [AggregateRoot<Ledger>?] = Array(repeating: nil, count: n)
    for index in 0..<n { roots[index] = try await load(app, fixedAggregateID(seed: seed, index: index)) }
    emit("READY")
    guard let go = readLine(), go == "GO" else { fail("expected GO on stdin") }
    var written = 0
    var save = 0
    while written < count {
        let index = save % n
        let size = min(pattern[save % pattern.count], count - written)
        save += 1
        let id = fixedAggregateID(seed: seed, index: index)
        var root = try ledgerSave(roots[index], id: id, save: save, count: size)
        let firstVersion = root.version - size + 1
        let recordings = try await app.save(&root)
        roots[index] = root
        written += size
        emit("IDS \(id.uuidString.lowercased()) \(firstVersion) " + recordings.map { String($0.notificationID) }.joined(separator: " "))
    }
    emit("DONE")
}

// MARK: - signal-waits SECONDS
//
// Waits on a CommitSignal with a one-hour timeout, ended each time at once by a signal, for
// SECONDS, then as long again; prints `RSS <kB after the first phase> <kB after the second>
// <waits in the second phase>`. What a wait leaves behind after it returns must not pile up:
// the resident set after the second phase is about that after the first.

func residentKB() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    return 0
}

func signalWaits(_ args: [String]) async {
    guard args.count == 1, let seconds = Double(args[0]), seconds > 0 else { fail("usage: signal-waits SECONDS") }
    let signal = CommitSignal()
    let clock = ContinuousClock()
    func phase() async -> Int {
        var waits = 0
        let end = clock.now.advanced(by: .seconds(seconds))
        while clock.now < end {
            for _ in 0..<100 {
                let seen = signal.generation
                async let waited: Void = signal.wait(since: seen, timeout: .seconds(3600))
                signal.signal()
                await waited
                waits += 1
            }
        }
        return waits
    }
    _ = await phase()
    let first = residentKB()
    let waits = await phase()
    emit("RSS \(first) \(residentKB()) \(waits)")
}

let arguments = Array(CommandLine.arguments.dropFirst())
do {
    switch arguments.first {
    case "save-loop": try await saveLoop(Array(arguments.dropFirst()))
    case "writer": try await writer(Array(arguments.dropFirst()))
    case "pg-writer": try await pgWriter(Array(arguments.dropFirst()))
    case "sys-follower": try await systemFollower(Array(arguments.dropFirst()))
    case "shred-watch": try await shredWatch(Array(arguments.dropFirst()))
    case "signal-waits": await signalWaits(Array(arguments.dropFirst()))
    default: fail("unknown command; use save-loop or writer")
    }
} catch {
    fail("\(error)")
}
exit(0)

// MARK: - pg-writer (added for Tests/EventSourcingPostgresTests; kept apart from the SQLite commands)
//
//   es-test-agent pg-writer URL SCHEMA COUNT AGGREGATE_SEED KEYFILE [AGGREGATES]
//       Opens the PostgreSQL store at URL (postgres://…) in SCHEMA with the master key in
//       KEYFILE (the test creates the store and the key beforehand), prints `READY`, waits for
//       a `GO` line on stdin, then makes COUNT single-event saves through Application + Keyring,
//       round-robin over AGGREGATES (default 5) fixed aggregates of AGGREGATE_SEED. After each
//       acknowledged save prints `ACK <uuid> <version> <notification id>`; at the end `DONE`.

func pgWriter(_ args: [String]) async throws {
    guard args.count == 5 || args.count == 6, let count = Int(args[2]), count > 0, let seed = Int(args[3]) else {
        fail("usage: pg-writer URL SCHEMA COUNT AGGREGATE_SEED KEYFILE [AGGREGATES]")
    }
    let aggregates = args.count == 6 ? Int(args[5]) ?? 0 : 5
    guard aggregates > 0 else { fail("bad AGGREGATES \(args[5])") }
    var config = try PostgresStore.Configuration(url: args[0])
    config.schema = args[1]
    config.poolSize = 2
    let store = try await PostgresStore(configuration: config)
    let keyring = try await Keyring.open(store: store, masterKeys: [try MasterKey(contentsOfFile: args[4])])
    let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
    var roots: [AggregateRoot<Ledger>?] = []
    for index in 0..<aggregates { roots.append(try await load(app, fixedAggregateID(seed: seed, index: index))) }
    emit("READY")
    guard let go = readLine(), go == "GO" else { fail("expected GO on stdin") }
    for save in 1...count {
        let index = (save - 1) % aggregates
        let id = fixedAggregateID(seed: seed, index: index)
        var root = try ledgerSave(roots[index], id: id, save: save, count: 1)
        let recordings = try await app.save(&root)
        roots[index] = root
        emit("ACK \(id.uuidString.lowercased()) \(root.version) \(recordings[0].notificationID)")
    }
    emit("DONE")
    await store.close()
}

// MARK: - sys-follower (added for Tests/EventSourcingTests/System; the system runner's follower process)
//
//   es-test-agent sys-follower sqlite ORDERS_DB INVOICES_DB KEYFILE
//   es-test-agent sys-follower postgres URL ORDERS_SCHEMA INVOICES_SCHEMA KEYFILE
//       Opens the orders and invoices stores (created beforehand by the test, the keyring in the
//       orders store with the master key in KEYFILE, shared by both applications), prints
//       `READY`, then runs only the "invoices" follower of the system orders -> invoices
//       (InvoicingPolicy of ESTestSupport, a random pause of up to 3 ms in each event, batch size
//       7) until killed. Prints `P <notification id>` when the policy starts on an order.

func systemFollower(_ args: [String]) async throws {
    let usage = "usage: sys-follower sqlite ORDERS_DB INVOICES_DB KEYFILE | sys-follower postgres URL ORDERS_SCHEMA INVOICES_SCHEMA KEYFILE"
    let ordersStore: any ApplicationRecorder & SnapshotRecorder & KeyStore
    let invoicesStore: any ApplicationRecorder & SnapshotRecorder
    let keyFile: String
    switch args.first {
    case "sqlite" where args.count == 4:
        ordersStore = try SQLiteStore(path: args[1])
        invoicesStore = try SQLiteStore(path: args[2])
        keyFile = args[3]
    case "postgres" where args.count == 5:
        var orders = try PostgresStore.Configuration(url: args[1])
        orders.schema = args[2]
        orders.poolSize = 2
        var invoices = orders
        invoices.schema = args[3]
        ordersStore = try await PostgresStore(configuration: orders)
        invoicesStore = try await PostgresStore(configuration: invoices)
        keyFile = args[4]
    default:
        fail(usage)
    }
    let keyring = try await Keyring.open(store: ordersStore, masterKeys: [try MasterKey(contentsOfFile: keyFile)])
    let orders = Application(recorder: ordersStore, snapshots: ordersStore, mapper: Mapper(keyring: keyring))
    let invoicesApp = Application(recorder: invoicesStore, snapshots: invoicesStore, mapper: Mapper(keyring: keyring))
    let probe = PolicyProbe(onProcess: { emit("P \($0)") }, jitter: .milliseconds(3))
    let invoices = try ProcessApplication(name: "invoices", application: invoicesApp, policy: InvoicingPolicy(probe: probe))
    let system = try System(members: [.application("orders", orders), .process(invoices)], pipes: [["orders", "invoices"]])
    let runner = try SystemRunner(system: system, only: ["invoices"], batchSize: 7)
    emit("READY")
    try await runner.run()
}

// MARK: - shred-watch (added for the key-change feed tests: a shred reaches another process)
//
//   es-test-agent shred-watch sqlite DBPATH KEYFILE AGGREGATE_ID [no-feed]
//   es-test-agent shred-watch postgres URL SCHEMA KEYFILE AGGREGATE_ID [no-feed]
//       Opens the store (with the aggregate cache on), reads AGGREGATE_ID once (its key and
//       the aggregate are cached from then on), prints `READY`, then reads it in a loop, about
//       every millisecond. Prints `SHREDDED <ms since 1970>` when a read first fails with
//       `.shredded` and exits 0; any other failure is printed as `ERROR <code>` (exit 1).
//       With `no-feed`, the key store is wrapped so that the key ring cannot see its
//       key-change feed (the weaker guarantee of a store without one).

/// A key store that hides the feed of the store it wraps (every call passes through).
struct FeedlessKeyStore: KeyStore {
    let base: any KeyStore
    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await base.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await base.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await base.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await base.dataKeys(scope: scope) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await base.insertDataKey(key) }
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        try await base.rewrapDataKey(key, previousKEKID: previousKEKID)
    }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await base.dataKeys(after: cursor, limit: limit)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await base.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await base.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await base.shred(scope: scope, at: time) }
}

func shredWatch(_ args: [String]) async throws {
    let usage = "usage: shred-watch sqlite DBPATH KEYFILE AGGREGATE_ID [no-feed] | shred-watch postgres URL SCHEMA KEYFILE AGGREGATE_ID [no-feed]"
    let store: any ApplicationRecorder & SnapshotRecorder & KeyStore
    let keyFile: String
    let idText: String
    var rest: ArraySlice<String>
    switch args.first {
    case "sqlite" where args.count >= 4:
        store = try SQLiteStore(path: args[1])
        (keyFile, idText, rest) = (args[2], args[3], args[4...])
    case "postgres" where args.count >= 5:
        var config = try PostgresStore.Configuration(url: args[1])
        config.schema = args[2]
        config.poolSize = 2
        store = try await PostgresStore(configuration: config)
        (keyFile, idText, rest) = (args[3], args[4], args[5...])
    default:
        fail(usage)
    }
    guard let id = UUID(uuidString: idText) else { fail(usage) }
    let feed = rest.first != "no-feed"
    let keyStore: any KeyStore = feed ? store : FeedlessKeyStore(base: store)
    let keyring = try await Keyring.open(store: keyStore, masterKeys: [try MasterKey(contentsOfFile: keyFile)])
    let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring), cache: .lru(maxEntries: 100))
    _ = try await app.repository.get(Ledger.self, id: id)
    emit("READY")
    while true {
        do {
            _ = try await app.repository.get(Ledger.self, id: id)
        } catch let e as EventSourcingError where e.code == .shredded {
            emit("SHREDDED \(Int64(Date().timeIntervalSince1970 * 1000))")
            exit(0)
        } catch let e as EventSourcingError {
            emit("ERROR \(e.code)")
            exit(1)
        }
        try await Task.sleep(for: .milliseconds(1))
    }
}
