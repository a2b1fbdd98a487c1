import EventSourcing
import Foundation
import KeyManagement
import Testing

/// GettingStarted's "Applications that follow each other", compiled and run here so it cannot
/// rot: the block between the markers must equal the guide's Swift block (checked below).
struct GettingStartedSystem {
    // The guide's Customer (section 2).
    struct CustomerClosed: Error {}

    struct Customer: Aggregate {
        static let typeName = "Customer"
        enum Event: Codable, Sendable {
            case registered(subjectID: String, name: String, email: String)
            case emailChanged(String)
            case closed
        }
        var subjectID = ""
        var name = ""
        var email = ""
        var isClosed = false
        var dataSubject: String? { subjectID.isEmpty ? nil : subjectID }
        mutating func apply(_ event: Event) throws {
            switch event {
            case .registered(let subjectID, let name, let email):
                self.subjectID = subjectID
                self.name = name
                self.email = email
            case .emailChanged(let email):
                guard !isClosed else { throw CustomerClosed() }
                self.email = email
            case .closed:
                isClosed = true
            }
        }
    }

    // getting-started-systems:begin
    struct Welcome: Aggregate {
        static let typeName = "Welcome"
        enum Event: Codable, Sendable { case sent(subjectID: String, customer: UUID, email: String) }
        var subjectID = ""
        var email = ""
        var dataSubject: String? { subjectID.isEmpty ? nil : subjectID }   // the customer's scope
        mutating func apply(_ event: Event) {
            if case .sent(let subjectID, _, let email) = event { self.subjectID = subjectID; self.email = email }
        }
    }

    struct WelcomePolicy: ProcessPolicy {
        var topics: [String] { ["Customer.registered"] }
        func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
            guard case .registered(let subjectID, _, let email) = try event.event(as: Customer.self).event else { return }
            var welcome = try AggregateRoot<Welcome>(.sent(subjectID: subjectID, customer: event.originatorID, email: email))
            try context.collect(&welcome)        // saved with the position, when process returns
        }
    }

    func welcomeSystem() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let customers = Application(recorder: InMemoryRecorder(), mapper: Mapper(keyring: keyring))
        let welcomes = Application(recorder: InMemoryRecorder(), mapper: Mapper(keyring: keyring))
        let system = try System(
            members: [.application("customers", customers),
                      .process(try ProcessApplication(name: "welcomes", application: welcomes, policy: WelcomePolicy()))],
            pipes: [["customers", "welcomes"]])
        let runner = try SystemRunner(system: system)
        let task = Task { try await runner.run() }         // or add the runner to a ServiceGroup

        var ada = try AggregateRoot<Customer>(.registered(subjectID: "subj-7f3a9c", name: "Ada", email: "ada@example.org"))
        let saved = try await customers.save(&ada)
        try await runner.wait(for: "welcomes", toProcess: saved.last!.notificationID, of: "customers", timeout: .seconds(60))
        print(try await welcomes.notificationLog.read(start: 1, limit: 10).count)   // 1: her welcome

        try await customers.shred(keyScope: "subj-7f3a9c")
        // Her customer record and her welcome now read as shredded. The welcomes log also holds
        // the erasure record, for its own projections, once the runner has passed it.
        task.cancel()
    }
    // getting-started-systems:end
}

@Suite("GettingStarted: applications that follow each other")
struct GettingStartedSystemTests {
    @Test("The guide's system runs: a welcome per customer, and a shred through the customers application")
    func guideRuns() async throws {
        try await GettingStartedSystem().welcomeSystem()
    }

    @Test("The guide shows exactly the code this test runs")
    func guideMatches() throws {
        // This file is Tests/EventSourcingTests/System/…: the package root is four levels up.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let guide = try String(contentsOf: root
            .appendingPathComponent("Sources/EventSourcing/EventSourcing.docc/GettingStarted.md"), encoding: .utf8)
        let here = try String(contentsOf: URL(fileURLWithPath: #filePath), encoding: .utf8)
        let marked = try #require(here.components(separatedBy: "// getting-started-systems:begin\n").dropFirst().first?
            .components(separatedBy: "    // getting-started-systems:end").first)
        let code = marked.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("    ") ? String($0.dropFirst(4)) : String($0) }.joined(separator: "\n")
        #expect(guide.contains("```swift\n" + code + "```"), "the guide's block differs from the code this test runs")
    }
}
