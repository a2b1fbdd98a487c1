import EventSourcing
import Foundation
import KeyManagement
import Testing

/// GettingStarted's "Erasing a person, keeping the record" (section 8), compiled and run here so
/// it cannot rot: the block between the markers must equal the guide's Swift block.
struct GettingStartedPersonalData {
    // getting-started-personal-data:begin
    struct Order: Aggregate {
        static let typeName = "Order"
        enum Event: Codable, Sendable {
            case placed(customer: Personal<String>, address: Personal<String>, courier: Personal<String>, amount: Int)
            case delivered
        }
        var customer: Personal<String>?
        var address: Personal<String>?
        var courier: Personal<String>?
        var amount = 0
        var isDelivered = false
        // No dataSubject: the order's records are sealed under its own id, and outlive both people.
        mutating func apply(_ event: Event) {
            switch event {
            case .placed(let customer, let address, let courier, let amount):
                (self.customer, self.address, self.courier, self.amount) = (customer, address, courier, amount)
            case .delivered:
                isDelivered = true
            }
        }
    }

    func eraseTheCustomerKeepTheOrder(app: Application) async throws -> AggregateRoot<Order> {
        var order = try AggregateRoot<Order>(.placed(
            customer: Personal("Ada Lovelace", subject: "subj-7f3a9c"),
            address: Personal("12 Analytical Row, London", subject: "subj-7f3a9c", replacement: "London"),
            courier: Personal("Bob Rider", subject: "courier-0042"),
            amount: 120))
        try order.record(.delivered)
        try await app.save(&order)

        try await app.shred(keyScope: "subj-7f3a9c")                   // Ada asks to be forgotten
        let kept = try await app.repository.get(Order.self, id: order.id)
        print(kept.state.amount, kept.state.isDelivered)               // 120 true: the order stays
        print(kept.state.customer?.isRedacted == true)                 // true: her name reads as ""
        print(kept.state.address?.value ?? "")                         // London: the declared replacement
        print(kept.state.courier?.value ?? "")                         // Bob Rider: another subject's field
        return kept
    }
    // getting-started-personal-data:end
}

@Suite("GettingStarted: erasing a person, keeping the record")
struct GettingStartedPersonalDataTests {
    @Test("The guide's order keeps its amount and the courier after the customer's shred; her fields read as replacements")
    func guideRuns() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: InMemoryRecorder(), mapper: Mapper(keyring: keyring))
        let kept = try await GettingStartedPersonalData().eraseTheCustomerKeepTheOrder(app: app)
        #expect(kept.state.amount == 120 && kept.state.isDelivered)
        #expect(kept.state.customer?.isRedacted == true && kept.state.customer?.value == "")
        #expect(kept.state.customer?.redaction?.subject == "subj-7f3a9c")
        #expect(kept.state.address?.isRedacted == true && kept.state.address?.value == "London")
        #expect(kept.state.courier?.isRedacted == false && kept.state.courier?.value == "Bob Rider")
    }

    @Test("The guide shows exactly the code this test runs")
    func guideMatches() throws {
        // This file is Tests/EventSourcingTests/Documentation/…: the package root is four levels up.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let guide = try String(contentsOf: root
            .appendingPathComponent("Sources/EventSourcing/EventSourcing.docc/GettingStarted.md"), encoding: .utf8)
        let here = try String(contentsOf: URL(fileURLWithPath: #filePath), encoding: .utf8)
        let marked = try #require(here.components(separatedBy: "// getting-started-personal-data:begin\n").dropFirst().first?
            .components(separatedBy: "    // getting-started-personal-data:end").first)
        let code = marked.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("    ") ? String($0.dropFirst(4)) : String($0) }.joined(separator: "\n")
        #expect(guide.contains("```swift\n" + code + "```"), "the guide's block differs from the code this test runs")
    }
}
