import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging
import Synchronization

/// An event-driven system: orders -> payments -> shipping, run by a fulfilment saga, with a
/// compensation when shipping fails, a crash and restart in the middle, and an erasure request
/// that reaches every application.
///
///     swift run OrderSystem [DIRECTORY]
///
/// Four applications, each with its own SQLite file in DIRECTORY (a new temporary directory by
/// default), share one keyring (keys.sqlite): every customer's records, in every application,
/// are sealed under the customer's data key.
enum OrderSystemExample {
    /// One order of the story.
    struct Placement: Sendable {
        var customer: String      // the customer's name (only in the story and in encrypted records)
        var item: String
        var amount: Int
        var address: String
    }

    /// How an order ended, as the applications' stores say.
    struct OrderResult: Sendable, Hashable {
        var order: UUID
        var customerID: String
        var status: Order.Status
        var cancellation: String?
        var payment: Payment.Status?
        /// The payment aggregate's version: 1 (charged or declined) or 2 (then refunded).
        var paymentEvents: Int
        var shipped: Bool?
        var sagaSteps: [String]
    }

    /// What a run showed.
    struct Outcome: Sendable {
        var results: [OrderResult]
        /// The order whose event crashed the first run of the fulfilment process, and that event's notification id in its leader's log.
        var crashedOrder: UUID
        var crashError: EventSourcingError
        /// The shredded customer's id, and each application's reads of that customer's aggregates after the shred.
        var erasedCustomerID: String
        var erasedReads: [String: [EventSourcingError.Code]]
        /// Reads of every other customer's aggregates after the shred succeeded (application: count).
        var intactReads: [String: Int]
        /// The erasure records the fulfilment process received (scopes).
        var erasuresReceived: [String]
        var directory: URL
    }

    static let placements: [Placement] = [
        Placement(customer: "Ada Lovelace", item: "Analytical Engine manual", amount: 120, address: "12 St James's Square, London"),
        Placement(customer: "Grace Hopper", item: "COBOL compiler", amount: 900, address: "1 Navy Yard, Arlington"),
        Placement(customer: "Alan Turing", item: "Enigma rotor", amount: 300, address: "1 Sunken Avenue, Atlantis"),
        Placement(customer: "Ada Lovelace", item: "Difference Engine gears", amount: 80, address: "12 St James's Square, London"),
        Placement(customer: "Edsger Dijkstra", item: "Semaphore", amount: 50, address: "Plataanstraat 5, Nuenen"),
    ]

    static let leaders = ["orders", "payments", "shipping"]

    /// The topics of the events the saga acts on: where the injected crash can be.
    static let crashPoints = ["Order.placed", "Payment.charged", "Payment.declined", "Shipment.dispatched", "Shipment.failed",
                              "Payment.refunded"]

