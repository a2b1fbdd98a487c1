// The system phase (--system): a follower process application fed by a SystemRunner.
//
// The leader is the application W1 wrote ("customers"). The follower ("invoices") has a store
// of its own (SQLite: a second file beside --db; PostgreSQL: a second schema) and shares the
// leader's mapper, so its Keyring: its policy saves one new Invoice per upstream
// Customer.registered event, under the event's data subject (the customer's key scope), so a
// shred of the customer erases the invoice too. Every other upstream event is read, decoded and
// passed over (the policy follows every topic, like the peer's policy in system_peer.py).
//
// - catch-up: from position 0 over the whole log of the leader (W1's events, and the projection
//   phase's live saves when --projection ran first), in batches of --projection-batch
//   notifications: upstream events processed per second (system_catchup_ev_s), its CPU, and
//   its ratio to W3d of the same run (which reads and decodes the same log, writing nothing).
//   The follower's position is polled every 2 ms (SystemRunner.position) until it reaches the
//   end, so no waiter adds work per event;
// - live: --live-saves leader saves one after another, each waiting (SystemRunner.wait) until
//   the follower has processed it: the latency from the save's commit (save() returned) to the
//   follower's commit of the invoice with its tracking record, p50/p99.
//
// Both are checked: the follower's log must hold one invoice per Registered event afterwards.
import BenchDomain
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation

/// The follower's aggregate: an invoice for a newly registered customer, copying the customer's
/// name (personal data), so it is saved under the customer's data subject.
struct Invoice: Aggregate {
    static var typeName: String { "Invoice" }
    enum Event: Codable, Sendable {
        case issued(customerID: UUID, customerScope: String, name: String)
    }
    var customerID: UUID?
    var customerScope = ""
    var name = ""
    init() {}
    var dataSubject: String? { customerScope.isEmpty ? nil : customerScope }
    mutating func apply(_ event: Event) {
        switch event {
        case .issued(let id, let scope, let n):
            customerID = id
            customerScope = scope
            name = n
        }
    }
}

/// One new Invoice per upstream Registered event; every other event is passed over.
struct InvoicingPolicy: ProcessPolicy {
    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        guard let e = try event.event(if: Customer.self), case .registered(let name, _, _) = e.event else { return }
        let scope = event.item.keyScope ?? e.originatorID.uuidString.lowercased()
        var invoice = try AggregateRoot<Invoice>(.issued(customerID: e.originatorID, customerScope: scope, name: name))
        try context.collect(&invoice)
    }
}

/// The follower's own store: a second SQLite file, or a second schema on the same server.
func makeFollowerStore(_ o: Options) async throws -> any BenchStore {
    switch o.backend {
    case "postgres":
        var config = try PostgresStore.Configuration(url: o.pgURL)
        config.schema = pgSchema + "_invoices"
        config.poolSize = 4
        return try await PostgresStore(configuration: config)
    case "sqlite":
        let path = o.db + "-invoices"
        removeDB(path)
        return try SQLiteStore(path: path, configuration: .init(synchronous: o.sync == "normal" ? .normal : .full))
    default:
        throw EventSourcingError(.invalidArgument, "--system needs the sqlite or postgres backend")
    }
}

/// The system phase: adds the `system_*` fields to `res`. `registered` is how many Registered
/// events the leader's log holds now (one invoice each is expected).
func systemPhase(_ o: Options, store: any BenchStore, app leader: Application, registered: Int,
                 res: inout [String: Any]) async throws {
    guard let last = try await leader.notificationLog.maxNotificationID else {
        throw EventSourcingError(.recorderFailure, "the system phase needs the events W1 wrote")
    }
    let followerStore = try await makeFollowerStore(o)
    let follower = Application(recorder: followerStore, mapper: leader.mapper)
    do {
        let invoices = try ProcessApplication(name: "invoices", application: follower, policy: InvoicingPolicy())
        let system = try System(members: [.application("customers", leader), .process(invoices)],
                                pipes: [["customers", "invoices"]])
        let runner = try SystemRunner(system: system, batchSize: o.projectionBatch)

        let cpu0 = cpuTime()
        let t0 = now()
        let task = Task { try await runner.run() }
        do {
            // Polled every 2 ms rather than awaited with wait(for:toProcess:of:), which checks
            // again on every position the follower reaches (a read of the leader's log each time)
            // and so would add a store read per upstream event to what is measured.
            let deadline = now() + 3600
            while try await runner.position(of: "invoices", leader: "customers") ?? 0 < last {
                if runner.lastFailure != nil { try await task.value }   // the run stopped on a failure: throws it
                guard now() < deadline else { throw EventSourcingError(.timedOut, "the follower did not catch up within an hour") }
                try await Task.sleep(for: .milliseconds(2))
            }
            let t1 = now()
            let caughtUp = Double(last) / (t1 - t0)
            res["system_batch"] = o.projectionBatch
            res["system_upstream_events"] = last
            res["system_catchup_s"] = t1 - t0
            res["system_catchup_ev_s"] = caughtUp
            res["system_catchup_proc_cpu_s"] = cpuTime() - cpu0
            if let w3d = res["w3d_ev_s"] as? Double, w3d > 0 { res["system_catchup_vs_w3d"] = caughtUp / w3d }
            let made = try await follower.notificationLog.maxNotificationID ?? 0
            guard made == Int64(registered) else {
                throw EventSourcingError(.recorderFailure, "the follower made \(made) invoices for \(registered) registered customers")
            }

            // Live: each leader save waits until the follower has processed it.
            var latencies: [Double] = []
            var saves: [Double] = []
            latencies.reserveCapacity(o.liveSaves)
            for i in 0..<o.liveSaves {
                var c = try AggregateRoot<Customer>(.registered(name: "System Customer \(i)", email: "system\(i)@example.org",
                                                               address: "\(i) System Street"))
                let s0 = now()
                let recordings = try await leader.save(&c)
                let committed = now()
                guard let id = recordings.last?.notificationID else { throw EventSourcingError(.recorderFailure, "a save recorded nothing") }
                try await runner.wait(for: "invoices", toProcess: id, of: "customers", timeout: .seconds(60))
                latencies.append(now() - committed)
                saves.append(committed - s0)
            }
            latencies.sort()
            saves.sort()
            res["system_live_saves"] = o.liveSaves
            res["system_live_p50_ms"] = quantile(latencies, 0.50) * 1000
            res["system_live_p99_ms"] = quantile(latencies, 0.99) * 1000
            res["system_live_max_ms"] = (latencies.last ?? 0) * 1000
            res["system_live_save_p50_ms"] = quantile(saves, 0.50) * 1000
            let after = try await follower.notificationLog.maxNotificationID ?? 0
            guard after == Int64(registered + o.liveSaves) else {
                throw EventSourcingError(.recorderFailure,
                    "the follower made \(after) invoices for \(registered + o.liveSaves) registered customers")
            }
        } catch {
            task.cancel()
            _ = try? await task.value
            throw error
        }
        task.cancel()
        try await task.value
    } catch {
        _ = await followerStore.finish()
        throw error
    }
    res["system_follower_size_bytes"] = await followerStore.finish()
}
