import EventSourcing
import Foundation

/// An order naming two people: its customer (subject `customerSubject`) and its courier (subject
/// `courierSubject`). The order's own records are sealed under its own id (the default scope),
/// so its business data (amount, status) outlives both people's shreds.
struct PDOrder: Aggregate, Equatable {
    static let typeName = "PDOrder"

    struct Address: Codable, Sendable, Equatable {
        var street: String
        var city: String
    }

    enum Event: Codable, Sendable, Equatable {
        case placed(customer: Personal<String>, address: Personal<Address>, courier: Personal<String>, amount: Int)
        case shipped(note: String)
        case birthday(Personal<Int>)
    }

    var customer: Personal<String>?
    var address: Personal<Address>?
    var courier: Personal<String>?
    var amount = 0
    var status = ""
    var birthYear: Personal<Int>?

    mutating func apply(_ event: Event) throws {
        switch event {
        case .placed(let customer, let address, let courier, let amount):
            self.customer = customer
            self.address = address
            self.courier = courier
            self.amount = amount
            status = "placed"
        case .shipped: status = "shipped"
        case .birthday(let year): birthYear = year
        }
    }

    static func place(customer: String, customerSubject: String, street: String, city: String,
                      courier: String, courierSubject: String, amount: Int) -> Event {
        .placed(customer: Personal(customer, subject: customerSubject),
                address: Personal(Address(street: street, city: city), subject: customerSubject,
                                  replacement: Address(street: "", city: "redacted")),
                courier: Personal(courier, subject: courierSubject), amount: amount)
    }
}

/// A record without personal fields, to prove nothing changes for it.
struct PDPlain: Aggregate, Equatable {
    static let typeName = "PDPlain"
    enum Event: Codable, Sendable, Equatable { case noted(String) }
    var notes: [String] = []
    mutating func apply(_ event: Event) throws {
        if case .noted(let s) = event { notes.append(s) }
    }
}

/// Personal fields in arrays, dictionaries, optionals and nested structs.
struct PDContacts: Aggregate, Equatable {
    static let typeName = "PDContacts"
    struct Card: Codable, Sendable, Equatable {
        var label: String
        var phone: Personal<String>
    }
    enum Event: Codable, Sendable, Equatable {
        case listed(names: [Personal<String>], byRole: [String: Personal<String>], nick: Personal<String>?, card: Card,
                    born: Personal<Date>, id: Personal<UUID>, tags: Personal<[String]>)
    }
    var event: Event?
    mutating func apply(_ event: Event) throws { self.event = event }
}
