import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Testing

/// `NotificationLog.subscribe(after:topics:)` on every recorder (in-memory, SQLite, PostgreSQL
/// when a server is configured), encrypted: catch-up, live items, order under concurrent
/// writers, shredded items, topics, positions and cancellation.
@Suite("Subscriptions")
struct SubscriptionTests {
    private static func app(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    private static func saveDogs(_ app: Application, _ n: Int, prefix: String = "dog") async throws {
        for i in 0..<n {
            var d = try AggregateRoot<Dog>(.registered(name: "\(prefix)-\(i)"))
            try await app.save(&d)
        }
    }

    private static func kind(_ o: LogItem.Outcome) -> String {
        switch o {
        case .decoded: "decoded"
        case .shredded: "shredded"
        case .failed(let e): "failed(\(e.code))"
        default: "other(\(o))"
        }
    }

    @Test("8 concurrent writers: the subscription delivers every item once, in log order, as the full log has it",
          arguments: RecorderFactory.all)
    func concurrentWriters(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let writers = 8, saves = 25, total = writers * saves
            // A small page, so the catch-up pages many times while the writers commit.
            let sub = t.app.notificationLog.subscribe(after: 0, pageSize: 7)
            let consumer = Task { try await SubscriptionProbe.take(2 * total, from: sub, within: .seconds(60)) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<writers {
                    group.addTask {
                        for i in 0..<saves {
                            var d = try AggregateRoot<Dog>(.registered(name: "w\(w)-\(i)"))
                            try d.record(.addedTrick("sit"))
                            try await t.app.save(&d)   // two events per save
                        }
                    }
                }
                try await group.waitForAll()
            }
            let got = try await consumer.value
            let log = try await t.app.notificationLog.read(start: 1, limit: 10_000)
            #expect(log.count == 2 * total)
            #expect(got.map(\.notification.id) == log.map(\.notification.id))
            #expect(got.map(\.notification.id) == Array(1...Int64(2 * total)))
            #expect(got.map(\.notification.topic) == log.map(\.notification.topic))
            #expect(got.map(\.notification.originatorID) == log.map(\.notification.originatorID))
            #expect(got.allSatisfy { Self.kind($0.outcome) == "decoded" })
            // Nothing after the end: no duplicate arrives later.
            #expect(try await SubscriptionProbe.deliversNothing(t.app.notificationLog.subscribe(after: Int64(2 * total)),
                                                                within: .milliseconds(300)))
        }
    }

    @Test("a subscription started mid-log gets exactly the items after its position, then new ones",
          arguments: RecorderFactory.all)
    func midLog(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            try await Self.saveDogs(t.app, 10)
            let sub = t.app.notificationLog.subscribe(after: 4, pageSize: 4)
            let consumer = Task { try await SubscriptionProbe.take(8, from: sub) }
            try await Task.sleep(for: .milliseconds(100))
            try await Self.saveDogs(t.app, 2, prefix: "late")
            let items = try await consumer.value
            #expect(items.map(\.notification.id) == Array(5...12))
            let names = try items.map { item -> String in
                guard case .registered(let name) = try item.event(as: Dog.self).event else { return "?" }
                return name
            }
            #expect(names == (4..<10).map { "dog-\($0)" } + ["late-0", "late-1"])
        }
    }

    @Test("shredded items arrive as .shredded (as read() gives them) and do not end the subscription",
          arguments: RecorderFactory.all)
    func shredded(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            var a = try AggregateRoot<Customer>(.registered(personID: "subject-a", name: "Ann", email: "a@x"))
            try a.record(.changedEmail("a2@x"))
            var b = try AggregateRoot<Customer>(.registered(personID: "subject-b", name: "Bob", email: "b@x"))
            try await t.app.save(&a, &b)
            _ = try await t.app.shred(keyScope: "subject-a")
            let log = try await t.app.notificationLog.read(start: 1, limit: 100)
            let sub = t.app.notificationLog.subscribe()
            let consumer = Task { try await SubscriptionProbe.take(log.count + 1, from: sub) }
            try await Task.sleep(for: .milliseconds(100))
            try await Self.saveDogs(t.app, 1, prefix: "after")
            let items = try await consumer.value
            #expect(items.prefix(log.count).map(\.notification.id) == log.map(\.notification.id))
            #expect(items.prefix(log.count).map { Self.kind($0.outcome) } == log.map { Self.kind($0.outcome) })
            #expect(items.filter(\.isShredded).map(\.notification.originatorID) == [a.id, a.id])
            for item in items where item.isShredded {
                guard case .shredded(let scope, _) = item.outcome else { continue }
                #expect(scope == "subject-a")
            }
            #expect(try items.first { $0.notification.originatorID == b.id }?.event(as: Customer.self).event
                    == .registered(personID: "subject-b", name: "Bob", email: "b@x"))
            // The item saved after the shredded ones arrived, decoded: the sequence went on.
            #expect(items.last.map { Self.kind($0.outcome) } == "decoded")
            #expect(try items.last?.event(as: Dog.self).event == .registered(name: "after-0"))
        }
    }

    @Test("cancelling the consuming task ends the subscription promptly with CancellationError, waiting or catching up",
          arguments: RecorderFactory.all)
    func cancellation(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            try await Self.saveDogs(t.app, 3)
            // Waiting at the end of the log, with a poll interval far longer than the test.
            let waiting = Task {
                var n = 0
                for try await _ in t.app.notificationLog.subscribe(pollInterval: .seconds(600)) { n += 1 }
                return n
            }
            try await Task.sleep(for: .milliseconds(300))
            let started = ContinuousClock.now
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            // Far below the 600 s poll interval; roomy because the whole suite shares two cores.
            #expect(ContinuousClock.now - started < .seconds(15))

            // Cancelled while items are still pending: the next call throws, nothing more arrives.
            let catchingUp = Task {
                var ids: [Int64] = []
                for try await item in t.app.notificationLog.subscribe(pageSize: 1) {
                    ids.append(item.notification.id)
                    withUnsafeCurrentTask { $0?.cancel() }
                }
                return ids
            }
            await #expect(throws: CancellationError.self) { try await catchingUp.value }
        }
    }

    @Test("a topics filter delivers only those topics, in catch-up and live",
          arguments: RecorderFactory.all)
    func topics(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            for i in 0..<3 {
                var c = try AggregateRoot<Customer>(.registered(personID: "p\(i)", name: "N\(i)", email: "e\(i)"))
                try await t.app.save(&c)
                try await Self.saveDogs(t.app, 1, prefix: "d\(i)")
            }
            let log = try await t.app.notificationLog.read(start: 1, limit: 100)
            let dogTopic = try #require(log.first { (try? $0.event(as: Dog.self)) != nil }?.notification.topic)
            let sub = t.app.notificationLog.subscribe(topics: [dogTopic], pageSize: 2)
            let consumer = Task { try await SubscriptionProbe.take(4, from: sub) }
            try await Task.sleep(for: .milliseconds(100))
            var late = try AggregateRoot<Customer>(.registered(personID: "late", name: "L", email: "l"))
            try await t.app.save(&late)
            try await Self.saveDogs(t.app, 1, prefix: "live")
            let items = try await consumer.value
            #expect(items.allSatisfy { $0.notification.topic == dogTopic })
            let expected = try await t.app.notificationLog.read(start: 1, limit: 100, topics: [dogTopic])
            #expect(items.map(\.notification.id) == expected.map(\.notification.id))
            #expect(try items.last?.event(as: Dog.self).event == .registered(name: "live-0"))
        }
    }

    @Test("with a topics filter, a poll starts after the last id it looked at, not after the last matching one")
    func topicsDoNotRescan() async throws {
        let recorder = StartRecordingRecorder()
        let app = Application(recorder: recorder)
        try await Self.saveDogs(app, 1)
        for i in 0..<5 {
            var c = try AggregateRoot<Customer>(.registered(personID: "p\(i)", name: "N", email: "e"))
            try await app.save(&c)
        }
        let dogTopic = try #require(try await app.notificationLog.read(start: 1, limit: 1).first?.notification.topic)
        let sub = app.notificationLog.subscribe(topics: [dogTopic], pollInterval: .milliseconds(20))
        #expect(try await SubscriptionProbe.take(1, from: sub).map(\.notification.id) == [1])
        // A subscription after the dog polls: after its first read, none scans the customers (ids 2…6) again.
        let live = app.notificationLog.subscribe(after: 1, topics: [dogTopic], pollInterval: .milliseconds(20))
        #expect(try await SubscriptionProbe.deliversNothing(live, within: .milliseconds(200)))
        let starts = recorder.starts
        // The read above, the first subscription, the live one's first read: then no read of 2…6 again.
        #expect(Array(starts.prefix(3)) == [1, 1, 2], "\(starts)")
        #expect(starts.dropFirst(3).allSatisfy { $0 >= 7 }, "a poll read the already-scanned ids again: \(starts)")
        #expect(recorder.maxReads >= 4, "the subscription did not poll (\(recorder.maxReads) looks at the log's end)")
    }

    @Test("a position past the end waits (no error, no item) until the log reaches it; a negative one is invalidArgument",
          arguments: RecorderFactory.all)
    func positions(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            try await Self.saveDogs(t.app, 3)
            let sub = t.app.notificationLog.subscribe(after: 10)
            let consumer = Task { try await SubscriptionProbe.take(2, from: sub) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await SubscriptionProbe.deliversNothing(t.app.notificationLog.subscribe(after: 10),
                                                                within: .milliseconds(200)))
            try await Self.saveDogs(t.app, 9, prefix: "more")   // ids 4…12
            #expect(try await consumer.value.map(\.notification.id) == [11, 12])

            for bad in [t.app.notificationLog.subscribe(after: -1), t.app.notificationLog.subscribe(after: .min),
                        t.app.notificationLog.subscribe(pageSize: 0), t.app.notificationLog.subscribe(pageSize: 10_001),
                        t.app.notificationLog.subscribe(pollInterval: .zero)] {
                var it = bad.makeAsyncIterator()
                let e = await #expect(throws: EventSourcingError.self) { _ = try await it.next() }
                #expect(e?.code == .invalidArgument)
            }
            // The last possible position: nothing can follow it, and it waits instead of overflowing.
            #expect(try await SubscriptionProbe.deliversNothing(t.app.notificationLog.subscribe(after: .max),
                                                                within: .milliseconds(200)))
        }
    }

    @Test("the in-memory recorder wakes a waiting subscriber at once (it has no poll interval)")
    func inMemoryWakesAtOnce() async throws {
        let recorder = InMemoryRecorder()
        #expect(recorder.commitPollInterval == nil)
        let app = Application(recorder: recorder)
        try await Self.saveDogs(app, 1)
        let sub = app.notificationLog.subscribe(after: 1)
        let consumer = Task { try await SubscriptionProbe.take(1, from: sub, within: .seconds(5)) }
        // The consumer is waiting for a signal, not polling.
        while recorder.commitSignal.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        try await Self.saveDogs(app, 1, prefix: "woke")
        #expect(try await consumer.value.map(\.notification.id) == [2])
    }

    @Test("a recorder that cannot wake subscribers is polled at the subscription's interval")
    func pollsOtherRecorders() async throws {
        let app = Application(recorder: MinimalUserRecorder())
        let sub = app.notificationLog.subscribe(pollInterval: .milliseconds(50))
        let consumer = Task { try await SubscriptionProbe.take(3, from: sub, within: .seconds(5)) }
        try await Task.sleep(for: .milliseconds(120))
        try await Self.saveDogs(app, 3)
        #expect(try await consumer.value.map(\.notification.id) == [1, 2, 3])
    }
}

/// An in-memory recorder (without its wake-ups, so subscribers poll) that records the `start`
/// of every notification read.
private final class StartRecordingRecorder: ApplicationRecorder, @unchecked Sendable {
    private let base = InMemoryRecorder()
    private let lock = NSLock()
    private var list: [Int64] = []
    var starts: [Int64] { lock.withLock { list } }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await base.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await base.selectEvents(query) }
    var maxReads: Int { lock.withLock { maxCount } }
    private var maxCount = 0
    func maxNotificationID() async throws -> Int64? {
        lock.withLock { maxCount += 1 }
        return try await base.maxNotificationID()
    }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        lock.withLock { list.append(start) }
        return try await base.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
}
