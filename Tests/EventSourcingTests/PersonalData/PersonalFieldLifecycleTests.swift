import EventSourcing
import Foundation
import KeyManagement
import Testing

/// A person registered in version 1 of a schema whose version 2 renames the field.
struct PDPersonV1: Aggregate {
    static let typeName = "PDPerson"
    enum Event: Codable, Sendable { case registered(name: Personal<String>, subject: String) }
    var name: Personal<String>?
    mutating func apply(_ event: Event) throws {
        if case .registered(let name, _) = event { self.name = name }
    }
}

struct PDPersonV2: Aggregate {
    static let typeName = "PDPerson"
    static var eventSchemaVersion: Int { 2 }
    enum Event: Codable, Sendable { case registered(fullName: Personal<String>, subject: String) }
    var fullName: Personal<String>?
    mutating func apply(_ event: Event) throws {
        if case .registered(let name, _) = event { fullName = name }
    }

    static func upcastEvent(_ json: inout JSONValue, from version: Int) throws {
        guard version == 1, case .object(var root) = json, case .object(var fields)? = root["registered"] else { return }
        fields["fullName"] = fields["name"]
        fields["name"] = nil
        root["registered"] = .object(fields)
        json = .object(root)
    }
}

/// A value type that is not `PersonalDataReplaceable`.
struct PDBirth: Codable, Sendable, Equatable {
    var year: Int
    var day: Int
}

struct PDPatient: Aggregate {
    static let typeName = "PDPatient"
    enum Event: Codable, Sendable { case admitted(birth: Personal<PDBirth>) }
    var birth: Personal<PDBirth>?
    mutating func apply(_ event: Event) throws {
        if case .admitted(let b) = event { birth = b }
    }
}

@Suite("Personal fields: snapshots, upcasting, the log, refusals")
struct PersonalFieldLifecycleTests {
    static let encrypted: [AppFactory] = RecorderFactory.all.map { AppFactory(recorder: $0, encrypted: true) }

    static func sameRedaction<V>(_ a: Personal<V>?, _ b: Personal<V>?) -> Bool where V: Equatable {
        guard let a, let b, let ra = a.redaction, let rb = b.redaction else { return false }
        let sameTime: Bool
        switch (ra.shreddedAt, rb.shreddedAt) {
        case (nil, nil): sameTime = true
        case (let x?, let y?): sameTime = abs(x.timeIntervalSince(y)) < 0.001
        default: sameTime = false
        }
        return a == b && a.value == b.value && ra.subject == rb.subject && sameTime
    }

