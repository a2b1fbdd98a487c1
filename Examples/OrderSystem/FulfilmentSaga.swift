import EventSourcing
import Foundation
import Synchronization

/// The fulfilment saga: order -> payment -> shipping, with a compensation when shipping fails.
///
/// - an order is placed: the saga starts and charges the payment;
/// - the payment is declined: the order is cancelled;
/// - the payment is charged: the order is shipped;
/// - the shipment is dispatched: the order is fulfilled;
/// - the shipment fails: the payment is refunded, and once it is, the order is cancelled.
///
/// Correlated by the order's id; its state (``Fulfilment``) lives in the fulfilment
/// application's own store and commits with that application's tracking records.
///
/// Each event first adds what it tells (the payment's or the shipment's outcome) to the state,
/// then the saga does whatever is due given all it knows. So the order in which the outcomes
/// arrive does not matter: after a crash between a command and the saga's commit, the
/// command's effect (a refund, in the payments log) can reach the saga before the event that
/// caused the command (the failed shipment, in the shipping log) is processed again.
struct FulfilmentSaga: Saga {
    typealias State = Fulfilment

    let orders: OrderDesk
    let payments: PaymentDesk
    let shipping: ShippingDesk
    /// Fault injection for the demonstration: stops the process once, after a command and
    /// before the saga's commit (see ``Crash``).
    let crash: Crash?
    /// The erasures received, for the story.
    let erasures: ErasureLog

    var topics: [String] {
        ["Order.placed", "Payment.charged", "Payment.declined", "Payment.refunded", "Shipment.dispatched", "Shipment.failed"]
    }

    func correlationID(of event: UpstreamEvent) throws -> String? {
        if event.topic.hasPrefix(Order.typeName + ".") { return event.originatorID.uuidString.lowercased() }
        if let e = try event.event(if: Payment.self) {
            switch e.event {
            case .charged(let order, _, _), .declined(let order, _, _, _), .refunded(let order): return order.uuidString.lowercased()
            }
        }
        if let e = try event.event(if: Shipment.self) {
            switch e.event {
            case .dispatched(let order, _, _), .failed(let order, _, _): return order.uuidString.lowercased()
            }
        }
        return nil
    }

    func start(with event: UpstreamEvent, correlationID: String) throws -> Fulfilment.Event? {
        guard let e = try event.event(if: Order.self), case .placed(let customer, _, let amount, let address) = e.event else { return nil }
        return .started(order: e.originatorID, customer: customer, amount: amount, address: address)
    }

    func handle(_ event: UpstreamEvent, saga: inout AggregateRoot<Fulfilment>, in context: ProcessingContext) async throws {
        // What the event tells, once.
        switch event.topic {
        case "Payment.charged" where saga.payment == nil: try saga.record(.paid)
        case "Payment.declined" where saga.payment == nil: try saga.record(.declined)
        case "Payment.refunded" where saga.payment != .refunded: try saga.record(.refunded)
        case "Shipment.dispatched" where saga.shipment == nil: try saga.record(.shipped)
        case "Shipment.failed" where saga.shipment == nil: try saga.record(.shipmentFailed)
        default: break
        }
        try await advance(&saga)
        try crash?.maybe(at: event, order: saga.order)
    }

    /// Does what is due given what the saga knows. Every command is idempotent.
    private func advance(_ saga: inout AggregateRoot<Fulfilment>) async throws {
        guard !saga.done else { return }
        let order = saga.order
        if !saga.paymentRequested {
            try await payments.charge(order: order, customer: saga.customer, amount: saga.amount)
            try saga.record(.paymentRequested)
        }
        // A shipment is only ever requested for a charged payment.
        let charged = saga.payment == .charged || (saga.payment == nil && saga.shipment != nil)
        switch (saga.payment, saga.shipment) {
        case (.declined, _):
            try await orders.cancel(order: order, reason: "payment declined")
            try saga.record(.cancelled(reason: "payment declined"))
        case (.refunded, _):
            try await orders.cancel(order: order, reason: "shipment failed; payment refunded")
            try saga.record(.cancelled(reason: "shipment failed; payment refunded"))
        case (_, .dispatched) where charged:
            try await orders.fulfil(order: order)
            try saga.record(.completed)
        case (_, .failed) where charged && !saga.refundRequested:
            try await payments.refund(order: order)
            try saga.record(.refundRequested)
        case (_, nil) where charged && !saga.shipmentRequested:
            try await shipping.ship(order: order, customer: saga.customer, address: saga.address)
            try saga.record(.shipmentRequested)
        default:
            break  // waiting for the next outcome
        }
    }

    /// A customer was erased in a leader: the saga's state for that customer is sealed under
    /// the same (shared) key scope, so it is unreadable already; later events for it are skipped.
    func erase(keyScope: String, in context: ProcessingContext) async throws {
        erasures.append(keyScope)
    }
}

/// Stops the fulfilment process once, at the first event with `topic`, after the saga's
/// command ran and before anything of the saga was committed: what a power cut there does.
final class Crash: Sendable {
    struct Simulated: Error, CustomStringConvertible {
        var description: String { "simulated crash after the command, before the commit" }
    }

    let topic: String
    private let armed = Mutex(true)
    /// The order whose event crashed the process.
    let crashedAt = Mutex<(order: UUID, notificationID: Int64)?>(nil)

    init(topic: String) { self.topic = topic }

    func maybe(at event: UpstreamEvent, order: UUID) throws {
        guard event.topic == topic, armed.withLock({ let was = $0; $0 = false; return was }) else { return }
        crashedAt.withLock { $0 = (order, event.notificationID) }
        throw Simulated()
    }
}

/// The key scopes of the erasure records the fulfilment process received.
final class ErasureLog: Sendable {
    private let received = Mutex<[String]>([])
    func append(_ scope: String) { received.withLock { $0.append(scope) } }
    var scopes: [String] { received.withLock { $0 } }
}
