import Foundation
import KeyManagement
import Synchronization
import Testing

/// Scopes whose spellings are equal as Swift `String`s (canonical equivalence) but differ in
/// their UTF-8 bytes: the stores treat them as two scopes, so the key ring must too.
enum Spellings {
    /// "José" with é as one scalar (U+00E9, NFC).
    static let composed = "Jos\u{E9}"
    /// "José" with e + U+0301 COMBINING ACUTE ACCENT (NFD).
    static let decomposed = "Jose\u{301}"
    /// "K" (ASCII).
    static let ascii = "subject-K"
    /// U+212A KELVIN SIGN, which normalises to "K".
    static let kelvin = "subject-\u{212A}"

    static let pairs: [(String, String)] = [(composed, decomposed), (decomposed, composed), (ascii, kelvin), (kelvin, ascii)]
}

@Suite("Scopes told apart by their UTF-8 bytes")
struct ScopeSpellingTests {
    @Test("The test spellings are equal Strings with different bytes (else these tests prove nothing)")
    func spellingsAreCanonicallyEqual() {
        #expect(Spellings.composed == Spellings.decomposed)
        #expect(Array(Spellings.composed.utf8) != Array(Spellings.decomposed.utf8))
        #expect(Spellings.ascii == Spellings.kelvin)
        #expect(Array(Spellings.ascii.utf8) != Array(Spellings.kelvin.utf8))
    }

    @Test("ExactScope: equal, hashed and ordered by bytes", arguments: Spellings.pairs.map { [$0.0, $0.1] })
    func exactScope(_ pair: [String]) {
        let a = ExactScope(pair[0]), b = ExactScope(pair[1])
        #expect(a != b)
        #expect(Set([a, b]).count == 2)
        #expect((a < b) == Array(pair[0].utf8).lexicographicallyPrecedes(Array(pair[1].utf8)))
        #expect((a < b) != (b < a))
        // The same bytes reached another way (a String decoded from bytes, a substring copy).
        let again = ExactScope(String(decoding: Array(pair[0].utf8), as: UTF8.self))
        #expect(again == a)
        #expect(again.hashValue == a.hashValue)
        let padded = "xx" + pair[0]
        let sliced = ExactScope(String(padded.dropFirst(2)))
        #expect(sliced == a)
        #expect(sliced.hashValue == a.hashValue)
        #expect(!ExactScope.same(pair[0], pair[1]))
        #expect(ExactScope.same(pair[0], String(decoding: Array(pair[0].utf8), as: UTF8.self)))
    }

    @Test("ExactScope orders by bytes, a prefix first, like SQLite's BINARY collation")
    func exactScopeOrder() {
        let scopes = ["b", "a", "ab", "B", "\u{E9}", "e\u{301}", "\u{212A}", "K", "a\u{0}"].map(ExactScope.init)
        let sorted = scopes.sorted().map(\.scope)
        let byBytes = scopes.map(\.scope).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        #expect(sorted == byBytes)
    }

    // MARK: The key ring

    @Test("Two spellings get two keys; each reads back its own", arguments: Spellings.pairs.map { [$0.0, $0.1] })
    func twoSpellingsTwoKeys(_ pair: [String]) async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let first = try await KeyringTests.create(pair[0], in: keyring)
        let w = try await keyring.writeKey(for: pair[1])
        #expect(w.pending != nil, "the second spelling must get its own new key, not the first one's")
        #expect(!w.key.material.constantTimeEquals(first.material))
        #expect(Array(w.key.scope.utf8) == Array(pair[1].utf8))
        try await keyring.persist([w])

