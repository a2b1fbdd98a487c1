import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// An in-memory recorder whose inserts of erasure records fail while `failErasures` is set (a
/// recorder that went away between the tombstone and the erasure record).
final class ErasureFailingRecorder: ApplicationRecorder {
    let inner = InMemoryRecorder()
    let failErasures = Mutex(true)

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        if failErasures.withLock({ $0 }), events.contains(where: { $0.topic == ErasureRecord.topic }) {
            throw EventSourcingError(.databaseUnavailable, "test: the recorder is down")
        }
        return try await inner.insertEvents(events)
    }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}

/// The state bytes of an erasure record with `json` after the plain header.
func erasureState(_ json: String) -> [UInt8] { [0xE5, 0x53, 0x01, 0x00] + Array(json.utf8) }

@Suite("Erasure records: a shred recorded in the notification log")
struct ErasureRecordTests {
    private static func encrypted(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    /// The whole log, read page by page.
    static func wholeLog(_ app: Application) async throws -> [LogItem] {
        var out: [LogItem] = []
        var start: Int64 = 1
        while true {
            let page = try await app.notificationLog.read(start: start, limit: 100)
            guard let last = page.last else { return out }
            out += page
            start = last.notification.id + 1
        }
    }

    // MARK: Format

    @Test("The record holds exactly the scope and the time, as documented, and decodes back")
    func format() throws {
        let at = Date(timeIntervalSince1970: 1_764_470_271.125)
        let e = try ErasureRecord(keyScope: #"person "7" \ ü"#, shreddedAt: at).storedEvent()
        #expect(e.topic == "eventsourcing.erasure/1")
        #expect(e.originatorVersion == 1)
        #expect(e.keyScope == nil)
        #expect(e.state == erasureState(#"{"keyScope":"person \"7\" \\ ü","shreddedAt":1764470271.125}"#))
        let back = try ErasureRecord(decoding: e, notificationID: 9)
        #expect(back.keyScope == #"person "7" \ ü"#)
        #expect(back.shreddedAt == at)
        #expect(ErasureRecord.matches(e))
        // Version-8 UUID fixed by the scope; another scope, another id.
        let id = try ErasureRecord.originatorID(forKeyScope: "alice")
        #expect(id == (try ErasureRecord.originatorID(forKeyScope: "alice")))
        #expect(id != (try ErasureRecord.originatorID(forKeyScope: "alicE")))
        #expect(id.uuid.6 >> 4 == 8)
        #expect(id.uuid.8 >> 6 == 0b10)
    }

    @Test("A scope of 255 bytes that are all escaped still fits the bound")
    func longestScope() throws {
        let scope = String(repeating: "\"", count: KeyScope.maxLength)
        let e = try ErasureRecord(keyScope: scope, shreddedAt: Date(timeIntervalSince1970: -1.7976931348623157e+300)).storedEvent()
        #expect(e.state.count <= ErasureRecord.maxStateLength)
        #expect(try ErasureRecord(decoding: e, notificationID: nil).keyScope == scope)
    }

    @Test("Anything but the exact format is refused with a typed error naming the notification",
          arguments: [
            (#"{"keyScope":"alice","shreddedAt":12.5}"#, false, EventSourcingError.Code.decodingFailed),   // wrong header below
            (#"{"keyScope":"alice","shreddedAt":12.5 }"#, true, .decodingFailed),
            (#"{ "keyScope":"alice","shreddedAt":12.5}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":12.5,"name":"Alice Smith"}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":"12.5"}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":12.50}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":nan}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":inf}"#, true, .decodingFailed),
            (#"{"keyScope":"alice","shreddedAt":}"#, true, .decodingFailed),
            (#"{"keyScope":"","shreddedAt":12.5}"#, true, .decodingFailed),
            (#"{"keyScope":"al\u0069ce","shreddedAt":12.5}"#, true, .decodingFailed),
            (#"{"keyScope":"alice"#, true, .decodingFailed),
            (#"{"keyScope":"alice\"#, true, .decodingFailed),
            ("{\"keyScope\":\"a\u{7}b\",\"shreddedAt\":12.5}", true, .decodingFailed),
            (#"not json"#, true, .decodingFailed),
            (#"{"keyScope":"bob","shreddedAt":12.5}"#, true, .databaseCorrupt),   // alice's id, bob's scope
          ])
    func strictDecoder(_ json: String, _ plainHeader: Bool, _ code: EventSourcingError.Code) throws {
        var state = erasureState(json)
        if !plainHeader { state[3] = 0x01 }   // "compressed"
        let stored = StoredEvent(originatorID: try ErasureRecord.originatorID(forKeyScope: "alice"), originatorVersion: 1,
                                 topic: ErasureRecord.topic, state: state)
        let e = #expect(throws: EventSourcingError.self) { try ErasureRecord(decoding: stored, notificationID: 42) }
        #expect(e?.code == code)
        #expect(e?.notificationID == 42)
        #expect(e?.topic == ErasureRecord.topic)
        #expect(e?.originatorID == stored.originatorID)
        #expect(e.map { !$0.description.contains("alice") } == true, "the message repeats no stored text")
        #expect(!ErasureRecord.matches(stored))
    }

    @Test("A huge state is refused by its size, before it is parsed; the wrong version or another topic too")
    func hugeAndMisplaced() throws {
        let id = try ErasureRecord.originatorID(forKeyScope: "alice")
        let huge = StoredEvent(originatorID: id, originatorVersion: 1, topic: ErasureRecord.topic,
                               state: erasureState(#"{"keyScope":""# + String(repeating: "a", count: 1 << 20) + #"","shreddedAt":1.0}"#))
        let e1 = #expect(throws: EventSourcingError.self) { try ErasureRecord(decoding: huge, notificationID: 3) }
        #expect(e1?.code == .decodingFailed)
        #expect(e1?.notificationID == 3)
        var good = try ErasureRecord(keyScope: "alice", shreddedAt: Date(timeIntervalSince1970: 1)).storedEvent()
        good.originatorVersion = 2
        #expect((#expect(throws: EventSourcingError.self) { try ErasureRecord(decoding: good, notificationID: 4) })?.code == .databaseCorrupt)
        good.originatorVersion = 1
        good.topic = "eventsourcing.erasure/2"
        #expect((#expect(throws: EventSourcingError.self) { try ErasureRecord(decoding: good, notificationID: 5) })?.code == .invalidArgument)
    }

    // MARK: Shred

    @Test("After a shred the log's last item is .erased with the scope and the time; a second shred is refused and writes no second record",
          arguments: RecorderFactory.all)
    func shredRecordsErasure(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var keep = try AggregateRoot<Customer>(.registered(personID: "keep", name: "Keep Me", email: "keep@example.org"))
            var gone = try AggregateRoot<Customer>(.registered(personID: "gone", name: "Gone Girl", email: "gone@example.org"))
            try await t.app.save(&keep, &gone)
            let receipt = try await t.app.shred(keyScope: "gone")
            #expect(receipt.eventsAffected == 1)
            #expect(receipt.plaintextEventsInStore.map { $0 == 0 } ?? true, "the erasure record is not counted as plaintext")

            let items = try await Self.wholeLog(t.app)
            #expect(items.map(\.notification.id) == [1, 2, 3])
            let last = try #require(items.last)
            guard case .erased(let scope, let at) = last.outcome else {
                Issue.record("the last item is not an erasure: \(last.outcome)")
                return
            }
            #expect(scope == "gone")
            #expect(abs(at.timeIntervalSince(receipt.shreddedAt)) < 1e-6)
            #expect(last.isErased && !last.isShredded)
            #expect(last.notification.topic == ErasureRecord.topic)
            #expect(last.notification.originatorID == (try ErasureRecord.originatorID(forKeyScope: "gone")))
            // Nothing personal in it.
            let text = String(decoding: last.notification.state, as: UTF8.self)
            #expect(!text.contains("Gone Girl") && !text.contains("gone@example.org"))
            // Reading it as an event is a typed error naming it.
            let e = #expect(throws: EventSourcingError.self) { try last.event(as: Customer.self) }
            #expect(e?.code == .aggregateTypeMismatch)
            #expect(e?.notificationID == 3)
            #expect(e?.keyScope == "gone")

            let again = await #expect(throws: EventSourcingError.self) { try await t.app.shred(keyScope: "gone") }
            #expect(again?.code == .shredded)
            #expect(try await t.app.notificationLog.maxNotificationID == 3)
            // The erasure id is never an aggregate.
            let notFound = await #expect(throws: EventSourcingError.self) {
                try await t.app.repository.get(Customer.self, id: last.notification.originatorID)
            }
            #expect(notFound?.code == .aggregateNotFound)
            #expect(try await !t.app.repository.contains(last.notification.originatorID))
            #expect(try await t.app.repository.contains(keep.id))
            #expect(try await t.app.countEvents(keyScope: "gone") == 1)
        }
    }

    @Test("Racing shreds of one scope leave exactly one erasure record", arguments: RecorderFactory.all)
    func racingShreds(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var gone = try AggregateRoot<Customer>(.registered(personID: "gone", name: "G", email: "g"))
            try await t.app.save(&gone)
            let app = t.app
            let results = await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<8 { group.addTask { (try? await app.shred(keyScope: "gone")) != nil } }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.filter { $0 }.count == 1)
            let items = try await Self.wholeLog(t.app)
            #expect(items.filter(\.isErased).count == 1)
            #expect(items.count == 2)
        }
    }

    @Test("A store that refuses plaintext takes an erasure record, exactly in its format, and nothing else plaintext",
          arguments: RecorderFactory.all)
    func plaintextRefusalAcceptsErasure(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            guard t.store.keyStore != nil else { return }   // only the stores that know of a master key refuse plaintext
            let erasure = try ErasureRecord(keyScope: "someone", shreddedAt: Date(timeIntervalSince1970: 5)).storedEvent()
            #expect(try await t.store.recorder.insertEvents([erasure]).count == 1)
            var forged = try ErasureRecord(keyScope: "other", shreddedAt: Date(timeIntervalSince1970: 5)).storedEvent()
            forged.state += Array(#" "name":"Alice""#.utf8)
            let e = await #expect(throws: EventSourcingError.self) { try await t.store.recorder.insertEvents([forged]) }
            #expect(e?.code == .plaintextRejected)
            #expect(try await t.app.notificationLog.maxNotificationID == 1)
        }
    }

    @Test("With a key store that shares no transaction with the recorder, the application appends the record; if that fails, shredding again appends it")
    func appendedByTheApplication() async throws {
        let recorder = ErasureFailingRecorder()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        var gone = try AggregateRoot<Customer>(.registered(personID: "gone", name: "G", email: "g"))
        try await app.save(&gone)
        let down = await #expect(throws: EventSourcingError.self) { try await app.shred(keyScope: "gone") }
        #expect(down?.code == .databaseUnavailable)
        #expect(try await app.notificationLog.maxNotificationID == 1)
        #expect(try await keyring.store.tombstone(scope: "gone") != nil, "the key is gone all the same")

        recorder.failErasures.withLock { $0 = false }
        let again = await #expect(throws: EventSourcingError.self) { try await app.shred(keyScope: "gone") }
        #expect(again?.code == .shredded)
        let items = try await Self.wholeLog(app)
        #expect(items.count == 2)
        guard case .erased(let scope, _) = try #require(items.last).outcome else {
            Issue.record("no erasure item")
            return
        }
        #expect(scope == "gone")
        _ = await #expect(throws: EventSourcingError.self) { try await app.shred(keyScope: "gone") }
        #expect(try await app.notificationLog.maxNotificationID == 2, "never a second record")
    }

    @Test("A user recorder with no knowledge of erasure records gets one, read back as .erased")
    func minimalRecorder() async throws {
        let recorder = MinimalUserRecorder()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        var gone = try AggregateRoot<Customer>(.registered(personID: "gone", name: "G", email: "g"))
        try await app.save(&gone)
        _ = try await app.shred(aggregateID: gone.id)
        let items = try await Self.wholeLog(app)
        #expect(items.map(\.isShredded) == [true, false])
        #expect(items.map(\.isErased) == [false, true])
        #expect(try await app.countEvents(keyScope: gone.keyScope) == 1)
    }

    @Test("A malformed record under the reserved topic is a .failed item naming it, and the read goes on past it",
          arguments: RecorderFactory.all)
    func hostileErasureInLog(_ factory: RecorderFactory) async throws {
        try await AppFactory(recorder: factory, encrypted: false).withFreshApp { t async throws in
            let id = try ErasureRecord.originatorID(forKeyScope: "alice")
            let bad = [
                StoredEvent(originatorID: id, originatorVersion: 1, topic: ErasureRecord.topic, state: erasureState("{oops")),
                StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: ErasureRecord.topic,
                            state: erasureState(#"{"keyScope":""# + String(repeating: "x", count: 100_000) + #"","shreddedAt":1.0}"#)),
            ]
            _ = try await t.store.recorder.insertEvents(bad)
            var ok = try AggregateRoot<Customer>(.registered(personID: "ok", name: "O", email: "o"))
            try await t.app.save(&ok)
            let items = try await Self.wholeLog(t.app)
            #expect(items.count == 3)
            for (i, item) in items.prefix(2).enumerated() {
                guard case .failed(let f) = item.outcome else {
                    Issue.record("item \(i + 1) is not failed: \(item.outcome)")
                    continue
                }
                #expect(f.code == .decodingFailed)
                #expect(f.notificationID == item.notification.id)
            }
            guard case .decoded = items[2].outcome else {
                Issue.record("the read did not go on")
                return
            }
        }
    }

    @Test("The reserved topic cannot be an aggregate's")
    func reservedTopic() async throws {
        let app = Application(recorder: InMemoryRecorder())
        var root = try AggregateRoot<ReservedTopicAggregate>(.happened)
        let e = await #expect(throws: EventSourcingError.self) { try await app.save(&root) }
        #expect(e?.code == .invalidArgument)
        #expect(try await app.notificationLog.maxNotificationID == nil)
    }
}

/// An aggregate whose event's topic is the reserved erasure topic.
struct ReservedTopicAggregate: Aggregate {
    static let typeName = "eventsourcing"
    enum Event: Codable, Sendable { case happened }
    static func topicName(of event: Event) -> String { "erasure/1" }
    mutating func apply(_ event: Event) {}
}
