import Foundation
import KeyManagement
import Synchronization
import Testing

/// A key store that forwards to an ``InMemoryKeyStore`` but pages or rewraps the way a corrupt
/// or hostile store might. It gives up after `callLimit` pages, so a keyring that would loop
/// forever fails the test with ``LoopedForever`` instead of hanging it.
final class MisbehavingKeyStore: KeyStore {
    enum Paging: Sendable {
        /// Pages as the protocol says.
        case honest
        /// Returns the first page whatever the cursor.
        case ignoresCursor
        /// Pages honestly twice, then starts again from the first page.
        case restartsAfterTwoPages
        /// Pages honestly, but in its own order (case-insensitive, like a database collation),
        /// not in byte order.
        case caseInsensitiveOrder
    }

    struct LoopedForever: Error {}

    let inner = InMemoryKeyStore()
    let paging: Paging
    let keepsRewraps: Bool
    let callLimit = 10_000
    private let calls = Mutex(0)

    init(paging: Paging = .honest, keepsRewraps: Bool = true) {
        self.paging = paging
        self.keepsRewraps = keepsRewraps
    }

    /// How many pages were asked for.
    var pageCalls: Int { calls.withLock { $0 } }

    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        let n = calls.withLock { c -> Int in
            c += 1
            return c
        }
        guard n <= callLimit else { throw LoopedForever() }
        switch paging {
        case .honest:
            return try await inner.dataKeys(after: cursor, limit: limit)
        case .ignoresCursor:
            return try await inner.dataKeys(after: nil, limit: limit)
        case .restartsAfterTwoPages:
            return try await inner.dataKeys(after: n % 3 == 0 ? nil : cursor, limit: limit)
        case .caseInsensitiveOrder:
            func key(_ k: WrappedDataKey) -> (String, [UInt8], UInt32) { (k.scope.lowercased(), Array(k.scope.utf8), k.version) }
            func before(_ a: (String, [UInt8], UInt32), _ b: (String, [UInt8], UInt32)) -> Bool {
                if a.0 != b.0 { return Array(a.0.utf8).lexicographicallyPrecedes(Array(b.0.utf8)) }
                if a.1 != b.1 { return a.1.lexicographicallyPrecedes(b.1) }
                return a.2 < b.2
            }
            let all = try await inner.dataKeys(after: nil, limit: Int.max).sorted { before(key($0), key($1)) }
            guard let cursor else { return Array(all.prefix(limit)) }
            let c = (cursor.scope.lowercased(), Array(cursor.scope.utf8), cursor.version)
            return Array(all.filter { before(c, key($0)) }.prefix(limit))
        }
    }

    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        guard keepsRewraps else { return true }   // claims success, keeps the old wrapping
        return try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await inner.dataKeys(scope: scope) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
}

@Suite("Keyring against corrupt or hostile key stores")
struct KeyringRobustnessTests {
    /// A store with a key for each of `scopes`, opened under a fresh master key.
    static func populated(_ store: MisbehavingKeyStore, scopes: [String]) async throws -> (Keyring, MasterKey) {
        let old = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        for scope in scopes { try await keyring.persist([keyring.writeKey(for: scope)]) }
        return (keyring, old)
    }