    /// Runs the example in `directory` (which must not hold its files yet), printing through `say`.
    /// The first run of the fulfilment process crashes at the first event of topic `crashAt`,
    /// after the saga's command and before its commit.
    static func run(in directory: URL, crashAt: String = "Payment.charged",
                    say: @Sendable (String) -> Void = { print($0) }) async throws -> Outcome {
        guard crashPoints.contains(crashAt) else {
            throw EventSourcingError(.invalidArgument, "the crash can be injected at \(crashPoints.joined(separator: ", ")), not at \(crashAt)")
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let names = ["keys"] + leaders + ["fulfilment"]
        for n in names where FileManager.default.fileExists(atPath: directory.appendingPathComponent("\(n).sqlite").path) {
            throw EventSourcingError(.invalidArgument, "\(directory.path) holds \(n).sqlite already: give the example a new directory")
        }
        var quiet = Logger(label: "order-system")
        quiet.logLevel = .critical

        // One master key and one key store for the whole system: a customer's data key is the
        // same in every application, so one shred erases the customer everywhere. The
        // applications also share one Keyring object (its cache of unwrapped keys), so a shred
        // through one of them evicts the key for all.
        let masterKey = try MasterKey.generate()
        var stores: [String: SQLiteStore] = [:]
        do {
            for n in names { stores[n] = try SQLiteStore(path: directory.appendingPathComponent("\(n).sqlite").path, logger: quiet) }
            return try await run(stores: stores, masterKey: masterKey, directory: directory, crashAt: crashAt, quiet: quiet, say: say)
        } catch {
            for s in stores.values { await s.close() }
            throw error
        }
    }

    private static func run(stores: [String: SQLiteStore], masterKey: MasterKey, directory: URL, crashAt: String, quiet: Logger,
                            say: @Sendable (String) -> Void) async throws -> Outcome {
        func store(_ n: String) throws -> SQLiteStore {
            guard let s = stores[n] else { throw EventSourcingError(.invalidArgument, "no store \(n)") }
            return s
        }
        let keyring = try await Keyring.open(store: try store("keys"), masterKeys: [masterKey], logger: quiet)
        func app(_ n: String) throws -> Application {
            let s = try store(n)
            return Application(recorder: s, snapshots: s, mapper: Mapper(keyring: keyring), logger: quiet)
        }
        let orders = try app("orders"), payments = try app("payments"), shipping = try app("shipping")
        let fulfilmentApp = try app("fulfilment")
        let erasures = ErasureLog()

        func system(crash: Crash?) throws -> System {
            let saga = FulfilmentSaga(orders: OrderDesk(app: orders), payments: PaymentDesk(app: payments),
                                      shipping: ShippingDesk(app: shipping), crash: crash, erasures: erasures)
            let fulfilment = try ProcessApplication(name: "fulfilment", application: fulfilmentApp, policy: SagaPolicy(saga))
            return try System(members: [.application("orders", orders), .application("payments", payments),
                                        .application("shipping", shipping), .process(fulfilment)],
                              pipes: leaders.map { [$0, "fulfilment"] })
        }

        // Customers are known by opaque ids; their names live only in encrypted records.
        var customerIDs: [String: String] = [:]
        for p in placements where customerIDs[p.customer] == nil { customerIDs[p.customer] = UUID().uuidString.lowercased() }
        var orderIDs: [UUID] = []
        func place(_ p: Placement) async throws {
            var order = try AggregateRoot<Order>(.placed(customer: customerIDs[p.customer] ?? "", item: p.item, amount: p.amount, address: p.address))
            try await orders.save(&order)
            orderIDs.append(order.id)
            say("  \(p.customer) orders \(p.item) (\(p.amount)) to \(p.address)")
        }

        say("Orders placed:")
        for p in placements.prefix(3) { try await place(p) }

        // First run: the fulfilment process crashes once, right after the saga's command for
        // an event (by default: asking shipping to ship an order) and before the saga's new
        // state and position were committed.
        let crash = Crash(topic: crashAt)
        let first = try SystemRunner(system: try system(crash: crash), logger: quiet)
        let crashError: EventSourcingError
        do {
            try await first.run()
            throw EventSourcingError(.recorderFailure, "the first run ended without the simulated crash")
        } catch let e as EventSourcingError where e.code == .processFailed {
            crashError = e
        }
        guard let crashed = crash.crashedAt.withLock({ $0 }) else {
            throw EventSourcingError(.recorderFailure, "the first run failed, but not at the simulated crash: \(crashError)")
        }
        say("")
        say("The fulfilment process crashed while handling \(crashAt) for \(story(crashed.order, orderIDs)), after its command and before committing:")
        say("  \(crashError.message)")

        // Restart: a new runner resumes from each pipe's tracking position; the repeated
        // command finds its effect already there (the shipment created, the refund made).
        say("")
        say("Restarted; more orders placed:")
        let runner = try SystemRunner(system: try system(crash: nil), logger: quiet)
        let running = Task { try await runner.run() }
        let outcome: Outcome
        do {
            for p in placements.dropFirst(3) { try await place(p) }
            try await settle(runner, apps: [orders, payments, shipping])

            var results: [OrderResult] = []
            say("")
            say("How each order ended:")
            for (i, id) in orderIDs.enumerated() {
                let r = try await result(of: id, orders: orders, payments: payments, shipping: shipping, fulfilment: fulfilmentApp)
                results.append(r)
                let p = placements[i]
                let pay = r.payment.map { "payment \($0.rawValue)" } ?? "no payment"
                let ship = r.shipped.map { $0 ? "shipped" : "shipment failed" } ?? "not shipped"
                say("  \(p.customer), \(p.item): \(r.status.rawValue)\(r.cancellation.map { " (\($0))" } ?? ""); \(pay); \(ship)")
            }

            // An erasure request from Ada Lovelace: one shred, through the orders application.
            let ada = customerIDs["Ada Lovelace"] ?? ""
            say("")
            let receipt = try await orders.shred(keyScope: ada)
            say("Erasure request from Ada Lovelace: shredded key scope \(receipt.keyScope).")
            try await settle(runner, apps: [orders, payments, shipping])
            var erasedReads: [String: [EventSourcingError.Code]] = [:]
            var intactReads: [String: Int] = [:]
            for (i, id) in orderIDs.enumerated() {
                let mine = customerIDs[placements[i].customer] == ada
                let reads: [(String, () async throws -> Void)] = [
                    ("orders", { _ = try await orders.repository.get(Order.self, id: id) }),
                    ("payments", { _ = try await payments.repository.get(Payment.self, id: try Payment.id(order: id)) }),
                    ("shipping", { _ = try await shipping.repository.get(Shipment.self, id: try Shipment.id(order: id)) }),
                    ("fulfilment", { _ = try await fulfilmentApp.repository.get(Fulfilment.self, id: try SagaPolicy<FulfilmentSaga>.sagaID(correlationID: id.uuidString.lowercased())) }),
                ]
                for (name, read) in reads {
                    do {
                        try await read()
                        if mine { erasedReads[name, default: []].append(.recorderFailure) } else { intactReads[name, default: 0] += 1 }
                    } catch let e as EventSourcingError {
                        if mine { erasedReads[name, default: []].append(e.code) }
                        else if e.code != .aggregateNotFound { throw e }
                    }
                }
            }
            for name in ["orders", "payments", "shipping", "fulfilment"] {
                let codes = erasedReads[name] ?? []
                say("  \(name): Ada's records read as \(codes.allSatisfy { $0 == .shredded } ? "shredded" : "\(codes)") (\(codes.count)); others' \(intactReads[name] ?? 0) records intact")
            }
            let received = erasures.scopes
            say("  the fulfilment process received the erasure from the orders log: \(received.contains(ada))")
            outcome = Outcome(results: results, crashedOrder: crashed.order, crashError: crashError, erasedCustomerID: ada,
                              erasedReads: erasedReads, intactReads: intactReads, erasuresReceived: received, directory: directory)
        } catch {
            running.cancel()
            _ = try? await running.value
            throw error
        }
        running.cancel()
        do { try await running.value } catch is CancellationError {}
        for s in stores.values { await s.close() }
        say("")
        say("Stores: \(directory.path) (orders, payments, shipping, fulfilment and keys .sqlite)")
        return outcome
    }

    /// Waits until the fulfilment process has processed everything its leaders hold, again
    /// until its own commands add nothing new.
    static func settle(_ runner: SystemRunner, apps: [Application]) async throws {
        var last: [Int64] = []
        while true {
            var now: [Int64] = []
            for app in apps { now.append(try await app.notificationLog.maxNotificationID ?? 0) }
            if now == last { return }
            for (leader, max) in zip(leaders, now) where max > 0 {
                try await runner.wait(for: "fulfilment", toProcess: max, of: leader, timeout: .seconds(60))
            }
            last = now
        }
    }

    static func result(of id: UUID, orders: Application, payments: Application, shipping: Application,
                       fulfilment: Application) async throws -> OrderResult {
        let o = try await orders.repository.get(Order.self, id: id)
        let p = try await payments.repository.contains(try Payment.id(order: id))
            ? try await payments.repository.get(Payment.self, id: try Payment.id(order: id)) : nil
        let s = try await shipping.repository.contains(try Shipment.id(order: id))
            ? try await shipping.repository.get(Shipment.self, id: try Shipment.id(order: id)) : nil
        let saga = try await fulfilment.repository.get(Fulfilment.self,
                                                       id: try SagaPolicy<FulfilmentSaga>.sagaID(correlationID: id.uuidString.lowercased()))
        return OrderResult(order: id, customerID: o.customer, status: o.status, cancellation: o.cancellation, payment: p?.status,
                           paymentEvents: p?.version ?? 0, shipped: s?.dispatched, sagaSteps: saga.steps)
    }

    static func story(_ order: UUID, _ ids: [UUID]) -> String {
        guard let i = ids.firstIndex(of: order) else { return "an order" }
        return "\(placements[i].customer)'s \(placements[i].item)"
    }
}

@main
struct OrderSystemMain {
    static func main() async {
        let arguments = CommandLine.arguments.dropFirst()
        let directory = arguments.first.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("order-system-\(UUID().uuidString.prefix(8))")
        do {
            _ = try await OrderSystemExample.run(in: directory)
        } catch {
            FileHandle.standardError.write(Data("order-system: \(error)\n".utf8))
            exit(1)
        }
    }
}
