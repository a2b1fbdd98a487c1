import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Keys across a system: one shred in the leader erases the subject in its followers too.
@Suite("System runner: keys across a system")
struct SystemErasureTests {
    /// Shreds customer A through the orders application, runs invoices past the erasure, and
    /// checks both applications: A shredded, B intact; the erasure record once in the invoices
    /// log, seen by a projection there; a restart writes nothing twice.
    static func shredReachesFollower(_ factory: RecorderFactory, sharedKeyring: Bool,
                                     cache: AggregateCache.Configuration = .off) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"], sharedKeyring: sharedKeyring,
                                     snapshotIntervals: [.every(1, for: SysInvoice.self)], cache: cache) { f in
            let probe = PolicyProbe()
            let orders = try f.app("orders"), invoicesApp = try f.app("invoices")
            let placed = try await placeOrders(orders, 6, customers: ["customer-a", "customer-b"])
            let system = try SystemRunnerTests.ordersInvoices(f, probe: probe)
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", placed[5].notificationID)])
            let before = try await invoicesByUpstream(invoicesApp)
            let invoiceOf = { (r: Recording) throws -> UUID in try #require(before["orders#\(r.notificationID)"]?.first) }
            // Snapshots of A's invoices exist (every event is snapshotted) and must go.
            #expect(try await f.stores["invoices"]?.snapshots.selectSnapshot(originatorID: try invoiceOf(placed[0]), lte: nil) != nil)

            if cache != .off {
                // Every invoice read once: in the follower's cache now.
                for r in placed { _ = try await invoicesApp.repository.get(SysInvoice.self, id: try invoiceOf(r)) }
            }
            let receipt = try await orders.shred(keyScope: "customer-a")
            let erasureID = try #require(try await orders.notificationLog.maxNotificationID)
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", erasureID)])
            if let cache = invoicesApp.aggregateCache {
                // The decrypted copies of A's invoices left the follower's memory with the erasure.
                for (i, r) in placed.enumerated() {
                    #expect(cache.contains(try invoiceOf(r)) == (i % 2 == 1), "invoice of order \(i) cached")
                }
            }

            for (i, r) in placed.enumerated() {
                let isA = i % 2 == 0
                let invoiceID = try invoiceOf(r)
                if isA {
                    let o = await #expect(throws: EventSourcingError.self) { try await orders.repository.get(SysOrder.self, id: r.originatorID) }
                    #expect(o?.code == .shredded)
                    let inv = await #expect(throws: EventSourcingError.self) { try await invoicesApp.repository.get(SysInvoice.self, id: invoiceID) }
                    #expect(inv?.code == .shredded)
                    #expect(try await f.stores["invoices"]?.snapshots.selectSnapshot(originatorID: invoiceID, lte: nil) == nil)
                } else {
                    #expect(try await orders.repository.get(SysOrder.self, id: r.originatorID).customer == "customer-b")
                    #expect(try await invoicesApp.repository.get(SysInvoice.self, id: invoiceID).customer == "customer-b")
                }
            }
            // The invoices log: A's invoices read as shredded, B's decode, and the erasure record is there once.
            let items = try await invoicesApp.notificationLog.read(start: 1, limit: 1000)
            let erasures = items.filter { if case .erased(let s, _) = $0.outcome { return s == "customer-a" } else { return false } }
            #expect(erasures.count == 1)
            #expect(items.filter(\.isShredded).count == 3)
            #expect(items.filter { if case .decoded = $0.outcome { return true } else { return false } }.count == 3)
            #expect(probe.state.withLock { $0.erased } == ["customer-a"])
            if !sharedKeyring {
                // The follower's own keyring was shredded by the runner.
                let tomb = try await f.keyrings["invoices"]?.store.tombstone(scope: "customer-a")
                #expect(tomb != nil)
            }
            #expect(receipt.keyScope == "customer-a")

            // A projection on invoices sees the erasure.
            let watched = ErasureLog()
            let tracking = try #require(f.stores["invoices"]?.recorder as? any TrackingRecorder)
            let projection = try ProjectionRunner(application: invoicesApp,
                                                  projection: ErasureWatcher(name: "watch", log: watched),
                                                  store: AtLeastOnceProjectionStore(tracking: tracking))
            let lastInvoice = try #require(try await invoicesApp.notificationLog.maxNotificationID)
            let run = Task { try await projection.run() }
            try await projection.wait(until: lastInvoice, timeout: .seconds(120))
            run.cancel()
            try await run.value
            #expect(watched.erased.withLock { $0 } == ["customer-a"])

            // A restart (new runner) with new orders: nothing is written twice.
            let later = try await placeOrders(orders, 2, customers: ["customer-b"])
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", later[1].notificationID)])
            let after = try await invoicesApp.notificationLog.read(start: 1, limit: 1000)
            #expect(after.filter(\.isErased).count == 1)
            #expect(probe.state.withLock { $0.erased } == ["customer-a"])
            #expect(try await invoicesByUpstream(invoicesApp).count == 3 + 2, "B's three and two new invoices decode")
        }
    }

    @Test("Shred customer A in orders with a keyring shared by orders and invoices: A's orders and invoices read .shredded, B's intact",
          arguments: RecorderFactory.all)
    func sharedKeyring(_ factory: RecorderFactory) async throws {
        try await Self.shredReachesFollower(factory, sharedKeyring: true)
    }

    @Test("With a shared keyring and an aggregate cache in the follower, its cached aggregates of the scope leave the cache when the erasure arrives",
          arguments: RecorderFactory.all)
    func sharedKeyringWithCache(_ factory: RecorderFactory) async throws {
        try await Self.shredReachesFollower(factory, sharedKeyring: true, cache: .lru(maxEntries: 100))
    }

    @Test("With a keyring of its own, the follower shreds the scope in it when the leader's erasure arrives",
          arguments: RecorderFactory.all)
    func ownKeyring(_ factory: RecorderFactory) async throws {
        try await Self.shredReachesFollower(factory, sharedKeyring: false)
    }

    @Test("An erasure of a scope the follower never had still leaves the erasure record in the follower's log, once, with its tracking record",
          arguments: RecorderFactory.all)
    func erasureOfAScopeTheFollowerNeverHad(_ factory: RecorderFactory) async throws {
        // Own keyrings: the follower's store holds a master key check (an encrypted store), where
        // a PostgreSQL tracked save once refused the plaintext erasure record.
        try await SystemFixture.with(factory, names: ["orders", "invoices"], sharedKeyring: false) { f in
            let probe = PolicyProbe()
            let orders = try f.app("orders"), invoicesApp = try f.app("invoices")
            let placed = try await placeOrders(orders, 2, customers: ["customer-b"])
            _ = try await orders.shred(keyScope: "customer-z", ifAbsent: .tombstone)
            let erasureID = try #require(try await orders.notificationLog.maxNotificationID)
            let system = try SystemRunnerTests.ordersInvoices(f, probe: probe)
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", erasureID)])
            #expect(try await SystemRunner(system: system).position(of: "invoices", leader: "orders") == erasureID)
            let items = try await invoicesApp.notificationLog.read(start: 1, limit: 100)
            #expect(items.count == 3)
            #expect(items.filter { if case .erased("customer-z", _) = $0.outcome { return true } else { return false } }.count == 1)
            #expect(probe.state.withLock { $0.erased } == ["customer-z"])
            #expect(try await f.keyrings["invoices"]?.store.tombstone(scope: "customer-z") == nil,
                    "nothing to shred in the follower's keyring: no tombstone is made there")
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", erasureID)])
            #expect(try await invoicesApp.notificationLog.read(start: 1, limit: 100).count == 3)
            #expect(placed.count == 2)
        }
    }

    @Test("A follower that starts after the shred: the subject's events arrive shredded and only move its position; the erasure reaches it once",
          arguments: RecorderFactory.all)
    func followerStartingAfterTheShred(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"]) { f in
            let probe = PolicyProbe()
            let orders = try f.app("orders"), invoicesApp = try f.app("invoices")
            let placed = try await placeOrders(orders, 6, customers: ["customer-a", "customer-b"])
            _ = try await orders.shred(keyScope: "customer-a")
            let erasureID = try #require(try await orders.notificationLog.maxNotificationID)
            let system = try SystemRunnerTests.ordersInvoices(f, probe: probe)
            // Batches of 2: a page can end on a shredded event.
            try await runUntil(try SystemRunner(system: system, batchSize: 2), [("invoices", "orders", erasureID)])
            #expect(try await SystemRunner(system: system).position(of: "invoices", leader: "orders") == erasureID)
            let processed = probe.state.withLock { $0.processed.map(\.1) }
            #expect(processed == placed.enumerated().filter { $0.offset % 2 == 1 }.map(\.element.notificationID),
                    "only B's orders reach the policy")
            #expect(probe.state.withLock { $0.erased } == ["customer-a"])
            let items = try await invoicesApp.notificationLog.read(start: 1, limit: 100)
            #expect(items.count == 4, "B's three invoices and the erasure record")
            #expect(items.filter(\.isErased).count == 1)
            #expect(try await invoicesByUpstream(invoicesApp).count == 3)
        }
    }

    @Test("The erasure goes down every level: orders -> invoices -> reports each hold the erasure record once",
          arguments: RecorderFactory.all)
    func erasureReachesEveryLevel(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices", "reports"]) { f in
            let orders = try f.app("orders"), invoicesApp = try f.app("invoices"), reportsApp = try f.app("reports")
            let invoices = try ProcessApplication(name: "invoices", application: invoicesApp, policy: InvoicingPolicy(probe: PolicyProbe()))
            let reportProbe = PolicyProbe()
            let reports = try ProcessApplication(name: "reports", application: reportsApp, policy: ReportingPolicy(probe: reportProbe))
            let system = try System(members: [.application("orders", orders), .process(invoices), .process(reports)],
                                    pipes: [["orders", "invoices", "reports"]])
            try await placeOrders(orders, 4)
            _ = try await orders.shred(keyScope: "customer-a")
            let erasureID = try #require(try await orders.notificationLog.maxNotificationID)
            let runner = try SystemRunner(system: system)
            let run = Task { try await runner.run() }
            do {
                try await runner.wait(for: "invoices", toProcess: erasureID, of: "orders", timeout: .seconds(120))
                let lastInvoice = try #require(try await invoicesApp.notificationLog.maxNotificationID)
                try await runner.wait(for: "reports", toProcess: lastInvoice, of: "invoices", timeout: .seconds(120))
            } catch {
                run.cancel()
                _ = try? await run.value
                throw error
            }
            run.cancel()
            try await run.value
            for app in [orders, invoicesApp, reportsApp] {
                let items = try await app.notificationLog.read(start: 1, limit: 100)
                #expect(items.filter { if case .erased("customer-a", _) = $0.outcome { return true } else { return false } }.count == 1)
            }
            // B's two orders made two invoices and two report lines; A's made none (shredded before).
            #expect(reportProbe.state.withLock { $0.processed.count } == 2)
        }
    }
}
