import EventSourcing
import Foundation
import KeyManagement
import Testing

/// An aggregate whose event topic ends with the reserved discard suffix.
private struct Sneaky: Aggregate {
    static let typeName = "Sneaky"
    enum Event: Codable, Sendable { case made }
    static func topicName(of event: Event) -> String { "x#discarded" }
    mutating func apply(_ event: Event) {}
}

/// `AggregateRoot.discard()`: the marker, what reads say afterwards, what stays in the log, on
/// every recorder, encrypted.
@Suite("Discard")
struct DiscardTests {
    private static func app(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    private static func expectDiscarded(_ app: Application, _ id: UUID, atVersion n: Int) async {
        do {
            _ = try await app.repository.get(Dog.self, id: id)
            Issue.record("get of a discarded aggregate returned")
        } catch let e as EventSourcingError {
            #expect(e.code == .aggregateNotFound)
            #expect(e.message.contains("discarded at version \(n)"), "\(e)")
            #expect(e.originatorID == id)
            #expect(e.originatorVersion == n)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test("after a saved discard: contains is false, get says discarded at version N, older versions read, the root takes no event",
          arguments: RecorderFactory.all)
    func semantics(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try dog.record(.addedTrick("sit"))
            try await t.app.save(&dog)
            var other = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try await t.app.save(&other)
            #expect(try await t.app.repository.contains(dog.id))

            try dog.discard()
            #expect(dog.isDiscarded)
            #expect(dog.version == 3)
            #expect(dog.name == "Rex")   // the state stays readable
            let recordings = try await t.app.save(&dog)
            #expect(recordings.map(\.topic) == ["Dog#discarded"])
            #expect(recordings.map(\.originatorVersion) == [3])
            #expect(Dog.discardTopic == "Dog#discarded")

            #expect(try await t.app.repository.contains(dog.id) == false)
            #expect(try await t.app.repository.contains(other.id))
            await Self.expectDiscarded(t.app, dog.id, atVersion: 3)
            for v in [3, 4] {
                await #expect(throws: EventSourcingError.self) { _ = try await t.app.repository.get(Dog.self, id: dog.id, version: v) }
            }
            let v2 = try await t.app.repository.get(Dog.self, id: dog.id, version: 2)
            #expect(v2.tricks == ["sit"])
            #expect(v2.isDiscarded == false)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id, version: 1).tricks.isEmpty)
            #expect(try await t.app.repository.get(Dog.self, id: other.id).name == "Fido")

            // The saved root takes no more events, and cannot be discarded twice.
            do { try dog.record(.addedTrick("roll")) } catch let e as EventSourcingError { #expect(e.code == .invalidEvent) }
            do { try dog.discard() } catch let e as EventSourcingError { #expect(e.code == .invalidEvent) }
            #expect(dog.version == 3 && dog.pendingEvents.isEmpty)

            // A stale root (got before the discard) cannot write after it.
            var stale = try await t.app.repository.get(Dog.self, id: dog.id, version: 2)
            try stale.record(.addedTrick("late"))
            do {
                try await t.app.save(&stale)
                Issue.record("a save after the discard marker succeeded")
            } catch let e as EventSourcingError {
                #expect(e.code == .concurrencyConflict)
            }

            // The history stays in the log; the marker reads as a decoded item without an event.
            let log = try await t.app.notificationLog.read(start: 1, limit: 100)
            #expect(log.map(\.notification.topic) == ["Dog.registered", "Dog.addedTrick", "Dog.registered", "Dog#discarded"])
            let marker = try #require(log.last)
            #expect(marker.isDiscardMarker)
            #expect(log.dropLast().allSatisfy { !$0.isDiscardMarker })
            guard case .decoded = marker.outcome else { Issue.record("marker outcome \(marker.outcome)"); return }
            do {
                _ = try marker.event(as: Dog.self)
                Issue.record("a discard marker decoded as an event")
            } catch let e as EventSourcingError {
                #expect(e.code == .aggregateTypeMismatch)
                #expect(e.notificationID == 4)
                #expect(e.message.contains("discard marker"))
            }
            #expect(try log[1].event(as: Dog.self).event == .addedTrick("sit"))
        }
    }

    @Test("the marker is sealed under the aggregate's scope: a copy moved to another aggregate is refused, not taken as a discard",
          arguments: RecorderFactory.all)
    func markerAuthenticated(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            var a = try AggregateRoot<Dog>(.registered(name: "A"))
            try await t.app.save(&a)
            try a.discard()
            try await t.app.save(&a)
            var b = try AggregateRoot<Dog>(.registered(name: "B"))
            try await t.app.save(&b)

            let stored = try #require(try await t.store.recorder.selectEvents(originatorID: a.id, order: .descending, limit: 1).first)
            #expect(stored.topic == "Dog#discarded")
            #expect(RecordFormat.keyScope(of: stored.state) == a.keyScope)
            // Forge b's discard: a's marker bytes at b's next version.
            let forged = StoredEvent(originatorID: b.id, originatorVersion: 2, topic: stored.topic, state: stored.state,
                                     keyScope: RecordFormat.keyScope(of: stored.state))
            _ = try await t.store.recorder.insertEvents([forged])
            do {
                _ = try await t.app.repository.get(Dog.self, id: b.id)
                Issue.record("a forged marker was read")
            } catch let e as EventSourcingError {
                #expect(e.code == .integrityFailure, "\(e)")
                #expect(e.originatorID == b.id && e.originatorVersion == 2)
            }
            do {
                _ = try await t.app.repository.contains(b.id)
                Issue.record("contains took a forged marker")
            } catch let e as EventSourcingError {
                #expect(e.code == .integrityFailure, "\(e)")
            }
        }
    }

    @Test("no automatic snapshot of a discarded aggregate, and no snapshot on request", arguments: RecorderFactory.all)
    func noSnapshot(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp(snapshotIntervals: [.every(3, for: Dog.self)]) { t in
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await t.app.save(&dog)
            try dog.record(.addedTrick("sit"))
            try dog.discard()   // version 3: the save crosses a multiple of the interval
            try await t.app.save(&dog)
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil) == nil)
            await Self.expectDiscarded(t.app, dog.id, atVersion: 3)
            await #expect(throws: EventSourcingError.self) { try await t.app.takeSnapshot(Dog.self, id: dog.id) }
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil) == nil)
        }
    }

    @Test("events and the discard in one save; a snapshot below the marker still ends in 'discarded'",
          arguments: RecorderFactory.all)
    func discardWithEvents(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp(snapshotIntervals: [.every(2, for: Dog.self)]) { t in
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try dog.record(.addedTrick("sit"))
            try dog.discard()
            let recordings = try await t.app.save(&dog)
            #expect(recordings.map(\.originatorVersion) == [1, 2, 3])
            #expect(recordings.last?.topic == "Dog#discarded")
            // The snapshot at version 2 (the save crossed it) is not of the discarded root.
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil) == nil)
            await Self.expectDiscarded(t.app, dog.id, atVersion: 3)
            try await t.app.takeSnapshot(Dog.self, id: dog.id, version: 2)
            await Self.expectDiscarded(t.app, dog.id, atVersion: 3)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id, version: 2).tricks == ["sit"])
            #expect(try await t.app.repository.contains(dog.id) == false)
        }
    }

    @Test("a discarded aggregate whose scope is shredded: contains is false, get says shredded", arguments: RecorderFactory.all)
    func discardedThenShredded(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try dog.discard()
            try await t.app.save(&dog)
            _ = try await t.app.shred(dog)
            #expect(try await t.app.repository.contains(dog.id) == false)
            do {
                _ = try await t.app.repository.get(Dog.self, id: dog.id)
                Issue.record("get returned")
            } catch let e as EventSourcingError {
                #expect(e.code == .shredded)
            }
        }
    }

    @Test("no event topic may end with the discard suffix")
    func reservedSuffix() async throws {
        try await Self.app(.inMemory).withFreshApp { t in
            var s = try AggregateRoot<Sneaky>(.made)
            do {
                try await t.app.save(&s)
                Issue.record("an event with a reserved topic was saved")
            } catch let e as EventSourcingError {
                #expect(e.code == .invalidArgument)
            }
            #expect(try await t.app.notificationLog.maxNotificationID == nil)
        }
    }
}
