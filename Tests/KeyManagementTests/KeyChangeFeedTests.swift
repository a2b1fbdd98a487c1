import Foundation
import KeyManagement
import Synchronization
import Testing

/// A key store over an ``InMemoryKeyStore`` that counts look-ups and can hide its feed, make
/// it fail or report a gap.
final class FeedProbeStore: KeyChangeFeed {
    let base = InMemoryKeyStore()
    struct Counts { var marks = 0, pages = 0, keyReads = 0 }
    let counts = Mutex(Counts())
    let failFeed = Atomic<Bool>(false)
    let gap = Atomic<Bool>(false)

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await base.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await base.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await base.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        counts.withLock { $0.keyReads += 1 }
        return try await base.dataKeys(scope: scope)
    }
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

    func keyChangeMark() async throws -> Int64 {
        counts.withLock { $0.marks += 1 }
        if failFeed.load(ordering: .relaxed) { throw KeyManagementError(.storeFailure, "the feed is down (test)") }
        return try await base.keyChangeMark()
    }

    func keyChanges(after seq: Int64, limit: Int) async throws -> KeyChangePage {
        counts.withLock { $0.pages += 1 }
        if gap.load(ordering: .relaxed) { return KeyChangePage(changes: [], gap: true) }
        return try await base.keyChanges(after: seq, limit: limit)
    }
}

/// The same store with no feed: a custom key store written before the feed existed.
struct FeedlessStore: KeyStore {
    let base: InMemoryKeyStore
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

@Suite("Keyring: the key-change feed")
struct KeyChangeFeedTests {
    /// Two key rings on one store, as two processes would have; `scope` has a persisted v1
    /// that `reader` has cached.
    static func pair(_ store: any KeyStore, scope: String = "alice") async throws -> (reader: Keyring, writer: Keyring) {
        let master = try MasterKey.generate()
        let writer = try await Keyring.open(store: store, masterKeys: [master])
        let reader = try await Keyring.open(store: store, masterKeys: [master])
        try await KeyringTests.create(scope, in: writer)
        _ = try await reader.readKey(scope: scope, version: 1)
        _ = try await reader.writeKey(for: scope)
        return (reader, writer)
    }

    @Test("A shred through another key ring is refused by this one's next look-up once the feed is checked, and moves shredGeneration")
    func shredElsewhereIsSeen() async throws {
        let (reader, writer) = try await Self.pair(InMemoryKeyStore())
        reader.keyChangeRefreshInterval = .zero
        let generation = reader.shredGeneration
        _ = try await writer.shred(scope: "alice")
        let e = await #expect(throws: KeyManagementError.self) { try await reader.readKey(scope: "alice", version: 1) }
        #expect(e?.code == .shredded && e?.scope == "alice")
        #expect(reader.shredGeneration > generation)
        let w = await #expect(throws: KeyManagementError.self) { try await reader.writeKey(for: "alice") }
        #expect(w?.code == .shredded)
    }

    @Test("A cached write key moves to the version another key ring rotated to")
    func rotationElsewhereIsSeen() async throws {
        let (reader, writer) = try await Self.pair(InMemoryKeyStore())
        reader.keyChangeRefreshInterval = .zero
        #expect(try await writer.rotate(scope: "alice") == 2)
        #expect(try await reader.writeKey(for: "alice").key.version == 2)
        // The old version still decrypts.
        #expect(try await reader.readKey(scope: "alice", version: 1).version == 1)
    }

    @Test("Cached keys cost no store round trip: the feed is asked at most once per refresh interval")
    func feedIsCheckedOncePerInterval() async throws {
        let store = FeedProbeStore()
        let (reader, writer) = try await Self.pair(store)
        reader.keyChangeRefreshInterval = .seconds(3600)
        _ = try await reader.readKey(scope: "alice", version: 1)   // the check the new interval asks for
        let before = store.counts.withLock { $0 }
        for _ in 0..<1_000 { _ = try await reader.readKey(scope: "alice", version: 1) }
        let after = store.counts.withLock { $0 }
        #expect(after.marks == before.marks && after.keyReads == before.keyReads)
        // Within the interval a shred elsewhere is not seen yet; an explicit refresh sees it.
        _ = try await writer.shred(scope: "alice")
        _ = try await reader.readKey(scope: "alice", version: 1)
        try await reader.refreshKeyChanges()
        let e = await #expect(throws: KeyManagementError.self) { try await reader.readKey(scope: "alice", version: 1) }
        #expect(e?.code == .shredded)
    }

    @Test("A gap in the feed (entries pruned before this key ring read them) drops every cached key")
    func gapDropsTheCache() async throws {
        let store = FeedProbeStore()
        let (reader, writer) = try await Self.pair(store)
        reader.keyChangeRefreshInterval = .zero
        _ = try await writer.rotate(scope: "alice")   // the feed moves
        store.gap.store(true, ordering: .relaxed)
        let generation = reader.shredGeneration
        let reads = store.counts.withLock { $0.keyReads }
        _ = try await reader.readKey(scope: "alice", version: 1)
        #expect(store.counts.withLock { $0.keyReads } == reads + 1, "the cached key was used after a gap")
        #expect(reader.shredGeneration > generation)
    }

    @Test("A feed that cannot be read fails the look-up with the store's error and drops the cache; once it answers, keys are read afresh")
    func failingFeedFailsClosed() async throws {
        let store = FeedProbeStore()
        let (reader, _) = try await Self.pair(store)
        reader.keyChangeRefreshInterval = .zero
        store.failFeed.store(true, ordering: .relaxed)
        let e = await #expect(throws: KeyManagementError.self) { try await reader.readKey(scope: "alice", version: 1) }
        #expect(e?.code == .storeFailure)
        await #expect(throws: KeyManagementError.self) { try await reader.writeKey(for: "alice") }
        store.failFeed.store(false, ordering: .relaxed)
        let reads = store.counts.withLock { $0.keyReads }
        _ = try await reader.readKey(scope: "alice", version: 1)
        #expect(store.counts.withLock { $0.keyReads } == reads + 1, "a key cached before the failure was used unchecked")
    }

