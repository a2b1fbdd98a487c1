import EventSourcing
import Foundation
import KeyManagement
import Testing

/// The application layer over every recorder, with encryption on and off.
@Suite("Application")
struct ApplicationTests {
    private static func registeredDog(_ name: String = "Fido", tricks: [String] = []) throws -> AggregateRoot<Dog> {
        var dog = try AggregateRoot<Dog>(.registered(name: name))
        for t in tricks { try dog.record(.addedTrick(t)) }
        return dog
    }

    // MARK: Saving

    @Test("save clears the pending events and returns one recording per event with its notification id",
          arguments: AppFactory.all)
    func saveClearsPending(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var dog = try Self.registeredDog(tricks: ["roll over"])
            #expect(dog.pendingEvents.count == 2)
            let recs = try await t.app.save(&dog)
            #expect(dog.pendingEvents.isEmpty)
            #expect(dog.version == 2)
            #expect(recs.map(\.notificationID) == [1, 2])
            #expect(recs.map(\.originatorVersion) == [1, 2])
            #expect(recs.map(\.topic) == ["Dog.registered", "Dog.addedTrick"])
            #expect(recs.allSatisfy { $0.originatorID == dog.id })

            // Nothing pending: nothing recorded.
            #expect(try await t.app.save(&dog).isEmpty)
            #expect(try await t.app.notificationLog.maxNotificationID == 2)

            try dog.record(.addedTrick("sit"))
            let more = try await t.app.save(&dog)
            #expect(more.map(\.notificationID) == [3])
            #expect(more.map(\.originatorVersion) == [3])
            #expect(dog.pendingEvents.isEmpty)

            var other = try Self.registeredDog("Rex")
            #expect(try await t.app.save(&other).map(\.notificationID) == [4])
        }
    }

    @Test("saving two aggregates is one atomic recorder call: if one conflicts, neither is written",
          arguments: AppFactory.all)
    func saveTwoAtomically(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            let spy = SpyRecorder(t.store.recorder)
            let app = Application(recorder: spy, snapshots: t.store.snapshots, mapper: t.app.mapper)

            // Success: both aggregates' events in a single insert.
            var a = try Self.registeredDog("A", tricks: ["sit"])
            var b = try Self.registeredDog("B")
            let recs = try await app.save(&a, &b)
            #expect(spy.inserts.count == 1)
            #expect(spy.inserts.first?.map(\.originatorID) == [a.id, a.id, b.id])
            #expect(recs.map(\.notificationID) == [1, 2, 3])
            #expect(a.pendingEvents.isEmpty && b.pendingEvents.isEmpty)

            // Conflict: `stale` is behind a, so its event 3 collides; the new dog c must not be written.
            var stale = try await app.repository.get(Dog.self, id: a.id)
            try a.record(.addedTrick("beg"))
            try await app.save(&a)
            try stale.record(.addedTrick("roll"))
            var c = try Self.registeredDog("C", tricks: ["paw"])
            spy.reset()
            let e = await #expect(throws: EventSourcingError.self) { try await app.save(&c, &stale) }
            #expect(e?.code == .concurrencyConflict)
            #expect(e?.originatorID == a.id)
            #expect(e?.originatorVersion == 3)
            #expect(spy.inserts.count == 1, "both aggregates went to the recorder in one call")
            #expect(try await app.repository.contains(c.id) == false)
            #expect(try await app.repository.get(Dog.self, id: a.id).tricks == ["sit", "beg"])
            #expect(try await app.notificationLog.maxNotificationID == 4)
            // The failed save leaves both roots' pending events in place.
            #expect(c.pendingEvents.count == 2)
            #expect(stale.pendingEvents.count == 1)

            // Three at once and an array at once are also single calls.
            var d1 = try Self.registeredDog("D1"), d2 = try Self.registeredDog("D2"), d3 = try Self.registeredDog("D3")
            spy.reset()
            try await app.save(&d1, &d2, &d3)
            #expect(spy.inserts.count == 1)
            var many = try (1...4).map { try Self.registeredDog("M\($0)") }
            spy.reset()
            let manyRecs = try await app.save(&many)
            #expect(spy.inserts.count == 1)
            #expect(manyRecs.map(\.notificationID) == [8, 9, 10, 11])
            #expect(many.allSatisfy { $0.pendingEvents.isEmpty })
        }
    }

    @Test("saving several new aggregates of one new data subject in one save works and mints one data key",
          arguments: AppFactory.all)
    func saveSharedNewScope(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var c1 = try AggregateRoot<Customer>(.registered(personID: "family-1", name: "One", email: "1"))
            var c2 = try AggregateRoot<Customer>(.registered(personID: "family-1", name: "Two", email: "2"))
            let recs = try await t.app.save(&c1, &c2)
            #expect(recs.map(\.notificationID) == [1, 2])
            var more = try (3...5).map { try AggregateRoot<Customer>(.registered(personID: "family-2", name: "N\($0)", email: "")) }
            #expect(try await t.app.save(&more).count == 3)
            for c in [c1, c2] + more {
                #expect(try await t.app.repository.get(Customer.self, id: c.id).personID == c.personID)
            }
            if let keyStore = t.keyring?.store {
                #expect(try await keyStore.dataKeys(scope: "family-1").map(\.version) == [1])
                #expect(try await keyStore.dataKeys(scope: "family-2").map(\.version) == [1])
            }
        }
    }

    // MARK: Getting

    @Test("repository.get rebuilds the state, at the latest or a past version; unknown ids are not found",
          arguments: AppFactory.all)
    func getRebuilds(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            let t0 = Date(timeIntervalSince1970: 1_000_000)
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"), at: t0)
            try dog.record(.addedTrick("sit"), at: t0.addingTimeInterval(10))
            try dog.record(.addedTrick("roll"), at: t0.addingTimeInterval(20))
            try await t.app.save(&dog)

            let got = try await t.app.repository.get(Dog.self, id: dog.id)
            #expect(got.id == dog.id)
            #expect(got.version == 3)
            #expect(got.state == Dog(name: "Fido", tricks: ["sit", "roll"]))
            #expect(got.pendingEvents.isEmpty)
            #expect(got.createdOn == t0)
            #expect(got.modifiedOn == t0.addingTimeInterval(20))

            let v1 = try await t.app.repository.get(Dog.self, id: dog.id, version: 1)
            #expect(v1.version == 1)
            #expect(v1.state == Dog(name: "Fido", tricks: []))
            #expect(v1.modifiedOn == t0)
            let v2 = try await t.app.repository.get(Dog.self, id: dog.id, version: 2)
            #expect(v2.state.tricks == ["sit"])
            #expect(try await t.app.repository.get(Dog.self, id: dog.id, version: 99).version == 3)

            let unknown = UUID()
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: unknown) }
            #expect(e?.code == .aggregateNotFound)
            #expect(e?.originatorID == unknown)
            let invalidArgument = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: dog.id, version: 0) }
            #expect(invalidArgument?.code == .invalidArgument)

            #expect(try await t.app.repository.contains(dog.id))
            #expect(try await t.app.repository.contains(unknown) == false)

            // A got root continues where the stored one ended.
            var again = got
            try again.record(.addedTrick("beg"))
            #expect(try await t.app.save(&again).map(\.originatorVersion) == [4])
        }
    }

    // MARK: Conflicts

    @Test("a concurrent conflicting save throws .concurrencyConflict naming the aggregate and version",
          arguments: AppFactory.all)
    func conflictingSave(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var dog = try Self.registeredDog()
            try await t.app.save(&dog)
            var first = try await t.app.repository.get(Dog.self, id: dog.id)
            var second = try await t.app.repository.get(Dog.self, id: dog.id)
            try first.record(.addedTrick("sit"))
            try second.record(.addedTrick("beg"))
            try await t.app.save(&first)
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.save(&second) }
            #expect(e?.code == .concurrencyConflict)
            #expect(e?.originatorID == dog.id)
            #expect(e?.originatorVersion == 2)
            #expect(e?.isConcurrencyConflict == true)
            #expect(second.pendingEvents.count == 1, "a failed save keeps the pending events")
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).tricks == ["sit"])
        }
    }

    @Test("retryingOnConflict reruns the command after a conflict and succeeds", arguments: AppFactory.all)
    func retrySucceeds(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var dog = try Self.registeredDog()
            try await t.app.save(&dog)
            let id = dog.id
            var attempts = 0
            let version = try await t.app.retryingOnConflict(maxAttempts: 5) {
                attempts += 1
                var mine = try await t.app.repository.get(Dog.self, id: id)
                if attempts == 1 {
                    // Someone else saves between our read and our write.
                    var theirs = try await t.app.repository.get(Dog.self, id: id)
                    try theirs.record(.addedTrick("sit"))
                    try await t.app.save(&theirs)
                }
                try mine.record(.addedTrick("beg"))
                try await t.app.save(&mine)
                return mine.version
            }
            #expect(attempts == 2)
            #expect(version == 3)
            #expect(try await t.app.repository.get(Dog.self, id: id).tricks == ["sit", "beg"])
        }
    }

    @Test("retryingOnConflict gives up after maxAttempts and rethrows other errors at once", arguments: AppFactory.all)
    func retryGivesUp(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var dog = try Self.registeredDog()
            try await t.app.save(&dog)
            let stale = try await t.app.repository.get(Dog.self, id: dog.id)
            try dog.record(.addedTrick("sit"))
            try await t.app.save(&dog)

            var attempts = 0
            let e = await #expect(throws: EventSourcingError.self) {
                try await t.app.retryingOnConflict(maxAttempts: 3) {
                    attempts += 1
                    var s = stale
                    try s.record(.addedTrick("never"))
                    try await t.app.save(&s)
                }
            }
            #expect(e?.code == .concurrencyConflict)
            #expect(attempts == 3)
            #expect(e?.originatorVersion == 2)

            attempts = 0
            let aggregateNotFound = await #expect(throws: EventSourcingError.self) {
                try await t.app.retryingOnConflict(maxAttempts: 3) {
                    attempts += 1
                    return try await t.app.repository.get(Dog.self, id: UUID())
                }
            }
            #expect(aggregateNotFound?.code == .aggregateNotFound)
            #expect(attempts == 1)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).tricks == ["sit"])
        }
    }

    // MARK: Snapshots

    @Test("get starts from a snapshot taken with takeSnapshot and still works below it", arguments: AppFactory.all)
    func snapshotUsed(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            let spy = SpyRecorder(t.store.recorder)
            let app = Application(recorder: spy, snapshots: t.store.snapshots, mapper: t.app.mapper)
            let t0 = Date(timeIntervalSince1970: 2_000_000)
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"), at: t0)
            for (i, trick) in ["a", "b", "c", "d"].enumerated() {
                try dog.record(.addedTrick(trick), at: t0.addingTimeInterval(Double(i + 1)))
            }
            try await app.save(&dog)   // versions 1…5

            try await app.takeSnapshot(Dog.self, id: dog.id, version: 3)
            let snap = try #require(try await t.store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil))
            #expect(snap.originatorVersion == 3)
            #expect(snap.topic == "Dog#snapshot")

            spy.reset()
            let latest = try await app.repository.get(Dog.self, id: dog.id)
            #expect(latest.state == Dog(name: "Fido", tricks: ["a", "b", "c", "d"]))
            #expect(latest.version == 5)
            #expect(latest.createdOn == t0)
            #expect(latest.modifiedOn == t0.addingTimeInterval(4))
            #expect(spy.queries == [EventQuery(originatorID: dog.id, after: 3)],
                    "only the events after the snapshot are read")

            spy.reset()
            let atSnap = try await app.repository.get(Dog.self, id: dog.id, version: 3)
            #expect(atSnap.state == Dog(name: "Fido", tricks: ["a", "b"]))
            #expect(atSnap.version == 3)
            #expect(atSnap.createdOn == t0)
            #expect(atSnap.modifiedOn == t0.addingTimeInterval(2))
            #expect(spy.queries == [EventQuery(originatorID: dog.id, after: 3, upTo: 3)])

            spy.reset()
            let below = try await app.repository.get(Dog.self, id: dog.id, version: 2)
            #expect(below.state == Dog(name: "Fido", tricks: ["a"]))
            #expect(below.version == 2)
            #expect(spy.queries == [EventQuery(originatorID: dog.id, upTo: 2)])

            // A root restored from a snapshot can record and save further.
            var more = latest
            try more.record(.addedTrick("e"))
            #expect(try await app.save(&more).map(\.originatorVersion) == [6])

            // takeSnapshot without a version snapshots the latest.
            try await app.takeSnapshot(Dog.self, id: dog.id)
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 6)
            spy.reset()
            #expect(try await app.repository.get(Dog.self, id: dog.id).tricks == ["a", "b", "c", "d", "e"])
            #expect(spy.queries.map(\.after) == [6])

            // Without a snapshot recorder, takeSnapshot is refused.
            let bare = Application(recorder: t.store.recorder, mapper: t.app.mapper)
            let invalidArgument = await #expect(throws: EventSourcingError.self) { try await bare.takeSnapshot(Dog.self, id: dog.id) }
            #expect(invalidArgument?.code == .invalidArgument)
            let aggregateNotFound = await #expect(throws: EventSourcingError.self) { try await app.takeSnapshot(Dog.self, id: UUID()) }
            #expect(aggregateNotFound?.code == .aggregateNotFound)
        }
    }

    @Test("automatic snapshots are taken whenever a save crosses a multiple of the interval", arguments: AppFactory.all)
    func automaticSnapshots(_ factory: AppFactory) async throws {
        try await factory.withFreshApp(snapshotIntervals: [.every(3, for: Dog.self)]) { t async throws in
            let snaps = t.store.snapshots
            var dog = try Self.registeredDog()
            try await t.app.save(&dog)   // v1
            try dog.record(.addedTrick("a"))
            try await t.app.save(&dog)   // v2
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: nil) == nil)

            try dog.record(.addedTrick("b"))
            try await t.app.save(&dog)   // v3: crosses 3
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 3)

            try dog.record(.addedTrick("c"))
            try await t.app.save(&dog)   // v4: nothing new
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 3)

            for trick in ["d", "e", "f"] { try dog.record(.addedTrick(trick)) }
            try await t.app.save(&dog)   // v5…v7 in one save: crosses 6, snapshot at the saved version 7
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 7)
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: 6)?.originatorVersion == 3)
            #expect(try await snaps.selectSnapshot(originatorID: dog.id, lte: 2) == nil)

            let got = try await t.app.repository.get(Dog.self, id: dog.id)
            #expect(got.version == 7)
            #expect(got.tricks == ["a", "b", "c", "d", "e", "f"])
            let at5 = try await t.app.repository.get(Dog.self, id: dog.id, version: 5)
            #expect(at5.tricks == ["a", "b", "c", "d"])

            // A type without an interval gets no automatic snapshots.
            var customer = try AggregateRoot<Customer>(.registered(personID: "p", name: "n", email: "e"))
            for i in 0..<5 { try customer.record(.changedEmail("e\(i)")) }
            try await t.app.save(&customer)
            #expect(try await snaps.selectSnapshot(originatorID: customer.id, lte: nil) == nil)

            // The first save of a new aggregate that already passes the interval is snapshotted too.
            var big = try Self.registeredDog("Big", tricks: ["1", "2", "3"])
            try await t.app.save(&big)
            #expect(try await snaps.selectSnapshot(originatorID: big.id, lte: nil)?.originatorVersion == 4)
        }
    }

    // MARK: Notification log

    @Test("the notification log selects, counts and reads events in commit order, filtered by topics",
          arguments: AppFactory.all)
    func notificationLog(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            let log = t.app.notificationLog
            #expect(try await log.maxNotificationID == nil)
            #expect(try await log.select(start: 1, limit: 10).isEmpty)

            var a = try Self.registeredDog("A", tricks: ["sit"])   // 1, 2
            try await t.app.save(&a)
            var b = try Self.registeredDog("B")                     // 3
            try await t.app.save(&b)
            try a.record(.addedTrick("beg"))                         // 4
            try await t.app.save(&a)

            #expect(try await log.maxNotificationID == 4)
            let all = try await log.select(start: 1, limit: 10)
            #expect(all.map(\.id) == [1, 2, 3, 4])
            #expect(all.map(\.originatorID) == [a.id, a.id, b.id, a.id])
            #expect(all.map(\.originatorVersion) == [1, 2, 1, 3])
            #expect(all.map(\.topic) == ["Dog.registered", "Dog.addedTrick", "Dog.registered", "Dog.addedTrick"])
            #expect(try await log.select(start: 2, limit: 2).map(\.id) == [2, 3])
            #expect(try await log.select(start: 1, limit: 10, stop: 3).map(\.id) == [1, 2, 3])
            #expect(try await log.select(start: 1, limit: 10, topics: ["Dog.addedTrick"]).map(\.id) == [2, 4])
            #expect(try await log.select(start: 5, limit: 10).isEmpty)
            let invalidArgument = await #expect(throws: EventSourcingError.self) { try await log.select(start: 0, limit: 10) }
            #expect(invalidArgument?.code == .invalidArgument)
            let invalidArgument2 = await #expect(throws: EventSourcingError.self) { try await log.select(start: 1, limit: 0) }
            #expect(invalidArgument2?.code == .invalidArgument)

            let items = try await log.read(start: 1, limit: 10)
            #expect(items.map(\.notification.id) == [1, 2, 3, 4])
            #expect(items.allSatisfy { !$0.isShredded })
            let events = try items.map { try $0.event(as: Dog.self) }
            #expect(events.map(\.event) == [.registered(name: "A"), .addedTrick("sit"), .registered(name: "B"), .addedTrick("beg")])
            #expect(events.map(\.originatorID) == [a.id, a.id, b.id, a.id])
            #expect(events.map(\.originatorVersion) == [1, 2, 1, 3])

            let tricks = try await log.read(start: 1, limit: 10, topics: ["Dog.addedTrick"])
            #expect(try tricks.map { try $0.event(as: Dog.self).event } == [.addedTrick("sit"), .addedTrick("beg")])
            let page = try await log.read(start: 3, limit: 1)
            #expect(page.map(\.notification.id) == [3])
            #expect(try page.first?.event(as: Dog.self).event == .registered(name: "B"))
            // Reading an item as the wrong aggregate type is refused, naming the topic.
            let e = #expect(throws: EventSourcingError.self) { try page.first?.event(as: Customer.self) }
            #expect(e?.code == .aggregateTypeMismatch)
            #expect(e?.topic == "Dog.registered")
        }
    }

    // MARK: Topics and upcasting

    @Test("stored topics are \"Dog.registered\" and \"Dog.addedTrick\"", arguments: AppFactory.all)
    func storedTopics(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var dog = try Self.registeredDog(tricks: ["sit"])
            try await t.app.save(&dog)
            let stored = try await t.store.recorder.selectEvents(originatorID: dog.id)
            #expect(stored.map(\.topic) == ["Dog.registered", "Dog.addedTrick"])
            let flags = stored.compactMap { s -> StateHeader.Flags? in
                if case .success(let (h, _)) = StateHeader.parse(s.state) { return h.flags } else { return nil }
            }
            #expect(flags.count == 2)
            #expect(flags.allSatisfy { $0.contains(.encrypted) == factory.encrypted })
        }
    }

    @Test("events stored by the v1 type are upcast when read by the v2 type of the same typeName",
          arguments: AppFactory.all)
    func upcasting(_ factory: AppFactory) async throws {
        try await factory.withFreshApp(snapshotIntervals: [.every(2, for: Dog.self)]) { t async throws in
            var dog = try Self.registeredDog("Fido", tricks: ["sit"])
            try await t.app.save(&dog)   // a v1 snapshot is taken at version 2 as well

            var v2 = try await t.app.repository.get(DogV2.self, id: dog.id)
            #expect(v2.state == DogV2(name: "Fido", breed: "unknown", tricks: ["sit"]))
            #expect(v2.version == 2)

            // New events are written with schema 2; the mix of schemas still reads.
            try v2.record(.addedTrick("beg"))
            try await t.app.save(&v2)
            var fresh = try AggregateRoot<DogV2>(.registered(name: "Rex", breed: "collie"))
            try await t.app.save(&fresh)
            #expect(try await t.app.repository.get(DogV2.self, id: dog.id).tricks == ["sit", "beg"])
            #expect(try await t.app.repository.get(DogV2.self, id: fresh.id).breed == "collie")

            // The log reads the v1 event through the v2 type too.
            let first = try #require(try await t.app.notificationLog.read(start: 1, limit: 1).first)
            #expect(try first.event(as: DogV2.self).event == .registered(name: "Fido", breed: "unknown"))
        }
    }

    @Test("a schema version newer than the code is .decodingFailed naming the topic", arguments: AppFactory.all)
    func newerSchemaRejected(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t async throws in
            var fresh = try AggregateRoot<DogV2>(.registered(name: "Rex", breed: "collie"))
            try fresh.record(.addedTrick("sit"))
            try await t.app.save(&fresh)
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: fresh.id) }
            #expect(e?.code == .decodingFailed)
            #expect(e?.topic == "Dog.registered")
            #expect(e?.originatorID == fresh.id)
            #expect(e?.originatorVersion == 1)

            let stored = try await t.store.recorder.selectEvents(originatorID: fresh.id)
            let e2 = await #expect(throws: EventSourcingError.self) { try await t.app.mapper.decode(stored[1], as: Dog.self) }
            #expect(e2?.code == .decodingFailed)
            #expect(e2?.topic == "Dog.addedTrick")
            #expect(e2?.originatorVersion == 2)
        }
    }
}

