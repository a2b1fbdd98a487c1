import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging
import Synchronization
import Testing

// Regression tests for quiet successes that became errors: plaintext into an encrypted store,
// shredding a scope that does not exist, reading with the wrong type, topics from reflection,
// and upcasting that lost types.

/// A cat whose events have exactly the shape of a dog's.
struct Cat: Aggregate, Equatable {
    static let typeName = "Cat"
    enum Event: Codable, Sendable, Equatable {
        case registered(name: String)
        case addedTrick(String)
    }
    var name = ""
    mutating func apply(_ event: Event) {
        if case .registered(let n) = event { name = n }
    }
}

/// The stores that keep a master key next to the events (the in-memory recorder has none).
private let keyStoreBackends: [RecorderFactory] = [.sqliteFile] + (PostgresTestServer.available ? [.postgres] : [])

@Suite("Plaintext into an encrypted store is refused")
struct PlaintextRefusalTests {
    @Test("An application without a keyring cannot write events or snapshots into a store that has a master key",
          arguments: keyStoreBackends)
    func plaintextWritesRefused(backend: RecorderFactory) async throws {
        try await backend.withFreshStore { store in
            let keyStore = try #require(store.keyStore)
            let keyring = try await Keyring.open(store: keyStore, masterKeys: [MasterKey.generate()])
            let encrypted = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring))
            var rex = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await encrypted.save(&rex)

            let plain = Application(recorder: store.recorder, snapshots: store.snapshots)
            var fido = try AggregateRoot<Dog>(.registered(name: "Fido"))
            let e = await #expect(throws: EventSourcingError.self) { try await plain.save(&fido) }
            #expect(e?.code == .plaintextRejected)
            #expect(e?.originatorID == fido.id && e?.originatorVersion == 1 && e?.topic == "Dog.registered")
            #expect(!"\(e.map { "\($0)" } ?? "")".contains("Fido"), "the error must not carry the plaintext")
            #expect(try await store.recorder.selectNotifications(start: 1, limit: 10, stop: nil, topics: []).count == 1,
                    "nothing was written")
            let plaintextRejected = await #expect(throws: EventSourcingError.self) {
                try await store.snapshots.insertSnapshot(StoredEvent(originatorID: rex.id, originatorVersion: 1,
                                                                     topic: Dog.snapshotTopic, state: [0xE5, 0x53, 1, 4]))
            }
            #expect(plaintextRejected?.code == .plaintextRejected)
            #expect(try await store.snapshots.selectSnapshot(originatorID: rex.id, lte: nil) == nil)
        }
    }

    @Test("A store without a master key takes plaintext (an application that never encrypts)", arguments: keyStoreBackends)
    func plaintextStoreStillWorks(backend: RecorderFactory) async throws {
        try await backend.withFreshStore { store in
            let plain = Application(recorder: store.recorder, snapshots: store.snapshots)
            var fido = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try await plain.save(&fido)
            #expect(try await plain.repository.get(Dog.self, id: fido.id).name == "Fido")
        }
    }

    @Test("A migration opts in: plaintext is written, read only with plaintextReads .allowed, and every shred receipt counts it")
    func migrationOptIn() async throws {
        let dir = try TempDir()
        let path = dir.path("events.sqlite")
        let migrating = try SQLiteStore(path: path, configuration: .init(allowsPlaintextWrites: true))
        let keyring = try await Keyring.open(store: migrating, masterKeys: [MasterKey.generate()])
        var old = try AggregateRoot<Dog>(.registered(name: "Old Shep"))
        try await Application(recorder: migrating).save(&old)
        var new = try AggregateRoot<Dog>(.registered(name: "Lassie"))
        let encrypted = Application(recorder: migrating, snapshots: migrating, mapper: Mapper(keyring: keyring))
        try await encrypted.save(&new)

        // By default an encrypting application refuses the unencrypted record.
        let e = await #expect(throws: EventSourcingError.self) { try await encrypted.repository.get(Dog.self, id: old.id) }
        #expect(e?.code == .plaintextRejected)
        #expect(e?.originatorID == old.id)
        let lenient = Application(recorder: migrating, mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
        #expect(try await lenient.repository.get(Dog.self, id: old.id).name == "Old Shep")

        // The receipt says plaintext exists, which no shred can erase.
        let receipt = try await encrypted.shred(new)
        #expect(receipt.plaintextEventsInStore == 1)
        await migrating.close()

        // Reopened without the opt-in, the store refuses plaintext again.
        let strict = try SQLiteStore(path: path)
        var more = try AggregateRoot<Dog>(.registered(name: "Beethoven"))
        let plaintextRejected = await #expect(throws: EventSourcingError.self) { try await Application(recorder: strict).save(&more) }
        #expect(plaintextRejected?.code == .plaintextRejected)
        await strict.close()
    }
}

