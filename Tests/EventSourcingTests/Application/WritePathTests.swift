@testable import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A record cipher with one fixed key per scope, counting what the mapper asks of it: proves
/// the cipher seam (any key source plugs into the mapper, not only a Keyring).
final class CountingCipher: RecordCipher {
    struct Counts: Sendable, Equatable { var sealing = 0; var opening = 0 }
    let counts = Mutex(Counts())
    let material: KeyMaterial
    /// When set, opening fails with this error (a key source that lost the key).
    let openingFailure: KeyManagementError?

    init(openingFailure: KeyManagementError? = nil) throws {
        material = try KeyMaterial(randomCount: 32)
        self.openingFailure = openingFailure
    }

    func sealingKey(for scope: String, likelyNew: Bool) async throws -> SealingKey {
        counts.withLock { $0.sealing += 1 }
        return SealingKey(key: DataKey(scope: scope, version: 7, material: material))
    }

    func openingKey(scope: String, version: UInt32) async throws -> DataKey {
        counts.withLock { $0.opening += 1 }
        if let openingFailure { throw openingFailure }
        guard version == 7 else { throw KeyManagementError(.keyNotFound, "no such key", scope: scope, keyVersion: version) }
        return DataKey(scope: scope, version: version, material: material)
    }
}

/// The calls made to a recorder and a key store, in the order they were made.
final class CallLog: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

/// An application recorder that can store keys with its events, and says whether it shares
/// transactions with a key store as it is told to; it logs the order of what it is asked.
final class LoggingKeyCommittingRecorder: KeyCommittingRecorder {
    let inner = InMemoryRecorder()
    let store: any KeyStore
    let shares: Bool
    let log: CallLog
    /// How many plain `insertEvents` calls fail (a crash between persisting keys and events).
    let failingInserts = Mutex(0)

    init(store: any KeyStore, shares: Bool, log: CallLog = CallLog()) {
        self.store = store
        self.shares = shares
        self.log = log
    }

    var keyStore: any KeyStore { store }

    func sharesTransactions(with keyStore: any KeyStore) -> Bool { shares && (keyStore as AnyObject) === (store as AnyObject) }

    func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey]) async throws -> [Int64] {
        log.add("events+keys:\(newKeys.count)")
        for k in newKeys { try await store.insertDataKey(k) }
        return try await inner.insertEvents(events)
    }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        log.add("events")
        let fail = failingInserts.withLock { n -> Bool in
            guard n > 0 else { return false }
            n -= 1
            return true
        }
        if fail { throw EventSourcingError(.databaseUnavailable, "simulated failure after the keys were stored") }
        return try await inner.insertEvents(events)
    }

    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        try await inner.selectEvents(query)
    }

    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }

    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}

/// A key store that logs when a data key is inserted into it, into the recorder's log, and the
/// prefetch hints it is given ("prefetch a,b").
final class LoggingKeyStore: KeyStore {
    let inner: InMemoryKeyStore
    let log: CallLog
    init(_ inner: InMemoryKeyStore, log: CallLog) {
        self.inner = inner
        self.log = log
    }
    func insertDataKey(_ key: WrappedDataKey) async throws {
        log.add("key")
        try await inner.insertDataKey(key)
    }
    func prefetchDataKeys(scopes: [String]) async throws { log.add("prefetch " + scopes.joined(separator: ",")) }
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

/// An aggregate whose data subject changes after creation (a person moving to another account).
struct Membership: Aggregate, Equatable {
    static let typeName = "Membership"
    enum Event: Codable, Sendable, Equatable {
        case joined(subject: String)
        case movedTo(subject: String)
    }
    var subject: String?
    var dataSubject: String? { subject }
    mutating func apply(_ event: Event) throws {
        switch event {
        case .joined(let s), .movedTo(let s): subject = s
        }
    }
}

@Suite("Write path: cipher seam, key persisting, key scopes")
struct WritePathTests {
    @Test("A test cipher plugged into the mapper seals records and reads them back; the keyring is not needed")
    func cipherDouble() async throws {
        let cipher = try CountingCipher()
        let recorder = InMemoryRecorder()
        let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(cipher: cipher))
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try dog.record(.addedTrick("sit"))
        try await app.save(&dog)
        #expect(cipher.counts.withLock { $0 } == .init(sealing: 1, opening: 0), "one key per aggregate per save")

