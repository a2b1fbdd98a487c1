import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

// A small saga domain: tickets (application "desk") are opened for a customer, escalated and
// closed; a watch saga (process application "watch") follows them, keeps one state per ticket
// and, on escalation, creates a note in another application ("notes") under a derived id.

struct SagaTicket: Aggregate {
    static var typeName: String { "SagaTicket" }
    enum Event: Codable, Sendable {
        case opened(customer: String, watched: Bool)
        case escalated
        case closed
    }
    var customer = ""
    mutating func apply(_ event: Event) {
        if case .opened(let customer, _) = event { self.customer = customer }
    }
}

/// The saga's state: one per ticket, sealed under the ticket's customer.
struct SagaTicketWatch: Aggregate {
    static var typeName: String { "SagaTicketWatch" }
    enum Event: Codable, Sendable {
        case started(ticket: UUID, customer: String)
        case saw(String)
    }
    var ticket = UUID()
    var customer = ""
    var seen: [String] = []
    var dataSubject: String? { customer }
    mutating func apply(_ event: Event) {
        switch event {
        case .started(let ticket, let customer): (self.ticket, self.customer) = (ticket, customer)
        case .saw(let topic): seen.append(topic)
        }
    }
}

/// A note another application keeps about an escalated ticket.
struct SagaNote: Aggregate {
    static var typeName: String { "SagaNote" }
    enum Event: Codable, Sendable { case written(ticket: UUID) }
    var ticket = UUID()
    mutating func apply(_ event: Event) { if case .written(let t) = event { ticket = t } }
    static func id(ticket: UUID) throws -> UUID { try DerivedID.uuid(namespace: "note", id: ticket) }
}

struct SagaCrash: Error {}

/// A switch that is on until it is first read.
final class OneShot: Sendable {
    private let armed: Mutex<Bool>
    init(_ on: Bool) { armed = Mutex(on) }
    /// Whether it was on (it is off afterwards).
    func fire() -> Bool { armed.withLock { let was = $0; $0 = false; return was } }
}

struct TicketWatchSaga: Saga {
    typealias State = SagaTicketWatch
    let notes: Application
    /// Throws once, after the note was created and before the saga's commit.
    let crashOnEscalation: OneShot
    /// The correlation id to give instead of the ticket id (to test bad ones).
    let forcedCorrelation: String?

    init(notes: Application, crashOnEscalation: Bool = false, forcedCorrelation: String? = nil) {
        self.notes = notes
        self.crashOnEscalation = OneShot(crashOnEscalation)
        self.forcedCorrelation = forcedCorrelation
    }

    var topics: [String] { ["SagaTicket.opened", "SagaTicket.escalated", "SagaTicket.closed"] }

    func correlationID(of event: UpstreamEvent) throws -> String? {
        guard event.topic.hasPrefix("SagaTicket.") else { return nil }
        return forcedCorrelation ?? event.originatorID.uuidString.lowercased()
    }

    func start(with event: UpstreamEvent, correlationID: String) throws -> SagaTicketWatch.Event? {
        guard let e = try event.event(if: SagaTicket.self), case .opened(let customer, let watched) = e.event, watched else { return nil }
        return .started(ticket: e.originatorID, customer: customer)
    }

    func handle(_ event: UpstreamEvent, saga: inout AggregateRoot<SagaTicketWatch>, in context: ProcessingContext) async throws {
        try saga.record(.saw(event.topic))
        if event.topic == "SagaTicket.escalated" {
            var note = try AggregateRoot<SagaNote>(id: try SagaNote.id(ticket: saga.ticket), .written(ticket: saga.ticket))
            try await notes.saveIfNew(&note)
            if crashOnEscalation.fire() { throw SagaCrash() }
        }
    }
}

@Suite("Sagas")
struct SagaTests {
    static let names = ["desk", "notes", "watch"]

    static func system(_ f: SystemFixture, _ saga: TicketWatchSaga) throws -> System {
        let watch = try ProcessApplication(name: "watch", application: try f.app("watch"), policy: SagaPolicy(saga))
        return try System(members: [.application("desk", try f.app("desk")), .application("notes", try f.app("notes")), .process(watch)],
                          pipes: [["desk", "watch"]])
    }

    static func open(_ app: Application, customer: String, watched: Bool = true) async throws -> (UUID, Int64) {
        var t = try AggregateRoot<SagaTicket>(.opened(customer: customer, watched: watched))
        let r = try await app.save(&t)
        return (t.id, r.last?.notificationID ?? 0)
    }

    @discardableResult
    static func record(_ app: Application, _ ticket: UUID, _ event: SagaTicket.Event) async throws -> Int64 {
        var t = try await app.repository.get(SagaTicket.self, id: ticket)
        try t.record(event)
        return try await app.save(&t).last?.notificationID ?? 0
    }

