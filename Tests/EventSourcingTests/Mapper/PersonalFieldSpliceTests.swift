@testable import EventSourcing
import Foundation
import Testing

/// The re-encryption's view of a payload's personal fields: the byte ranges of each sealed
/// field's `k` and `c`, in both encodings, and refusals (never a trap) for malformed payloads.
@Suite("Personal-field splicing (re-encryption)")
struct PersonalFieldSpliceTests {
    struct Field: Encodable {
        var marker = 1
        var s: String?
        var k: UInt32
        var p: [String]
        var c: String
        var r: String?
        enum CodingKeys: String, CodingKey { case marker = "$pf", s, k, p, c, r }
    }

    struct Payload: Encodable {
        var e: [String: Field]
        var list: [Field]
        var note: String
    }

    static let payload = Payload(
        e: ["customer": Field(s: "subject-A", k: 1, p: ["e", "customer"], c: "QUJD", r: "x\"}{\\"),
            "own": Field(s: nil, k: 9, p: ["e", "own"], c: "REVG", r: nil)],
        list: [Field(s: "subject-B", k: 127, p: ["list"], c: "R0hJ", r: nil)],
        note: "a \"$pf\" in a string is text, {\"k\":1}")

    static func encoded(_ encoding: Mapper.PayloadEncoding) throws -> [UInt8] {
        switch encoding {
        case .compact: return try CompactEncoder().encode(payload)
        case .json: return Array(try JSONEncoder().encode(payload))
        }
    }

    @Test("finds every sealed field with its subject, version, path and ciphertext; edits change only k and c",
          arguments: [Mapper.PayloadEncoding.compact, .json])
    func findAndEdit(_ encoding: Mapper.PayloadEncoding) throws {
        let bytes = try Self.encoded(encoding)
        let fields = try PersonalFieldSplice.fields(in: bytes, encoding: encoding).sorted { $0.version < $1.version }
        #expect(fields.map(\.version) == [1, 9, 127])
        #expect(fields.map(\.subject) == ["subject-A", nil, "subject-B"])
        #expect(fields.map(\.path) == [["e", "customer"], ["e", "own"], ["list"]])
        #expect(fields.map(\.ciphertext) == ["QUJD", "REVG", "R0hJ"])
        // Moving the fields to versions of other widths (1 -> 128 takes a second varint byte).
        let edits = fields.map { PersonalFieldSplice.Edit(field: $0, version: $0.version + 127, ciphertext: "WFla" + $0.ciphertext, encoding: encoding) }
        let edited = PersonalFieldSplice.apply(edits, to: bytes)
        var expected = Self.payload
        expected.e["customer"]?.k = 128
        expected.e["customer"]?.c = "WFlaQUJD"
        expected.e["own"]?.k = 136
        expected.e["own"]?.c = "WFlaREVG"
        expected.list[0].k = 254
        expected.list[0].c = "WFlaR0hJ"
        switch encoding {
        case .compact:
            #expect(edited == (try CompactEncoder().encode(expected)))
        case .json:
            let a = try JSONDecoder().decode(JSONValue.self, from: Data(edited))
            let b = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(expected))
            #expect(a == b)
        }
    }

    @Test("malformed or truncated payloads throw, never trap", arguments: [Mapper.PayloadEncoding.compact, .json])
    func malformed(_ encoding: Mapper.PayloadEncoding) throws {
        let bytes = try Self.encoded(encoding)
        for cut in stride(from: 0, to: bytes.count, by: 3) {
            #expect(throws: (any Error).self) { _ = try PersonalFieldSplice.fields(in: Array(bytes[..<cut]), encoding: encoding) }
        }
        let hostile: [[UInt8]] = [
            Array(#"{"$pf":1,"k":-1,"c":"QQ=="}"#.utf8), Array(#"{"$pf":1,"k":99999999999,"c":"QQ=="}"#.utf8),
            Array(#"{"$pf":1,"k":1,"c":5}"#.utf8), Array(#"{"a":"\"#.utf8), Array(#"[[[[[[["#.utf8),
            Array(String(repeating: "[", count: 300).utf8) + Array(String(repeating: "]", count: 300).utf8),
        ]
        if encoding == .json {
            for h in hostile {
                #expect(throws: (any Error).self) { _ = try PersonalFieldSplice.fields(in: h, encoding: .json) }
            }
        }
        // A redacted field has nothing to re-seal; an object without the marker is no field.
        let redacted = Array(#"{"x":{"$pf":1,"s":"a","x":true},"y":{"k":1,"c":"QQ=="}}"#.utf8)
        #expect(try PersonalFieldSplice.fields(in: redacted, encoding: .json).isEmpty)
    }
}