        let stored = try await recorder.selectEvents(originatorID: dog.id)
        #expect(stored.count == 2)
        for record in stored {
            guard case .success(let (header, _)) = StateHeader.parse(record.state) else {
                Issue.record("the record has no header")
                continue
            }
            #expect(header.flags.contains(.encrypted))
            #expect(header.keyScope == dog.keyScope && header.keyVersion == 7)
            #expect(!bytes(record.state, contain: Array("Fido".utf8)), "the payload must be encrypted")
        }
        #expect(app.mapper.keyring == nil, "a cipher that is not a Keyring")

        let read = try await app.repository.get(Dog.self, id: dog.id)
        #expect(read.state == Dog(name: "Fido", tricks: ["sit"]))
        #expect(cipher.counts.withLock { $0 }.opening == 2)

        // Snapshots go through the same seam.
        try await app.takeSnapshot(Dog.self, id: dog.id)
        #expect(try await recorder.selectSnapshot(originatorID: dog.id, lte: nil)?.keyScope == dog.keyScope)
    }

    @Test("A read error from a custom cipher names the record and its key scope, not the key")
    func cipherReadErrorsNameTheRecord() async throws {
        let recorder = InMemoryRecorder()
        let writer = Application(recorder: recorder, mapper: Mapper(cipher: try CountingCipher()))
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try await writer.save(&dog)

        let lost = try CountingCipher(openingFailure: KeyManagementError(.keyUnavailable, "the KMS is unreachable"))
        let reader = Application(recorder: recorder, mapper: Mapper(cipher: lost))
        let e = await #expect(throws: EventSourcingError.self) { try await reader.repository.get(Dog.self, id: dog.id) }
        #expect(e?.code == .keyUnavailable)
        #expect(e?.originatorID == dog.id && e?.originatorVersion == 1 && e?.topic == "Dog.registered")
        #expect(e?.keyScope == dog.keyScope)

        let items = try await reader.notificationLog.read(start: 1, limit: 10)
        guard case .failed(let f) = try #require(items.first).outcome else {
            Issue.record("the record was not reported as failed")
            return
        }
        #expect(f.code == .keyUnavailable && f.notificationID == 1 && f.keyScope == dog.keyScope)
    }

    @Test("The mapper stamps the key scope on every record it seals; plaintext records carry none")
    func mapperStampsTheScope() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let recorder = InMemoryRecorder()
        let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring))
        var a = try AggregateRoot<Customer>(.registered(personID: "person-1", name: "A", email: "a@x"))
        var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&a, &dog)
        #expect(try await recorder.selectEvents(originatorID: a.id).map(\.keyScope) == ["person-1"])
        #expect(try await recorder.selectEvents(originatorID: dog.id).map(\.keyScope) == [dog.id.uuidString.lowercased()])

        let plain = InMemoryRecorder()
        var cat = try AggregateRoot<Dog>(.registered(name: "Tom"))
        try await Application(recorder: plain).save(&cat)
        #expect(try await plain.selectEvents(originatorID: cat.id).map(\.keyScope) == [nil])
    }

    @Test("A recorder that does not share the key store's transactions gets the keys stored first, on their own")
    func keysFirstWhenNotShared() async throws {
        let keys = InMemoryKeyStore()
        let log = CallLog()
        let logged = LoggingKeyStore(keys, log: log)
        // The recorder's own key store is the very object the keyring uses, yet it says it
        // cannot store keys in its transactions: the application must take its word.
        let recorder = LoggingKeyCommittingRecorder(store: logged, shares: false, log: log)
        let keyring = try await Keyring.open(store: logged, masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        #expect(!recorder.sharesTransactions(with: logged))

        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try await app.save(&dog)
        #expect(log.all == ["key", "events"], "the key is persisted on its own, before the events")
        #expect(try await keys.dataKeys(scope: dog.keyScope).count == 1)
        #expect(try await app.repository.get(Dog.self, id: dog.id).name == "Fido")
    }

    @Test("A recorder that shares the key store's transactions stores the new keys with the events")
    func keysWithEventsWhenShared() async throws {
        let keys = InMemoryKeyStore()
        let recorder = LoggingKeyCommittingRecorder(store: keys, shares: true)
        let keyring = try await Keyring.open(store: keys, masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        // Two aggregates of one new subject: one key, minted once, stored once.
        var a = try AggregateRoot<Customer>(.registered(personID: "p-9", name: "A", email: "a@x"))
        var b = try AggregateRoot<Customer>(.registered(personID: "p-9", name: "B", email: "b@x"))
        try await app.save(&a, &b)
        #expect(recorder.log.all == ["events+keys:1"])
        #expect(try await keys.dataKeys(scope: "p-9").count == 1)
        // The key is known now: the next save stores no key.
        try a.record(.changedEmail("c@x"))
        try await app.save(&a)
        #expect(recorder.log.all == ["events+keys:1", "events"])
    }

    @Test("A failure after the keys were stored and before the events loses nothing: the retry uses the stored key")
    func failureBetweenKeysAndEvents() async throws {
        let keys = InMemoryKeyStore()
        let recorder = LoggingKeyCommittingRecorder(store: keys, shares: false)
        recorder.failingInserts.withLock { $0 = 1 }
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: keys, masterKeys: [master])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        var c = try AggregateRoot<Customer>(.registered(personID: "p-crash", name: "A", email: "a@x"))
        let databaseUnavailable = await #expect(throws: EventSourcingError.self) { try await app.save(&c) }
        #expect(databaseUnavailable?.code == .databaseUnavailable)
        #expect(try await keys.dataKeys(scope: "p-crash").count == 1, "the key was stored before the events")
        #expect(try await recorder.selectEvents(originatorID: c.id).isEmpty)

        try await app.save(&c)
        #expect(try await keys.dataKeys(scope: "p-crash").count == 1, "no second key was minted")
        // A fresh process (empty key cache) reads the events under the stored key.
        let fresh = Application(recorder: recorder,
                                mapper: Mapper(keyring: try await Keyring.open(store: keys, masterKeys: [master])))
        #expect(try await fresh.repository.get(Customer.self, id: c.id).email == "a@x")
    }

    @Test("An aggregate keeps the key scope it was created with when its data subject changes")
    func scopeCapturedAtCreation() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let recorder = InMemoryRecorder()
        let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring))
        var m = try AggregateRoot<Membership>(.joined(subject: "alice"))
        #expect(m.keyScope == "alice")
        try m.record(.movedTo(subject: "bob"))
        #expect(m.state.dataSubject == "bob")
        #expect(m.keyScope == "alice", "a state change must not move the aggregate to another scope")
        try await app.save(&m)
        #expect(try await recorder.selectEvents(originatorID: m.id).map { StateHeader.peekKeyScope($0.state) } == ["alice", "alice"])

        // Loaded again (from events, then from a snapshot), it is still in its first scope.
        var loaded = try await app.repository.get(Membership.self, id: m.id)
        #expect(loaded.keyScope == "alice")
        try loaded.record(.movedTo(subject: "carol"))
        try await app.save(&loaded)
        #expect(try await recorder.selectEvents(originatorID: m.id).map(\.keyScope) == ["alice", "alice", "alice"])
        try await app.takeSnapshot(Membership.self, id: m.id)
        #expect(try await recorder.selectSnapshot(originatorID: m.id, lte: nil)?.keyScope == "alice")
        let fromSnapshot = try await app.repository.get(Membership.self, id: m.id)
        #expect(fromSnapshot.keyScope == "alice" && fromSnapshot.version == 3)

        // Shredding bob's scope leaves the membership readable: it was never bob's.
        _ = try await keyring.shred(scope: "bob")
        #expect(try await app.repository.get(Membership.self, id: m.id).subject == "carol")
    }

    @Test("EventSourcingError is Hashable: equal errors hash alike, and a Set keeps distinct errors apart")
    func errorIsHashable() {
        let id = UUID()
        let a = EventSourcingError(.concurrencyConflict, "exists", originatorID: id, originatorVersion: 2)
        let b = EventSourcingError(.concurrencyConflict, "exists", originatorID: id, originatorVersion: 2)
        let c = EventSourcingError(.concurrencyConflict, "exists", originatorID: id, originatorVersion: 3)
        #expect(a == b && a.hashValue == b.hashValue)
        #expect(a != c)
        #expect(Set([a, b, c]).count == 2)
    }
}
