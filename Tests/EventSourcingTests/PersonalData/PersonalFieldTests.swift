import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Field-level personal data (issue 16): a `Personal` field is sealed under its subject's key
/// inside the record; a shred of the subject redacts that field and nothing else.
@Suite("Personal fields")
struct PersonalFieldTests {
    static let encrypted: [AppFactory] = RecorderFactory.all.map { AppFactory(recorder: $0, encrypted: true) }

    static func placeOrder(_ app: Application, amount: Int = 120) async throws -> AggregateRoot<PDOrder> {
        var order = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Ada Lovelace", customerSubject: "subject-A",
                                                             street: "12 Analytical Row", city: "Marylebone",
                                                             courier: "Bob Courier", courierSubject: "subject-B",
                                                             amount: amount))
        try order.record(.shipped(note: "left at the door"))
        try await app.save(&order)
        return order
    }

    @Test("round trip: an order's personal fields read back as written", arguments: encrypted)
    func roundTrip(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let order = try await Self.placeOrder(t.app)
            let loaded = try await t.app.repository.get(PDOrder.self, id: order.id)
            #expect(loaded.state == order.state)
            #expect(loaded.state.customer?.value == "Ada Lovelace")
            #expect(loaded.state.customer?.isRedacted == false)
            #expect(loaded.state.courier?.subject == "subject-B")
            #expect(loaded.state.address?.value.city == "Marylebone")
        }
    }

    @Test("shred the customer: amount and status intact, the customer's fields replaced, the courier's intact; then the courier too",
          arguments: encrypted)
    func shredCustomerThenCourier(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let order = try await Self.placeOrder(t.app)
            _ = try await t.app.shred(keyScope: "subject-A")
            let after = try await t.app.repository.get(PDOrder.self, id: order.id)
            #expect(after.state.amount == 120)
            #expect(after.state.status == "shipped")
            let customer = try #require(after.state.customer)
            #expect(customer.isRedacted)
            #expect(customer.value == "")
            #expect(customer.redaction?.subject == "subject-A")
            #expect(customer.redaction?.shreddedAt != nil)
            let address = try #require(after.state.address)
            #expect(address.isRedacted)
            #expect(address.value == PDOrder.Address(street: "", city: "redacted"))
            #expect(after.state.courier?.isRedacted == false)
            #expect(after.state.courier?.value == "Bob Courier")

            _ = try await t.app.shred(keyScope: "subject-B")
            let both = try await t.app.repository.get(PDOrder.self, id: order.id)
            #expect(both.state.amount == 120)
            #expect(both.state.customer?.isRedacted == true)
            #expect(both.state.courier?.isRedacted == true)
            #expect(both.state.courier?.value == "")
        }
    }
}
