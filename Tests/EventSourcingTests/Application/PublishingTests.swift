import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A recorder that delays inserts (before the commit, or after it before returning) or fails
/// them, to pin down when the application publishes.
private final class DelayingRecorder: ApplicationRecorder {
    let inner: any ApplicationRecorder
    /// Per insert call (0-based): how long to wait before committing, and after committing.
    let before: @Sendable (Int) -> Duration
    let after: @Sendable (Int) -> Duration
    let fail: @Sendable (Int) -> Bool
    private let calls = Mutex(0)
    private let commits = Mutex(0)
    /// How many inserts have committed (counted before the delay after the commit).
    var committed: Int { commits.withLock { $0 } }

    init(_ inner: any ApplicationRecorder, before: @escaping @Sendable (Int) -> Duration = { _ in .zero },
         after: @escaping @Sendable (Int) -> Duration = { _ in .zero }, fail: @escaping @Sendable (Int) -> Bool = { _ in false }) {
        self.inner = inner
        self.before = before
        self.after = after
        self.fail = fail
    }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        let n = calls.withLock { c in defer { c += 1 }; return c }
        if before(n) > .zero { try await Task.sleep(for: before(n)) }
        if fail(n) { throw EventSourcingError(.databaseUnavailable, "injected failure") }
        let ids = try await inner.insertEvents(events)
        commits.withLock { $0 += 1 }
        if after(n) > .zero { try await Task.sleep(for: after(n)) }
        return ids
    }

    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}

/// In-process publish/subscribe: after the commit only, in notification-id order, typed and
/// untyped, the buffer bound and cancellation.
@Suite("Publishing")
struct PublishingTests {
    /// The first `n` elements of `sequence`, failing the wait (cancelling) after `within`.
    private static func take<S: AsyncSequence & Sendable>(_ n: Int, from sequence: S, within: Duration = .seconds(60))
        async throws -> [S.Element] where S.Element: Sendable {
        let consumer = Task {
            var out: [S.Element] = []
            guard n > 0 else { return out }
            for try await e in sequence {
                out.append(e)
                if out.count == n { break }
            }
            return out
        }
        let watchdog = Task {
            try? await Task.sleep(for: within)
            consumer.cancel()
        }
        defer { watchdog.cancel() }
        return try await consumer.value
    }

    private static func encryptedApp(_ recorder: any ApplicationRecorder) async throws -> Application {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        return Application(recorder: recorder, mapper: Mapper(keyring: keyring))
    }

    @Test("an event is delivered only once its commit is visible in the store", arguments: RecorderFactory.all)
    func afterCommit(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store in
            // Each commit starts 200 ms after the save asks for it.
            let slow = DelayingRecorder(store.recorder, before: { _ in .milliseconds(200) })
            let app = try await Self.encryptedApp(slow)
            let sub = app.subscribe(topics: [])
            let seen = Task { () -> [(Int64, Int64?)] in
                var out: [(Int64, Int64?)] = []
                for try await r in sub {
                    // What the store shows at the moment the subscriber gets the event.
                    out.append((r.notificationID, try await store.recorder.maxNotificationID()))
                    if out.count == 3 { break }
                }
                return out
            }
            for name in ["a", "b", "c"] {
                var d = try AggregateRoot<Dog>(.registered(name: name))
                try await app.save(&d)
            }
            let got = try await seen.value
            #expect(got.map(\.0) == [1, 2, 3])
            for (id, visible) in got { #expect((visible ?? 0) >= id, "notification \(id) published before its commit") }
        }
    }