@Suite("Shredding a scope that does not exist")
struct AbsentScopeShredTests {
    private static func app() async throws -> (Application, InMemoryKeyStore) {
        let keys = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: keys, masterKeys: [MasterKey.generate()])
        let r = InMemoryRecorder()
        return (Application(recorder: r, snapshots: r, mapper: Mapper(keyring: keyring)), keys)
    }

    @Test("A typo is refused with keyScopeNotFound and tombstones nothing; the real scope still reads")
    func typoRefused() async throws {
        let (app, keys) = try await Self.app()
        var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&dog)
        let e = await #expect(throws: EventSourcingError.self) { try await app.shred(keyScope: "no-such-subject") }
        #expect(e?.code == .keyScopeNotFound)
        #expect(e?.keyScope == "no-such-subject")
        #expect(try await keys.tombstones().isEmpty, "no tombstone for the typo")
        #expect(try await app.repository.get(Dog.self, id: dog.id).name == "Rex")
    }

    @Test("An uppercase uuidString shreds the lowercase scope the aggregate is stored under")
    func uppercaseUUIDNormalised() async throws {
        let (app, keys) = try await Self.app()
        var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&dog)
        let receipt = try await app.shred(keyScope: dog.id.uuidString)
        #expect(receipt.keyScope == dog.id.uuidString.lowercased())
        #expect(receipt.eventsAffected == 1)
        #expect(try await keys.tombstones().map(\.scope) == [dog.id.uuidString.lowercased()])
        let shredded = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Dog.self, id: dog.id) }
        #expect(shredded?.code == .shredded)
    }

    @Test("A subject stored in uppercase is found from its lowercase spelling too")
    func uppercaseSubjectFound() async throws {
        let (app, _) = try await Self.app()
        let subject = UUID().uuidString   // uppercase, as a caller might have used it
        var c = try AggregateRoot<Customer>(.registered(personID: subject, name: "Ann", email: "ann@example.com"))
        try await app.save(&c)
        let receipt = try await app.shred(keyScope: subject.lowercased())
        #expect(receipt.keyScope == subject)
        let shredded = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Customer.self, id: c.id) }
        #expect(shredded?.code == .shredded)
    }

    @Test("Tombstoning ahead of time is explicit, and then no record can be written under the scope")
    func tombstoneAhead() async throws {
        let (app, keys) = try await Self.app()
        let receipt = try await app.shred(keyScope: "subject-to-be", ifAbsent: .tombstone)
        #expect(receipt.destroyedKeyVersions.isEmpty && receipt.eventsAffected == 0)
        #expect(try await keys.tombstone(scope: "subject-to-be") != nil)
        var c = try AggregateRoot<Customer>(.registered(personID: "subject-to-be", name: "Bo", email: "bo@example.com"))
        let shredded = await #expect(throws: EventSourcingError.self) { try await app.save(&c) }
        #expect(shredded?.code == .shredded)
    }

    @Test("shred(root) and shred(aggregateID:) use the aggregate's real scope (its data subject)")
    func shredByAggregate() async throws {
        let (app, _) = try await Self.app()
        var a = try AggregateRoot<Customer>(.registered(personID: "person-1", name: "Cy", email: "cy@example.com"))
        var b = try AggregateRoot<Customer>(.registered(personID: "person-2", name: "Di", email: "di@example.com"))
        try await app.save(&a, &b)
        #expect(try await app.shred(a).keyScope == "person-1")
        #expect(try await app.shred(aggregateID: b.id).keyScope == "person-2")
        let aggregateNotFound = await #expect(throws: EventSourcingError.self) { try await app.shred(aggregateID: UUID()) }
        #expect(aggregateNotFound?.code == .aggregateNotFound)
        let shredded = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Customer.self, id: b.id) }
        #expect(shredded?.code == .shredded)
    }
}

