import EventSourcing
import Foundation
import KeyManagement
import Testing

/// A sealed personal field is bound to its record, field and subject: moved anywhere else (with
/// the outer record re-sealed by someone holding the record's key) it fails to open with
/// `.integrityFailure` naming the record, never its plaintext.
@Suite("Personal fields: integrity")
struct PersonalFieldIntegrityTests {
    /// Two orders saved through an encrypted in-memory application, and the tools to rewrite
    /// their payloads and re-seal them under the orders' own keys.
    struct Fixture {
        let app: Application
        let keyring: Keyring
        let recorder: InMemoryRecorder
        let first: AggregateRoot<PDOrder>
        let second: AggregateRoot<PDOrder>

        static func make(encoding: Mapper.PayloadEncoding = .compact) async throws -> Fixture {
            let recorder = InMemoryRecorder()
            let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            let app = Application(recorder: recorder, snapshots: recorder,
                                  mapper: Mapper(keyring: keyring, configuration: .init(encoding: encoding)))
            var first = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Ada Lovelace", customerSubject: "subject-A",
                                                                 street: "12 Analytical Row", city: "Marylebone",
                                                                 courier: "Bob Courier", courierSubject: "subject-B", amount: 120))
            var second = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Carl Customer", customerSubject: "subject-C",
                                                                  street: "1 Other Road", city: "Elsewhere",
                                                                  courier: "Bob Courier", courierSubject: "subject-B", amount: 7))
            try await app.save(&first, &second)
            return Fixture(app: app, keyring: keyring, recorder: recorder, first: first, second: second)
        }

        func stored(_ id: UUID, version: Int = 1) async throws -> StoredEvent {
            try #require(try await recorder.selectEvents(EventQuery(originatorID: id)).first { $0.originatorVersion == version })
        }

        /// The record's payload as a tree (decrypted with the record's key).
        func tree(_ stored: StoredEvent) async throws -> JSONValue {
            let payload = try await app.mapper.openPayload(stored, snapshot: false)
            switch payload.encoding {
            case .compact: return try CompactDecoder().decode(JSONValue.self, from: payload.bytes)
            case .json: return try JSONDecoder().decode(JSONValue.self, from: Data(payload.bytes))
            }
        }

        /// `stored` with its payload replaced by `tree`, sealed again under the record's own key
        /// (what an insider with the record's key, but not the subject's, could do).
        func resealed(_ stored: StoredEvent, with tree: JSONValue, encoding: Mapper.PayloadEncoding = .compact) async throws -> StoredEvent {
            guard case .success(let (header, _)) = StateHeader.parse(stored.state), let scope = header.keyScope else {
                throw EventSourcingError(.integrityFailure, "test: header does not parse")
            }
            let key = try await keyring.openingKey(scope: scope, version: header.keyVersion)
            let payload = encoding == .compact ? try CompactEncoder().encode(tree) : Array(try JSONEncoder().encode(tree))
            var flags = header.flags
            flags.remove(.compressed)
            let state = try RecordFormat.seal(payload, flags: flags, key: key,
                                              at: .init(snapshot: false, originatorID: stored.originatorID,
                                                        originatorVersion: stored.originatorVersion, topic: stored.topic))
            return StoredEvent(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                               topic: stored.topic, state: state, keyScope: scope)
        }
    }

    static func placed(_ tree: JSONValue) throws -> [String: JSONValue] {
        guard case .object(let env)? = Optional(tree), case .object(let e)? = env["e"], case .object(let placed)? = e["placed"] else {
            throw EventSourcingError(.decodingFailed, "test: not a placed event")
        }
        return placed
    }

    static func with(_ tree: JSONValue, placed: [String: JSONValue]) -> JSONValue {
        guard case .object(var env) = tree, case .object(var e)? = env["e"] else { return tree }
        e["placed"] = .object(placed)
        env["e"] = .object(e)
        return .object(env)
    }

    static func expectIntegrityFailure(_ f: Fixture, _ record: StoredEvent, plaintext: [String]) async throws {
        let error = await #expect(throws: EventSourcingError.self) {
            _ = try await f.app.mapper.decode(record, as: PDOrder.self)
        }
        let e = try #require(error)
        #expect(e.code == .integrityFailure)
        #expect(e.originatorID == record.originatorID)
        #expect(e.originatorVersion == record.originatorVersion)
        for p in plaintext { #expect(!e.description.contains(p)) }
    }

    @Test("control: a record re-sealed unchanged still reads (the re-sealing in these tests is sound)",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func controlResealUnchanged(_ encoding: Mapper.PayloadEncoding) async throws {
        let f = try await Fixture.make(encoding: encoding)
        let stored = try await f.stored(f.first.id)
        let again = try await f.resealed(stored, with: try await f.tree(stored), encoding: encoding)
        let event = try await f.app.mapper.decode(again, as: PDOrder.self)
        guard case .placed(let customer, let address, let courier, let amount) = event.event else {
            Issue.record("not a placed event")
            return
        }
        #expect(customer.value == "Ada Lovelace" && !customer.isRedacted)
        #expect(address.value.city == "Marylebone")
        #expect(courier.value == "Bob Courier")
        #expect(amount == 120)
    }

    @Test("a sealed field moved to another record fails with integrityFailure naming that record",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func movedToAnotherRecord(_ encoding: Mapper.PayloadEncoding) async throws {
        let f = try await Fixture.make(encoding: encoding)
        let from = try Self.placed(try await f.tree(try await f.stored(f.first.id)))
        let target = try await f.stored(f.second.id)
        let targetTree = try await f.tree(target)
        var placed = try Self.placed(targetTree)
        // The courier field names the same subject in both orders: only the record differs.
        placed["courier"] = from["courier"]
        let moved = try await f.resealed(target, with: Self.with(targetTree, placed: placed), encoding: encoding)
        try await Self.expectIntegrityFailure(f, moved, plaintext: ["Bob Courier"])
    }

    @Test("a sealed field moved to another field of its record fails with integrityFailure (with its stored path kept or rewritten)",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func movedToAnotherField(_ encoding: Mapper.PayloadEncoding) async throws {
        let f = try await Fixture.make(encoding: encoding)
        let stored = try await f.stored(f.first.id)
        let tree = try await f.tree(stored)
        var placed = try Self.placed(tree)
        placed["courier"] = placed["customer"]
        try await Self.expectIntegrityFailure(f, try await f.resealed(stored, with: Self.with(tree, placed: placed), encoding: encoding),
                                              plaintext: ["Ada Lovelace"])
        // The same, with the stored path rewritten to the new place: the tag no longer matches.
        guard case .object(var sealed)? = placed["customer"], case .array(let path)? = sealed["p"] else {
            throw EventSourcingError(.decodingFailed, "test: no sealed path")
        }
        sealed["p"] = .array(Array(path.dropLast()) + [.string("courier")])
        placed["courier"] = .object(sealed)
        try await Self.expectIntegrityFailure(f, try await f.resealed(stored, with: Self.with(tree, placed: placed), encoding: encoding),
                                              plaintext: ["Ada Lovelace"])
    }

    @Test("a sealed field relabelled with another subject fails with integrityFailure", arguments: [Mapper.PayloadEncoding.compact, .json])
    func movedToAnotherSubject(_ encoding: Mapper.PayloadEncoding) async throws {
        let f = try await Fixture.make(encoding: encoding)
        let stored = try await f.stored(f.first.id)
        let tree = try await f.tree(stored)
        var placed = try Self.placed(tree)
        guard case .object(var sealed)? = placed["customer"] else { throw EventSourcingError(.decodingFailed, "test: no sealed field") }
        #expect(sealed["s"] == .string("subject-A"))
        sealed["s"] = .string("subject-B")
        placed["customer"] = .object(sealed)
        try await Self.expectIntegrityFailure(f, try await f.resealed(stored, with: Self.with(tree, placed: placed), encoding: encoding),
                                              plaintext: ["Ada Lovelace"])
    }

    @Test("a flipped ciphertext byte fails with integrityFailure naming the record")
    func tamperedCiphertext() async throws {
        let f = try await Fixture.make()
        let stored = try await f.stored(f.first.id)
        let tree = try await f.tree(stored)
        var placed = try Self.placed(tree)
        guard case .object(var sealed)? = placed["customer"], case .string(let c)? = sealed["c"],
              var blob = Data(base64Encoded: c) else { throw EventSourcingError(.decodingFailed, "test: no ciphertext") }
        blob[blob.count - 20] ^= 0x01
        sealed["c"] = .string(blob.base64EncodedString())
        placed["customer"] = .object(sealed)
        try await Self.expectIntegrityFailure(f, try await f.resealed(stored, with: Self.with(tree, placed: placed)),
                                              plaintext: ["Ada Lovelace"])
    }
}