    static func watch(_ f: SystemFixture, ticket: UUID) async throws -> AggregateRoot<SagaTicketWatch> {
        try await f.app("watch").repository.get(SagaTicketWatch.self,
                                                id: try SagaPolicy<TicketWatchSaga>.sagaID(correlationID: ticket.uuidString.lowercased()))
    }

    @Test("Saga ids are derived from the saga type and the correlation id: stable, distinct per type and per id; bad correlation ids are refused")
    func sagaIDs() throws {
        let a = try SagaPolicy<TicketWatchSaga>.sagaID(correlationID: "order-1")
        #expect(a == (try SagaPolicy<TicketWatchSaga>.sagaID(correlationID: "order-1")))
        #expect(a != (try SagaPolicy<TicketWatchSaga>.sagaID(correlationID: "order-2")))
        #expect(a == (try DerivedID.uuid(namespace: "saga SagaTicketWatch", name: "order-1")))
        #expect(a != (try DerivedID.uuid(namespace: "saga SagaOtherType", name: "order-1")))
        for bad in ["", "a\u{0}b", String(repeating: "x", count: DerivedID.maxPartBytes + 1)] {
            let e = #expect(throws: EventSourcingError.self) { try SagaPolicy<TicketWatchSaga>.sagaID(correlationID: bad) }
            #expect(e?.code == .invalidArgument)
            #expect(e.map { !$0.message.contains("xxxx") } == true)
        }
    }

    @Test("Derived ids: stable version-8 UUIDs, the namespace/name boundary counts, bad parts refused")
    func derivedIDs() throws {
        let id = try DerivedID.uuid(namespace: "payment", name: "abc")
        #expect(id == (try DerivedID.uuid(namespace: "payment", name: "abc")))
        #expect(id != (try DerivedID.uuid(namespace: "paymen", name: "tabc")))
        #expect(id.uuidString.lowercased().dropFirst(14).first == "8")
        let u = UUID()
        #expect(try DerivedID.uuid(namespace: "n", id: u) == DerivedID.uuid(namespace: "n", name: u.uuidString.lowercased()))
        for (ns, name) in [("", "x"), ("x", ""), ("x\u{0}", "y"), ("x", String(repeating: "y", count: DerivedID.maxPartBytes + 1))] {
            let e = #expect(throws: EventSourcingError.self) { try DerivedID.uuid(namespace: ns, name: name) }
            #expect(e?.code == .invalidArgument)
        }
    }

