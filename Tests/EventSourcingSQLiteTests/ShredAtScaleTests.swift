import ESTestTags
import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

// A shred erases a key in place (SQLiteStore.eraseDataKeys): its cost does not grow with the
// store, and no copy of an erased key survives anywhere in the files, however the key table was
// filled. The WAL checkpoint that removes the old pages waits a bounded time for readers and the
// receipt says what is left pending.

/// A deterministic generator (SplitMix64): the same scopes, in the same order, every run, so the
/// key table's pages split and fill the same way every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Counts how often each of many byte strings (each at least 8 bytes) occurs in a haystack, in one pass.
struct NeedleCounter {
    let needles: [[UInt8]]
    private var byPrefix: [UInt64: [Int]] = [:]

    init(_ needles: [[UInt8]]) {
        precondition(needles.allSatisfy { $0.count >= 8 })
        self.needles = needles
        for (i, n) in needles.enumerated() {
            byPrefix[n.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }, default: []].append(i)
        }
    }

    /// Occurrences of each needle, by index.
    func counts(in hay: [UInt8]) -> [Int] {
        var out = [Int](repeating: 0, count: needles.count)
        guard hay.count >= 8 else { return out }
        hay.withUnsafeBytes { h in
            for at in 0...(h.count - 8) {
                guard let candidates = byPrefix[h.loadUnaligned(fromByteOffset: at, as: UInt64.self)] else { continue }
                for c in candidates {
                    let n = needles[c]
                    if at + n.count <= h.count, n.indices.allSatisfy({ n[$0] == h[at + $0] }) { out[c] += 1 }
                }
            }
        }
        return out
    }
}

/// 60 random bytes: the size of a wrapped data key (nonce, key, tag).
func randomWrapped() -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<60).map { _ in UInt8.random(in: 0...255, using: &g) }
}

/// The whole wrapped key and a 16-byte slice from inside its ciphertext.
func keyNeedles(_ wrapped: [UInt8]) -> [[UInt8]] { [wrapped, Array(wrapped[20..<36])] }

/// A raw connection on `path`, for the tests' own reads (schema, read transactions).
func rawConnection(_ path: String) throws -> SQLiteConnection {
    try SQLiteConnection(path: path, create: false, busyTimeoutMillis: 5_000)
}

func scalar(_ path: String, _ sql: String) throws -> String {
    let c = try rawConnection(path)
    defer { c.close() }
    let s = try c.statement(sql)
    defer { s.reset() }
    guard try s.step() else { return "" }
    return s.isNull(0) ? "NULL" : s.text(0)
}

@Suite("Shredding at scale: the cost does not grow with the store, no copy of an erased key survives, the WAL wait is bounded", .tags(.slow))
struct ShredAtScaleTests {
    // MARK: No copy of any key, after thousands of inserts, rotations, rewraps and shreds

