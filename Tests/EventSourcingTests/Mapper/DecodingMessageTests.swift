import EventSourcing
import Foundation
import Testing

/// Two views of one stored type: written with string tallies, read as integer ones.
private struct TallyWritten: Aggregate {
    static let typeName = "Tally"
    enum Event: Codable, Sendable { case tallied([String: String]) }
    mutating func apply(_ event: Event) {}
}

private struct TallyRead: Aggregate {
    static let typeName = "Tally"
    enum Event: Codable, Sendable { case tallied([String: Int]) }
    mutating func apply(_ event: Event) {}
}

@Suite("Decoding failures name the schema, not the data")
struct DecodingMessageTests {
    @Test("A record that does not decode names the path without its dictionary keys (they are data: an e-mail address here)",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func dictionaryKeysStayOutOfMessages(_ encoding: Mapper.PayloadEncoding) async throws {
        let app = Application(recorder: InMemoryRecorder(), mapper: Mapper(configuration: .init(encoding: encoding)))
        var tally = try AggregateRoot<TallyWritten>(.tallied(["ada@example.org": "three"]))
        try await app.save(&tally)
        let e = await #expect(throws: EventSourcingError.self) { try await app.repository.get(TallyRead.self, id: tally.id) }
        #expect(e?.code == .decodingFailed)
        let text = "\(e.map { "\($0)" } ?? "") \(e?.message ?? "")"
        #expect(!text.contains("ada@example.org"), "the message repeats a dictionary key: \(e?.message ?? "")")
        #expect(text.contains("tallied"), "the message still names the schema's path: \(e?.message ?? "")")
    }
}
