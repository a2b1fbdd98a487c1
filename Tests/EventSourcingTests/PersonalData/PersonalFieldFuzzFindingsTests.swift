import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Findings of fuzzing and reviewing the personal-field read path (Fuzz/README.md), each a
/// regression test.
@Suite("Personal fields: fuzz findings")
struct PersonalFieldFuzzFindingsTests {
    /// A field's value as first written: a dictionary keyed by personal data.
    struct Before: Aggregate {
        static let typeName = "PDSchemaChange"
        enum Event: Codable, Sendable { case noted(contacts: Personal<[String: String]>, other: Personal<[String: String]>) }
        var seen = 0
        mutating func apply(_ event: Event) throws { seen += 1 }
    }

    /// The same field after a schema change the stored values do not fit.
    struct After: Aggregate {
        static let typeName = "PDSchemaChange"
        enum Event: Codable, Sendable { case noted(contacts: Personal<[String: Int]>, other: Personal<[String: Int]>) }
        var seen = 0
        mutating func apply(_ event: Event) throws { seen += 1 }
    }

    /// A sealed field whose plaintext does not decode as the field's type fails with
    /// `.decodingFailed` naming the record and the field, but the message never repeats anything
    /// of the plaintext: not even a dictionary key inside it, where decoding stopped (it used
    /// to say "expected Int at ada@example.org").
    @Test("A field that does not decode as its type: the message holds nothing of its plaintext",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func undecodableFieldNamesNoPlaintext(encoding: Mapper.PayloadEncoding) async throws {
        let recorder = InMemoryRecorder()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring, configuration: .init(encoding: encoding)))
        var root = try AggregateRoot<Before>(.noted(contacts: Personal(["ada@example.org": "Ada Lovelace"]),
                                                    other: Personal(["bob@example.org": "Bob"], subject: "subject-B")))
        try await app.save(&root)
        let stored = try #require(try await recorder.selectEvents(EventQuery(originatorID: root.id)).first)

        let error = await #expect(throws: EventSourcingError.self) { _ = try await app.mapper.decode(stored, as: After.self) }
        let e = try #require(error)
        #expect(e.code == .decodingFailed)
        #expect(e.originatorID == root.id && e.originatorVersion == 1)
        #expect(e.message.contains("personal field at e.noted.contacts"))
        for secret in ["ada@example.org", "Ada Lovelace", "bob@example.org"] {
            #expect(!e.message.contains(secret), "the message repeats the field's plaintext: \(e.message)")
            #expect(!"\(e)".contains(secret))
        }
    }
}
