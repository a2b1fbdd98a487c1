import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Process applications run by a SystemRunner, on every recorder (in-memory, SQLite, PostgreSQL
/// when configured), each application with a store of its own.
@Suite("System runner: process applications")
struct SystemRunnerTests {
    static func ordersInvoices(_ f: SystemFixture, probe: PolicyProbe, topics: [String] = ["SysOrder.placed"]) throws -> System {
        let invoices = try ProcessApplication(name: "invoices", application: try f.app("invoices"),
                                              policy: InvoicingPolicy(probe: probe, topics: topics))
        return try System(members: [.application("orders", try f.app("orders")), .process(invoices)],
                          pipes: [["orders", "invoices"]])
    }

    /// Every order's upstream key ("orders#<id>") maps to exactly one invoice.
    static func expectOneInvoicePerOrder(_ invoices: Application, _ orders: [Recording], leader: String = "orders",
                                         sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let byUpstream = try await invoicesByUpstream(invoices)
        let expected = Set(orders.map { "\(leader)#\($0.notificationID)" })
        #expect(Set(byUpstream.keys) == expected, sourceLocation: sourceLocation)
        for (key, invoices) in byUpstream where invoices.count != 1 {
            Issue.record("\(key) has \(invoices.count) invoices", sourceLocation: sourceLocation)
        }
    }

    @Test("Each order yields exactly one invoice, under the order's customer; a new runner resumes with no duplicate and no skip",
          arguments: RecorderFactory.all)
    func exactlyOnceAcrossRestarts(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"]) { f in
            let probe = PolicyProbe()
            let orders = try f.app("orders")
            var placed = try await placeOrders(orders, 12)
            // Events of another topic are not given to the policy.
            var other = try AggregateRoot<SysOrder>(.placed(customer: "customer-a", item: "x", amount: 1))
            try other.record(.noted("gift wrap"))
            placed += try await orders.save(&other).filter { $0.topic == "SysOrder.placed" }
            let system = try Self.ordersInvoices(f, probe: probe)
            let last = try #require(try await orders.notificationLog.maxNotificationID)
            try await runUntil(try SystemRunner(system: system, batchSize: 5), [("invoices", "orders", last)])
            #expect(try await SystemRunner(system: system).position(of: "invoices", leader: "orders") == last - 1,
                    "the last notification (another topic) was not processed; the position is the last one processed")
            try await Self.expectOneInvoicePerOrder(try f.app("invoices"), placed)
            #expect(probe.state.withLock { $0.processed.count } == placed.count)

            // The invoices are encrypted under the customers' scopes and readable.
            let byUpstream = try await invoicesByUpstream(try f.app("invoices"))
            let firstInvoice = try #require(byUpstream["orders#\(placed[0].notificationID)"]?.first)
            let invoice = try await f.app("invoices").repository.get(SysInvoice.self, id: firstInvoice)
            #expect(invoice.keyScope == "customer-a")
            #expect(invoice.orderID == placed[0].originatorID)

            // A restarted process: a new runner starts at the tracking position.
            placed += try await placeOrders(orders, 9, item: "later")
            let newLast = try #require(placed.last?.notificationID)
            try await runUntil(try SystemRunner(system: system, batchSize: 4), [("invoices", "orders", newLast)])
            try await Self.expectOneInvoicePerOrder(try f.app("invoices"), placed)
            #expect(probe.state.withLock { $0.processed.count } == placed.count, "no event was given to the policy twice")
            #expect(try await SystemRunner(system: system).position(of: "invoices", leader: "orders") == newLast)
        }
    }

    @Test("A policy that throws stops the runner with .processFailed naming the follower, leader, notification and topic; a rerun resumes at that event",
          arguments: RecorderFactory.all)
    func throwingPolicyStopsAndResumes(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"]) { f in
            let probe = PolicyProbe()
            let placed = try await placeOrders(try f.app("orders"), 10)
            let failing = placed[5].notificationID
            probe.state.withLock { $0.failAt = [failing] }
            let system = try Self.ordersInvoices(f, probe: probe)
            let runner = try SystemRunner(system: system, batchSize: 3)
            let run = Task { try await runner.run() }
            let during = await #expect(throws: EventSourcingError.self) {
                try await runner.wait(for: "invoices", toProcess: placed[9].notificationID, of: "orders", timeout: .seconds(60))
            }
            #expect(during?.code == .processFailed)
            let e = await #expect(throws: EventSourcingError.self) { try await run.value }
            #expect(e?.code == .processFailed)
            #expect(e?.notificationID == failing)
            #expect(e?.topic == "SysOrder.placed")
            let message = e?.message ?? ""
            #expect(message.contains("process application \"invoices\" threw at notification \(failing) of \"orders\" (topic SysOrder.placed)"))
            #expect(message.contains("PolicyTestFailure"))
            #expect(message.contains("running again resumes at that event"))
            #expect(runner.lastFailure is PolicyTestFailure)
            #expect(try await runner.position(of: "invoices", leader: "orders") == placed[4].notificationID)
            try await Self.expectOneInvoicePerOrder(try f.app("invoices"), Array(placed[..<5]))

            // Fixed: a rerun of the same runner resumes at the failed event.
            probe.state.withLock { $0.failAt = [] }
            try await runUntil(runner, [("invoices", "orders", placed[9].notificationID)])
            #expect(runner.lastFailure == nil, "cleared by the new run")
            try await Self.expectOneInvoicePerOrder(try f.app("invoices"), placed)
            let processed = probe.state.withLock { $0.processed.map(\.1) }
            #expect(processed.filter { $0 == failing }.count == 2, "the failed event was given again")
            #expect(processed.filter { $0 == placed[4].notificationID }.count == 1, "the event before it was not")
        }
    }

    @Test("The first failure stops every follower of the runner and is thrown", .timeLimit(.minutes(2)))
    func firstFailureStopsAll() async throws {
        try await SystemFixture.with(.inMemory, names: ["orders", "invoices", "copies"]) { f in
            let failing = PolicyProbe(), healthy = PolicyProbe()
            let placed = try await placeOrders(try f.app("orders"), 6)
            failing.state.withLock { $0.failAt = [placed[3].notificationID] }
            let invoices = try ProcessApplication(name: "invoices", application: try f.app("invoices"), policy: InvoicingPolicy(probe: failing))
            let copies = try ProcessApplication(name: "copies", application: try f.app("copies"), policy: InvoicingPolicy(probe: healthy))
            let system = try System(members: [.application("orders", try f.app("orders")), .process(invoices), .process(copies)],
                                    pipes: [["orders", "invoices"], ["orders", "copies"]])
            let runner = try SystemRunner(system: system)
            // "copies" alone would follow for ever: run() returns because the failure stopped it too.
            let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(e?.code == .processFailed)
            #expect(e?.message.contains("\"invoices\"") == true)
            #expect(!runner.isRunning)
            #expect(try await runner.position(of: "invoices", leader: "orders") == placed[2].notificationID)
        }
    }

    @Test("Several levels (orders -> invoices -> reports) and a follower with two leaders, which are taken in turn",
          arguments: RecorderFactory.all)
    func levelsAndTwoLeaders(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["web", "shop", "invoices", "reports"]) { f in
            let probe = PolicyProbe()
            let reportProbe = PolicyProbe()
            let web = try await placeOrders(try f.app("web"), 120)
            let shop = try await placeOrders(try f.app("shop"), 4)
            let invoices = try ProcessApplication(name: "invoices", application: try f.app("invoices"), policy: InvoicingPolicy(probe: probe))
            let reports = try ProcessApplication(name: "reports", application: try f.app("reports"), policy: ReportingPolicy(probe: reportProbe))
            let system = try System(members: [.application("web", try f.app("web")), .application("shop", try f.app("shop")),
                                              .process(invoices), .process(reports)],
                                    pipes: [["web", "invoices", "reports"], ["shop", "invoices"]])
            #expect(system.leaders(of: "invoices") == ["web", "shop"])
            #expect(system.followers(of: "invoices") == ["reports"])
            #expect(system.followers(of: "web") == ["invoices"])
            #expect(system.leaders(of: "web") == [])
            let runner = try SystemRunner(system: system, batchSize: 10)
            let run = Task { try await runner.run() }
            do {
                try await runner.wait(for: "invoices", toProcess: try #require(web.last).notificationID, of: "web", timeout: .seconds(120))
                try await runner.wait(for: "invoices", toProcess: try #require(shop.last).notificationID, of: "shop", timeout: .seconds(120))
                let lastInvoice = try #require(try await f.app("invoices").notificationLog.maxNotificationID)
                try await runner.wait(for: "reports", toProcess: lastInvoice, of: "invoices", timeout: .seconds(120))
            } catch {
                run.cancel()
                _ = try? await run.value
                throw error
            }
            run.cancel()
            try await run.value

            let byUpstream = try await invoicesByUpstream(try f.app("invoices"))
            let expected = Set(web.map { "web#\($0.notificationID)" } + shop.map { "shop#\($0.notificationID)" })
            #expect(Set(byUpstream.keys) == expected)
            #expect(byUpstream.values.allSatisfy { $0.count == 1 })
            // Every invoice has one report line.
            let reported = reportProbe.state.withLock { $0.processed }
            #expect(reported.count == web.count + shop.count)
            #expect(Set(reported.map(\.1)).count == reported.count)
            #expect(reported.allSatisfy { $0.0 == "invoices" })
            // Fairness: the small leader's events were taken in the first round of pages, not
            // after the big leader's backlog of 120.
            let order = probe.state.withLock { $0.processed }
            let lastShop = try #require(order.lastIndex { $0.0 == "shop" })
            #expect(lastShop < 20, "the shop's events were processed at positions up to \(lastShop) of \(order.count)")
        }
    }

    @Test("A conflict on the follower's own aggregate is retried with a fresh context; one that persists fails as .processFailed",
          arguments: [RecorderFactory.inMemory, RecorderFactory.sqliteFile])
    func conflictsAreRetried(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "tally"]) { f in
            let tallyID = UUID()
            let probe = PolicyProbe()
            let placed = try await placeOrders(try f.app("orders"), 4)
            probe.state.withLock { $0.conflicts = 2 }
            let tally = try ProcessApplication(name: "tally", application: try f.app("tally"),
                                               policy: TallyPolicy(probe: probe, tallyID: tallyID))
            let system = try System(members: [.application("orders", try f.app("orders")), .process(tally)], pipes: [["orders", "tally"]])
            try await runUntil(try SystemRunner(system: system), [("tally", "orders", placed[3].notificationID)])
            let root = try await f.app("tally").repository.get(SysReport.self, id: tallyID)
            // Four counted events of the policy plus the two interfering writers' events.
            #expect(root.version == 4 + 2)
            #expect(probe.state.withLock { $0.processed.count } == 4 + 2, "two events were processed twice, after a conflict each")

            // A conflict on every attempt.
            let more = try await placeOrders(try f.app("orders"), 1)
            probe.state.withLock { $0.conflicts = 1_000 }
            let runner = try SystemRunner(system: system)
            let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(e?.code == .processFailed)
            #expect(e?.notificationID == more[0].notificationID)
            #expect(e?.message.contains("after \(SystemRunner.conflictAttempts) attempts") == true)
            #expect(e?.message.contains("concurrencyConflict") == true)
            #expect(try await runner.position(of: "tally", leader: "orders") == placed[3].notificationID)
        }
    }
}

