import EventSourcing
import Foundation

// The aggregates of the four applications. Every one names the customer as its data subject,
// so all of one customer's records, in every application, are sealed under the customer's data
// key (one keyring shared by the applications), and one shred erases them all. The customer id
// is an opaque id: it is stored in plaintext in record headers.

/// An order (application "orders", the leader).
struct Order: Aggregate {
    static var typeName: String { "Order" }

    enum Event: Codable, Sendable {
        case placed(customer: String, item: String, amount: Int, address: String)
        case fulfilled
        case cancelled(reason: String)
    }

    enum Status: String, Codable, Sendable { case new, placed, fulfilled, cancelled }

    var customer = ""
    var item = ""
    var amount = 0
    var address = ""
    var status = Status.new
    var cancellation: String?

    var dataSubject: String? { customer }

    mutating func apply(_ event: Event) {
        switch event {
        case .placed(let customer, let item, let amount, let address):
            (self.customer, self.item, self.amount, self.address, status) = (customer, item, amount, address, .placed)
        case .fulfilled: status = .fulfilled
        case .cancelled(let reason): (status, cancellation) = (.cancelled, reason)
        }
    }
}

/// A payment for an order (application "payments"). Its id is derived from the order's id, so
/// charging an order twice finds the first payment.
struct Payment: Aggregate {
    static var typeName: String { "Payment" }

    enum Event: Codable, Sendable {
        case charged(order: UUID, customer: String, amount: Int)
        case declined(order: UUID, customer: String, amount: Int, reason: String)
        case refunded(order: UUID)
    }

    enum Status: String, Codable, Sendable { case new, charged, declined, refunded }

    var order = UUID()
    var customer = ""
    var amount = 0
    var status = Status.new

    var dataSubject: String? { customer }

    mutating func apply(_ event: Event) {
        switch event {
        case .charged(let order, let customer, let amount): (self.order, self.customer, self.amount, status) = (order, customer, amount, .charged)
        case .declined(let order, let customer, let amount, _): (self.order, self.customer, self.amount, status) = (order, customer, amount, .declined)
        case .refunded: status = .refunded
        }
    }

    static func id(order: UUID) throws -> UUID { try DerivedID.uuid(namespace: "payment", id: order) }
}

/// A shipment of an order (application "shipping"), under an id derived from the order's id.
struct Shipment: Aggregate {
    static var typeName: String { "Shipment" }

    enum Event: Codable, Sendable {
        case dispatched(order: UUID, customer: String, address: String)
        case failed(order: UUID, customer: String, reason: String)
    }

    var order = UUID()
    var customer = ""
    var address = ""
    var dispatched = false

    var dataSubject: String? { customer }

    mutating func apply(_ event: Event) {
        switch event {
        case .dispatched(let order, let customer, let address): (self.order, self.customer, self.address, dispatched) = (order, customer, address, true)
        case .failed(let order, let customer, _): (self.order, self.customer) = (order, customer)
        }
    }

    static func id(order: UUID) throws -> UUID { try DerivedID.uuid(namespace: "shipment", id: order) }
}

/// The fulfilment saga's state (application "fulfilment"): one per order, what the saga knows
/// (the payment's and the shipment's outcomes) and what it has asked for.
struct Fulfilment: Aggregate {
    static var typeName: String { "Fulfilment" }

    enum Event: Codable, Sendable {
        case started(order: UUID, customer: String, amount: Int, address: String)
        case paymentRequested
        case paid
        case declined
        case shipmentRequested
        case shipped
        case shipmentFailed
        case refundRequested
        case refunded
        case completed
        case cancelled(reason: String)
    }

    enum PaymentOutcome: String, Codable, Sendable { case charged, declined, refunded }
    enum ShipmentOutcome: String, Codable, Sendable { case dispatched, failed }

    var order = UUID()
    var customer = ""
    var amount = 0
    var address = ""
    var payment: PaymentOutcome?
    var shipment: ShipmentOutcome?
    var paymentRequested = false
    var shipmentRequested = false
    var refundRequested = false
    var done = false
    /// The saga's history, for the story.
    var steps: [String] = []

    var dataSubject: String? { customer }

    mutating func apply(_ event: Event) {
        switch event {
        case .started(let order, let customer, let amount, let address):
            (self.order, self.customer, self.amount, self.address) = (order, customer, amount, address)
        case .paymentRequested: paymentRequested = true
        case .paid: payment = .charged
        case .declined: payment = .declined
        case .shipmentRequested: shipmentRequested = true
        case .shipped: shipment = .dispatched
        case .shipmentFailed: shipment = .failed
        case .refundRequested: refundRequested = true
        case .refunded: payment = .refunded
        case .completed, .cancelled: done = true
        }
        steps.append(Self.topicName(of: event))
    }
}
