import ESTestSupport
import EventSourcing
import Foundation
import Synchronization
import Testing

/// An in-memory recorder that counts the reads of its log and passes on its commit signal.
final class CountingLogRecorder: ApplicationRecorder, CommitNotifying {
    let inner = InMemoryRecorder()
    let reads = Mutex(0)

    var commitSignal: CommitSignal { inner.commitSignal }
    var commitPollInterval: Duration? { inner.commitPollInterval }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        reads.withLock { $0 += 1 }
        return try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? {
        reads.withLock { $0 += 1 }
        return try await inner.maxNotificationID()
    }
}

@Suite("System runner: waiting for commits")
struct SystemWaitingTests {
    @Test("Caught up with two leaders, a follower waits on their commit signals without reading their logs, and a commit to either wakes it")
    func waitsWithoutPolling() async throws {
        let web = CountingLogRecorder(), shop = CountingLogRecorder()
        let webApp = Application(recorder: web), shopApp = Application(recorder: shop)
        let probe = PolicyProbe()
        let invoices = try ProcessApplication(name: "invoices", application: Application(recorder: InMemoryRecorder()),
                                              policy: InvoicingPolicy(probe: probe))
        let system = try System(members: [.application("web", webApp), .application("shop", shopApp), .process(invoices)],
                                pipes: [["web", "invoices"], ["shop", "invoices"]])
        let runner = try SystemRunner(system: system)
        let run = Task { try await runner.run() }
        do {
            let first = try await placeOrders(webApp, 3)
            try await runner.wait(for: "invoices", toProcess: first[2].notificationID, of: "web", timeout: .seconds(60))
            // Idle: the follower waits on both signals and reads nothing.
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(60)
            while web.commitSignal.waiting == 0 || shop.commitSignal.waiting == 0, clock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(web.commitSignal.waiting >= 1 && shop.commitSignal.waiting >= 1)
            let before = web.reads.withLock { $0 } + shop.reads.withLock { $0 }
            try await Task.sleep(for: .milliseconds(500))
            #expect(web.reads.withLock { $0 } + shop.reads.withLock { $0 } == before, "no reads while idle")
            // A commit to the second leader wakes it at once (the in-memory recorder has no polling bound).
            let fromShop = try await placeOrders(shopApp, 1)
            try await runner.wait(for: "invoices", toProcess: fromShop[0].notificationID, of: "shop", timeout: .seconds(60))
            let fromWeb = try await placeOrders(webApp, 1)
            try await runner.wait(for: "invoices", toProcess: fromWeb[0].notificationID, of: "web", timeout: .seconds(60))
        } catch {
            run.cancel()
            _ = try? await run.value
            throw error
        }
        run.cancel()
        try await run.value
        #expect(!runner.isRunning)
        #expect(probe.state.withLock { $0.processed.count } == 5)
    }
    @Test("A wait across a long catch-up reads the leader's log once per page of the items it waits for, not once per event the follower processes")
    func waitDuringCatchUpReadsLittle() async throws {
        let orders = CountingLogRecorder()
        let ordersApp = Application(recorder: orders)
        // A slow policy (up to 2 ms an event): the waiter wakes at nearly every step.
        let probe = PolicyProbe(jitter: .milliseconds(2))
        let invoices = try ProcessApplication(name: "invoices", application: Application(recorder: InMemoryRecorder()),
                                              policy: InvoicingPolicy(probe: probe))
        let system = try System(members: [.application("orders", ordersApp), .process(invoices)], pipes: [["orders", "invoices"]])
        let placed = try await placeOrders(ordersApp, 300)
        let last = try #require(placed.last?.notificationID)
        // The runner alone, to the end: its own reads of the leader's log (the position is
        // polled in the follower's store, which is not the leader's).
        let alone = try SystemRunner(system: system, batchSize: 100)
        let aloneRun = Task { try await alone.run() }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(120)
        while try await alone.position(of: "invoices", leader: "orders") != last, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        aloneRun.cancel()
        try await aloneRun.value
        // Again from the start, on a fresh follower store, with a wait running the whole time.
        let fresh = try ProcessApplication(name: "invoices", application: Application(recorder: InMemoryRecorder()),
                                           policy: InvoicingPolicy(probe: probe))
        let again = try System(members: [.application("orders", ordersApp), .process(fresh)], pipes: [["orders", "invoices"]])
        let runnerReads = orders.reads.withLock { $0 }
        orders.reads.withLock { $0 = 0 }
        let runner = try SystemRunner(system: again, batchSize: 100)
        let run = Task { try await runner.run() }
        try await runner.wait(for: "invoices", toProcess: last, of: "orders", timeout: .seconds(120))
        let withWait = orders.reads.withLock { $0 }
        run.cancel()
        try await run.value
        // The wait's own reads: one page of 100 ids per 100 invoices, and the log's end (a
        // read per step would be about 300).
        #expect(withWait - runnerReads <= 12, "the runner read the log \(runnerReads) times alone, \(withWait) times with a wait")
        #expect(try await runner.position(of: "invoices", leader: "orders") == last)
    }
}