    @Test("Thousands of scopes inserted in random order, rotated, rewrapped and shredded: no erased or replaced key is anywhere in the files, every live key is there exactly once")
    func churnLeavesNoCopy() async throws {
        let dir = try TempDir("shred-churn")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db, configuration: .init(synchronous: .normal))
        // With this seed and size, a key table that rebalances its leaves (schema 2's WITHOUT ROWID
        // table, deleting rows without a rebuild) ends with stale copies of live keys.
        var rng = SplitMix(state: 4)
        let keks = ["0123456789abcdef", "fedcba9876543210"]
        // The live keys: scope -> version -> (kek id, wrapped bytes).
        var live: [String: [UInt32: (kek: String, wrapped: [UInt8])]] = [:]
        var liveOrder: [String] = []
        var used = Set<String>()        // every scope ever created (a shredded one stays tombstoned)
        var erased: [[UInt8]] = []      // every wrapped value a shred destroyed
        var replaced: [[UInt8]] = []    // every wrapped value a rewrap replaced
        var shredded = 0
        var clock = 1_700_000_000.25
        func newScope() -> String {
            // UUID-shaped scopes (the default) and names of 1…200 bytes: cells of many sizes,
            // which is what makes SQLite rebuild pages when it rebalances them.
            if Bool.random(using: &rng) {
                return UUID(uuid: (0..<16).reduce(into: [UInt8]()) { a, _ in a.append(UInt8.random(in: 0...255, using: &rng)) }
                    .withUnsafeBytes { $0.loadUnaligned(as: uuid_t.self) }).uuidString.lowercased()
            }
            let letters = Array("abcdefghijklmnopqrstuvwxyz0123456789-")
            return "subject-" + String((0..<Int.random(in: 1...200, using: &rng)).map { _ in letters[Int.random(in: 0..<letters.count, using: &rng)] })
        }
        for _ in 0..<6_000 {
            clock += 1
            let roll = Int.random(in: 0..<100, using: &rng)
            if roll < 60 || liveOrder.count < 20 {
                let scope = newScope()
                guard used.insert(scope).inserted else { continue }
                let w = randomWrapped()
                try await store.insertDataKey(WrappedDataKey(scope: scope, version: 1, kekID: keks[0], wrapped: w,
                                                             createdAt: Date(timeIntervalSince1970: clock)))
                live[scope] = [1: (keks[0], w)]
                liveOrder.append(scope)
            } else if roll < 68 {
                let scope = liveOrder[Int.random(in: 0..<liveOrder.count, using: &rng)]
                let v = (live[scope]?.keys.max() ?? 0) + 1
                let w = randomWrapped()
                try await store.insertDataKey(WrappedDataKey(scope: scope, version: v, kekID: keks[0], wrapped: w,
                                                             createdAt: Date(timeIntervalSince1970: clock)))
                live[scope]?[v] = (keks[0], w)
            } else if roll < 76 {
                let scope = liveOrder[Int.random(in: 0..<liveOrder.count, using: &rng)]
                let versions = try #require(live[scope]).keys.sorted()
                let v = versions[Int.random(in: 0..<versions.count, using: &rng)]
                let old = try #require(live[scope]?[v])
                let kek = old.kek == keks[0] ? keks[1] : keks[0]
                let w = randomWrapped()
                let done = try await store.rewrapDataKey(WrappedDataKey(scope: scope, version: v, kekID: kek, wrapped: w,
                                                                        createdAt: Date(timeIntervalSince1970: clock)),
                                                         previousKEKID: old.kek)
                try #require(done)
                replaced.append(old.wrapped)
                live[scope]?[v] = (kek, w)
            } else {
                let i = Int.random(in: 0..<liveOrder.count, using: &rng)
                let scope = liveOrder.remove(at: i)
                let removed = live.removeValue(forKey: scope)
                let keys = try #require(removed)
                let t = try await store.shred(scope: scope, at: Date(timeIntervalSince1970: clock))
                #expect(t.destroyedVersions == keys.keys.sorted())
                erased += keys.values.map(\.wrapped)
                shredded += 1
            }
        }
        #expect(shredded > 1_000 && liveOrder.count > 2_000, "the workload shreds a thousand scopes among two thousand")
        #expect(await store.checkpointTruncate())

        // What the store lists is exactly the live keys; erased rows are invisible to readers.
        var listed: [String: [UInt32: [UInt8]]] = [:]
        var cursor: DataKeyCursor?
        while true {
            let page = try await store.dataKeys(after: cursor, limit: 500)
            guard let last = page.last else { break }
            for k in page { listed[k.scope, default: [:]][k.version] = k.wrapped }
            cursor = DataKeyCursor(scope: last.scope, version: last.version)
        }
        #expect(listed == live.mapValues { $0.mapValues(\.wrapped) })
        let stats = try await store.statistics()
        #expect(stats.keyScopes == live.count)
        #expect(stats.dataKeys == live.values.reduce(0) { $0 + $1.count })
        #expect(stats.shreddedScopes == shredded)
        await store.close()

