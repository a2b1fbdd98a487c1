import EventSourcing
import Foundation
import KeyManagement
import Testing

@Suite("Typed API: named recorder queries")
struct TypedAPITests {
    @Test("selectEvents(originatorID:after:upTo:order:limit:) reads the same events as the gt/lte/desc form")
    func namedQuery() async throws {
        let recorder = InMemoryRecorder()
        let id = UUID()
        let events = (1...6).map { StoredEvent(originatorID: id, originatorVersion: $0, topic: "T.e", state: [UInt8($0)]) }
        _ = try await recorder.insertEvents(events)
        #expect(try await recorder.selectEvents(originatorID: id, after: 2, upTo: 5, order: .ascending).map(\.originatorVersion)
                == [3, 4, 5])
        #expect(try await recorder.selectEvents(originatorID: id, after: 2, upTo: 5, order: .descending, limit: 2)
                .map(\.originatorVersion) == [5, 4])
        #expect(try await recorder.selectEvents(originatorID: id, order: .descending, limit: 1).map(\.originatorVersion) == [6])
        for (after, upTo) in [(nil, nil), (0, 6), (3, nil), (nil, 3), (6, nil)] as [(Int?, Int?)] {
            for desc in [false, true] {
                let named = try await recorder.selectEvents(originatorID: id, after: after, upTo: upTo,
                                                            order: desc ? .descending : .ascending, limit: 4)
                let old = try await recorder.selectEvents(originatorID: id, after: after, upTo: upTo, order: desc ? .descending : .ascending, limit: 4)
                #expect(named == old)
            }
        }
    }

    @Test("Snapshot intervals are keyed by the aggregate type: .every(n, for: Dog.self) snapshots dogs, and only dogs")
    func typedSnapshotIntervals() async throws {
        let recorder = InMemoryRecorder()
        let app = Application(recorder: recorder, snapshots: recorder,
                              snapshotIntervals: [.every(2, for: Dog.self), .every(5, for: Dog.self), .every(0, for: Customer.self)])
        #expect(app.snapshotIntervals.map(\.typeName) == ["Dog", "Dog", "Customer"])
        var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try dog.record(.addedTrick("sit"))
        var customer = try AggregateRoot<Customer>(.registered(personID: "", name: "C", email: "c@x"))
        try customer.record(.changedEmail("d@x"))
        try await app.save(&dog, &customer)
        #expect(try await recorder.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 2,
                "the shorter of two intervals for one type counts")
        #expect(try await recorder.selectSnapshot(originatorID: customer.id, lte: nil) == nil,
                "an interval below 1 takes no snapshot, and Dog's interval is not Customer's")
        try dog.record(.addedTrick("roll"))
        try await app.save(&dog)
        #expect(try await recorder.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 2)
        try dog.record(.addedTrick("stay"))
        try await app.save(&dog)
        #expect(try await recorder.selectSnapshot(originatorID: dog.id, lte: nil)?.originatorVersion == 4)
    }
}