        // From the cache, and from the store through a fresh key ring.
        let reopened = try await Keyring.open(store: store, masterKeys: [master])
        for ring in [keyring, reopened] {
            #expect(try await ring.readKey(scope: pair[0], version: 1).material.constantTimeEquals(first.material))
            #expect(try await ring.readKey(scope: pair[1], version: 1).material.constantTimeEquals(w.key.material))
            #expect(try await ring.writeKey(for: pair[0]).key.material.constantTimeEquals(first.material))
            #expect(try await ring.writeKey(for: pair[1]).key.material.constantTimeEquals(w.key.material))
        }
        #expect(try await store.dataKeys(scope: pair[0]).count == 1)
        #expect(try await store.dataKeys(scope: pair[1]).count == 1)
    }

    @Test("A key minted but not persisted for one spelling is not handed to the other")
    func mintedKeysAreNotShared() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let a = try await keyring.writeKey(for: Spellings.composed, likelyNew: true)
        let b = try await keyring.writeKey(for: Spellings.decomposed, likelyNew: true)
        let c = try await keyring.writeKey(for: Spellings.decomposed)
        #expect(a.pending != nil && b.pending != nil)
        #expect(!a.key.material.constantTimeEquals(b.key.material))
        #expect(c.key.material.constantTimeEquals(b.key.material), "the same spelling reuses its own minted key")
        // Persisting both in one call keeps each under its own scope.
        try await keyring.persist([a, b])
        #expect(try await keyring.readKey(scope: Spellings.composed, version: 1).material.constantTimeEquals(a.key.material))
        #expect(try await keyring.readKey(scope: Spellings.decomposed, version: 1).material.constantTimeEquals(b.key.material))
    }

    @Test("Shredding one spelling leaves the other readable and writable", arguments: Spellings.pairs.map { [$0.0, $0.1] })
    func shreddingOneSpellingSparesTheOther(_ pair: [String]) async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        _ = try await KeyringTests.create(pair[0], in: keyring)
        let kept = try await KeyringTests.create(pair[1], in: keyring)
        // Both cached, then one shredded.
        _ = try await keyring.readKey(scope: pair[0], version: 1)
        let tombstone = try await keyring.shred(scope: pair[0], at: KeyringTests.shredTime)
        #expect(Array(tombstone.scope.utf8) == Array(pair[0].utf8))

        for ring in [keyring, try await Keyring.open(store: store, masterKeys: [master])] {
            #expect(try await ring.readKey(scope: pair[1], version: 1).material.constantTimeEquals(kept.material))
            let w = try await ring.writeKey(for: pair[1])
            #expect(w.pending == nil)
            #expect(w.key.material.constantTimeEquals(kept.material))
            let read = await #expect(throws: KeyManagementError.self) { try await ring.readKey(scope: pair[0], version: 1) }
            #expect(read?.code == .shredded)
            let write = await #expect(throws: KeyManagementError.self) { try await ring.writeKey(for: pair[0]) }
            #expect(write?.code == .shredded)
        }
        #expect(try await keyring.rotate(scope: pair[1]) == 2)
        #expect(try await store.tombstone(scope: pair[1]) == nil)
        #expect(try await store.tombstones().count == 1)
        // The shredded spelling's key ring state did not leak into a likely-new write of the other.
        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        _ = try await fresh.shred(scope: pair[1])
        let refused = await #expect(throws: KeyManagementError.self) { try await fresh.writeKey(for: pair[1], likelyNew: true) }
        #expect(refused?.code == .shredded)
    }

    @Test("A master-key rotation pages past both spellings and rewraps both (InMemoryKeyStore pages by bytes)",
          arguments: [1, 2, 500])
    func rotationRewrapsBothSpellings(pageSize: Int) async throws {
        let store = InMemoryKeyStore()
        let old = try MasterKey.generate(), new = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        var originals: [(String, DataKey)] = []
        for scope in [Spellings.composed, Spellings.decomposed, Spellings.ascii, Spellings.kelvin, "a", "z"] {
            originals.append((scope, try await KeyringTests.create(scope, in: keyring)))
        }
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: pageSize)
        #expect(progress.rewrapped == originals.count)
        let all = try await store.dataKeys(after: nil, limit: 100)
        #expect(all.count == originals.count)
        #expect(all.allSatisfy { $0.kekID == new.id })
        // Byte order, as SQLite pages.
        #expect(all.map { Array($0.scope.utf8) } == all.map { Array($0.scope.utf8) }.sorted { $0.lexicographicallyPrecedes($1) })
        let reopened = try await Keyring.open(store: store, masterKeys: [new])
        for (scope, key) in originals {
            #expect(try await reopened.readKey(scope: scope, version: 1).material.constantTimeEquals(key.material))
        }
    }

    // MARK: A key store that mixes spellings up

    @Test("writeKey and rotate refuse, with storeFailure, a store that answers one spelling with the other's keys")
    func mixingStoreIsRefused() async throws {
        let store = StringKeyedKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let first = try await KeyringTests.create(Spellings.composed, in: keyring)
        keyring.invalidate(scope: Spellings.composed)
        let write = await #expect(throws: KeyManagementError.self) { try await keyring.writeKey(for: Spellings.decomposed) }
        #expect(write?.code == .storeFailure)
        #expect(write.map { Array(($0.scope ?? "").utf8) } == Array(Spellings.decomposed.utf8))
        #expect(write?.message.contains("Jose\\u{301}") == true)
        #expect(write?.message.contains("Jos\\u{E9}") == true)
        let rotate = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: Spellings.decomposed) }
        #expect(rotate?.code == .storeFailure)
        // Nothing was written for the second spelling; the first still reads.
        #expect(try await store.inner.dataKeys(scope: Spellings.decomposed).isEmpty)
        #expect(try await keyring.readKey(scope: Spellings.composed, version: 1).material.constantTimeEquals(first.material))
    }

    @Test("readKey asks the store's exact look-up again when keys read ahead mix the spellings up")
    func mixedReadAheadFallsBackToTheExactLookUp() async throws {
        let store = MixedReadAheadKeyStore()
        let master = try MasterKey.generate()
        let writer = try await Keyring.open(store: store, masterKeys: [master])
        let a = try await KeyringTests.create(Spellings.composed, in: writer)
        let b = try await KeyringTests.create(Spellings.decomposed, in: writer)
        let reader = try await Keyring.open(store: store, masterKeys: [master])
        store.exactLookUps.withLock { $0 = 0 }
        // The read-ahead answer holds both spellings' keys, the other one's first.
        #expect(try await reader.readKey(scope: Spellings.decomposed, version: 1).material.constantTimeEquals(b.material))
        #expect(try await reader.readKey(scope: Spellings.composed, version: 1).material.constantTimeEquals(a.material))
        #expect(store.exactLookUps.withLock { $0 } == 2)
    }
}

/// A key store keyed by `String` (as ``InMemoryKeyStore`` was): canonically equivalent
/// spellings share one entry, so a look-up of one answers with the other's keys.
final class StringKeyedKeyStore: KeyStore {
    let inner = InMemoryKeyStore()

    func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: nil, limit: .max).filter { $0.scope == scope }
    }

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: cursor, limit: limit)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
}

/// A key store whose exact look-ups are right but whose read-ahead answer (``KeyStore/dataKeys(scope:reading:)``)
/// comes from a cache keyed by `String`: every spelling's keys, the other spellings' first.
final class MixedReadAheadKeyStore: KeyStore {
    let inner = InMemoryKeyStore()
    let exactLookUps = Mutex(0)

    func dataKeys(scope: String, reading version: UInt32) async throws -> [WrappedDataKey] {
        let all = try await inner.dataKeys(after: nil, limit: .max).filter { $0.scope == scope }
        return all.filter { !ExactScope.same($0.scope, scope) } + all.filter { ExactScope.same($0.scope, scope) }
    }

    func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        exactLookUps.withLock { $0 += 1 }
        return try await inner.dataKeys(scope: scope)
    }

    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: cursor, limit: limit)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
}
