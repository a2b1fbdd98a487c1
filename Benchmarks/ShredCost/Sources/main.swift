// shred-cost: fills a new SQLite store with N key scopes (one data key each, as a store of N
// data subjects has), then times `SQLiteStore.shred(scope:at:)` (the key-store erasure with its
// WAL checkpoint, what `esctl keys shred` and `Application.shred` spend on the key) for a sample
// of scopes, and prints one JSON line:
//
//   {"bench":"shred-cost","scopes":…,"shreds":…,"shred_ms_median":…,"shred_ms_p90":…,"shred_ms_max":…,
//    "pages_changed_median":…,"db_bytes":…,"fill_s":…,"open_s":…,"schema":…}
//
// pages_changed is the number of 4 KiB database pages one shred changed (its write volume, read
// from the file before and after, both checkpointed). open_s is the time to open the filled store
// again (a schema migration, when there is one, runs there).
// Uses only API that existed before schema 3, so the same file measures the old code too.
import EventSourcingSQLite
import Foundation
import KeyManagement

struct Options {
    var scopes = 1_000
    var shreds = 20
    var dir = ""
    var keep = false
    var existing = ""
}

func options() -> Options {
    var o = Options()
    var it = CommandLine.arguments.dropFirst().makeIterator()
    while let a = it.next() {
        switch a {
        case "--scopes": o.scopes = Int(it.next() ?? "") ?? o.scopes
        case "--shreds": o.shreds = Int(it.next() ?? "") ?? o.shreds
        case "--dir": o.dir = it.next() ?? ""
        case "--keep": o.keep = true
        case "--existing": o.existing = it.next() ?? ""
        default:
            FileHandle.standardError.write(Data("usage: shred-cost [--scopes N] [--shreds K] [--dir DIR] [--keep] | --existing DB [--shreds K]\n".utf8))
            exit(64)
        }
    }
    guard o.scopes >= 1, o.shreds >= 1, o.shreds <= o.scopes else {
        FileHandle.standardError.write(Data("shred-cost: need 1 <= shreds <= scopes\n".utf8))
        exit(64)
    }
    return o
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func log(_ s: String) { FileHandle.standardError.write(Data("[shred-cost] \(s)\n".utf8)) }

let o = options()
if !o.existing.isEmpty {
    // An existing store (say one written by an older version, kept with --keep): the time to
    // open it for writing (a schema migration runs there), then K shreds of its first scopes.
    let clock = ContinuousClock()
    let t0 = clock.now
    let store = try SQLiteStore(path: o.existing)
    let open = clock.now - t0
    await store.checkpointTruncate()
    var times: [Double] = []
    for key in try await store.dataKeys(after: nil, limit: o.shreds) {
        let t = clock.now
        _ = try await store.shred(scope: key.scope, at: Date())
        times.append(seconds(clock.now - t) * 1000)
    }
    await store.close()
    times.sort()
    print("{\"bench\":\"shred-cost-existing\",\"open_s\":\(seconds(open)),\"shreds\":\(times.count),"
        + "\"shred_ms_median\":\(times.isEmpty ? -1 : times[times.count / 2]),\"schema\":\(SQLiteStore.schemaVersion)}")
    exit(0)
}
let dir = o.dir.isEmpty ? NSTemporaryDirectory() + "shred-cost-\(UUID().uuidString)" : o.dir
try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
let db = dir + "/store.sqlite"
for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: db + suffix) }
let clock = ContinuousClock()

var store = try SQLiteStore(path: db)
var rng = SystemRandomNumberGenerator()
var scopes: [String] = []
scopes.reserveCapacity(o.scopes)
let fillStart = clock.now
var made = 0
while made < o.scopes {
    let n = min(10_000, o.scopes - made)
    var batch: [WrappedDataKey] = []
    batch.reserveCapacity(n)
    for _ in 0..<n {
        let scope = UUID().uuidString.lowercased()
        scopes.append(scope)
        batch.append(WrappedDataKey(scope: scope, version: 1, kekID: "0123456789abcdef",
                                    wrapped: (0..<60).map { _ in UInt8.random(in: 0...255, using: &rng) }, createdAt: Date()))
    }
    _ = try await store.insertEvents([], newKeys: batch)
    made += n
    if made % 100_000 == 0 { log("\(made) scopes") }
}
await store.checkpointTruncate()
await store.close()
let fill = clock.now - fillStart
// Open again, as an application or esctl does (this is where a schema migration runs).
let openStart = clock.now
store = try SQLiteStore(path: db)
let open = clock.now - openStart
await store.checkpointTruncate()

var times: [Double] = []
for scope in scopes.shuffled().prefix(o.shreds) {
    let t0 = clock.now
    _ = try await store.shred(scope: scope, at: Date())
    times.append(seconds(clock.now - t0) * 1000)
}
// Write volume: database pages a shred changes (after its checkpoint), for three more scopes.
func pagesChanged(_ a: Data, _ b: Data) -> Int {
    let size = 4096
    let pages = (max(a.count, b.count) + size - 1) / size
    var n = 0
    for p in 0..<pages {
        let lo = p * size
        let pa = a.count >= lo + size ? a.subdata(in: lo..<(lo + size)) : Data()
        let pb = b.count >= lo + size ? b.subdata(in: lo..<(lo + size)) : Data()
        if pa != pb { n += 1 }
    }
    return n
}
var pages: [Int] = []
for scope in scopes.shuffled().prefix(o.shreds + 6) where pages.count < 3 {
    guard !(try await store.dataKeys(scope: scope)).isEmpty else { continue }
    await store.checkpointTruncate()
    let before = try Data(contentsOf: URL(fileURLWithPath: db))
    _ = try await store.shred(scope: scope, at: Date())
    await store.checkpointTruncate()
    pages.append(pagesChanged(before, try Data(contentsOf: URL(fileURLWithPath: db))))
}
await store.close()
let dbBytes = (try? FileManager.default.attributesOfItem(atPath: db)[.size] as? Int) ?? 0
if !o.keep { try? FileManager.default.removeItem(atPath: dir) }
times.sort()
pages.sort()
func pct(_ xs: [Double], _ p: Double) -> Double { xs[min(xs.count - 1, Int((Double(xs.count - 1) * p).rounded()))] }
let r3 = { (x: Double) in (x * 1000).rounded() / 1000 }
print("{\"bench\":\"shred-cost\",\"scopes\":\(o.scopes),\"shreds\":\(times.count),\"shred_ms_median\":\(r3(pct(times, 0.5))),"
    + "\"shred_ms_p90\":\(r3(pct(times, 0.9))),\"shred_ms_max\":\(r3(times.last ?? 0)),"
    + "\"pages_changed_median\":\(pages.isEmpty ? -1 : pages[pages.count / 2]),\"db_bytes\":\(dbBytes),"
    + "\"fill_s\":\(r3(seconds(fill))),\"open_s\":\(r3(seconds(open))),\"schema\":\(SQLiteStore.schemaVersion)}")