@Suite("Reading with the wrong aggregate type")
struct WrongTypeTests {
    @Test("get(Cat.self, id: dogID) is refused naming the aggregate and topic, on every backend", arguments: AppFactory.all)
    func wrongTypeRefused(factory: AppFactory) async throws {
        try await factory.withFreshApp(snapshotIntervals: [.every(2, for: Dog.self)]) { t in
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await t.app.save(&dog)
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Cat.self, id: dog.id) }
            #expect(e?.code == .aggregateTypeMismatch)
            #expect(e?.originatorID == dog.id && e?.topic == "Dog.registered")
            // Also when a snapshot is read first.
            try dog.record(.addedTrick("sit"))
            try await t.app.save(&dog)
            let s = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Cat.self, id: dog.id) }
            #expect(s?.code == .aggregateTypeMismatch)
            #expect(s?.topic == Dog.snapshotTopic)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).tricks == ["sit"])
            // The log's typed accessor checks the topic too.
            let item = try #require(try await t.app.notificationLog.read(start: 1, limit: 1).first)
            #expect(throws: EventSourcingError.self) { try item.event(as: Cat.self) }
            #expect(try item.event(as: Dog.self).event == .registered(name: "Rex"))
        }
    }
}

// MARK: Topics

/// A payload-less enum whose description would once have become its topics.
struct Lamp: Aggregate {
    static let typeName = "Lamp"
    enum Event: Codable, Sendable, CustomStringConvertible {
        case switchedOn, switchedOff
        case dimmed(to: Int)
        var description: String { "a lamp event (edit me freely)" }
    }
    var on = false
    mutating func apply(_ event: Event) {
        switch event {
        case .switchedOn: on = true
        case .switchedOff: on = false
        case .dimmed: break
        }
    }
}

/// A struct event: no case name exists, so the topic must be declared.
struct Meter: Aggregate {
    static let typeName = "Meter"
    struct Event: Codable, Sendable { var reading: Int; var unit: String }
    var total = 0
    mutating func apply(_ event: Event) { total += event.reading }
}

/// The same struct event with a declared topic.
struct DeclaredMeter: Aggregate {
    static let typeName = "DeclaredMeter"
    typealias Event = Meter.Event
    var total = 0
    static func topicName(of event: Event) -> String { "read" }
    mutating func apply(_ event: Event) { total += event.reading }
}

/// Event shapes whose topics were derived by reflection before: they must not change.
struct Mixed: Aggregate {
    static let typeName = "Mixed"
    enum Inner: Codable, Sendable { case a, b(Int) }
    enum Event: Codable, Sendable {
        case bare
        case unlabeled(String)
        case labeled(x: Int, y: String)
        case twoUnlabeled(Int, Int)
        case nested(Inner)
        case optional(String?)
    }
    mutating func apply(_ event: Event) {}
}

/// The topic rule of the library before this change (reflection), kept here as the reference
/// that existing stores were written with.
private func reflectedTopicName<E>(_ event: E) -> String {
    if let label = Mirror(reflecting: event).children.first?.label { return label }
    return String(describing: event)
}

@Suite("Topics come from Codable case names, never from a description")
struct TopicTests {
    @Test("A CustomStringConvertible enum's payload-less cases get their case names")
    func describedEnum() {
        #expect(Lamp.topic(of: .switchedOn) == "Lamp.switchedOn")
        #expect(Lamp.topic(of: .switchedOff) == "Lamp.switchedOff")
        #expect(Lamp.topic(of: .dimmed(to: 3)) == "Lamp.dimmed")
    }

    @Test("Ordinary enums keep exactly the topics reflection gave them")
    func compatibleWithReflection() {
        let events: [Mixed.Event] = [.bare, .unlabeled("u"), .labeled(x: 1, y: "y"), .twoUnlabeled(1, 2), .nested(.a),
                                     .nested(.b(2)), .optional(nil), .optional("s")]
        for e in events {
            #expect(Mixed.topicName(of: e) == reflectedTopicName(e), "\(reflectedTopicName(e))")
        }
        #expect(Dog.topic(of: .addedTrick("sit")) == "Dog.addedTrick")
        #expect(Ledger.topic(of: .entry(save: 1, item: 1, of: 1)) == "Ledger.entry")
    }

