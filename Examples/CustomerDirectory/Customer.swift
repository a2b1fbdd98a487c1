import EventSourcing

/// The write side: a customer, registered with a name, an e-mail address and a postal address,
/// who may move. Each customer's events are sealed under the customer's own data key (its key
/// scope is its aggregate id), so shredding that key erases the customer.
struct Customer: Aggregate {
    static var typeName: String { "Customer" }

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
            (self.name, self.email, self.address) = (name, email, address)
        case .moved(let address):
            self.address = address
        }
    }
}
