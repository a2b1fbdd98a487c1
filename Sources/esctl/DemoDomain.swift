import EventSourcing
import Foundation

/// A person with personal data: their own aggregate id is their data subject.
struct Person: Aggregate {
    static var typeName: String { "Person" }

    enum Event: Codable, Sendable {
        case registered(name: String, email: String, address: String)
        case moved(address: String)
    }

    var name = ""
    var email = ""
    var address = ""

    mutating func apply(_ event: Event) {
        switch event {
        case .registered(let name, let email, let address):
            self.name = name
            self.email = email
            self.address = address
        case .moved(let address):
            self.address = address
        }
    }
}

/// An order placed by a person: encrypted under the person's key, so shredding the person
/// erases their orders too.
struct Order: Aggregate {
    static var typeName: String { "Order" }

    enum Event: Codable, Sendable {
        case placed(customer: String, item: String, deliverTo: String)
    }

    var customer = ""
    var item = ""
    var deliverTo = ""

    var dataSubject: String? { customer.isEmpty ? nil : customer }

    mutating func apply(_ event: Event) {
        switch event {
        case .placed(let customer, let item, let deliverTo):
            self.customer = customer
            self.item = item
            self.deliverTo = deliverTo
        }
    }
}