    @Test("A struct event is refused at save until it declares its topic; never its first property's name")
    func structEventNeedsDeclaration() async throws {
        #expect(Meter.topicName(of: .init(reading: 1, unit: "kWh")) == "")
        let r = InMemoryRecorder()
        let app = Application(recorder: r)
        var m = try AggregateRoot<Meter>(.init(reading: 3, unit: "kWh"))
        let e = await #expect(throws: EventSourcingError.self) { try await app.save(&m) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("topicName(of:)") == true)
        #expect(try await r.maxNotificationID() == nil)
        var d = try AggregateRoot<DeclaredMeter>(.init(reading: 3, unit: "kWh"))
        try await app.save(&d)
        #expect(try await r.selectEvents(originatorID: d.id).map(\.topic) == ["DeclaredMeter.read"])
    }
}

// MARK: Upcasting

/// Every Codable type the encodings treat specially, in an event that gets a new field in v2.
enum Rich {
    enum Kind: Codable, Sendable, Equatable { case plain, tagged(String, level: Int) }
    struct Payload: Codable, Sendable, Equatable {
        var data: Data
        var decimal: Decimal
        var date: Date
        var url: URL
        var uuid: UUID
        var kind: Kind
        var some: Int?
        var none: String?
        var map: [String: Int]
        var intMap: [Int: String]
        var double: Double
        var big: Int64
    }
    static let sample = Payload(
        data: Data([0, 1, 2, 0xFE, 0xFF]), decimal: Decimal(string: "12345.678901")!,
        date: Date(timeIntervalSince1970: 1_700_000_000.25), url: URL(string: "https://example.com/a?b=c")!,
        uuid: UUID(uuidString: "c5dc3248-4093-4067-9f64-6f7c6183dd06")!, kind: .tagged("t", level: 3),
        some: 7, none: nil, map: ["a": 1, "b": 2], intMap: [1: "one", 2: "two"], double: 2.0, big: Int64.max)
}

struct RichV1: Aggregate {
    static let typeName = "Rich"
    enum Event: Codable, Sendable { case recorded(Rich.Payload) }
    var last: Rich.Payload?
    mutating func apply(_ event: Event) { if case .recorded(let p) = event { last = p } }
}

struct RichV2: Aggregate {
    static let typeName = "Rich"
    static var eventSchemaVersion: Int { 2 }
    static var snapshotSchemaVersion: Int { 2 }
    enum Event: Codable, Sendable { case recorded(Rich.Payload, note: String) }
    var last: Rich.Payload?
    var note = ""
    mutating func apply(_ event: Event) {
        if case .recorded(let p, let n) = event { (last, note) = (p, n) }
    }
    static func upcastEvent(_ json: inout JSONValue, from version: Int) throws {
        json["recorded"]?["note"] = .string("upcast")
    }
    static func upcastSnapshot(_ json: inout JSONValue, from version: Int) throws {
        json["note"] = .string("upcast snapshot")
    }
}

@Suite("Upcasting keeps every Codable type")
struct UpcastTypesTests {
    @Test("Events and snapshots with Data, Decimal, Date, URL, UUID, nested enums, optionals and dictionaries read after an upcast",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func upcastRoundTrips(encoding: Mapper.PayloadEncoding) async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let r = InMemoryRecorder()
        let app = Application(recorder: r, snapshots: r, mapper: Mapper(keyring: keyring, configuration: .init(encoding: encoding)))
        var v1 = try AggregateRoot<RichV1>(.recorded(Rich.sample))
        try await app.save(&v1)
        try await app.takeSnapshot(RichV1.self, id: v1.id)

        let replayed = Application(recorder: r, mapper: app.mapper)   // no snapshots: events only
        let fromEvents = try await replayed.repository.get(RichV2.self, id: v1.id)
        #expect(fromEvents.last == Rich.sample)
        #expect(fromEvents.note == "upcast")
        let fromSnapshot = try await app.repository.get(RichV2.self, id: v1.id)
        #expect(fromSnapshot.last == Rich.sample)
        #expect(fromSnapshot.note == "upcast snapshot")
    }
}

// MARK: Isolation

@MainActor
final class MainActorModel {
    var dog: AggregateRoot<Dog>?
    var attempts = 0

