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
        let order = saga.order
        switch (event.topic, saga.step) {
        case ("Order.placed", .started):
            try await payments.charge(order: order, customer: saga.customer, amount: saga.amount)
            try saga.record(.paymentRequested)
        case ("Payment.charged", .awaitingPayment):
            try saga.record(.paid)
            try await shipping.ship(order: order, customer: saga.customer, address: saga.address)
            try saga.record(.shipmentRequested)
        case ("Payment.declined", .awaitingPayment):
            try await orders.cancel(order: order, reason: "payment declined")
            try saga.record(.cancelled(reason: "payment declined"))
        case ("Shipment.dispatched", .awaitingShipment):
            try await orders.fulfil(order: order)
            try saga.record(.shipped)
            try saga.record(.completed)
        case ("Shipment.failed", .awaitingShipment):
            try await payments.refund(order: order)
            try saga.record(.refundRequested)
        case ("Payment.refunded", .awaitingRefund):
            try await orders.cancel(order: order, reason: "shipment failed; payment refunded")
            try saga.record(.refunded)
            try saga.record(.cancelled(reason: "shipment failed"))
        default:
            return  // not for this step (the saga is past it)
        }
        try crash?.maybe(at: event, order: order)
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
