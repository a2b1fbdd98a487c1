import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Records the notification ids it processed, in the order it got them.
struct OrderRecordingProjection: Projection {
    typealias Context = ProjectionContext
    let name: String
    var topics: [String] = []
    let seen: Mutex<[Int64]>.Box
    /// Throws at this notification (while set).
    let failAt: Mutex<Int64?>.Box

    func process(_ item: LogItem, in context: ProjectionContext) async throws {
        if failAt.value.withLock({ $0 }) == item.notification.id { throw ProjectionTestFailure() }
        seen.value.withLock { $0.append(item.notification.id) }
    }

    func erase(keyScope: String, in context: ProjectionContext) async throws {}
    func drop(in context: ProjectionContext) async throws {}
}

extension Mutex where Value: Sendable {
    /// A mutex shared by reference.
    final class Box: Sendable {
        let value: Mutex<Value>
        init(_ initial: Value) { value = Mutex(initial) }
    }
}

/// The runner reads the next batch while it applies a full one: every notification of the
/// projection's topics still reaches it once, in log order, whatever the batch size and filter.
@Suite("Projection runner paging: the next batch read while one is applied")
struct ProjectionRunnerPagingTests {
    @Test("Full batches one after another, with and without a topic filter: each notification once, in log order; a failure in a later batch stops the runner at it",
          arguments: RecorderFactory.all)
    func fullBatches(_ factory: RecorderFactory) async throws {
        try await AppFactory(recorder: factory, encrypted: true).withFreshApp { t in
            var dogIDs: [Int64] = []
            var dogTopic = ""
            for i in 0..<30 {
                var d = try AggregateRoot<Dog>(.registered(name: "dog-\(i)"))
                let r = try await t.app.save(&d)
                dogIDs += r.map(\.notificationID)
                dogTopic = r[0].topic
                var ledger = try ledgerSave(nil, save: 1, count: 1)
                try await t.app.save(&ledger)
            }
            let tracking = try #require(t.store.recorder as? any TrackingRecorder)
            let store = AtLeastOnceProjectionStore(tracking: tracking)
            for (name, topics, batch, expected) in [("all", [String](), 3, Array(Int64(1)...60)), ("dogs", [dogTopic], 4, dogIDs),
                                                    ("dogs-one", [dogTopic], 1, dogIDs), ("dogs-exact", [dogTopic], 30, dogIDs)] {
                let seen = Mutex<[Int64]>.Box([])
                let projection = OrderRecordingProjection(name: name, topics: topics, seen: seen, failAt: .init(nil))
                let runner = try ProjectionRunner(application: t.app, projection: projection, store: store, batchSize: batch)
                try await runUntil(runner, 60)
                #expect(seen.value.withLock { $0 } == expected, "\(name)")
                #expect(try await runner.position == expected.last, "\(name)")
            }

            // A failure in the third batch: the batches before it are kept, the prefetched one is not applied.
            let seen = Mutex<[Int64]>.Box([])
            let failAt = Mutex<Int64?>.Box(dogIDs[9])
            let runner = try ProjectionRunner(application: t.app,
                                              projection: OrderRecordingProjection(name: "failing", topics: [dogTopic], seen: seen, failAt: failAt),
                                              store: store, batchSize: 4)
            let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(e?.code == .projectionFailed)
            #expect(e?.notificationID == dogIDs[9])
            #expect(seen.value.withLock { $0 } == Array(dogIDs[0..<9]))
            #expect(try await runner.position == dogIDs[8])
            failAt.value.withLock { $0 = nil }
            try await runUntil(runner, 60)
            #expect(seen.value.withLock { $0 } == dogIDs)
        }
    }
}