        let files = databaseFiles(db)
        let gone = NeedleCounter(erased.flatMap(keyNeedles) + replaced.flatMap(keyNeedles))
        var goneFound = Set<Int>()
        for (_, bytes) in files {
            for (i, n) in gone.counts(in: bytes).enumerated() where n > 0 { goneFound.insert(i) }
        }
        let erasedNeedles = erased.count * 2
        #expect(goneFound.filter { $0 < erasedNeedles }.isEmpty,
                "\(goneFound.filter { $0 < erasedNeedles }.count) byte strings of \(erased.count) erased keys are still in the files")
        #expect(goneFound.filter { $0 >= erasedNeedles }.isEmpty,
                "\(goneFound.filter { $0 >= erasedNeedles }.count) byte strings of \(replaced.count) replaced (rewrapped) keys are still in the files")
        let liveWrapped = live.values.flatMap { $0.values.map(\.wrapped) }
        let counter = NeedleCounter(liveWrapped)
        var counts = [Int](repeating: 0, count: liveWrapped.count)
        for (_, bytes) in files {
            for (i, n) in counter.counts(in: bytes).enumerated() { counts[i] += n }
        }
        #expect(counts.filter { $0 != 1 }.isEmpty,
                "\(counts.filter { $0 > 1 }.count) live keys have stale copies, \(counts.filter { $0 == 0 }.count) are missing")
    }

    // MARK: Cost

    /// Pages of `before` and `after` (4 KiB each) that differ, counting pages only one of them has.
    static func changedPages(_ before: [UInt8], _ after: [UInt8]) -> Int {
        let size = 4096
        let pages = (max(before.count, after.count) + size - 1) / size
        var n = 0
        for p in 0..<pages {
            let a = before.count >= (p + 1) * size ? before[(p * size)..<((p + 1) * size)] : []
            let b = after.count >= (p + 1) * size ? after[(p * size)..<((p + 1) * size)] : []
            if a != b { n += 1 }
        }
        return n
    }

    /// Database pages a shred of one scope changes, in a store of `scopes` scopes.
    static func pagesChangedByShred(scopes: Int) async throws -> Int {
        let dir = try TempDir("shred-cost")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db, configuration: .init(synchronous: .normal))
        var rng = SplitMix(state: UInt64(scopes))
        var names: [String] = []
        var made = 0
        while made < scopes {
            let batch = (0..<min(2_000, scopes - made)).map { _ in
                UUID(uuid: (0..<16).reduce(into: [UInt8]()) { a, _ in a.append(UInt8.random(in: 0...255, using: &rng)) }
                    .withUnsafeBytes { $0.loadUnaligned(as: uuid_t.self) }).uuidString.lowercased()
            }
            names += batch
            _ = try await store.insertEvents([], newKeys: batch.map {
                WrappedDataKey(scope: $0, version: 1, kekID: "0123456789abcdef", wrapped: randomWrapped(), createdAt: Date())
            })
            made += batch.count
        }
        #expect(await store.checkpointTruncate())
        let before = fileBytes(db)
        _ = try await store.shred(scope: names.sorted()[scopes / 2], at: Date())
        #expect(await store.checkpointTruncate())
        let after = fileBytes(db)
        await store.close()
        return changedPages(before, after)
    }

    @Test("A shred changes a handful of database pages, as many in a store of 20,000 scopes as in one of 200")
    func shredCostDoesNotGrow() async throws {
        let small = try await Self.pagesChangedByShred(scopes: 200)
        let large = try await Self.pagesChangedByShred(scopes: 20_000)
        // The key row's leaf, the index leaves the row leaves and enters, the tombstone's leaf
        // (and, in the large store, at most a split above them).
        #expect(small <= 8, "a shred among 200 scopes changed \(small) pages")
        #expect(large <= small + 3, "a shred among 20,000 scopes changed \(large) pages, among 200 \(small)")
    }

    // MARK: The WAL wait

    @Test("Behind a long read transaction, a shred returns within its bound and its receipt says residue is pending; once the reader ends, scrubErasureResidue removes every copy",
          arguments: [false, true])
    func boundedWaitAndScrub(withSnapshot: Bool) async throws {
        let dir = try TempDir("shred-wait")
        let db = dir.path("events.sqlite")
        let masterKey = try MasterKey.generate()
        let bound = Duration.milliseconds(400)
        var config = SQLiteStore.Configuration()
        config.scrubTimeout = bound
        let s = try await EncryptedStore.open(db, masterKey: masterKey, configuration: config)
        var ids: [UUID] = []
        for i in 0..<30 {
            var c = try AggregateRoot<Customer>(.registered(name: "Person \(i)", email: "p\(i)@example.com", address: "Street \(i)"))
            try await s.app.save(&c)
            ids.append(c.id)
        }
        let target = ids[15]
        let scope = target.uuidString.lowercased()
        if withSnapshot { try await s.app.takeSnapshot(Customer.self, id: target) }
        let keys = try await s.store.dataKeys(scope: scope)
        let needles = NeedleSet(keys.flatMap { keyNeedles($0.wrapped) })
        #expect(await s.store.checkpointTruncate())

        // Another connection (as another process would) holds a read transaction open.
        let reader = try rawConnection(db)
        defer { reader.close() }
        try reader.execute("BEGIN")
        let q = try reader.statement("SELECT count(*) FROM data_keys")
        _ = try q.step()
        q.reset()

        let clock = ContinuousClock()
        let started = clock.now
        let receipt = try await s.app.shred(keyScope: scope)
        let took = clock.now - started
        // One bounded wait (the snapshot deletion does not wait again for the same reader), plus
        // the shred's own work on a loaded machine.
        #expect(took < bound + .seconds(3), "the shred took \(took)")
        #expect(receipt.residuePending)
        let pending = try #require(receipt.pendingResidue)
        #expect(pending.contains("esctl scrub") && pending.contains(db))
        #expect(receipt.snapshotsDeleted == (withSnapshot ? 1 : 0))
        #expect(await s.store.erasureResidue().pending)
        // The receipt is honest: the old pages are still in the files.
        let stillThere = databaseFiles(db).reduce(into: Set<Int>()) { $0.formUnion(needles.found(in: $1.bytes)) }
        #expect(!stillThere.isEmpty, "the key bytes were expected in the files while the reader holds the checkpoint")

        // While the reader stays, a scrub waits its bound and says so.
        let blocked = try await s.store.scrubErasureResidue(timeout: .milliseconds(200))
        #expect(blocked.pending)

        try reader.execute("COMMIT")
        let done = try await s.store.scrubErasureResidue(timeout: .seconds(10))
        #expect(!done.pending, "\(done.description)")
        #expect(!(await s.store.erasureResidue().pending))
        for (suffix, bytes) in databaseFiles(db) {
            #expect(needles.found(in: bytes).isEmpty, "events.sqlite\(suffix) still holds the erased key")
        }
        #expect(fileBytes(db + "-wal").isEmpty)
        await s.store.close()
    }

    @Test("Without readers, the receipt says nothing is pending and the key bytes are gone at once")
    func nothingPendingWithoutReaders() async throws {
        let dir = try TempDir("shred-clean")
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: try MasterKey.generate())
        var c = try AggregateRoot<Customer>(.registered(name: "Ada", email: "ada@example.com", address: "London"))
        try await s.app.save(&c)
        let scope = c.id.uuidString.lowercased()
        let needles = NeedleSet(try await s.store.dataKeys(scope: scope).flatMap { keyNeedles($0.wrapped) })
        let receipt = try await s.app.shred(keyScope: scope)
        #expect(!receipt.residuePending)
        #expect(receipt.pendingResidue == nil)
        for (suffix, bytes) in databaseFiles(db) {
            #expect(needles.found(in: bytes).isEmpty, "events.sqlite\(suffix) still holds the erased key")
        }
        await s.store.close()
    }

    @Test("A receipt written before residuePending existed decodes as not pending; a new one round-trips")
    func receiptCodable() throws {
        let old = Data(#"{"keyScope":"s","shreddedAt":0,"destroyedKeyVersions":[1],"eventsAffected":2,"snapshotsDeleted":0}"#.utf8)
        let r = try JSONDecoder().decode(ErasureReceipt.self, from: old)
        #expect(!r.residuePending && r.pendingResidue == nil && r.eventsAffected == 2)
        let pending = ErasureReceipt(keyScope: "s", shreddedAt: Date(timeIntervalSince1970: 5), destroyedKeyVersions: [1, 2],
                                     eventsAffected: 3, snapshotsDeleted: 1, plaintextEventsInStore: 0,
                                     residuePending: true, pendingResidue: "the WAL")
        #expect(try JSONDecoder().decode(ErasureReceipt.self, from: JSONEncoder().encode(pending)) == pending)
    }

    // MARK: Stores written before schema 3

    @Test("A key table rebuilt in the schema-2 layout (by an older library still running against the migrated store) is converted back by the next shred, which leaves no copy")
    func shredAfterAnOlderProcessRebuiltTheTable() async throws {
        let dir = try TempDir("shred-mixed")
        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        var wrapped: [String: [UInt8]] = [:]
        for i in 0..<300 {
            let scope = "subject-\(i)"
            let w = randomWrapped()
            try await store.insertDataKey(WrappedDataKey(scope: scope, version: 1, kekID: "0123456789abcdef", wrapped: w,
                                                         createdAt: Date(timeIntervalSince1970: 1_700_000_000.5 + Double(i))))
            wrapped[scope] = w
        }
        // What a schema-2 shred did after deleting the scope's rows.
        try tamper(db, """
            CREATE TABLE data_keys_rebuild (scope TEXT NOT NULL, version INTEGER NOT NULL, kek_id TEXT NOT NULL,
                wrapped BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (scope, version)) WITHOUT ROWID;
            INSERT INTO data_keys_rebuild SELECT scope, version, kek_id, wrapped, created_at FROM data_keys;
            DROP TABLE data_keys;
            ALTER TABLE data_keys_rebuild RENAME TO data_keys;
            """)
        #expect(try scalar(db, "SELECT sql FROM sqlite_master WHERE name = 'data_keys'").contains("WITHOUT ROWID"))
        let t = try await store.shred(scope: "subject-150", at: Date())
        #expect(t.destroyedVersions == [1])
        #expect(!(try scalar(db, "SELECT sql FROM sqlite_master WHERE name = 'data_keys'").contains("WITHOUT ROWID")))
        #expect(try await store.dataKeys(scope: "subject-151").map(\.wrapped) == [try #require(wrapped["subject-151"])])
        #expect(try await store.statistics().dataKeys == 299)
        #expect(await store.checkpointTruncate())
        await store.close()
        let gone = NeedleSet(keyNeedles(try #require(wrapped["subject-150"])))
        for (suffix, bytes) in databaseFiles(db) {
            #expect(gone.found(in: bytes).isEmpty, "events.sqlite\(suffix) still holds the erased key")
        }
    }

    @Test("A schema-1 store is migrated to the rowid key table with every key intact and exactly once, and a shred of it leaves no copy")
    func migrationKeepsKeysAndScrubs() async throws {
        let dir = try TempDir("shred-migrate")
        let fixtures = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        let db = dir.path("ledger.sqlite")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("ledger-v1.sqlite.fixture"), to: URL(fileURLWithPath: db))
        let key = try MasterKey(contentsOfFile: fixtures.appendingPathComponent("ledger-v1.key.fixture").path)
        #expect(try scalar(db, "SELECT sql FROM sqlite_master WHERE name = 'data_keys'").contains("WITHOUT ROWID"))
        let s = try await EncryptedStore.open(db, masterKey: key)
        #expect(try scalar(db, "SELECT value FROM es_meta WHERE key = 'schema_version'") == "\(SQLiteStore.schemaVersion)")
        #expect(!(try scalar(db, "SELECT sql FROM sqlite_master WHERE name = 'data_keys'").contains("WITHOUT ROWID")))
        #expect(try scalar(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'data_keys_%'") == "0")
        let a = fixedAggregateID(seed: 7, index: 0)
        let b = fixedAggregateID(seed: 7, index: 1)
        #expect(try await s.app.repository.get(Ledger.self, id: a).version == 2)
        let keyA = try await s.store.dataKeys(scope: a.uuidString.lowercased())
        let keyB = try await s.store.dataKeys(scope: b.uuidString.lowercased())
        try #require(keyA.count == 1 && keyB.count == 1)
        #expect(await s.store.checkpointTruncate())
        let counts = NeedleCounter([keyA[0].wrapped, keyB[0].wrapped]).counts(in: fileBytes(db))
        #expect(counts == [1, 1], "each key once in the migrated file")

        _ = try await s.app.shred(keyScope: a.uuidString.lowercased())
        #expect(try await s.app.repository.get(Ledger.self, id: b).version == 3)
        await s.store.close()
        let gone = NeedleSet(keyNeedles(keyA[0].wrapped))
        for (suffix, bytes) in databaseFiles(db) {
            #expect(gone.found(in: bytes).isEmpty, "ledger.sqlite\(suffix) still holds the erased key")
        }
    }
}
