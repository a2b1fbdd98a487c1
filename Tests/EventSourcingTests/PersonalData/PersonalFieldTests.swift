import ESTestSupport
import ESTestTags
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
            // Sealed inside the record: the record's own decrypted payload does not hold them.
            let stored = try await t.store.recorder.selectEvents(EventQuery(originatorID: order.id))
            #expect(stored.count == 2)
            let outer = try await t.app.mapper.open(stored[0], snapshot: false)
            #expect(bytes(outer, contain: Array("$pf".utf8)))
            for s in ["Ada Lovelace", "Analytical", "Marylebone", "Bob Courier"] {
                #expect(!bytes(outer, contain: Array(s.utf8)), "\(s) is sealed under its subject's key")
            }
            #expect(loaded.state.customer?.value == "Ada Lovelace")
            #expect(loaded.state.customer?.isRedacted == false)
            #expect(loaded.state.courier?.subject == "subject-B")
            #expect(loaded.state.address?.value.city == "Marylebone")
        }
    }

    @Test("shred the customer: amount and status intact, the customer's fields replaced, the courier's intact; then the courier too",
          arguments: encrypted)
    func shredCustomerThenCourier(_ factory: AppFactory) async throws {
        try await Self.shredCustomerThenCourierBody(factory)
    }

    @Test("PostgreSQL: shred the customer, then the courier; the order still loads with the business data intact",
          .tags(.postgres), .enabled(if: PostgresTestServer.available))
    func shredOnPostgres() async throws {
        try await Self.shredCustomerThenCourierBody(AppFactory(recorder: .postgres, encrypted: true))
    }

    static func shredCustomerThenCourierBody(_ factory: AppFactory) async throws {
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

    static let encodings: [(AppFactory, Mapper.PayloadEncoding)] = encrypted.flatMap { [($0, .compact), ($0, .json)] }

    @Test("arrays, dictionaries, optionals, nested structs and other value types, in both payload encodings: read back, then redacted per subject",
          arguments: encodings)
    func shapes(_ factory: AppFactory, _ encoding: Mapper.PayloadEncoding) async throws {
        let store = try await factory.recorder.make()
        let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: store.recorder, snapshots: store.snapshots,
                              mapper: Mapper(keyring: keyring, configuration: .init(encoding: encoding)))
        let born = Date(timeIntervalSince1970: 1_000_000)
        let uuid = UUID()
        let event = PDContacts.Event.listed(
            names: [Personal("Ann One", subject: "s-1"), Personal("Ben Two", subject: "s-2"), Personal("Cat Three", subject: "s-1")],
            byRole: ["owner": Personal("Dee Four", subject: "s-2"), "admin": Personal("Eve Five", subject: "s-1")],
            nick: Personal("Fifi", subject: "s-2"),
            card: .init(label: "work", phone: Personal("+44 1", subject: "s-1")),
            born: Personal(born, subject: "s-1"), id: Personal(uuid, subject: "s-2"),
            tags: Personal(["vip"], subject: "s-1"))
        var root = try AggregateRoot<PDContacts>(event)
        try await app.save(&root)
        let stored = try #require(try await store.recorder.selectEvents(EventQuery(originatorID: root.id)).first)
        let outer = try await app.mapper.open(stored, snapshot: false)
        for s in ["Ann One", "Ben Two", "Dee Four", "Eve Five", "Fifi", "+44 1", "vip", uuid.uuidString] {
            #expect(!bytes(outer, contain: Array(s.utf8)), "\(s) sealed, not in the record's payload")
        }
        #expect(try await app.repository.get(PDContacts.self, id: root.id).state.event == event)

        _ = try await app.shred(keyScope: "s-1")
        let after = try await app.repository.get(PDContacts.self, id: root.id)
        guard case .listed(let names, let byRole, let nick, let card, let bornField, let id, let tags)? = after.state.event else {
            Issue.record("no event")
            return
        }
        #expect(names.map(\.isRedacted) == [true, false, true])
        #expect(names.map(\.value) == ["", "Ben Two", ""])
        #expect(byRole["owner"]?.value == "Dee Four" && byRole["admin"]?.isRedacted == true)
        #expect(nick?.value == "Fifi")
        #expect(card.label == "work" && card.phone.isRedacted && card.phone.value == "")
        #expect(bornField.isRedacted && bornField.value == Date(timeIntervalSince1970: 0))
        #expect(id.value == uuid && !id.isRedacted)
        #expect(tags.isRedacted && tags.value == [])
        try await store.close()
    }

    @Test("concurrent saves naming the same new subject: one key is minted and stored, every order reads back", arguments: encrypted)
    func concurrentNewSubject(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let ids = try await withThrowingTaskGroup(of: UUID.self) { group in
                for i in 0..<8 {
                    group.addTask {
                        var order = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Customer \(i)", customerSubject: "subject-new",
                                                                             street: "\(i) Street", city: "Town",
                                                                             courier: "Courier \(i)", courierSubject: "courier-\(i % 2)",
                                                                             amount: i))
                        try await t.app.save(&order)
                        return order.id
                    }
                }
                return try await group.reduce(into: [UUID]()) { $0.append($1) }
            }
            for id in ids {
                let order = try await t.app.repository.get(PDOrder.self, id: id)
                #expect(order.state.customer?.value == "Customer \(order.state.amount)")
                #expect(order.state.courier?.value == "Courier \(order.state.amount)")
            }
            let keyring = try #require(t.keyring)
            _ = try await keyring.openingKey(scope: "subject-new", version: 1)
            await #expect(throws: (any Error).self) { _ = try await keyring.openingKey(scope: "subject-new", version: 2) }
        }
    }
}
