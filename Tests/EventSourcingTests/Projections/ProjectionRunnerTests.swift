import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A view kept in memory that counts how often each notification reached it, and what was erased.
final class CountingView: Sendable {
    struct State {
        var counts: [Int64: Int] = [:]
        var names: [UUID: String] = [:]
        var scopes: [UUID: String] = [:]
        var erased: [String] = []
        var decodedIDs: Set<UUID> = []
        var drops = 0
    }
    let state = Mutex(State())
    /// Notification ids the projection throws at (while set).
    let failAt = Mutex<Set<Int64>>([])

    var counts: [Int64: Int] { state.withLock { $0.counts } }
}

struct ProjectionTestFailure: Error {}

/// A projection of dogs' names into a ``CountingView`` (at least once).
struct CountingProjection: Projection {
    typealias Context = ProjectionContext
    let name: String
    var topics: [String] = []
    let view: CountingView

    func process(_ item: LogItem, in context: ProjectionContext) async throws {
        #expect(context.notificationID == item.notification.id)
        if view.failAt.withLock({ $0.contains(item.notification.id) }) {
            // Slow, so a wait started with the run sees the failure happen.
            try await Task.sleep(for: .milliseconds(300))
            throw ProjectionTestFailure()
        }
        let event = try item.event(as: Dog.self)
        let scope = item.notification.storedEvent.keyScope ?? item.notification.originatorID.uuidString.lowercased()
        view.state.withLock { s in
            s.counts[item.notification.id, default: 0] += 1
            s.decodedIDs.insert(item.notification.originatorID)
            s.scopes[item.notification.originatorID] = scope
            if case .registered(let n) = event.event { s.names[item.notification.originatorID] = n }
        }
    }

    func erase(keyScope: String, in context: ProjectionContext) async throws {
        if view.failAt.withLock({ $0.contains(context.notificationID) }) { throw ProjectionTestFailure() }
        view.state.withLock { s in
            s.erased.append(keyScope)
            for (id, scope) in s.scopes where scope == keyScope { s.names[id] = nil }
        }
    }

    func drop(in context: ProjectionContext) async throws {
        view.state.withLock { s in
            let drops = s.drops + 1
            s = CountingView.State()
            s.drops = drops
        }
    }
}

/// Runs `runner` until its view reflects notification `id`, then stops it.
func runUntil<P>(_ runner: ProjectionRunner<P>, _ id: Int64, timeout: Duration = .seconds(120)) async throws {
    let task = Task { try await runner.run() }
    do {
        try await runner.wait(until: id, timeout: timeout)
    } catch {
        task.cancel()
        _ = try? await task.value
        throw error
    }
    task.cancel()
    try await task.value
}

/// The projection runner over every recorder (in-memory, SQLite, PostgreSQL when configured),
/// with the view in memory and the position in the recorder (at least once).
@Suite("Projection runner (view outside the store: at least once)")
struct ProjectionRunnerTests {
    private static func app(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    @discardableResult
    private static func saveDogs(_ app: Application, _ n: Int, prefix: String = "dog") async throws -> [Recording] {
        var out: [Recording] = []
        for i in 0..<n {
            var d = try AggregateRoot<Dog>(.registered(name: "\(prefix)-\(i)"))
            out += try await app.save(&d)
        }
        return out
    }

    private static func runner(_ t: TestApp, _ view: CountingView, name: String = "dogs", topics: [String] = [],
                               batchSize: Int = 7) throws -> ProjectionRunner<CountingProjection> {
        let tracking = try #require(t.store.recorder as? any TrackingRecorder)
        return try ProjectionRunner(application: t.app, projection: CountingProjection(name: name, topics: topics, view: view),
                                    store: AtLeastOnceProjectionStore(tracking: tracking), batchSize: batchSize)
    }

    @Test("A new runner resumes exactly at the recorded position: every notification reaches the view once",
          arguments: RecorderFactory.all)
    func resumesExactly(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let view = CountingView()
            try await Self.saveDogs(t.app, 25)
            try await runUntil(try Self.runner(t, view), 25)
            #expect(try await Self.runner(t, view).position == 25)
            try await Self.saveDogs(t.app, 15, prefix: "later")
            // Another runner (a restarted process): starts from the tracking record, not from 0.
            try await runUntil(try Self.runner(t, view), 40)
            #expect(view.counts == Dictionary(uniqueKeysWithValues: (1...40).map { (Int64($0), 1) }))
        }
    }

