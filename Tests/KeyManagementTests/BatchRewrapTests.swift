import Foundation
import KeyManagement
import Synchronization
import Testing

/// Forwards to an ``InMemoryKeyStore`` and records how master-key rotation rewraps: batches
/// (``KeyStore/rewrapDataKeys(_:)``) and single keys. It can stop like a killed process: after
/// `batchesBeforeKill` batches, or after `singlesBeforeKill` single rewraps, every later rewrap
/// throws ``Killed`` without touching the store.
final class RewrapRecordingKeyStore: KeyStore {
    struct Killed: Error {}

    let inner = InMemoryKeyStore()
    /// Whether this store overrides rewrapDataKeys (else the protocol's default loops over rewrapDataKey).
    let batches: Bool
    let batchesBeforeKill: Int?
    let singlesBeforeKill: Int?
    /// A count to report instead of the real one, as a store that miscounts would.
    let reportedCount: Int?
    private let log = Mutex<(batchSizes: [Int], singles: Int)>(([], 0))

    init(batches: Bool = true, batchesBeforeKill: Int? = nil, singlesBeforeKill: Int? = nil, reportedCount: Int? = nil) {
        self.batches = batches
        self.batchesBeforeKill = batchesBeforeKill
        self.singlesBeforeKill = singlesBeforeKill
        self.reportedCount = reportedCount
    }

    var batchSizes: [Int] { log.withLock { $0.batchSizes } }
    var singles: Int { log.withLock { $0.singles } }

    func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        guard batches else {
            // The protocol's default, reached the way a store without an override reaches it.
            var replaced = 0
            for r in rewraps where try await rewrapDataKey(r.key, previousKEKID: r.previousKEKID) { replaced += 1 }
            return replaced
        }
        let n = log.withLock { l -> Int in
            l.batchSizes.append(rewraps.count)
            return l.batchSizes.count
        }
        if let limit = batchesBeforeKill, n > limit { throw Killed() }
        let replaced = try await inner.rewrapDataKeys(rewraps)
        return reportedCount ?? replaced
    }

    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        let n = log.withLock { l -> Int in
            l.singles += 1
            return l.singles
        }
        if let limit = singlesBeforeKill, n > limit { throw Killed() }
        return try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await inner.dataKeys(scope: scope) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: cursor, limit: limit)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
}

/// A key store written before ``KeyStore/rewrapDataKeys(_:)`` existed: it has only the single
/// rewrap, so it gets the protocol's default.
final class SingleRewrapKeyStore: KeyStore {
    let inner = InMemoryKeyStore()
    let singles = Mutex(0)

    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        singles.withLock { $0 += 1 }
        return try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await inner.dataKeys(scope: scope) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: cursor, limit: limit)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
}

@Suite("Master-key rotation in batches")
struct BatchRewrapTests {
    /// Ten scopes, every third with a second version: 14 keys.
    static let scopes = (0..<10).map { "scope-\($0)" }

    /// Creates the keys of ``scopes`` under `master`; returns every key by scope and version.
    static func populate(_ store: any KeyStore, master: MasterKey) async throws -> [String: [DataKey]] {
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        var keys: [String: [DataKey]] = [:]
        for (i, scope) in scopes.enumerated() {
            keys[scope] = [try await KeyringTests.create(scope, in: keyring)]
            if i % 3 == 0 {
                _ = try await keyring.rotate(scope: scope)
                keys[scope]!.append(try await keyring.readKey(scope: scope, version: 2))
            }
        }
        return keys
    }

    /// Checks that a key ring holding only `master` opens every key of `originals` with the same bytes.
    static func expectAllOpen(_ store: any KeyStore, with master: MasterKey, _ originals: [String: [DataKey]],
                              sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        for (scope, keys) in originals {
            for key in keys {
                let read = try await keyring.readKey(scope: scope, version: key.version)
                #expect(read.material.constantTimeEquals(key.material), "\(scope) v\(key.version)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test("rotateMasterKey rewraps each page with one rewrapDataKeys call, never key by key", arguments: [1, 3, 5, 14, 500])
    func onePagePerCall(pageSize: Int) async throws {
        let store = RewrapRecordingKeyStore()
        let old = try MasterKey.generate(), new = try MasterKey.generate()
        let originals = try await Self.populate(store, master: old)
        let total = originals.values.map(\.count).reduce(0, +)
        #expect(total == 14)
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: pageSize)
        #expect(progress.rewrapped == total)
        #expect(store.singles == 0)
        // Full pages, then the rest; the second pass finds every key current and rewraps nothing.
        var expected = Array(repeating: pageSize, count: total / pageSize)
        if total % pageSize != 0 { expected.append(total % pageSize) }
        #expect(store.batchSizes == expected)
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == new.id })
        try await Self.expectAllOpen(store, with: new, originals)
    }