    @Test("A key store without the feed works as before: its own shreds are refused, another key ring's only once the key leaves the cache")
    func storeWithoutFeed() async throws {
        let base = InMemoryKeyStore()
        let (reader, writer) = try await Self.pair(FeedlessStore(base: base))
        reader.keyChangeRefreshInterval = .zero
        try await reader.refreshKeyChanges()   // nothing to read: no error
        _ = try await writer.shred(scope: "alice")
        // The documented weaker guarantee (SECURITY.md §8): the cached key is still served here …
        #expect(try await reader.readKey(scope: "alice", version: 1).version == 1)
        // … until it is invalidated (or evicted, or the process restarts).
        reader.invalidate(scope: "alice")
        let e = await #expect(throws: KeyManagementError.self) { try await reader.readKey(scope: "alice", version: 1) }
        #expect(e?.code == .shredded)
        await #expect(throws: KeyManagementError.self) { try await writer.readKey(scope: "alice", version: 1) }
    }

    @Test("The in-memory feed keeps the newest entries, reports a gap for a position pruned past, and rejects nothing it recorded")
    func inMemoryFeedPages() async throws {
        let store = InMemoryKeyStore()
        #expect(try await store.keyChangeMark() == 0)
        store.recordKeyChange(scope: "a", kind: .retire)
        store.recordKeyChange(scope: "b", kind: .shred)
        let page = try await store.keyChanges(after: 0, limit: 1)
        #expect(page.changes.map(\.scope) == ["a"] && !page.gap)
        #expect(try await store.keyChanges(after: 1, limit: 10).changes.map(\.kind) == [.shred])
        #expect(try await store.keyChanges(after: 2, limit: 10) == KeyChangePage(changes: [], gap: false))
        for i in 0..<Int(KeyChange.retained) { store.recordKeyChange(scope: "s\(i)", kind: .rotate) }
        #expect(try await store.keyChanges(after: 0, limit: 10).gap)
        #expect(try await store.keyChanges(after: 2, limit: 10).gap == false)
        #expect(try await store.keyChangeMark() == 2 + KeyChange.retained)
    }
}

@Suite("Keyring: retired versions through the key-change feed")
struct RetireThroughFeedTests {
    @Test("Versions retired through another key ring are no longer served from this one's cache")
    func retireElsewhereIsSeen() async throws {
        let (reader, writer) = try await KeyChangeFeedTests.pair(InMemoryKeyStore())
        reader.keyChangeRefreshInterval = .zero
        #expect(try await writer.rotate(scope: "alice") == 2)
        #expect(try await writer.retire(scope: "alice", below: 2) == [1])
        let e = await #expect(throws: KeyManagementError.self) { try await reader.readKey(scope: "alice", version: 1) }
        #expect(e?.code == .keyRetired)
        #expect(try await reader.readKey(scope: "alice", version: 2).version == 2)
    }
}

@Suite("Keyring: encryption limit")
struct EncryptionLimitTests {
    /// Seals `n` records one at a time through `keyring` (persisting a minted key), returning each record's version.
    static func seal(_ n: Int, _ scope: String, _ keyring: Keyring) async throws -> [UInt32] {
        var out: [UInt32] = []
        for _ in 0..<n {
            let w = try await keyring.writeKey(for: scope, encryptions: 1)
            if w.pending != nil { try await keyring.persist([w]) }
            out.append(w.key.version)
        }
        return out
    }

    @Test("Two key rings on one store, reserving one at a time under a limit of 5, never seal more than 5 records under one version between them")
    func twoKeyringsShareTheLimit() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let a = try await Keyring.open(store: store, masterKeys: [master])
        let b = try await Keyring.open(store: store, masterKeys: [master])
        for k in [a, b] {
            k.encryptionLimit = 5
            k.encryptionBlock = 1
            k.keyChangeRefreshInterval = .zero
        }
        var versions: [UInt32] = []
        for round in 0..<12 { versions += try await Self.seal(round % 3 + 1, "alice", round % 2 == 0 ? a : b) }
        let perVersion = Dictionary(grouping: versions, by: { $0 }).mapValues(\.count)
        #expect(perVersion.values.allSatisfy { $0 <= 5 }, "\(perVersion)")
        #expect(perVersion.count >= 5)
        let stored = try await store.reservedEncryptions(scope: "alice")
        #expect(stored.values.allSatisfy { $0 <= 5 })
    }

    @Test("A store that counts nothing: the limit holds per key ring (rotation after 5), and a batch above the limit is refused naming the scope")
    func storeWithoutCounts() async throws {
        let k = try await Keyring.open(store: FeedlessStore(base: InMemoryKeyStore()), masterKeys: [try MasterKey.generate()])
        k.encryptionLimit = 5
        #expect(try await Self.seal(7, "bob", k) == [1, 1, 1, 1, 1, 2, 2])
        #expect(try await k.encryptionCounts(scope: "bob")[1] == nil, "v1 used only its first block")
        let e = await #expect(throws: KeyManagementError.self) { try await k.writeKey(for: "bob", encryptions: 6) }
        #expect(e?.code == .limitExceeded && e?.scope == "bob")
        #expect(k.encryptionLimit == 5)
        k.encryptionLimit = 0
        #expect(k.encryptionLimit == 1)
        k.encryptionLimit = .max
        #expect(k.encryptionLimit == KeyUsage.maxLimit)
    }
}