    @Test("snapshots taken before and after the shred load with the same redaction", arguments: encrypted)
    func snapshotsBeforeAndAfterShred(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let order = try await PersonalFieldTests.placeOrder(t.app)
            try await t.app.takeSnapshot(PDOrder.self, id: order.id)
            let fromEvents = try await t.app.repository.get(PDOrder.self, id: order.id)
            #expect(fromEvents.state.customer?.value == "Ada Lovelace")

            _ = try await t.app.shred(keyScope: "subject-A")
            // The snapshot taken before the shred (sealed under the order's own scope: kept), read as such.
            let first = try #require(try await t.store.snapshots.selectSnapshot(originatorID: order.id, lte: nil))
            #expect(first.originatorVersion == 2)
            let before = try await t.app.mapper.decodeSnapshot(first, as: PDOrder.self)
            #expect(before.state.customer?.isRedacted == true)
            #expect(before.state.customer?.value == "")
            #expect(before.state.address?.value == PDOrder.Address(street: "", city: "redacted"))
            #expect(before.state.courier?.value == "Bob Courier")
            #expect(before.state.amount == 120 && before.state.status == "shipped")

            // A snapshot of the redacted state, at a later version.
            var later = try await t.app.repository.get(PDOrder.self, id: order.id)
            try later.record(.shipped(note: "again"))
            try await t.app.save(&later)
            try await t.app.takeSnapshot(PDOrder.self, id: order.id)
            let second = try #require(try await t.store.snapshots.selectSnapshot(originatorID: order.id, lte: nil))
            #expect(second.originatorVersion == 3)
            let after = try await t.app.mapper.decodeSnapshot(second, as: PDOrder.self)
            #expect(Self.sameRedaction(before.state.customer, after.state.customer))
            #expect(Self.sameRedaction(before.state.address, after.state.address))
            #expect(after.state.courier == before.state.courier && after.state.courier?.isRedacted == false)
            #expect(after.state.amount == 120)
            #expect(try await t.app.repository.get(PDOrder.self, id: order.id).state.customer?.isRedacted == true)

            // With the courier shredded too, both snapshots' sealed courier fields are redacted.
            _ = try await t.app.shred(keyScope: "subject-B")
            let both1 = try await t.app.mapper.decodeSnapshot(first, as: PDOrder.self)
            let both2 = try await t.app.mapper.decodeSnapshot(second, as: PDOrder.self)
            #expect(both1.state.courier?.isRedacted == true && both2.state.courier?.isRedacted == true)
            #expect(Self.sameRedaction(both1.state.courier, both2.state.courier))
            #expect(Self.sameRedaction(before.state.customer, both2.state.customer))
        }
    }

    @Test("upcasting an event with a personal field keeps it sealed and readable; the shred still redacts it", arguments: encrypted)
    func upcasting(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            var person = try AggregateRoot<PDPersonV1>(.registered(name: Personal("Grace Hopper", subject: "subject-G"), subject: "subject-G"))
            try await t.app.save(&person)
            let stored = try #require(try await t.store.recorder.selectEvents(EventQuery(originatorID: person.id)).first)
            let outer = try await t.app.mapper.open(stored, snapshot: false)
            #expect(!bytes(outer, contain: Array("Grace Hopper".utf8)), "the record's payload holds the field sealed, not in the clear")

            let read = try await t.app.repository.get(PDPersonV2.self, id: person.id)
            #expect(read.state.fullName?.value == "Grace Hopper")
            #expect(read.state.fullName?.isRedacted == false)
            #expect(read.state.fullName?.subject == "subject-G")

            _ = try await t.app.shred(keyScope: "subject-G")
            let redacted = try await t.app.repository.get(PDPersonV2.self, id: person.id)
            #expect(redacted.state.fullName?.isRedacted == true)
            #expect(redacted.state.fullName?.value == "")
        }
    }

    @Test("the notification log's items decode with their personal fields opened, and redacted after the shred", arguments: encrypted)
    func notificationLog(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let order = try await PersonalFieldTests.placeOrder(t.app)
            func placed() async throws -> (Personal<String>, Personal<String>, Int) {
                let items = try await t.app.notificationLog.read(start: 1, limit: 10, topics: ["PDOrder.placed"])
                let item = try #require(items.first { $0.notification.originatorID == order.id })
                guard case .placed(let customer, _, let courier, let amount) = try item.event(as: PDOrder.self).event else {
                    throw EventSourcingError(.decodingFailed, "test: not placed")
                }
                return (customer, courier, amount)
            }
            let (c1, b1, a1) = try await placed()
            #expect(c1.value == "Ada Lovelace" && b1.value == "Bob Courier" && a1 == 120)
            _ = try await t.app.shred(keyScope: "subject-A")
            let (c2, b2, a2) = try await placed()
            #expect(c2.isRedacted && c2.value == "")
            #expect(!b2.isRedacted && b2.value == "Bob Courier")
            #expect(a2 == 120)
        }
    }

    @Test("a personal field naming an already shredded subject is refused with .shredded and nothing is written", arguments: encrypted)
    func writeToShreddedSubject(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            _ = try await PersonalFieldTests.placeOrder(t.app)
            _ = try await t.app.shred(keyScope: "subject-A")
            let last = try await t.app.notificationLog.maxNotificationID
            var again = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Ada Lovelace", customerSubject: "subject-A",
                                                                 street: "x", city: "y", courier: "Dan", courierSubject: "subject-D",
                                                                 amount: 3))
            let error = await #expect(throws: EventSourcingError.self) { try await t.app.save(&again) }
            #expect(error?.code == .shredded)
            #expect(error?.keyScope == "subject-A")
            #expect(error?.originatorID == again.id)
            #expect(error.map { !$0.description.contains("Ada") } ?? false)
            #expect(try await t.app.notificationLog.maxNotificationID == last)
            await #expect(throws: EventSourcingError.self) { _ = try await t.app.repository.get(PDOrder.self, id: again.id) }
            // Subject D's key was not minted either.
            let keyring = try #require(t.keyring)
            await #expect(throws: (any Error).self) { _ = try await keyring.openingKey(scope: "subject-D", version: 1) }
        }
    }

    @Test("a Personal encoded outside the mapper throws and writes no plaintext")
    func bareEncoders() throws {
        let field = Personal("Ada Lovelace", subject: "subject-A")
        #expect(throws: EncodingError.self) { _ = try JSONEncoder().encode(field) }
        #expect(throws: EncodingError.self) { _ = try CompactEncoder().encode(field) }
        #expect(throws: EncodingError.self) { _ = try PropertyListEncoder().encode(["x": field]) }
        #expect(throws: DecodingError.self) { _ = try JSONDecoder().decode(Personal<String>.self, from: Data(#""Ada""#.utf8)) }
        #expect(!"\(field)".contains("Ada"), "description never shows the value")
    }

    @Test("a mapper without keyring refuses a personal field with .plaintextRejected naming the record; nothing is written",
          arguments: RecorderFactory.all.map { AppFactory(recorder: $0, encrypted: false) })
    func mapperWithoutKeyring(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            var order = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Ada Lovelace", customerSubject: "subject-A",
                                                                 street: "x", city: "y", courier: "Bob", courierSubject: "subject-B",
                                                                 amount: 3))
            let error = await #expect(throws: EventSourcingError.self) { try await t.app.save(&order) }
            #expect(error?.code == .plaintextRejected)
            #expect(error?.originatorID == order.id)
            #expect(error?.originatorVersion == 1)
            #expect(try await t.app.notificationLog.maxNotificationID == nil)
            // Records without personal fields are written as before.
            var plain = try AggregateRoot<PDPlain>(.noted("hello"))
            try await t.app.save(&plain)
            #expect(try await t.app.repository.get(PDPlain.self, id: plain.id).state.notes == ["hello"])
        }
    }

    @Test("a field whose type has no default replacement must declare one; a declared one survives the shred")
    func declaredReplacement() async throws {
        try await AppFactory(recorder: .inMemory, encrypted: true).withFreshApp { t in
            var bare = try AggregateRoot<PDPatient>(.admitted(birth: Personal(PDBirth(year: 1906, day: 340), subject: "subject-P")))
            let error = await #expect(throws: EventSourcingError.self) { try await t.app.save(&bare) }
            #expect(error?.code == .invalidArgument)
            #expect(try await t.app.notificationLog.maxNotificationID == nil)

            var patient = try AggregateRoot<PDPatient>(.admitted(birth: Personal(PDBirth(year: 1906, day: 340), subject: "subject-P",
                                                                                 replacement: PDBirth(year: 1906, day: 0))))
            try await t.app.save(&patient)
            #expect(try await t.app.repository.get(PDPatient.self, id: patient.id).state.birth?.value == PDBirth(year: 1906, day: 340))
            _ = try await t.app.shred(keyScope: "subject-P")
            let after = try await t.app.repository.get(PDPatient.self, id: patient.id)
            #expect(after.state.birth?.isRedacted == true)
            #expect(after.state.birth?.value == PDBirth(year: 1906, day: 0), "keeps the year")
        }
    }

    @Test("a snapshot is the first record to name a subject: its key is minted and stored, and the shred redacts the field",
          arguments: encrypted)
    func snapshotMintsSubjectKey(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            var member = try AggregateRoot<PDMember>(.joined(name: "Hedy Lamarr", subject: "subject-H"))
            try await t.app.save(&member)
            try await t.app.takeSnapshot(PDMember.self, id: member.id)
            let keyring = try #require(t.keyring)
            _ = try await keyring.openingKey(scope: "subject-H", version: 1)
            let snap = try #require(try await t.store.snapshots.selectSnapshot(originatorID: member.id, lte: nil))
            #expect(try await t.app.mapper.decodeSnapshot(snap, as: PDMember.self).state.name?.value == "Hedy Lamarr")
            _ = try await t.app.shred(keyScope: "subject-H")
            let after = try await t.app.mapper.decodeSnapshot(snap, as: PDMember.self)
            #expect(after.state.name?.isRedacted == true)
        }
    }

    @Test("records without personal fields, even holding the marker's bytes, read as before")
    func markerBytesInPlainRecords() async throws {
        try await AppFactory(recorder: .inMemory, encrypted: true).withFreshApp { t in
            var plain = try AggregateRoot<PDPlain>(.noted("$pf"))
            try plain.record(.noted("{\"$pf\":1,\"k\":1}"))
            try await t.app.save(&plain)
            #expect(try await t.app.repository.get(PDPlain.self, id: plain.id).state.notes == ["$pf", "{\"$pf\":1,\"k\":1}"])
            let items = try await t.app.notificationLog.read(start: 1, limit: 10)
            #expect(try items.map { try $0.event(as: PDPlain.self).event } == [.noted("$pf"), .noted("{\"$pf\":1,\"k\":1}")])
        }
    }
}

/// A member whose state, not its events, holds a personal field: a snapshot is the first
/// record to seal one for the subject.
struct PDMember: Aggregate {
    static let typeName = "PDMember"
    enum Event: Codable, Sendable { case joined(name: String, subject: String) }
    var name: Personal<String>?
    mutating func apply(_ event: Event) throws {
        if case .joined(let name, let subject) = event { self.name = Personal(name, subject: subject) }
    }
}