    @Test("a save that fails publishes nothing: a conflict, and a failed insert", arguments: RecorderFactory.all)
    func failedSaves(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store in
            let failing = DelayingRecorder(store.recorder, fail: { $0 == 2 })   // the third insert fails
            let app = try await Self.encryptedApp(failing)
            let sub = app.subscribe(to: Dog.self)
            let consumer = Task { try await Self.take(3, from: sub) }
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await app.save(&dog)   // insert 0: notification 1
            var stale = dog
            try dog.record(.addedTrick("sit"))
            try await app.save(&dog)   // insert 1: notification 2
            try stale.record(.addedTrick("conflict"))
            await #expect(throws: EventSourcingError.self) { try await app.save(&stale) }   // insert 2 fails (injected)
            try stale.record(.addedTrick("again"))
            await #expect(throws: EventSourcingError.self) { try await app.save(&stale) }   // insert 3: a conflict at version 2
            try dog.record(.addedTrick("roll"))
            let last = try await app.save(&dog)   // insert 4
            let got = try await consumer.value
            #expect(got.map(\.notificationID) == [1, 2] + last.map(\.notificationID))
            #expect(got.map(\.event) == [.registered(name: "Rex"), .addedTrick("sit"), .addedTrick("roll")])
            #expect(got.map(\.originatorVersion) == [1, 2, 3])
        }
    }

    @Test("concurrent saves are delivered in notification-id order, also when an earlier commit returns last",
          arguments: RecorderFactory.all)
    func order(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store in
            // The first commit returns 300 ms after it committed: the second commits and returns first.
            let delaying = DelayingRecorder(store.recorder, after: { $0 == 0 ? .milliseconds(300) : .zero })
            let app = try await Self.encryptedApp(delaying)
            let sub = app.subscribe(topics: [])
            let consumer = Task { try await Self.take(2, from: sub) }
            let first = Task {
                var d = try AggregateRoot<Dog>(.registered(name: "first"))
                return try await app.save(&d)
            }
            // The second save starts once the first has committed (it then waits 300 ms before
            // returning). A fixed sleep here raced a slow start of the first save on a busy machine.
            let deadline = ContinuousClock.now + .seconds(30)
            while delaying.committed == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
            try #require(delaying.committed == 1, "the first save did not commit within 30 s")
            var second = try AggregateRoot<Dog>(.registered(name: "second"))
            let secondIDs = try await app.save(&second)
            let firstIDs = try await first.value
            #expect(firstIDs.map(\.notificationID) == [1] && secondIDs.map(\.notificationID) == [2])
            #expect(try await consumer.value.map(\.notificationID) == [1, 2])

            // Many writers: every event once, in log order.
            let sub2 = app.subscribe(to: Dog.self)
            let writers = 6, saves = 15
            let all = Task { try await Self.take(writers * saves * 2, from: sub2) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<writers {
                    group.addTask {
                        for i in 0..<saves {
                            var d = try AggregateRoot<Dog>(.registered(name: "w\(w)-\(i)"))
                            try d.record(.addedTrick("x"))
                            try await app.save(&d)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let got = try await all.value
            #expect(got.map(\.notificationID) == Array(3...Int64(2 + writers * saves * 2)))
            let log = try await app.notificationLog.read(start: 3, limit: 1000)
            #expect(got.map(\.originatorID) == log.map(\.notification.originatorID))
        }
    }

    @Test("typed and untyped: each gets what it asked for; the discard marker only untyped", arguments: RecorderFactory.all)
    func typedAndUntyped(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store in
            let app = try await Self.encryptedApp(store.recorder)
            let dogs = app.subscribe(to: Dog.self)
            let customers = app.subscribe(to: Customer.self)
            let everything = app.subscribe()
            let registrations = app.subscribe(topics: ["Dog.registered", "Dog#discarded"])
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            var cust = try AggregateRoot<Customer>(.registered(personID: "p", name: "Ann", email: "ann@example.com"))
            try dog.record(.addedTrick("sit"))
            let r1 = try await app.save(&dog, &cust)
            try dog.discard()
            let r2 = try await app.save(&dog)
            var dog2 = try AggregateRoot<Dog>(.registered(name: "Fido"))
            let r3 = try await app.save(&dog2)
            let recordings = r1 + r2 + r3

            let gotDogs = try await Self.take(3, from: dogs)
            #expect(gotDogs.map(\.event) == [.registered(name: "Rex"), .addedTrick("sit"), .registered(name: "Fido")])
            #expect(gotDogs.map(\.notificationID) == [1, 2, 5])
            #expect(gotDogs.map(\.topic) == ["Dog.registered", "Dog.addedTrick", "Dog.registered"])
            #expect(gotDogs.map(\.originatorID) == [dog.id, dog.id, dog2.id])
            let gotCustomers = try await Self.take(1, from: customers)
            #expect(gotCustomers.first?.domainEvent.event == .registered(personID: "p", name: "Ann", email: "ann@example.com"))
            #expect(gotCustomers.first?.notificationID == 3)
            #expect(try await Self.take(5, from: everything) == recordings)
            #expect(try await Self.take(3, from: registrations).map(\.notificationID) == [1, 4, 5])
        }
    }

    @Test("a slow consumer never blocks a save; past its buffer its sequence ends with how many were dropped")
    func overflow() async throws {
        let app = try await Self.encryptedApp(InMemoryRecorder())
        let sub = app.subscribe(to: Dog.self, bufferSize: 3)
        let other = app.subscribe(to: Dog.self, bufferSize: 100)
        for i in 0..<7 {   // nobody consumes: every save returns regardless
            var d = try AggregateRoot<Dog>(.registered(name: "d\(i)"))
            try await app.save(&d)
        }
        var it = sub.makeAsyncIterator()
        var got: [Int64] = []
        do {
            while let e = try await it.next() { got.append(e.notificationID) }
            Issue.record("the sequence ended without an error")
        } catch let e as EventSourcingError {
            #expect(e.code == .subscriptionOverflow)
            #expect(e.notificationID == 4)
            #expect(e.message.contains("4 events were dropped"), "\(e)")
            #expect(e.message.contains("buffer of 3 events"))
            #expect(e.message.contains("NotificationLog.subscribe(after: 3"))
        }
        #expect(got == [1, 2, 3])
        #expect(try await it.next() == nil)   // ended for good
        #expect(app.subscriberCount == 1)
        // The other subscriber, with room, lost nothing.
        #expect(try await Self.take(7, from: other).map(\.notificationID) == Array(1...7))
    }

    @Test("a commit that stays in flight holds back later ones only up to the buffer bound; past it they are dropped, counted")
    func stuckCommit() async throws {
        // The first commit returns 1.5 s after it committed; five more commit and return meanwhile.
        let app = try await Self.encryptedApp(DelayingRecorder(InMemoryRecorder(), after: { $0 == 0 ? .milliseconds(1500) : .zero }))
        let small = app.subscribe(to: Dog.self, bufferSize: 3)
        let large = app.subscribe(to: Dog.self, bufferSize: 100)
        let first = Task {
            var d = try AggregateRoot<Dog>(.registered(name: "first"))
            try await app.save(&d)
        }
        let waiting = Task {
            var it = small.makeAsyncIterator()
            var got: [Int64] = []
            do {
                while let e = try await it.next() { got.append(e.notificationID) }
                return (got, nil as EventSourcingError?)
            } catch let e as EventSourcingError {
                return (got, e)
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        for i in 0..<5 {
            var d = try AggregateRoot<Dog>(.registered(name: "later-\(i)"))
            try await app.save(&d)   // never blocked by the commit in flight
        }
        // Five held behind the first commit: within the larger buffer, so kept, and released in
        // order when it returns; the small subscriber's waiter takes 1, its buffer 2...4.
        try await first.value
        let (got, error) = try await waiting.value
        #expect(got == [1, 2, 3, 4])
        #expect(error?.code == .subscriptionOverflow)
        #expect(error?.message.contains("2 events were dropped") == true)
        #expect(try await Self.take(6, from: large).map(\.notificationID) == Array(1...6))

        // Past the largest buffer, what is held is dropped, and a waiting consumer learns of it at once.
        let app2 = try await Self.encryptedApp(DelayingRecorder(InMemoryRecorder(), after: { $0 == 0 ? .seconds(30) : .zero }))
        let only = app2.subscribe(to: Dog.self, bufferSize: 3)
        let stuck = Task {
            var d = try AggregateRoot<Dog>(.registered(name: "stuck"))
            try await app2.save(&d)
        }
        let waiting2 = Task { () -> EventSourcingError? in
            var it2 = only.makeAsyncIterator()
            do { _ = try await it2.next(); return nil } catch let e as EventSourcingError { return e }
        }
        try await Task.sleep(for: .milliseconds(100))
        for i in 0..<4 {
            var d = try AggregateRoot<Dog>(.registered(name: "behind-\(i)"))
            try await app2.save(&d)
        }
        let e = try #require(try await waiting2.value)   // long before the stuck commit returns
        #expect(e.code == .subscriptionOverflow)
        #expect(e.notificationID == 2)
        #expect(e.message.contains("4 events were dropped"), "\(e)")
        #expect(app2.subscriberCount == 0)
        stuck.cancel()
        _ = try? await stuck.value
    }

    @Test("cancelling the consumer ends its sequence and removes the subscription; so does dropping it")
    func cancellation() async throws {
        let app = try await Self.encryptedApp(InMemoryRecorder())
        let sub = app.subscribe()
        #expect(app.subscriberCount == 1)
        let consumer = Task {
            var n = 0
            for try await _ in sub { n += 1 }
            return n
        }
        var d = try AggregateRoot<Dog>(.registered(name: "Rex"))
        try await app.save(&d)
        try await Task.sleep(for: .milliseconds(100))
        consumer.cancel()
        do {
            _ = try await consumer.value
            Issue.record("the cancelled consumer ended without an error")
        } catch {
            #expect(error is CancellationError)
        }
        #expect(app.subscriberCount == 0)
        // Nothing is buffered for it any more.
        var d2 = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try await app.save(&d2)
        #expect(app.subscriberCount == 0)

        // A subscription dropped unused is removed.
        func makeAndDrop() {
            let s = app.subscribe(to: Dog.self)
            #expect(app.subscriberCount == 1)
            _ = s
        }
        makeAndDrop()
        #expect(app.subscriberCount == 0)
        // A consumer cancelled before it waits.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            for try await _ in app.subscribe() {}
        }
        await #expect(throws: CancellationError.self) { try await early.value }
        #expect(app.subscriberCount == 0)
    }

    @Test("a process application's saves (committed with its tracking record) are published like any save",
          arguments: RecorderFactory.all)
    func processApplicationSaves(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"]) { f in
            let orders = try f.app("orders"), invoicesApp = try f.app("invoices")
            let invoices = try ProcessApplication(name: "invoices", application: invoicesApp, policy: InvoicingPolicy(probe: PolicyProbe()))
            let system = try System(members: [.application("orders", orders), .process(invoices)], pipes: [["orders", "invoices"]])
            let published = invoicesApp.subscribe(to: SysInvoice.self)
            let consumer = Task { try await Self.take(4, from: published) }
            let placed = try await placeOrders(orders, 4)
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", placed.last?.notificationID ?? 0)])
            let got = try await consumer.value
            let log = try await invoicesApp.notificationLog.read(start: 1, limit: 100).filter { $0.notification.topic == "SysInvoice.issued" }
            #expect(got.map(\.notificationID) == log.map(\.notification.id))
            #expect(got.map(\.originatorID) == log.map(\.notification.originatorID))
            let orderIDs = got.compactMap { e -> UUID? in
                guard case .issued(let orderID, _, _, _, _, _) = e.event else { return nil }
                return orderID
            }
            #expect(orderIDs == placed.map(\.originatorID))
        }
    }

    @Test("a buffer size out of range is refused by the first next()")
    func badBufferSize() async throws {
        let app = Application(recorder: InMemoryRecorder())
        for size in [0, -1, Application.maxSubscriberBufferSize + 1] {
            var it = app.subscribe(to: Dog.self, bufferSize: size).makeAsyncIterator()
            do {
                _ = try await it.next()
                Issue.record("buffer size \(size) accepted")
            } catch let e as EventSourcingError {
                #expect(e.code == .invalidArgument)
            }
        }
        #expect(app.subscriberCount == 0)
    }
}
