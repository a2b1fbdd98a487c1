import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A key store that records the prefetch hints it is given.
final class PrefetchRecordingKeyStore: KeyStore {
    let inner = InMemoryKeyStore()
    private let hints = Mutex<[[String]]>([])
    var recorded: [[String]] { hints.withLock { $0 } }

    func prefetchDataKeys(scopes: [String]) async throws { hints.withLock { $0.append(scopes) } }
    func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
    func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await inner.dataKeys(scope: scope) }
    func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        try await inner.dataKeys(after: cursor, limit: limit)
    }
    func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
    }
    func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
    func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
    func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
    func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
    func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
    func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
}

@Suite("Reading a page of the log asks the key store for the page's missing keys at once")
struct KeyPrefetchHintTests {
    @Test("One hint per page with each missing scope once; none for cached or shredded scopes")
    func hints() async throws {
        let masterKey = try MasterKey.generate()
        let keys = PrefetchRecordingKeyStore()
        let recorder = InMemoryRecorder()
        let writer = Application(recorder: recorder, mapper: Mapper(keyring: try await Keyring.open(store: keys, masterKeys: [masterKey])))
        var dogs: [AggregateRoot<Dog>] = []
        for name in ["a", "b", "c"] {
            var dog = try AggregateRoot<Dog>(.registered(name: name))
            try dog.record(.addedTrick("sit"))
            try await writer.save(&dog)
            dogs.append(dog)
        }
        // A reader with a cold key cache: one hint for the page, each scope once, in log order.
        let keyring = try await Keyring.open(store: keys, masterKeys: [masterKey])
        let reader = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        let before = keys.recorded.count
        let page = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(page.count == 6)
        #expect(page.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        #expect(Array(keys.recorded.dropFirst(before)) == [dogs.map(\.keyScope)])
        // Warm: nothing to ask for.
        _ = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(keys.recorded.count == before + 1)
        // A scope this key ring shredded is not asked for either (the others are cached).
        _ = try await keyring.shred(scope: dogs[0].keyScope)
        _ = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(keys.recorded.count == before + 1)
    }
}
