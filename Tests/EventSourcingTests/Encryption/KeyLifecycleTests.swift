import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Forwards to a store's key store; every ``KeyStore/rewrapDataKeys(_:)`` after the first
/// `batchesBeforeKill` throws ``Killed`` without reaching the store, as if the process died there.
final class KillingKeyStore: KeyStore {
    struct Killed: Error {}

    let inner: any KeyStore
    let batchesBeforeKill: Int
    private let batches = Mutex(0)

    init(_ inner: any KeyStore, batchesBeforeKill: Int) {
        self.inner = inner
        self.batchesBeforeKill = batchesBeforeKill
    }

    func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        let n = batches.withLock { b -> Int in
            b += 1
            return b
        }
        guard n <= batchesBeforeKill else { throw Killed() }
        return try await inner.rewrapDataKeys(rewraps)
    }

    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        Issue.record("the key ring rewrapped a single key instead of a page")
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

/// Key scopes told apart by their bytes, and master-key rotation in pages, over every store.
@Suite("Key lifecycle over every store")
struct KeyLifecycleTests {
    /// "José" with é (U+00E9) and with e + U+0301: equal Swift Strings, different bytes.
    static let composed = "Jos\u{E9}", decomposed = "Jose\u{301}"

    /// A fresh encrypted application over `factory`'s store (an in-memory key store for the
    /// in-memory recorder), opened with `master`.
    private static func app(_ store: RecorderFactory.Store, keyStore: any KeyStore, master: [MasterKey]) async throws -> Application {
        let keyring = try await Keyring.open(store: keyStore, masterKeys: master)
        return Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring))
    }

    // MARK: Scopes by bytes

    @Test("Two spellings of a data subject saved together get two keys; shredding one leaves the other readable",
          arguments: RecorderFactory.all)
    func twoSpellingsTwoSubjects(_ factory: RecorderFactory) async throws {
        #expect(Self.composed == Self.decomposed && Array(Self.composed.utf8) != Array(Self.decomposed.utf8))
        try await factory.withFreshStore { store in
            let keyStore = store.keyStore ?? InMemoryKeyStore()
            let master = try MasterKey.generate()
            let app = try await Self.app(store, keyStore: keyStore, master: [master])
            var a = try AggregateRoot<Customer>(.registered(personID: Self.composed, name: "A", email: "a@example.org"))
            var b = try AggregateRoot<Customer>(.registered(personID: Self.decomposed, name: "B", email: "b@example.org"))
            try await app.save(&a, &b)   // one save: both new subjects' keys are committed with it

            let keysA = try await keyStore.dataKeys(scope: Self.composed)
            let keysB = try await keyStore.dataKeys(scope: Self.decomposed)
            #expect(keysA.count == 1 && keysB.count == 1)
            #expect(keysA.map { Array($0.scope.utf8) } == [Array(Self.composed.utf8)])
            #expect(keysB.map { Array($0.scope.utf8) } == [Array(Self.decomposed.utf8)])
            // Each record's header names its own spelling.
            let stateA = try #require(try await store.recorder.selectEvents(originatorID: a.id).first?.state)
            let stateB = try #require(try await store.recorder.selectEvents(originatorID: b.id).first?.state)
            #expect(StateHeader.peekKeyScope(stateA).map { Array($0.utf8) } == Array(Self.composed.utf8))
            #expect(StateHeader.peekKeyScope(stateB).map { Array($0.utf8) } == Array(Self.decomposed.utf8))

            // A fresh application (empty caches) reads both.
            let reader = try await Self.app(store, keyStore: keyStore, master: [master])
            #expect(try await reader.repository.get(Customer.self, id: a.id).name == "A")
            #expect(try await reader.repository.get(Customer.self, id: b.id).name == "B")

            let receipt = try await app.shred(keyScope: Self.composed)
            #expect(Array(receipt.keyScope.utf8) == Array(Self.composed.utf8))
            // (`reader`'s key ring cached the shredded key before the shred; only the shredding
            // key ring and fresh ones know of it.)
            for reading in [app, try await Self.app(store, keyStore: keyStore, master: [master])] {
                let shredded = await #expect(throws: EventSourcingError.self) { try await reading.repository.get(Customer.self, id: a.id) }
                #expect(shredded?.code == .shredded)
                var kept = try await reading.repository.get(Customer.self, id: b.id)
                #expect(kept.name == "B")
                try kept.record(.changedEmail("b\(kept.version)@example.org"))
                try await reading.save(&kept)
            }
            #expect(try await keyStore.dataKeys(scope: Self.composed).isEmpty)
            #expect(try await keyStore.dataKeys(scope: Self.decomposed).count == 1)
            #expect(try await keyStore.tombstone(scope: Self.decomposed) == nil)
            #expect(try await Self.app(store, keyStore: keyStore, master: [master]).repository.get(Customer.self, id: b.id).version == 3)
        }
    }

    // MARK: Batch rewrap
    // (What every key store's rewrapDataKeys must do, by exact scope, is the test kit's
    // KeyStoreConformance: rewrapBatchConditions, rewrapBatchRepeatedVersionRefused.)

    @Test("A rotation killed after two pages leaves every key under the old or the new key; a rerun finishes and every event reads with the new key alone",
          arguments: RecorderFactory.all)
    func killedRotationResumes(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store in
            let keyStore = store.keyStore ?? InMemoryKeyStore()
            let old = try MasterKey.generate(), new = try MasterKey.generate()
            let app = try await Self.app(store, keyStore: keyStore, master: [old])
            // 23 keys: 20 subjects, the first three rotated once; one event each.
            var ids: [(UUID, String)] = []
            for i in 0..<20 {
                let subject = String(format: "subject-%02d", i)
                var c = try AggregateRoot<Customer>(.registered(personID: subject, name: "N\(i)", email: "e\(i)"))
                try await app.save(&c)
                ids.append((c.id, "N\(i)"))
            }
            let setup = try await Keyring.open(store: keyStore, masterKeys: [old])
            for i in 0..<3 { #expect(try await setup.rotate(scope: String(format: "subject-%02d", i)) == 2) }
            let before = try await keyStore.dataKeys(after: nil, limit: 100)
            #expect(before.count == 23)

            let killing = KillingKeyStore(keyStore, batchesBeforeKill: 2)
            let rotating = try await Keyring.open(store: killing, masterKeys: [old])
            await #expect(throws: KillingKeyStore.Killed.self) { try await rotating.rotateMasterKey(to: new, pageSize: 5) }
            let after = try await keyStore.dataKeys(after: nil, limit: 100)
            #expect(after.count == 23)
            #expect(after.filter { $0.kekID == new.id }.count == 10, "two pages of five")
            #expect(after.filter { $0.kekID == old.id }.count == 13)
            #expect(Set(try await keyStore.masterKeyChecks().map(\.kekID)) == [old.id, new.id])
            // Meanwhile, with both keys, everything reads.
            let both = try await Self.app(store, keyStore: keyStore, master: [old, new])
            for (id, name) in ids { #expect(try await both.repository.get(Customer.self, id: id).name == name) }

            let resumed = try await Keyring.open(store: keyStore, masterKeys: [old, new])
            let progress = try await resumed.rotateMasterKey(to: new, pageSize: 5)
            #expect(progress.rewrapped == 13)
            #expect(progress.alreadyCurrent == 10)
            #expect(try await keyStore.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == new.id })
            #expect(try await keyStore.masterKeyChecks().map(\.kekID) == [new.id])

            let reader = try await Self.app(store, keyStore: keyStore, master: [new])
            for (id, name) in ids { #expect(try await reader.repository.get(Customer.self, id: id).name == name) }
            let refused = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: keyStore, masterKeys: [old]) }
            #expect(refused?.code == .wrongMasterKey)
        }
    }
}