    @Test("saveIfNew creates once: a repeat (or a racing create) writes nothing and says so; a root that is not new is refused")
    func saveIfNew() async throws {
        let app = Application(recorder: InMemoryRecorder())
        let id = try DerivedID.uuid(namespace: "note", name: "t-1")
        var first = try AggregateRoot<SagaNote>(id: id, .written(ticket: UUID()))
        #expect(try await app.saveIfNew(&first))
        #expect(first.pendingEvents.isEmpty)
        var again = try AggregateRoot<SagaNote>(id: id, .written(ticket: UUID()))
        #expect(try await app.saveIfNew(&again) == false)
        #expect(again.pendingEvents.count == 1)
        #expect(try await app.notificationLog.maxNotificationID == 1)
        // Racing creates of one id: exactly one saves.
        let raced = try DerivedID.uuid(namespace: "note", name: "t-2")
        let created = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var n = try AggregateRoot<SagaNote>(id: raced, .written(ticket: UUID()))
                    return try await app.saveIfNew(&n)
                }
            }
            return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
        }
        #expect(created == 1)
        #expect(try await app.repository.get(SagaNote.self, id: raced).version == 1)
        // Not new: refused.
        var got = try await app.repository.get(SagaNote.self, id: id)
        try got.record(.written(ticket: UUID()))
        let e = await #expect(throws: EventSourcingError.self) { try await app.saveIfNew(&got) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.originatorID == id)
    }

    @Test("Events are correlated to one saga instance per ticket; an event that starts none is skipped; the state survives a restart of the runner",
          arguments: RecorderFactory.all)
    func correlationAndRestart(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: Self.names) { f in
            let desk = try f.app("desk")
            let saga = TicketWatchSaga(notes: try f.app("notes"))
            let (a, _) = try await Self.open(desk, customer: "customer-a")
            let (b, _) = try await Self.open(desk, customer: "customer-b")
            let (unwatched, _) = try await Self.open(desk, customer: "customer-c", watched: false)
            let n1 = try await Self.record(desk, unwatched, .closed)
            try await runUntil(try SystemRunner(system: try Self.system(f, saga)), [("watch", "desk", n1)])
            #expect(try await Self.watch(f, ticket: a).seen == ["SagaTicket.opened"])
            #expect(try await Self.watch(f, ticket: b).seen == ["SagaTicket.opened"])
            let none = await #expect(throws: EventSourcingError.self) { try await Self.watch(f, ticket: unwatched) }
            #expect(none?.code == .aggregateNotFound)

            // A new runner (a restart) resumes with each instance's stored state.
            try await Self.record(desk, a, .escalated)
            let n2 = try await Self.record(desk, a, .closed)
            try await runUntil(try SystemRunner(system: try Self.system(f, saga)), [("watch", "desk", n2)])
            let watchA = try await Self.watch(f, ticket: a)
            #expect(watchA.seen == ["SagaTicket.opened", "SagaTicket.escalated", "SagaTicket.closed"])
            #expect(watchA.version == 4)
            #expect(watchA.keyScope == "customer-a")
            #expect(try await Self.watch(f, ticket: b).version == 2)
            #expect(try await f.app("notes").repository.get(SagaNote.self, id: try SagaNote.id(ticket: a)).ticket == a)
        }
    }

    @Test("A crash after the saga's command and before its commit: the run stops naming the event; the restart repeats the command, which finds its aggregate already created, and the saga sees the event once",
          arguments: RecorderFactory.all)
    func crashBetweenCommandAndCommit(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: Self.names) { f in
            let desk = try f.app("desk"), notes = try f.app("notes")
            let (a, _) = try await Self.open(desk, customer: "customer-a")
            let escalation = try await Self.record(desk, a, .escalated)
            let first = try SystemRunner(system: try Self.system(f, TicketWatchSaga(notes: notes, crashOnEscalation: true)))
            let e = await #expect(throws: EventSourcingError.self) { try await first.run() }
            #expect(e?.code == .processFailed)
            #expect(e?.notificationID == escalation)
            // The note was created (the command ran); the saga's state and position were not committed.
            #expect(try await notes.repository.get(SagaNote.self, id: try SagaNote.id(ticket: a)).version == 1)
            #expect(try await Self.watch(f, ticket: a).seen == ["SagaTicket.opened"])
            #expect(try await first.position(of: "watch", leader: "desk") == escalation - 1)

            let closed = try await Self.record(desk, a, .closed)
            try await runUntil(try SystemRunner(system: try Self.system(f, TicketWatchSaga(notes: notes))), [("watch", "desk", closed)])
            #expect(try await Self.watch(f, ticket: a).seen == ["SagaTicket.opened", "SagaTicket.escalated", "SagaTicket.closed"])
            #expect(try await notes.repository.get(SagaNote.self, id: try SagaNote.id(ticket: a)).version == 1)
            #expect(try await notes.notificationLog.maxNotificationID == 1)
        }
    }

    @Test("A saga whose data subject was shredded is over: later events for it are skipped and the process goes on with the others")
    func shreddedSagaIsSkipped() async throws {
        try await SystemFixture.with(.inMemory, names: Self.names) { f in
            let desk = try f.app("desk")
            let saga = TicketWatchSaga(notes: try f.app("notes"))
            let (a, n1) = try await Self.open(desk, customer: "customer-a")
            try await runUntil(try SystemRunner(system: try Self.system(f, saga)), [("watch", "desk", n1)])
            // The customer's scope is shredded (the keyring is shared): the saga's state is gone.
            _ = try await f.app("watch").shred(keyScope: "customer-a")
            let gone = await #expect(throws: EventSourcingError.self) { try await Self.watch(f, ticket: a) }
            #expect(gone?.code == .shredded)
            // The ticket itself (its own scope) goes on; the saga skips it; another ticket is watched.
            try await Self.record(desk, a, .escalated)
            let (b, _) = try await Self.open(desk, customer: "customer-b")
            let n2 = try await Self.record(desk, b, .closed)
            try await runUntil(try SystemRunner(system: try Self.system(f, saga)), [("watch", "desk", n2)])
            #expect(try await Self.watch(f, ticket: b).seen == ["SagaTicket.opened", "SagaTicket.closed"])
            #expect(try await f.app("notes").repository.contains(try SagaNote.id(ticket: a)) == false)
        }
    }

    @Test("A correlation id the saga cannot use stops the process with .processFailed naming the notification; nothing is committed")
    func badCorrelationID() async throws {
        try await SystemFixture.with(.inMemory, names: Self.names) { f in
            let desk = try f.app("desk")
            let (_, n1) = try await Self.open(desk, customer: "customer-a")
            let runner = try SystemRunner(system: try Self.system(f, TicketWatchSaga(notes: try f.app("notes"), forcedCorrelation: "")))
            let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(e?.code == .processFailed)
            #expect(e?.notificationID == n1)
            #expect(try await runner.position(of: "watch", leader: "desk") == nil)
            #expect(try await f.app("watch").notificationLog.maxNotificationID == nil)
        }
    }
}
