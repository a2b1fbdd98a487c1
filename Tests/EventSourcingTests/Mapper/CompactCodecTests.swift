import EventSourcing
import Foundation
import KeyManagement
import Testing

@Suite("Compact binary codec")
struct CompactCodecTests {
    struct Inner: Codable, Equatable {
        var tags: [String]
        var scores: [String: Int]
        var maybe: Int?
    }

    enum Event: Codable, Equatable {
        case created(name: String, at: Date, id: UUID)
        case renamed(String)
        case cleared
        case nested(Inner)
    }

    struct Everything: Codable, Equatable {
        var b = true
        var f = false
        var i = -42
        var i8 = Int8.min
        var i16 = Int16.max
        var i32 = Int32.min
        var i64 = Int64.min
        var u = UInt.max
        var u8 = UInt8.max
        var u64 = UInt64.max
        var d = -0.1
        var fl: Float = 3.5
        var s = "héllo, 世界 🐕"
        var empty = ""
        var none: String? = nil
        var some: String? = "x"
        var list = [1, 2, 3]
        var emptyList: [Int] = []
        var map = ["a": 1.5, "b": -2]
        var events: [Event] = [.created(name: "Fido", at: Date(timeIntervalSince1970: 1_700_000_000.25), id: UUID()),
                               .renamed("Rex"), .cleared,
                               .nested(Inner(tags: ["t"], scores: ["x": 7], maybe: nil))]
        var data = Data([0, 1, 2, 255])
    }

    @Test("Every standard value type round-trips exactly")
    func roundTrip() throws {
        let value = Everything()
        let bytes = try CompactEncoder().encode(value)
        #expect(try CompactDecoder().decode(Everything.self, from: bytes) == value)
    }

    @Test("Integer extremes and negative zero-crossing values round-trip", arguments: [Int64.min, -1, 0, 1, 63, 64, -64, -65, Int64.max])
    func integers(_ v: Int64) throws {
        #expect(try CompactDecoder().decode(Int64.self, from: CompactEncoder().encode(v)) == v)
    }

    @Test("A value too large for the target type is a typeMismatch, not a wrapped number")
    func overflow() throws {
        let bytes = try CompactEncoder().encode(Int64(300))
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(UInt8.self, from: bytes) }
        let negative = try CompactEncoder().encode(-1)
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(UInt.self, from: negative) }
    }

    @Test("A string where a number is expected is a typeMismatch")
    func mismatch() throws {
        struct A: Codable { var x: String }
        struct B: Codable { var x: Int }
        let bytes = try CompactEncoder().encode(A(x: "12"))
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(B.self, from: bytes) }
    }

    @Test("Missing keys are keyNotFound; unknown extra keys are ignored")
    func keys() throws {
        struct Wide: Codable { var a: Int; var b: Int }
        struct Narrow: Codable, Equatable { var a: Int }
        let wide = try CompactEncoder().encode(Wide(a: 1, b: 2))
        #expect(try CompactDecoder().decode(Narrow.self, from: wide) == Narrow(a: 1))
        let narrow = try CompactEncoder().encode(Narrow(a: 1))
        #expect { try CompactDecoder().decode(Wide.self, from: narrow) } throws: { error in
            if case DecodingError.keyNotFound(let key, _) = error { return key.stringValue == "b" }
            return false
        }
    }

    @Test("Malformed input throws instead of crashing: every truncation, bad tags, trailing bytes, huge lengths")
    func malformed() throws {
        let bytes = try CompactEncoder().encode(Everything())
        for cut in 0..<bytes.count {
            #expect(throws: DecodingError.self) { try CompactDecoder().decode(Everything.self, from: Array(bytes.prefix(cut))) }
        }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(Everything.self, from: bytes + [0]) }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(String.self, from: [0x63]) }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(String.self, from: [0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode([Int].self, from: [0x07, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) }
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(String.self, from: [0x06, 0x02, 0xC3, 0x28]) }
        let deep: [UInt8] = Array([[UInt8]](repeating: [0x07, 0x01], count: 100_000).joined())
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(JSONValue.self, from: deep) }
    }

    @Test("Random byte flips never crash the decoder")
    func fuzz() throws {
        let bytes = try CompactEncoder().encode(Everything())
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var b = bytes
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            }
            _ = try? CompactDecoder().decode(Everything.self, from: b)
            _ = try? CompactDecoder().decode(JSONValue.self, from: b)
        }
    }

    @Test("Any compact value decodes as JSONValue, so upcasters and exports see the same document as JSON")
    func jsonValue() throws {
        let value = Inner(tags: ["a", "b"], scores: ["k": 3], maybe: 5)
        let viaCompact = try CompactDecoder().decode(JSONValue.self, from: CompactEncoder().encode(value))
        let viaJSON = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(value))
        #expect(viaCompact == viaJSON)
    }

    @Test("Records written as JSON and as compact both read through one mapper", arguments: [Mapper.PayloadEncoding.json, .compact])
    func mixedEncodings(_ first: Mapper.PayloadEncoding) async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let other: Mapper.PayloadEncoding = first == .json ? .compact : .json
        let recorder = InMemoryRecorder()
        let writerA = Application(recorder: recorder, mapper: Mapper(keyring: keyring, configuration: .init(encoding: first)))
        let writerB = Application(recorder: recorder, mapper: Mapper(keyring: keyring, configuration: .init(encoding: other)))
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try await writerA.save(&dog)
        try dog.record(.addedTrick("sit"))
        try await writerB.save(&dog)
        let stored = try await recorder.selectEvents(originatorID: dog.id)
        let flags = stored.compactMap { s -> Bool? in
            if case .success(let (h, _)) = StateHeader.parse(s.state) { return h.flags.contains(.compact) }
            return nil
        }
        #expect(flags == [first == .compact, other == .compact])
        let read = try await writerA.repository.get(Dog.self, id: dog.id)
        #expect(read.name == "Fido")
        #expect(read.tricks == ["sit"])
        let json = try await writerA.mapper.open(stored[1], snapshot: false)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json)) as? [String: Any])
        #expect(object["v"] as? Int == 1)
        #expect((object["e"] as? [String: Any])?["addedTrick"] != nil)
    }
}