    @Test("A projection that throws stops the runner with .projectionFailed naming it and the notification; running again retries it",
          arguments: RecorderFactory.all)
    func throwingProjectionStops(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let view = CountingView()
            try await Self.saveDogs(t.app, 10)
            view.failAt.withLock { $0 = [6] }
            let runner = try Self.runner(t, view, name: "failing-dogs", batchSize: 4)
            let run = Task { try await runner.run() }
            // A wait during the run that fails gets the failure at once, not at its timeout.
            let clock = ContinuousClock()
            let started = clock.now
            // (Bounds far apart: the full suite on two cores can hold a task up for a minute.)
            let during = await #expect(throws: EventSourcingError.self) { try await runner.wait(until: 10, timeout: .seconds(600)) }
            #expect(during?.code == .projectionFailed)
            #expect(clock.now - started < .seconds(500), "well before the wait's 600 s timeout")
            let e = await #expect(throws: EventSourcingError.self) { try await run.value }
            #expect(e?.code == .projectionFailed)
            #expect(e?.notificationID == 6)
            #expect(e?.message.contains("\"failing-dogs\"") == true)
            #expect(e?.message.contains("ProjectionTestFailure") == true)
            #expect(runner.lastFailure is ProjectionTestFailure)
            #expect(try await runner.position == 5)
            #expect(view.counts == Dictionary(uniqueKeysWithValues: (1...5).map { (Int64($0), 1) }))
            // A later wait (the runner may be restarted meanwhile) times out, naming the failure.
            let w = await #expect(throws: EventSourcingError.self) { try await runner.wait(until: 10, timeout: .milliseconds(300)) }
            #expect(w?.code == .timedOut)
            #expect(w?.message.contains("projectionFailed at notification 6") == true)

            view.failAt.withLock { $0 = [] }
            try await runUntil(runner, 10)
            #expect(view.counts == Dictionary(uniqueKeysWithValues: (1...10).map { (Int64($0), 1) }))
        }
    }

    @Test("Erasure reaches the view: erase(keyScope:) is called in log order also with a topic filter, shredded events are skipped, the runner goes on",
          arguments: RecorderFactory.all)
    func erasureReachesTheView(_ factory: RecorderFactory) async throws {
        try await Self.app(factory).withFreshApp { t in
            let view = CountingView()
            let saved = try await Self.saveDogs(t.app, 4)
            let topic = saved[0].topic
            var target = try await t.app.repository.get(Dog.self, id: saved[1].originatorID)
            try target.record(.addedTrick("sit"))
            try await t.app.save(&target)
            let scope = saved[1].originatorID.uuidString.lowercased()
            let runner = try Self.runner(t, view, topics: [topic])
            try await runUntil(runner, 5)
            #expect(view.state.withLock { $0.names[saved[1].originatorID] } == "dog-1")

            try await t.app.shred(keyScope: scope)
            let more = try await Self.saveDogs(t.app, 1, prefix: "after")
            try await runUntil(runner, more[0].notificationID)
            view.state.withLock { s in
                #expect(s.erased == [scope])
                #expect(s.names[saved[1].originatorID] == nil)
                #expect(s.names[saved[0].originatorID] == "dog-0")
                #expect(s.names[more[0].originatorID] == "after-0")
            }

            // Rebuilt from zero after the shred: the shredded dog's events are skipped, never decoded.
            try await runner.reset()
            #expect(view.state.withLock { $0.drops } == 1)
            #expect(try await runner.position == nil)
            try await runUntil(runner, more[0].notificationID)
            view.state.withLock { s in
                #expect(!s.decodedIDs.contains(saved[1].originatorID))
                #expect(s.erased == [scope])
                #expect(s.names.count == 4)
            }
        }
    }

    @Test("Bad input gets typed errors and loses nothing: names, batch size, wait before 1 or past the end, a timeout, an unknown name, a second run")
    func badInput() async throws {
        try await Self.app(.inMemory).withFreshApp { t in
            let view = CountingView()
            let tracking = try #require(t.store.recorder as? any TrackingRecorder)
            let store = AtLeastOnceProjectionStore(tracking: tracking)
            for name in ["", String(repeating: "x", count: 256), "a\u{0}b"] {
                let e = #expect(throws: EventSourcingError.self) {
                    _ = try ProjectionRunner(application: t.app, projection: CountingProjection(name: name, view: view), store: store)
                }
                #expect(e?.code == .invalidArgument)
            }
            for size in [0, 10_001] {
                let e = #expect(throws: EventSourcingError.self) {
                    _ = try ProjectionRunner(application: t.app, projection: CountingProjection(name: "dogs", view: view), store: store,
                                             batchSize: size)
                }
                #expect(e?.code == .invalidArgument)
            }

            try await Self.saveDogs(t.app, 3)
            let runner = try Self.runner(t, view)
            try await runUntil(runner, 3)
            for id: Int64 in [0, -1] {
                let e = await #expect(throws: EventSourcingError.self) { try await runner.wait(until: id, timeout: .seconds(1)) }
                #expect(e?.code == .invalidArgument)
            }
            let past = await #expect(throws: EventSourcingError.self) { try await runner.wait(until: 4, timeout: .seconds(1)) }
            #expect(past?.code == .invalidArgument)
            #expect(past?.message.contains("past the end") == true)

            // Not running: a wait for a notification it has not processed times out, naming it.
            try await Self.saveDogs(t.app, 1, prefix: "late")
            let timeout = await #expect(throws: EventSourcingError.self) { try await runner.wait(until: 4, timeout: .milliseconds(300)) }
            #expect(timeout?.code == .timedOut)
            #expect(timeout?.notificationID == 4)
            #expect(timeout?.message.contains("\"dogs\"") == true)

            let group = try ProjectionGroup([runner])
            let unknown = await #expect(throws: EventSourcingError.self) {
                try await group.wait(for: "cats", until: 1, timeout: .seconds(1))
            }
            #expect(unknown?.code == .invalidArgument)
            #expect(unknown?.message.contains("\"cats\"") == true)
            let duplicate = #expect(throws: EventSourcingError.self) { _ = try ProjectionGroup([runner, try Self.runner(t, view)]) }
            #expect(duplicate?.code == .invalidArgument)

            // A second run of the same runner is refused; the first goes on.
            let first = Task { try await runner.run() }
            try await runner.wait(until: 4, timeout: .seconds(60))
            let second = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(second?.code == .invalidArgument)
            try await Self.saveDogs(t.app, 1, prefix: "last")
            try await group.wait(for: "dogs", until: 5, timeout: .seconds(60))
            first.cancel()
            try await first.value
            #expect(view.counts == Dictionary(uniqueKeysWithValues: (1...5).map { (Int64($0), 1) }))
            #expect(try await runner.position == 5)
        }
    }

    @Test("wait(until:) returns at once for notifications of topics the projection does not read")
    func waitSkipsOtherTopics() async throws {
        try await Self.app(.inMemory).withFreshApp { t in
            let view = CountingView()
            let saved = try await Self.saveDogs(t.app, 2)
            let runner = try Self.runner(t, view, topics: [saved[0].topic])
            try await runUntil(runner, 2)
            // A notification of another topic (an erasure record of an unknown scope is not
            // possible, so an event of another aggregate type).
            var other = try AggregateRoot<Customer>(.registered(personID: "p", name: "n", email: "e"))
            let r = try await t.app.save(&other)
            try await runner.wait(until: r[0].notificationID, timeout: .zero)
            #expect(view.counts.count == 2)
        }
    }
}