/// Counts every order in one aggregate; while `probe.conflicts` is above 0, another writer saves
/// to that aggregate after the policy read it (so the policy's commit conflicts).
struct TallyPolicy: ProcessPolicy {
    let probe: PolicyProbe
    let tallyID: UUID

    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        let interfere = probe.state.withLock { s -> Bool in
            s.processed.append((event.leader, event.notificationID))
            guard s.conflicts > 0 else { return false }
            s.conflicts -= 1
            return true
        }
        var tally: AggregateRoot<SysReport>
        if try await context.contains(tallyID) {
            tally = try await context.get(SysReport.self, id: tallyID)
        } else {
            tally = try AggregateRoot<SysReport>(id: tallyID, .counted(invoiceID: event.originatorID, amount: 0))
            try context.collect(&tally)
            tally = try await context.get(SysReport.self, id: tallyID)
        }
        if interfere {
            // Another writer gets there first.
            if try await context.application.repository.contains(tallyID) {
                var other = try await context.application.repository.get(SysReport.self, id: tallyID)
                try other.record(.counted(invoiceID: UUID(), amount: -1))
                try await context.application.save(&other)
            } else {
                var other = try AggregateRoot<SysReport>(id: tallyID, .counted(invoiceID: UUID(), amount: -1))
                try await context.application.save(&other)
            }
        }
        try tally.record(.counted(invoiceID: event.originatorID, amount: 1))
        try context.collect(&tally)
    }
}
