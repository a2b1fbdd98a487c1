// The domain of the system tests (orders -> invoices -> reports), shared by the tests and the
// es-test-agent's follower process.

import EventSourcing
import Foundation
import Synchronization

/// An order placed by a customer (the data subject).
public struct SysOrder: Aggregate {
    public static let typeName = "SysOrder"
    public enum Event: Codable, Sendable, Equatable {
        case placed(customer: String, item: String, amount: Int)
        case noted(String)
    }
    public var customer = ""
    public var item = ""
    public var amount = 0
    public init() {}
    public mutating func apply(_ event: Event) {
        if case .placed(let c, let i, let a) = event { (customer, item, amount) = (c, i, a) }
    }
    public var dataSubject: String? { customer.isEmpty ? nil : customer }
}

/// An invoice for one order, under the order's customer.
public struct SysInvoice: Aggregate {
    public static let typeName = "SysInvoice"
    public enum Event: Codable, Sendable, Equatable {
        /// `leader` and `notificationID` say which upstream event made it (to count duplicates).
        case issued(orderID: UUID, customer: String, item: String, amount: Int, leader: String, notificationID: Int64)
    }
    public var orderID = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    public var customer = ""
    public var item = ""
    public var amount = 0
    public var leader = ""
    public var notificationID: Int64 = 0
    public init() {}
    public mutating func apply(_ event: Event) {
        if case .issued(let o, let c, let i, let a, let l, let n) = event {
            (orderID, customer, item, amount, leader, notificationID) = (o, c, i, a, l, n)
        }
    }
    public var dataSubject: String? { customer.isEmpty ? nil : customer }
}

/// A report line for one invoice (a third level).
public struct SysReport: Aggregate {
    public static let typeName = "SysReport"
    public enum Event: Codable, Sendable, Equatable {
        case counted(invoiceID: UUID, amount: Int)
    }
    public var invoiceID = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    public var amount = 0
    public init() {}
    public mutating func apply(_ event: Event) {
        if case .counted(let i, let a) = event { (invoiceID, amount) = (i, a) }
    }
}

/// What the test policies saw, and where they are told to fail.
public final class PolicyProbe: Sendable {
    public struct State: Sendable {
        /// (leader, notification id) of every event processed, in order (also the retried ones).
        public var processed: [(String, Int64)] = []
        /// Key scopes erase was called for.
        public var erased: [String] = []
        /// Notification ids to throw at, while set.
        public var failAt: Set<Int64> = []
        /// How many more times to conflict on purpose (a save by another writer).
        public var conflicts = 0
    }
    public let state = Mutex(State())
    /// Called at the start of each process call (the agent prints a line).
    public let onProcess: (@Sendable (Int64) -> Void)?
    /// A random pause in each process call, up to this long (so kills land mid-way).
    public let jitter: Duration?

    public init(onProcess: (@Sendable (Int64) -> Void)? = nil, jitter: Duration? = nil) {
        self.onProcess = onProcess
        self.jitter = jitter
    }
}

public struct PolicyTestFailure: Error {
    public init() {}
}

/// Issues one invoice per placed order (under the order's customer).
public struct InvoicingPolicy: ProcessPolicy {
    public let probe: PolicyProbe
    public var topics: [String]

    public init(probe: PolicyProbe, topics: [String] = ["SysOrder.placed"]) {
        self.probe = probe
        self.topics = topics
    }

    public func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        probe.onProcess?(event.notificationID)
        let fail = probe.state.withLock { s -> Bool in
            s.processed.append((event.leader, event.notificationID))
            return s.failAt.contains(event.notificationID)
        }
        if fail { throw PolicyTestFailure() }
        if let jitter = probe.jitter {
            try await Task.sleep(for: jitter * Double.random(in: 0...1))
        }
        guard let e = try event.event(if: SysOrder.self), case .placed(let customer, let item, let amount) = e.event else { return }
        var invoice = try AggregateRoot<SysInvoice>(.issued(orderID: event.originatorID, customer: customer, item: item,
                                                            amount: amount, leader: event.leader, notificationID: event.notificationID))
        try context.collect(&invoice)
    }

    public func erase(keyScope: String, in context: ProcessingContext) async throws {
        probe.state.withLock { $0.erased.append(keyScope) }
    }
}

/// Counts each invoice in a report line.
public struct ReportingPolicy: ProcessPolicy {
    public let probe: PolicyProbe
    public init(probe: PolicyProbe) { self.probe = probe }
    public var topics: [String] { ["SysInvoice.issued"] }

    public func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        probe.state.withLock { $0.processed.append((event.leader, event.notificationID)) }
        guard let e = try event.event(if: SysInvoice.self), case .issued(_, _, _, let amount, _, _) = e.event else { return }
        var line = try AggregateRoot<SysReport>(.counted(invoiceID: event.originatorID, amount: amount))
        try context.collect(&line)
    }
}

/// The invoices an application's log holds, by the upstream (leader, notification id) that made
/// them: reads the whole log (test sizes).
public func invoicesByUpstream(_ app: Application) async throws -> [String: [UUID]] {
    var out: [String: [UUID]] = [:]
    var start: Int64 = 1
    while true {
        let page = try await app.notificationLog.read(start: start, limit: 500)
        guard let last = page.last else { return out }
        for item in page where item.notification.topic == "SysInvoice.issued" {
            guard case .decoded = item.outcome else { continue }
            let e = try item.event(as: SysInvoice.self)
            if case .issued(_, _, _, _, let leader, let n) = e.event {
                out["\(leader)#\(n)", default: []].append(item.notification.originatorID)
            }
        }
        start = last.notification.id + 1
    }
}
