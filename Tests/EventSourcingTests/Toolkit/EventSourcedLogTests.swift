import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// `EventSourcedLog`: an append-only, event-sourced index, on every recorder, encrypted.
@Suite("Event-sourced log")
struct EventSourcedLogTests {
    private static func app(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    /// An index entry: a customer id and a keyed hash standing in for an e-mail address.
    struct Indexed: Codable, Sendable, Equatable {
        var customerID: UUID
        var emailHash: String
    }

    @Test("Append, then first, last, one position and ranges (after/upTo/descending/limit) read back in log order",
          arguments: RecorderFactory.all)
    func appendAndRead(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let log = try EventSourcedLog<String>(name: "customers", application: t.app)
            #expect(try await log.first() == nil)
            #expect(try await log.last() == nil)
            #expect(try await log.entries(limit: 10).isEmpty)
            for i in 1...7 {
                let r = try await log.append("value-\(i)")
                #expect(r.originatorID == log.id)
                #expect(r.originatorVersion == i)
                #expect(r.topic == EventSourcedLog<String>.topic)
            }
            #expect(try await log.first()?.value == "value-1")
            #expect(try await log.first()?.position == 1)
            #expect(try await log.last()?.value == "value-7")
            #expect(try await log.last()?.position == 7)
            #expect(try await log.entry(at: 4)?.value == "value-4")
            #expect(try await log.entry(at: 8) == nil)
            #expect(try await log.entries(after: 2, upTo: 5, limit: 10).map(\.position) == [3, 4, 5])
            #expect(try await log.entries(after: 2, limit: 2).map(\.value) == ["value-3", "value-4"])
            #expect(try await log.entries(order: .descending, limit: 3).map(\.position) == [7, 6, 5])
            #expect(try await log.entries(upTo: 3, order: .descending, limit: 10).map(\.position) == [3, 2, 1])
            // Paging through with a small page gives every entry once, in order.
            var seen: [Int] = []
            var after = 0
            while true {
                let page = try await log.entries(after: after, limit: 3)
                guard let last = page.last else { break }
                seen += page.map(\.position)
                after = last.position
            }
            #expect(seen == Array(1...7))
            // Another log in the same application is another sequence.
            let other = try EventSourcedLog<String>(name: "customers-by-email", application: t.app)
            #expect(other.id != log.id)
            #expect(try await other.last() == nil)
            try await other.append("x")
            #expect(try await other.entries(limit: 10).map(\.value) == ["x"])
            #expect(try await log.last()?.position == 7)
        }
    }

    @Test("Bad arguments are refused with .invalidArgument, and nothing is written")
    func badArguments() async throws {
        try await Self.app(.inMemory).withFreshApp { t in
            let log = try EventSourcedLog<Int>(name: "numbers", application: t.app)
            try await log.append(1)
            try await log.append(2)
            for limit in [0, -1, Int.min, EventSourcedLog<Int>.maxPageSize + 1, Int.max] {
                let e = await #expect(throws: EventSourcingError.self) { try await log.entries(limit: limit) }
                #expect(e?.code == .invalidArgument)
                #expect(e?.originatorID == log.id)
            }
            for (after, upTo) in [(-1, nil), (Int.min, nil), (nil, -1), (nil, Int.min), (Int.min, Int.min)] as [(Int?, Int?)] {
                let e = await #expect(throws: EventSourcingError.self) { try await log.entries(after: after, upTo: upTo, limit: 5) }
                #expect(e?.code == .invalidArgument)
            }
            // Ranges that are valid but empty, or beyond the end, read nothing (and never trap).
            #expect(try await log.entries(after: Int.max, limit: 5).isEmpty)
            #expect(try await log.entries(after: Int.max - 1, upTo: Int.max, limit: 5).isEmpty)
            #expect(try await log.entries(after: 2, upTo: 1, limit: 5).isEmpty)
            #expect(try await log.entries(after: 1, upTo: 1, limit: 5).isEmpty)
            #expect(try await log.entries(upTo: 0, limit: 5).isEmpty)
            #expect(try await log.entries(upTo: Int.max, order: .descending, limit: 1).map(\.position) == [2])
            for position in [0, -1, Int.min] {
                let e = await #expect(throws: EventSourcingError.self) { try await log.entry(at: position) }
                #expect(e?.code == .invalidArgument)
            }
            #expect(try await log.entry(at: Int.max) == nil)
            // A bad key scope or attempt count: refused before anything is written.
            for scope in ["", "a\u{0}b", "line\nbreak", String(repeating: "s", count: KeyScope.maxLength + 1)] {
                let e = await #expect(throws: EventSourcingError.self) { try await log.append(3, keyScope: scope) }
                #expect(e?.code == .invalidArgument)
                #expect(e.map { !$0.description.contains("line\nbreak") } == true)
            }
            let e = await #expect(throws: EventSourcingError.self) { try await log.append(3, maxAttempts: 0) }
            #expect(e?.code == .invalidArgument)
            #expect(try await log.entries(limit: 10).map(\.value) == [1, 2])
            #expect(try await t.app.notificationLog.maxNotificationID == 2)
        }
    }

