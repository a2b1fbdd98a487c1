import ESTestSupport
import EventSourcing
import Foundation
import Testing

/// Bad input is refused before anything runs, each with its own clear `.invalidArgument`.
@Suite("System: bad input")
struct SystemValidationTests {
    struct Nothing: ProcessPolicy {
        func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {}
    }

    static func app() -> Application { Application(recorder: InMemoryRecorder()) }
    static func process(_ name: String) throws -> ProcessApplication {
        try ProcessApplication(name: name, application: app(), policy: Nothing())
    }

    static func refused(_ expected: String, sourceLocation: SourceLocation = #_sourceLocation,
                        _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("not refused (expected: \(expected))", sourceLocation: sourceLocation)
        } catch let e as EventSourcingError {
            #expect(e.code == .invalidArgument, sourceLocation: sourceLocation)
            #expect(e.message.contains(expected), "message: \(e.message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("Refused systems: cycle, unknown name, duplicate member, shared recorder, non-process follower, follower of nobody, one-name pipe")
    func refusedSystems() throws {
        let a = System.Member.application("orders", Self.app())
        let inv = try Self.process("invoices"), rep = try Self.process("reports")
        Self.refused("the pipes form a cycle: invoices -> reports -> invoices") {
            _ = try System(members: [a, .process(inv), .process(rep)], pipes: [["orders", "invoices", "reports", "invoices"]])
        }
        Self.refused("the pipes form a cycle: invoices -> reports -> invoices") {
            _ = try System(members: [a, .process(inv), .process(rep)], pipes: [["orders", "invoices", "reports"], ["reports", "invoices"]])
        }
        Self.refused("the pipes form a cycle: invoices -> invoices") {
            _ = try System(members: [a, .process(inv)], pipes: [["orders", "invoices"], ["invoices", "invoices"]])
        }
        Self.refused("pipe 1 names \"payments\", which is no member of the system") {
            _ = try System(members: [a, .process(inv)], pipes: [["payments", "invoices"]])
        }
        Self.refused("two members are named \"invoices\"") {
            _ = try System(members: [a, .process(inv), .process(try Self.process("invoices"))], pipes: [["orders", "invoices"]])
        }
        Self.refused("two members are named \"orders\"") {
            _ = try System(members: [a, .application("orders", Self.app()), .process(inv)], pipes: [["orders", "invoices"]])
        }
        Self.refused("\"shop\" follows \"orders\" but is not a process application") {
            _ = try System(members: [a, .application("shop", Self.app()), .process(inv)], pipes: [["orders", "shop"], ["orders", "invoices"]])
        }
        Self.refused("process application \"reports\" follows nobody") {
            _ = try System(members: [a, .process(inv), .process(rep)], pipes: [["orders", "invoices"]])
        }
        Self.refused("pipe 2 has 1 name; a pipe names a leader and at least one follower") {
            _ = try System(members: [a, .process(inv)], pipes: [["orders", "invoices"], ["orders"]])
        }
        Self.refused("pipe 1 has 0 names") {
            _ = try System(members: [a, .process(inv)], pipes: [[], ["orders", "invoices"]])
        }
        Self.refused("a member name must not be empty") {
            _ = try System(members: [.application("", Self.app()), .process(inv)], pipes: [["", "invoices"]])
        }
        let shared = Self.app()
        Self.refused("members \"orders\" and \"invoices\" share one recorder, so one notification log") {
            let own = try ProcessApplication(name: "invoices", application: shared, policy: Nothing())
            _ = try System(members: [.application("orders", shared), .process(own)], pipes: [["orders", "invoices"]])
        }
        Self.refused("members \"orders\" and \"shop\" share one recorder") {
            let recorder = InMemoryRecorder()
            _ = try System(members: [.application("orders", Application(recorder: recorder)),
                                     .application("shop", Application(recorder: recorder)), .process(inv)],
                           pipes: [["orders", "invoices"], ["shop", "invoices"]])
        }
        // A good one, for contrast.
        let system = try System(members: [a, .process(inv), .process(rep)], pipes: [["orders", "invoices", "reports"], ["orders", "invoices"]])
        #expect(system.names == ["orders", "invoices", "reports"])
        #expect(system.leaders(of: "invoices") == ["orders"], "a link given twice counts once")
        #expect(system.application("nobody") == nil)
    }

    @Test("A pipe that spells a member's name another (canonically equivalent) way wires the member under its own spelling")
    func pipeSpellingsAreTheMembers() throws {
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        let system = try System(members: [.application(composed, Self.app()), .process(try Self.process("invoices"))],
                                pipes: [[decomposed, "invoices"]])
        let leader = try #require(system.leaders(of: "invoices").first)
        #expect(leader.utf8.elementsEqual(composed.utf8), "the tracking name \"invoices <- \(leader)\" must use the member's bytes")
        #expect(system.followers(of: composed) == ["invoices"])
    }

    @Test("Refused process applications: bad names, a recorder that cannot commit tracking records")
    func refusedProcessApplications() {
        Self.refused("a member name must not be empty") { _ = try Self.process("") }
        Self.refused("at most 100 bytes of UTF-8; one has 101") { _ = try Self.process(String(repeating: "x", count: 101)) }
        Self.refused("must not contain NUL (one of 3 bytes does)") { _ = try Self.process("a\0b") }
        Self.refused("contains \"<-\"") { _ = try Self.process("a<-b") }
        Self.refused("is not a ProcessRecorder") {
            _ = try ProcessApplication(name: "spy", application: Application(recorder: SpyRecorder(InMemoryRecorder())), policy: Nothing())
        }
        #expect((try? Self.process(String(repeating: "é", count: 50))) != nil, "100 bytes is allowed")
    }

    @Test("Refused runners and waits: unknown or non-process followers, pairs that are no pipe, bad ids, bad batch sizes")
    func refusedRunnersAndWaits() async throws {
        let orders = Self.app()
        let inv = try Self.process("invoices")
        let system = try System(members: [.application("orders", orders), .application("shop", Self.app()), .process(inv)],
                                pipes: [["orders", "invoices"]])
        Self.refused("\"nobody\" is no member of the system, so it cannot be run") { _ = try SystemRunner(system: system, only: ["nobody"]) }
        Self.refused("\"orders\" is not a process application, so it cannot be run") { _ = try SystemRunner(system: system, only: ["orders"]) }
        Self.refused("there is no process application to run") { _ = try SystemRunner(system: system, only: []) }
        Self.refused("the batch size must be 1 to 10,000, got 0") { _ = try SystemRunner(system: system, batchSize: 0) }
        let runner = try SystemRunner(system: system)
        var e = await #expect(throws: EventSourcingError.self) {
            try await runner.wait(for: "nobody", toProcess: 1, of: "orders", timeout: .seconds(1))
        }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("\"nobody\" is no member of the system") == true)
        e = await #expect(throws: EventSourcingError.self) {
            try await runner.wait(for: "invoices", toProcess: 1, of: "shop", timeout: .seconds(1))
        }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("\"invoices\" does not follow \"shop\" (its leaders: orders)") == true)
        e = await #expect(throws: EventSourcingError.self) { _ = try await runner.position(of: "orders", leader: "invoices") }
        #expect(e?.message.contains("\"orders\" is not a process application") == true)
        e = await #expect(throws: EventSourcingError.self) {
            try await runner.wait(for: "invoices", toProcess: 0, of: "orders", timeout: .seconds(1))
        }
        #expect(e?.message.contains("notification ids start at 1, got 0") == true)
        e = await #expect(throws: EventSourcingError.self) {
            try await runner.wait(for: "invoices", toProcess: 1, of: "orders", timeout: .seconds(1))
        }
        #expect(e?.message.contains("notification 1 is past the end of the log of \"orders\" (its last is 0)") == true)
        // Not run: a wait times out, naming the pipe and the position.
        var order = try AggregateRoot<SysOrder>(.placed(customer: "c", item: "i", amount: 1))
        try await orders.save(&order)
        e = await #expect(throws: EventSourcingError.self) {
            try await runner.wait(for: "invoices", toProcess: 1, of: "orders", timeout: .milliseconds(200))
        }
        #expect(e?.code == .timedOut)
        #expect(e?.message.contains("\"invoices <- orders\" had not processed notification 1") == true)
        #expect(try await runner.position(of: "invoices", leader: "orders") == nil)
        // One run at a time.
        let run = Task { try await runner.run() }
        try await runner.wait(for: "invoices", toProcess: 1, of: "orders", timeout: .seconds(60))
        let second = await #expect(throws: EventSourcingError.self) { try await runner.run() }
        #expect(second?.message.contains("already running") == true)
        run.cancel()
        try await run.value
    }
}