/// The aggregate root's own rules: no store needed.
@Suite("AggregateRoot")
struct AggregateRootTests {
    @Test("applying an event with the wrong version throws .invalidEvent and changes nothing")
    func wrongVersion() throws {
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        for v in [0, 1, 3, 100] {
            let e = DomainEvent<Dog.Event>(originatorID: dog.id, originatorVersion: v, timestamp: Date(), event: .addedTrick("x"))
            let error = #expect(throws: EventSourcingError.self) { try dog.apply(e) }
            #expect(error?.code == .invalidEvent)
            #expect(error?.originatorVersion == v)
        }
        #expect(dog.version == 1)
        #expect(dog.tricks.isEmpty)
        try dog.apply(DomainEvent(originatorID: dog.id, originatorVersion: 2, timestamp: Date(), event: .addedTrick("ok")))
        #expect(dog.version == 2)
        #expect(dog.tricks == ["ok"])
        #expect(dog.pendingEvents.count == 1, "apply replays; it does not queue")
    }

    @Test("applying an event of another aggregate throws .invalidEvent naming that aggregate")
    func wrongOriginator() throws {
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        let stranger = UUID()
        let e = DomainEvent<Dog.Event>(originatorID: stranger, originatorVersion: 2, timestamp: Date(), event: .addedTrick("x"))
        let error = #expect(throws: EventSourcingError.self) { try dog.apply(e) }
        #expect(error?.code == .invalidEvent)
        #expect(error?.originatorID == stranger)
        #expect(dog.version == 1)
        #expect(dog.tricks.isEmpty)
    }