    /// Retries with main-actor state: compiles only because retryingOnConflict runs its
    /// command in the caller's isolation.
    func register(_ app: Application) async throws {
        var new = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&new)
        dog = new
        try await app.retryingOnConflict {
            attempts += 1
            var d = try await app.repository.get(Dog.self, id: dog!.id)
            try d.record(.addedTrick("sit"))
            if attempts == 1 {
                // Another writer gets there first, once.
                var other = try await app.repository.get(Dog.self, id: d.id)
                try other.record(.addedTrick("stay"))
                try await app.save(&other)
            }
            try await app.save(&d)
        }
    }
}

actor DogKeeper {
    var saved = 0
    func keep(_ app: Application) async throws {
        var d = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try await app.save(&d)
        try await app.retryingOnConflict { saved += 1 }
    }
}

@Suite("Saving and retrying from isolated code")
struct IsolationTests {
    @Test("From @MainActor: retry a conflict with a command that touches main-actor state")
    @MainActor
    func mainActor() async throws {
        let r = InMemoryRecorder()
        let app = Application(recorder: r)
        let model = MainActorModel()
        try await model.register(app)
        #expect(model.attempts == 2)
        #expect(try await app.repository.get(Dog.self, id: model.dog!.id).tricks == ["stay", "sit"])
    }

    @Test("From an actor")
    func fromActor() async throws {
        let keeper = DogKeeper()
        try await keeper.keep(Application(recorder: InMemoryRecorder()))
        #expect(await keeper.saved == 1)
    }
}

// MARK: Logging

/// Collects log records in memory, to count them by level.
struct CollectingLogHandler: LogHandler {
    let collector: LogCollector
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        collector.records.withLock { $0.append((event.level, "\(event.message)")) }
    }
}

final class LogCollector: Sendable {
    let records = Mutex<[(Logger.Level, String)]>([])
    var logger: Logger {
        var l = Logger(label: "test") { _ in CollectingLogHandler(collector: self) }
        l.logLevel = .trace
        return l
    }
    func count(atLeast level: Logger.Level) -> Int { records.withLock { $0.filter { $0.0 >= level }.count } }
}

@Suite("Logging")
struct LoggingTests {
    @Test("Opening a key store, saving and rotating log at debug only; a shred logs exactly one notice")
    func routineAtDebugOneNoticePerShred() async throws {
        let logs = LogCollector()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()], logger: logs.logger)
        let r = InMemoryRecorder()
        let app = Application(recorder: r, snapshots: r, mapper: Mapper(keyring: keyring), logger: logs.logger)
        var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&dog)
        _ = try await keyring.rotate(scope: dog.keyScope)
        #expect(logs.count(atLeast: .info) == 0, "\(logs.records.withLock { $0.map(\.1) })")
        #expect(logs.count(atLeast: .trace) >= 2, "the routine events are logged at debug")
        _ = try await app.shred(dog)
        #expect(logs.records.withLock { $0.filter { $0.0 == .notice }.count } == 1)
        #expect(logs.count(atLeast: .warning) == 0)
    }
}

@Suite("Canonically equivalent scope spellings stay apart in receipts and snapshots")
struct ScopeSpellingReceiptTests {
    @Test("Shredding \"José\" (é) counts and deletes only its own events and snapshots, not \"José\" (e + U+0301)",
          arguments: RecorderFactory.all)
    func receiptsByExactBytes(backend: RecorderFactory) async throws {
        let composed = "Jos\u{E9}", decomposed = "Jose\u{301}"
        #expect(composed == decomposed, "Swift compares them as equal; the stores must not")
        try await backend.withFreshStore { store in
            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            let app = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring))
            var a = try AggregateRoot<Customer>(.registered(personID: composed, name: "A", email: "a@example.com"))
            var b = try AggregateRoot<Customer>(.registered(personID: decomposed, name: "B", email: "b@example.com"))
            try await app.save(&a)
            try await app.save(&b)
            try await app.takeSnapshot(Customer.self, id: a.id)
            try await app.takeSnapshot(Customer.self, id: b.id)
            let receipt = try await app.shred(keyScope: composed)
            #expect(Array(receipt.keyScope.utf8) == Array(composed.utf8))
            #expect(receipt.eventsAffected == 1)
            #expect(receipt.snapshotsDeleted == 1)
            #expect(try await store.snapshots.selectSnapshot(originatorID: b.id, lte: nil) != nil)
            #expect(try await app.repository.get(Customer.self, id: b.id).name == "B")
            let shredded = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Customer.self, id: a.id) }
            #expect(shredded?.code == .shredded)
        }
    }
}