    static let scopes = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]

    @Test("rotateMasterKey stops with storeFailure, naming the scope, when the store returns the same page again")
    func pagingThatIgnoresTheCursorStops() async throws {
        let store = MisbehavingKeyStore(paging: .ignoresCursor)
        let (keyring, old) = try await Self.populated(store, scopes: Self.scopes)
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.rotateMasterKey(to: MasterKey.generate(), pageSize: 2)
        }
        #expect(error?.code == .storeFailure)
        #expect(error?.scope == "s2")
        #expect(error?.keyVersion == 1)
        #expect(store.pageCalls == 2)
        // Nothing was retired: the old master key still opens the store.
        #expect(try await store.masterKeyChecks().contains { $0.kekID == old.id })
        _ = try await Keyring.open(store: store, masterKeys: [old])
    }

    @Test("rotateMasterKey stops with storeFailure when the store's paging goes round in a circle")
    func pagingInACircleStops() async throws {
        let store = MisbehavingKeyStore(paging: .restartsAfterTwoPages)
        let (keyring, old) = try await Self.populated(store, scopes: Self.scopes)
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.rotateMasterKey(to: MasterKey.generate(), pageSize: 2)
        }
        #expect(error?.code == .storeFailure)
        #expect(error?.scope == "s2")
        #expect(store.pageCalls == 3)
        #expect(try await store.masterKeyChecks().contains { $0.kekID == old.id })
    }

    @Test("rotateMasterKey stops with storeFailure when the store reports rewraps it does not keep")
    func rewrapsThatAreNotKeptStop() async throws {
        let store = MisbehavingKeyStore(keepsRewraps: false)
        let (keyring, old) = try await Self.populated(store, scopes: Self.scopes)
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.rotateMasterKey(to: MasterKey.generate(), pageSize: 3)
        }
        #expect(error?.code == .storeFailure)
        #expect(error.map { Self.scopes.contains($0.scope ?? "") } == true)
        // Every pass reads 3 pages of keys and one empty page.
        #expect(store.pageCalls == Keyring.maxRotationPasses * 4)
        #expect(try await store.masterKeyChecks().contains { $0.kekID == old.id })
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == old.id })
    }

    @Test("rotateMasterKey accepts a store whose order between scopes is not byte order")
    func collationOrderIsNotMistakenForNoProgress() async throws {
        // Case-insensitively: a, B, c, D. In bytes: B, D, a, c.
        let store = MisbehavingKeyStore(paging: .caseInsensitiveOrder)
        let scopes = ["a", "B", "c", "D"]
        let (keyring, _) = try await Self.populated(store, scopes: scopes)
        for scope in scopes { _ = try await keyring.rotate(scope: scope) }
        let new = try MasterKey.generate()
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: 1)
        #expect(progress.rewrapped == 8)
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == new.id })
        #expect(try await store.masterKeyChecks().map(\.kekID) == [new.id])
    }

    @Test("A rotation against an honest store takes two passes")
    func honestRotationTakesTwoPasses() async throws {
        let store = MisbehavingKeyStore()
        let (keyring, _) = try await Self.populated(store, scopes: Self.scopes)
        let before = store.pageCalls
        let progress = try await keyring.rotateMasterKey(to: MasterKey.generate(), pageSize: 3)
        #expect(progress.rewrapped == Self.scopes.count)
        #expect(store.pageCalls - before == 2 * 4)
    }

    // MARK: Data-key versions

    @Test("Rotating a scope at data-key version 2^32 - 1 is limitExceeded and stores nothing")
    func rotatingPastTheLastVersionIsRefused() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        // A store holding such a version (its wrapping is never opened by rotate).
        let last = WrappedDataKey(scope: "worn-out", version: .max, kekID: master.id,
                                  wrapped: Array(repeating: 7, count: 60), createdAt: Date(timeIntervalSince1970: 0))
        try await store.insertDataKey(last)

        let error = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: "worn-out") }
        #expect(error?.code == .limitExceeded)
        #expect(error?.scope == "worn-out")
        #expect(error?.keyVersion == .max)
        #expect(try await store.dataKeys(scope: "worn-out") == [last])
    }

    @Test("Rotating from version 2^32 - 2 creates version 2^32 - 1, the last one")
    func rotatingToTheLastVersionWorks() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        try await store.insertDataKey(WrappedDataKey(scope: "nearly", version: .max - 1, kekID: master.id,
                                                     wrapped: Array(repeating: 7, count: 60), createdAt: Date()))
        #expect(try await keyring.rotate(scope: "nearly") == .max)
        #expect(try await keyring.readKey(scope: "nearly", version: .max).version == .max)
        let again = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: "nearly") }
        #expect(again?.code == .limitExceeded)
    }
}
