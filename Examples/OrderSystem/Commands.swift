import EventSourcing
import Foundation

// The commands the fulfilment saga sends to the other applications. The system's pipes may not
// form cycles (fulfilment follows payments, so payments cannot follow fulfilment): the saga calls
// these directly. Each may run twice for one order (the saga's process stopped after the call,
// before its own commit), so each is idempotent: new aggregates get ids derived from the order's
// id and are saved with `saveIfNew`; changes are made only when the state says they are due.

/// The payments application's commands.
struct PaymentDesk: Sendable {
    let app: Application
    /// Orders above this amount are declined (the card's limit, in the example).
    static let limit = 500

    /// Charges an order once: creates its payment, charged or declined.
    func charge(order: UUID, customer: String, amount: Int) async throws {
        let event: Payment.Event = amount <= Self.limit
            ? .charged(order: order, customer: customer, amount: amount)
            : .declined(order: order, customer: customer, amount: amount, reason: "over the card's limit")
        var payment = try AggregateRoot<Payment>(id: try Payment.id(order: order), event)
        try await app.saveIfNew(&payment)
    }

    /// Refunds an order's payment once.
    func refund(order: UUID) async throws {
        try await app.retryingOnConflict {
            var payment = try await app.repository.get(Payment.self, id: try Payment.id(order: order))
            guard payment.status == .charged else { return }
            try payment.record(.refunded(order: order))
            try await app.save(&payment)
        }
    }
}

/// The shipping application's commands.
struct ShippingDesk: Sendable {
    let app: Application

    /// Ships an order once: creates its shipment, dispatched or failed (the example's carrier
    /// has no route to an address on "Atlantis").
    func ship(order: UUID, customer: String, address: String) async throws {
        let event: Shipment.Event = address.contains("Atlantis")
            ? .failed(order: order, customer: customer, reason: "no route to the address")
            : .dispatched(order: order, customer: customer, address: address)
        var shipment = try AggregateRoot<Shipment>(id: try Shipment.id(order: order), event)
        try await app.saveIfNew(&shipment)
    }
}

/// The orders application's commands.
struct OrderDesk: Sendable {
    let app: Application

    /// Marks an order fulfilled, once.
    func fulfil(order: UUID) async throws {
        try await app.retryingOnConflict {
            var o = try await app.repository.get(Order.self, id: order)
            guard o.status == .placed else { return }
            try o.record(.fulfilled)
            try await app.save(&o)
        }
    }

    /// Cancels an order, once.
    func cancel(order: UUID, reason: String) async throws {
        try await app.retryingOnConflict {
            var o = try await app.repository.get(Order.self, id: order)
            guard o.status == .placed else { return }
            try o.record(.cancelled(reason: reason))
            try await app.save(&o)
        }
    }
}
