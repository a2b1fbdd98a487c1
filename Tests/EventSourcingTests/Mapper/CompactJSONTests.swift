@testable import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Compact payloads as JSON text (`Mapper.open`, for exports and verification), written
/// directly from the payload: the same text JSONEncoder wrote from a JSONValue tree.
@Suite("Compact payloads as JSON text")
struct CompactJSONTests {
    static func viaTree(_ bytes: [UInt8]) throws -> [UInt8] {
        Array(try JSONEncoder().encode(try CompactDecoder().decode(JSONValue.self, from: bytes)))
    }

    @Test("Scalars, escapes and numbers are written byte for byte as JSONEncoder writes them")
    func sameTextAsJSONEncoder() throws {
        let control = String(decoding: (0..<0x20).map { UInt8($0) }, as: UTF8.self)
        let value: JSONValue = .array([
            .null, .bool(true), .bool(false), .int(0), .int(-1), .int(.min), .int(.max),
            .double(1.0), .double(-0.0), .double(0.1), .double(1e300), .double(5e-324), .double(1e16),
            .double(1e15), .double(2.5e-7), .double(-1.5), .double(.greatestFiniteMagnitude),
            .string(""), .string("a/b \"q\" \\ é 世界 🐕 \u{7F} \u{2028}"), .string(control),
            .array([]), .array([.array([.null])]), .object([:]), .object(["k/\"": .int(1)]),
        ])
        let bytes = try CompactEncoder().encode(value)
        #expect(String(decoding: try CompactJSON.text(from: bytes), as: UTF8.self)
                == String(decoding: try Self.viaTree(bytes), as: UTF8.self))
    }

    @Test("A whole event reads back as the same document, with members in stored order")
    func sameDocument() throws {
        let bytes = try CompactEncoder().encode(CompactCodecTests.Everything())
        let text = try CompactJSON.text(from: bytes)
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data(text))
                == JSONDecoder().decode(JSONValue.self, from: Data(try Self.viaTree(bytes))))
        let keys = try #require(JSONSerialization.jsonObject(with: Data(text)) as? [String: Any]).keys
        #expect(keys.count == 20)  // every member but `none`, which is nil and so not encoded
        #expect(String(decoding: text, as: UTF8.self).hasPrefix(#"{"b":true,"f":false,"i":-42,"#))
    }

    @Test("Unsigned integers above Int64.max are written exactly")
    func bigUnsigned() throws {
        #expect(try CompactJSON.text(from: CompactEncoder().encode([UInt64.max])) == Array("[18446744073709551615]".utf8))
    }

    @Test("A non-finite double has no JSON form and is refused, as JSONEncoder refuses it",
          arguments: [Double.nan, .infinity, -.infinity])
    func nonFinite(_ d: Double) throws {
        let bytes = try CompactEncoder().encode(["x": d])
        #expect(throws: DecodingError.self) { try CompactJSON.text(from: bytes) }
    }

    @Test("Malformed payloads are refused: invalid UTF-8 in values and keys, truncation, trailing bytes")
    func malformed() throws {
        #expect(throws: DecodingError.self) { try CompactJSON.text(from: [0x06, 0x02, 0xC3, 0x28]) }
        #expect(throws: DecodingError.self) { try CompactJSON.text(from: [0x08, 0x01, 0x01, 0xFF, 0x00]) }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode([String: Int?].self, from: [0x08, 0x01, 0x01, 0xFF, 0x00]) }
        let bytes = try CompactEncoder().encode(CompactCodecTests.Everything())
        for cut in 0..<bytes.count {
            #expect(throws: DecodingError.self) { try CompactJSON.text(from: Array(bytes.prefix(cut))) }
        }
        #expect(throws: DecodingError.self) { try CompactJSON.text(from: bytes + [0x00]) }
    }

    @Test("Through the mapper, a hostile payload is decodingFailed naming the record, for open and decode")
    func hostileRecordThroughMapper() async throws {
        let payload: [UInt8] = [0x08, 0x01, 0x01, 0x65, 0x07] + [0xFF, 0xFF, 0xFF, 0xFF, 0x0F] + [0x00]
        let state = StateHeader(flags: [.compact], keyScope: nil, keyVersion: 0, nonce: []).bytes + payload
        let id = UUID()
        let stored = StoredEvent(originatorID: id, originatorVersion: 7, topic: "Dog.registered", state: state)
        let mapper = Mapper(keyring: nil, configuration: .init(plaintextReads: .allowed))
        let opened = await #expect(throws: EventSourcingError.self) { try await mapper.open(stored, snapshot: false) }
        #expect(opened?.code == .decodingFailed)
        #expect(opened?.originatorID == id && opened?.originatorVersion == 7)
        let decoded = await #expect(throws: EventSourcingError.self) { try await mapper.decode(stored, as: Dog.self) }
        #expect(decoded?.code == .decodingFailed)
        #expect(decoded?.originatorID == id && decoded?.originatorVersion == 7)
    }
}