    @Test("A name that is empty, too long or holds NUL is refused (described by its length, never quoted); ids are stable version-8 UUIDs")
    func names() throws {
        let app = Application(recorder: InMemoryRecorder())
        let long = String(repeating: "n", count: EventSourcedLog<Int>.maxNameBytes + 1)
        for name in ["", long, "secret\u{0}name", String(repeating: "é", count: 128)] {
            let e = #expect(throws: EventSourcingError.self) { try EventSourcedLog<Int>(name: name, application: app) }
            #expect(e?.code == .invalidArgument)
            #expect(e.map { !$0.message.contains("secret") && !$0.message.contains("nnnn") } == true)
        }
        // The longest name is accepted; ids are fixed by the name, and distinct.
        let longest = String(repeating: "n", count: EventSourcedLog<Int>.maxNameBytes)
        #expect(try EventSourcedLog<Int>(name: longest, application: app).id == EventSourcedLog<Int>.id(forName: longest))
        let a = try EventSourcedLog<Int>.id(forName: "customers")
        #expect(a == (try EventSourcedLog<String>.id(forName: "customers")))
        #expect(a != (try EventSourcedLog<Int>.id(forName: "customers2")))
        #expect(a != (try ErasureRecord.originatorID(forKeyScope: "customers")))
        #expect(a.uuidString.lowercased().dropFirst(14).first == "8")
        #expect("89ab".contains(a.uuidString.lowercased().dropFirst(19).first ?? "x"))
    }