    @Test("A key store with only rewrapDataKey still rotates, through the default rewrapDataKeys")
    func defaultImplementationLoops() async throws {
        let store = SingleRewrapKeyStore()
        let old = try MasterKey.generate(), new = try MasterKey.generate()
        let originals = try await Self.populate(store, master: old)
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: 4)
        #expect(progress.rewrapped == 14)
        #expect(store.singles.withLock { $0 } == 14)
        try await Self.expectAllOpen(store, with: new, originals)
        #expect(try await store.masterKeyChecks().map(\.kekID) == [new.id])
    }

    @Test("rewrapDataKeys replaces only versions still under their previous master key, and counts them",
          arguments: ["in-memory", "default"])
    func rewrapConditions(_ kind: String) async throws {
        let store: any KeyStore = kind == "in-memory" ? InMemoryKeyStore() : SingleRewrapKeyStore()
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        func key(_ scope: String, _ version: UInt32, _ kek: String, _ byte: UInt8) -> WrappedDataKey {
            WrappedDataKey(scope: scope, version: version, kekID: kek, wrapped: Array(repeating: byte, count: 60), createdAt: date)
        }
        for (scope, version) in [("a", UInt32(1)), ("a", 2), ("b", 1), (Spellings.composed, 1), (Spellings.decomposed, 1)] {
            try await store.insertDataKey(key(scope, version, "old", 1))
        }
        try await store.insertDataKey(key("c", 1, "other", 1))
        let replaced = try await store.rewrapDataKeys([
            DataKeyRewrap(key("a", 1, "new", 2), previousKEKID: "old"),            // replaced
            DataKeyRewrap(key("a", 2, "new", 2), previousKEKID: "other"),          // not: wrapped by "old"
            DataKeyRewrap(key("b", 1, "new", 2), previousKEKID: "old"),            // replaced
            DataKeyRewrap(key("b", 9, "new", 2), previousKEKID: "old"),            // not: no such version
            DataKeyRewrap(key("missing", 1, "new", 2), previousKEKID: "old"),      // not: no such scope
            DataKeyRewrap(key(Spellings.composed, 1, "new", 2), previousKEKID: "old"), // replaced; the other spelling is not
            DataKeyRewrap(key("c", 1, "new", 2), previousKEKID: "other"),          // replaced
        ])
        #expect(replaced == 4)
        let rows = try await store.dataKeys(after: nil, limit: 100)
        func row(_ scope: String, _ version: UInt32) -> WrappedDataKey? {
            rows.first { ExactScope.same($0.scope, scope) && $0.version == version }
        }
        #expect(row("a", 1) == key("a", 1, "new", 2))
        #expect(row("a", 2) == key("a", 2, "old", 1))
        #expect(row("b", 1) == key("b", 1, "new", 2))
        #expect(row(Spellings.composed, 1) == key(Spellings.composed, 1, "new", 2))
        #expect(row(Spellings.decomposed, 1) == key(Spellings.decomposed, 1, "old", 1))
        #expect(row("c", 1) == key("c", 1, "new", 2))
        #expect(rows.count == 6)
        #expect(try await store.rewrapDataKeys([]) == 0)
    }

    @Test("A batch that names a version twice is refused with invalidArgument and changes nothing; two spellings are two versions",
          arguments: ["in-memory", "default"])
    func repeatedVersionIsRefused(_ kind: String) async throws {
        let store: any KeyStore = kind == "in-memory" ? InMemoryKeyStore() : SingleRewrapKeyStore()
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        func key(_ scope: String, _ kek: String, _ byte: UInt8) -> WrappedDataKey {
            WrappedDataKey(scope: scope, version: 1, kekID: kek, wrapped: Array(repeating: byte, count: 60), createdAt: date)
        }
        for scope in ["a", "b", Spellings.composed, Spellings.decomposed] { try await store.insertDataKey(key(scope, "old", 1)) }
        let before = try await store.dataKeys(after: nil, limit: 100)
        let error = await #expect(throws: KeyManagementError.self) {
            try await store.rewrapDataKeys([DataKeyRewrap(key("a", "new", 2), previousKEKID: "old"),
                                            DataKeyRewrap(key("b", "new", 2), previousKEKID: "old"),
                                            DataKeyRewrap(key("b", "newer", 3), previousKEKID: "new")])
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.scope == "b")
        #expect(error?.keyVersion == 1)
        #expect(try await store.dataKeys(after: nil, limit: 100) == before)
        #expect(try await store.rewrapDataKeys([DataKeyRewrap(key(Spellings.composed, "new", 2), previousKEKID: "old"),
                                                DataKeyRewrap(key(Spellings.decomposed, "new", 2), previousKEKID: "old")]) == 2)
    }

    @Test("Killed after a page, a rotation leaves every key under the old or the new key; a rerun finishes it",
          arguments: [(batches: true, kill: 2), (batches: true, kill: 0), (batches: false, kill: 5), (batches: false, kill: 0)])
    func killAndResume(_ setup: (batches: Bool, kill: Int)) async throws {
        let store = setup.batches ? RewrapRecordingKeyStore(batchesBeforeKill: setup.kill)
                                  : RewrapRecordingKeyStore(batches: false, singlesBeforeKill: setup.kill)
        let old = try MasterKey.generate(), new = try MasterKey.generate()
        let originals = try await Self.populate(store, master: old)
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        await #expect(throws: RewrapRecordingKeyStore.Killed.self) {
            try await keyring.rotateMasterKey(to: new, pageSize: 4)
        }
        // Pages of 4 committed before the kill (with batches), or single keys (without).
        let rows = try await store.dataKeys(after: nil, limit: 100)
        #expect(rows.count == 14)
        #expect(rows.allSatisfy { $0.kekID == old.id || $0.kekID == new.id })
        #expect(rows.filter { $0.kekID == new.id }.count == (setup.batches ? 4 * setup.kill : setup.kill))
        // Nothing was retired: both keys open the store, and together they open every key.
        #expect(Set(try await store.masterKeyChecks().map(\.kekID)) == [old.id, new.id])
        let both = try await Keyring.open(store: store, masterKeys: [old, new])
        for (scope, keys) in originals {
            for key in keys {
                #expect(try await both.readKey(scope: scope, version: key.version).material.constantTimeEquals(key.material))
            }
        }

        // The rerun, as after a restart: a fresh store object over the same rows, both keys loaded.
        let resumed = try await Keyring.open(store: store.inner, masterKeys: [old, new])
        let progress = try await resumed.rotateMasterKey(to: new, pageSize: 4)
        #expect(progress.rewrapped == 14 - (setup.batches ? 4 * setup.kill : setup.kill))
        #expect(progress.alreadyCurrent == (setup.batches ? 4 * setup.kill : setup.kill))
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == new.id })
        #expect(try await store.masterKeyChecks().map(\.kekID) == [new.id])
        try await Self.expectAllOpen(store, with: new, originals)
        let refused = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [old]) }
        #expect(refused?.code == .wrongMasterKey)
    }

    @Test("A store that reports more rewraps than it was given, or fewer than none, stops the rotation with storeFailure",
          arguments: [15, 5, -1, Int.max, Int.min])
    func miscountingStoreStops(_ reported: Int) async throws {
        let store = RewrapRecordingKeyStore(reportedCount: reported)
        let old = try MasterKey.generate()
        _ = try await Self.populate(store, master: old)
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.rotateMasterKey(to: MasterKey.generate(), pageSize: 4)
        }
        #expect(error?.code == .storeFailure)
        // The first page: scope-0 v1, scope-0 v2, scope-1 v1, scope-2 v1.
        #expect(error?.scope == "scope-2")
        #expect(error?.keyVersion == 1)
        #expect(error?.message.contains("\(reported)") == true)
        #expect(try await store.masterKeyChecks().contains { $0.kekID == old.id })
    }
}