    @Test("a domain rule that throws leaves state, version and pending events unchanged")
    func domainRuleThrows() throws {
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try dog.record(.addedTrick("sit"))
        #expect(throws: Dog.EmptyTrick.self) { try dog.record(.addedTrick("")) }
        #expect(dog.version == 2)
        #expect(dog.tricks == ["sit"])
        #expect(dog.pendingEvents.map(\.event) == [.registered(name: "Fido"), .addedTrick("sit")])
        #expect(throws: Dog.EmptyTrick.self) { try AggregateRoot<Dog>(.addedTrick("")) }
    }

    @Test("state is read through the root with dynamic member lookup")
    func dynamicMemberLookup() throws {
        let t0 = Date(timeIntervalSince1970: 5)
        var dog = try AggregateRoot<Dog>(id: UUID(), .registered(name: "Fido"), at: t0)
        try dog.record(.addedTrick("sit"), at: Date(timeIntervalSince1970: 6))
        #expect(dog.name == "Fido")
        #expect(dog.tricks == ["sit"])
        #expect(dog.name == dog.state.name)
        #expect(dog.createdOn == t0)
        #expect(dog.modifiedOn == Date(timeIntervalSince1970: 6))
        #expect(dog.pendingEvents.map(\.originatorVersion) == [1, 2])
        #expect(dog.pendingEvents.allSatisfy { $0.originatorID == dog.id })
    }

    @Test("topics are typeName.caseName and the key scope is the data subject, else the id")
    func topicsAndScopes() throws {
        #expect(Dog.topic(of: .registered(name: "x")) == "Dog.registered")
        #expect(Dog.topic(of: .addedTrick("x")) == "Dog.addedTrick")
        #expect(DogV2.topic(of: .registered(name: "x", breed: "y")) == "Dog.registered")
        #expect(Customer.topic(of: .changedEmail("x")) == "Customer.changedEmail")
        #expect(Dog.snapshotTopic == "Dog#snapshot")

        let id = UUID()
        let dog = try AggregateRoot<Dog>(id: id, .registered(name: "Fido"))
        #expect(dog.keyScope == id.uuidString.lowercased())
        let customer = try AggregateRoot<Customer>(.registered(personID: "person-7", name: "n", email: "e"))
        #expect(customer.keyScope == "person-7")
    }
}