    @Test("A log whose id holds another aggregate's events: appends and reads refuse with .aggregateTypeMismatch, and nothing is written",
          arguments: RecorderFactory.all)
    func anotherAggregatesID(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let log = try EventSourcedLog<String>(name: "dogs", application: t.app)
            var dog = try AggregateRoot<Dog>(id: log.id, .registered(name: "Rex"))
            try await t.app.save(&dog)
            let before = try await t.app.notificationLog.maxNotificationID
            let e = await #expect(throws: EventSourcingError.self) { try await log.append("x") }
            #expect(e?.code == .aggregateTypeMismatch)
            #expect(e?.originatorID == log.id)
            #expect(e?.topic == "Dog.registered")
            for read in [{ try await log.first() }, { try await log.last() }, { try await log.entry(at: 1) }] {
                let r = await #expect(throws: EventSourcingError.self) { _ = try await read() }
                #expect(r?.code == .aggregateTypeMismatch)
                #expect(r?.originatorVersion == 1)
            }
            #expect(try await t.app.notificationLog.maxNotificationID == before)
            #expect(try await t.app.repository.get(Dog.self, id: log.id).version == 1)
            // And the other way round: a log's id is no aggregate of another type.
            let names = try EventSourcedLog<String>(name: "names", application: t.app)
            try await names.append("a")
            let g = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: names.id) }
            #expect(g?.code == .aggregateTypeMismatch)
        }
    }

    @Test("An entry under a data subject's scope is erased by that subject's shred: reads say which entries were shredded, others intact; an append to the shredded scope writes nothing",
          arguments: RecorderFactory.all)
    func shreddedEntries(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let log = try EventSourcedLog<Indexed>(name: "customers-by-email", application: t.app)
            let alice = Indexed(customerID: UUID(), emailHash: "hmac-of-alice")
            let bob = Indexed(customerID: UUID(), emailHash: "hmac-of-bob")
            try await log.append(alice, keyScope: "subject-alice")
            try await log.append(bob, keyScope: "subject-bob")
            try await log.append(Indexed(customerID: UUID(), emailHash: "no-subject"))
            let upper = UUID()
            try await log.append(Indexed(customerID: upper, emailHash: "uuid-scope"), keyScope: upper.uuidString)
            #expect(try await log.entry(at: 1)?.keyScope == "subject-alice")
            #expect(try await log.entry(at: 3)?.keyScope == log.id.uuidString.lowercased())
            #expect(try await log.entry(at: 4)?.keyScope == upper.uuidString.lowercased())

            _ = try await t.app.shred(keyScope: "subject-alice")
            let entries = try await log.entries(limit: 10)
            #expect(entries.map(\.position) == [1, 2, 3, 4])
            #expect(entries.map(\.isShredded) == [true, false, false, false])
            #expect(entries[0].value == nil)
            guard case .shredded(let scope, let at) = entries[0].content else {
                Issue.record("entry 1 is not shredded")
                return
            }
            #expect(scope == "subject-alice")
            #expect(at != nil)
            let g = #expect(throws: EventSourcingError.self) { try entries[0].get() }
            #expect(g?.code == .shredded)
            #expect(g?.originatorID == log.id)
            #expect(g?.originatorVersion == 1)
            #expect(g?.keyScope == "subject-alice")
            #expect(try entries[1].get() == bob)
            #expect(entries[2].value?.emailHash == "no-subject")
            // The shred of a UUID-shaped scope, as an aggregate id's, reaches its entry.
            _ = try await t.app.shred(keyScope: upper.uuidString.lowercased())
            #expect(try await log.entry(at: 4)?.isShredded == true)

            let before = try await t.app.notificationLog.maxNotificationID
            let e = await #expect(throws: EventSourcingError.self) { try await log.append(alice, keyScope: "subject-alice") }
            #expect(e?.code == .shredded)
            #expect(try await t.app.notificationLog.maxNotificationID == before)
            #expect(try await log.last()?.position == 4)
            // Appends under other scopes go on.
            try await log.append(bob, keyScope: "subject-bob")
            #expect(try await log.last()?.value == bob)
        }
    }

    @Test("Concurrent appends from several tasks all land: positions 1...n without gaps, each value once, each task's values in its order",
          arguments: RecorderFactory.all)
    func concurrentAppends(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let log = try EventSourcedLog<String>(name: "race", application: t.app)
            let tasks = 3, each = 15
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<tasks {
                    group.addTask {
                        // Half of the writers name a subject (one key each), half use the log's own scope.
                        for i in 0..<each { try await log.append("\(w)-\(i)", keyScope: w % 2 == 0 ? nil : "writer-\(w)") }
                    }
                }
                try await group.waitForAll()
            }
            let all = try await log.entries(limit: EventSourcedLog<String>.maxPageSize)
            #expect(all.map(\.position) == Array(1...(tasks * each)))
            let values = all.compactMap(\.value)
            #expect(Set(values).count == tasks * each)
            for w in 0..<tasks {
                #expect(values.filter { $0.hasPrefix("\(w)-") } == (0..<each).map { "\(w)-\($0)" })
            }
            // The log order is the notification order.
            let items = try await t.app.notificationLog.read(start: 1, limit: 1000, topics: [EventSourcedLog<String>.topic])
            #expect(items.map(\.notification.originatorVersion) == Array(1...(tasks * each)))
        }
    }

    @Test("Nothing personal in plaintext: the SQLite file holds neither entries nor the log's name; the record's plaintext columns hold only the log id, the position and the topic")
    func nothingInPlaintext() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("es-log-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("log.sqlite").path
        let store = try SQLiteStore(path: path)
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        let name = "index-name-NEEDLE-7f3a"
        let log = try EventSourcedLog<String>(name: name, application: app)
        let values = (0..<20).map { "ada.lovelace.\($0)@example.org" }
        for v in values { try await log.append(v, keyScope: "subject-ada") }
        let stored = try await store.selectEvents(originatorID: log.id)
        #expect(stored.count == values.count)
        for s in stored {
            #expect(s.topic == "eventsourcing.log/1.appended")
            #expect(!bytes(s.state, contain: Array("ada.lovelace".utf8)))
        }
        await store.close()
        for suffix in ["", "-wal"] {
            guard let data = FileManager.default.contents(atPath: path + suffix) else { continue }
            #expect(data.range(of: Data("ada.lovelace".utf8)) == nil, "an entry is in log.sqlite\(suffix) in plaintext")
            #expect(data.range(of: Data("NEEDLE".utf8)) == nil, "the log's name is in log.sqlite\(suffix)")
        }
    }
    @Test("A pending entry saves atomically with another aggregate: both or neither", arguments: RecorderFactory.all)
    func atomicWithAggregate(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let log = try EventSourcedLog<UUID>(name: "dogs", application: t.app)
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            var entry = try await log.pendingEntry(dog.id, keyScope: dog.keyScope)
            #expect(entry.version == 1)
            let recordings = try await t.app.save(&dog, &entry)
            #expect(recordings.map(\.originatorID) == [dog.id, log.id])
            #expect(try await log.last()?.value == dog.id)
            #expect(try await log.last()?.keyScope == dog.keyScope)

            // A save whose aggregate conflicts writes no entry either.
            var first = try await t.app.repository.get(Dog.self, id: dog.id)
            var stale = first
            try first.record(.addedTrick("sit"))
            try await t.app.save(&first)
            try stale.record(.addedTrick("roll"))
            var lost = try await log.pendingEntry(UUID())
            let before = try await t.app.notificationLog.maxNotificationID
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.save(&stale, &lost) }
            #expect(e?.code == .concurrencyConflict)
            #expect(try await log.last()?.position == 1)
            #expect(try await t.app.notificationLog.maxNotificationID == before)
            // Two entries in one save, under one scope.
            var two = try await log.pendingEntry(UUID())
            try two.record(.init(value: UUID()))
            try await t.app.save(&two)
            #expect(try await log.entries(limit: 10).map(\.position) == [1, 2, 3])
        }
    }

    /// Indexes every registered dog in the follower's own log, collecting the entry with the
    /// tracking record; throws once, after collecting, at `crashAt` (a crash before the commit).
    struct DogIndexPolicy: ProcessPolicy {
        let crashAt: Int64
        let crash = OneShot(true)
        var topics: [String] { ["Dog.registered"] }
        func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
            let dog = try event.event(as: Dog.self)
            let log = try EventSourcedLog<UUID>(name: "registered-dogs", application: context.application)
            var entry = try await log.pendingEntry(dog.originatorID)
            try context.collect(&entry)
            if event.notificationID == crashAt, crash.fire() {
                throw EventSourcingError(.recorderFailure, "test: crash before the commit")
            }
        }
    }

    @Test("A process application keeps an index exactly once: entries collected in its processing context commit with its tracking; a crash before the commit leaves none, and the restart adds each once")
    func indexKeptByProcessApplication() async throws {
        try await SystemFixture.with(.inMemory, names: ["kennel", "index"]) { f in
            let kennel = try f.app("kennel")
            var ids: [UUID] = []
            var last: Int64 = 0
            for i in 0..<5 {
                var d = try AggregateRoot<Dog>(.registered(name: "dog-\(i)"))
                last = try await kennel.save(&d).last?.notificationID ?? 0
                ids.append(d.id)
            }
            let policy = DogIndexPolicy(crashAt: 3)
            func system() throws -> System {
                let index = try ProcessApplication(name: "index", application: try f.app("index"), policy: policy)
                return try System(members: [.application("kennel", kennel), .process(index)], pipes: [["kennel", "index"]])
            }
            let log = try EventSourcedLog<UUID>(name: "registered-dogs", application: try f.app("index"))
            let first = try SystemRunner(system: try system())
            let e = await #expect(throws: EventSourcingError.self) { try await first.run() }
            #expect(e?.code == .processFailed)
            #expect(e?.notificationID == 3)
            #expect(try await log.entries(limit: 10).compactMap(\.value) == Array(ids.prefix(2)))
            try await runUntil(try SystemRunner(system: try system()), [("index", "kennel", last)])
            #expect(try await log.entries(limit: 10).compactMap(\.value) == ids)
            #expect(try await log.last()?.position == 5)
        }
    }
    /// An in-memory recorder that flips one byte of the stored state of `version` when read
    /// (a tampered row), and can return more events than asked (a broken recorder).
    final class HostileLogRecorder: ApplicationRecorder {
        let inner = InMemoryRecorder()
        let tamperedVersion: Int?
        let extra: Bool
        init(tamperedVersion: Int? = nil, extra: Bool = false) { (self.tamperedVersion, self.extra) = (tamperedVersion, extra) }
        func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
        func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
            var out = try await inner.selectEvents(query)
            for i in out.indices where out[i].originatorVersion == tamperedVersion {
                var state = out[i].state
                state[state.count - 1] ^= 0x01
                out[i] = StoredEvent(originatorID: out[i].originatorID, originatorVersion: out[i].originatorVersion,
                                     topic: out[i].topic, state: state, keyScope: out[i].keyScope)
            }
            if extra { out += try await inner.selectEvents(EventQuery(originatorID: query.originatorID)) }
            return out
        }
        func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
            try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
        }
        func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
    }

    @Test("A tampered entry, an entry read as the wrong type and a recorder that returns too much are typed errors naming the log and the position, never a crash or a wrong value")
    func unreadableEntries() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let tampering = HostileLogRecorder(tamperedVersion: 2)
        let app = Application(recorder: tampering, mapper: Mapper(keyring: keyring))
        let log = try EventSourcedLog<String>(name: "tampered", application: app)
        for v in ["a", "b", "c"] { try await log.append(v) }
        #expect(try await log.entry(at: 1)?.value == "a")
        let e = await #expect(throws: EventSourcingError.self) { try await log.entries(limit: 10) }
        #expect(e?.code == .integrityFailure)
        #expect(e?.originatorID == log.id)
        #expect(e?.originatorVersion == 2)
        #expect(e.map { !$0.description.contains("\"b\"") } == true)

        // The same log read with another entry type.
        let asInts = try EventSourcedLog<Int>(name: "tampered", application: app)
        let d = await #expect(throws: EventSourcingError.self) { try await asInts.first() }
        #expect(d?.code == .decodingFailed)
        #expect(d?.originatorID == log.id)
        #expect(d?.originatorVersion == 1)

        let broken = Application(recorder: HostileLogRecorder(extra: true), mapper: Mapper(keyring: keyring))
        let overfull = try EventSourcedLog<String>(name: "overfull", application: broken)
        try await overfull.append("x")
        try await overfull.append("y")
        let r = await #expect(throws: EventSourcingError.self) { try await overfull.entries(limit: 1) }
        #expect(r?.code == .recorderFailure)
    }
}
