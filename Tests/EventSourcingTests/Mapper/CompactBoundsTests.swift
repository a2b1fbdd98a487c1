@testable import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Hostile compact payloads: decoding stays bounded in time and memory by the input, whatever
/// the payload claims (issue "Library trust").
@Suite("Compact decoding is bounded by its input")
struct CompactBoundsTests {
    static func varint(_ v: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        CompactNode.varint(v, &out)
        return out
    }

    /// An array of `n` nulls.
    static func nulls(_ n: Int) -> [UInt8] {
        [0x07] + varint(UInt64(n)) + [UInt8](repeating: 0x00, count: n)
    }

    /// The fastest of `runs` timings of `body`.
    static func fastest(_ runs: Int = 3, _ body: () throws -> Void) rethrows -> Duration {
        var best = Duration.seconds(1_000_000)
        for _ in 0..<runs { best = min(best, try ContinuousClock().measure(body)) }
        return best
    }

    static func isRefusedCount(_ error: any Error) -> Bool {
        guard case DecodingError.dataCorrupted(let ctx) = error else { return false }
        return ctx.debugDescription.contains("claims more")
    }

    // MARK: Counts

    struct HostileCount: Sendable, CustomStringConvertible {
        let description: String
        let bytes: [UInt8]
    }

    static let hostileCounts: [HostileCount] = [
        HostileCount(description: "array of 2^60 items, then 100,000 nulls",
                     bytes: [0x07] + varint(1 << 60) + [UInt8](repeating: 0, count: 100_000)),
        HostileCount(description: "array of UInt64.max items", bytes: [0x07] + varint(.max) + [0x00]),
        HostileCount(description: "array of one item more than bytes remain", bytes: [0x07, 0x03, 0x00, 0x00]),
        HostileCount(description: "map of 2^60 entries, then 100,000 empty-key nulls",
                     bytes: [0x08] + varint(1 << 60) + [UInt8](repeating: 0, count: 100_000)),
        HostileCount(description: "map of more entries than 2-byte entries fit", bytes: [0x08, 0x02, 0x00, 0x00, 0x00]),
        HostileCount(description: "inside a map value, after valid entries",
                     bytes: [0x08, 0x02, 0x01, 0x61, 0x00, 0x01, 0x62, 0x07] + varint(1 << 40)
                         + [UInt8](repeating: 0, count: 50_000)),
    ]

    @Test("A count the remaining bytes cannot hold is refused at once, whatever the target type",
          arguments: hostileCounts)
    func hostileCountsAreRefused(_ c: HostileCount) {
        #expect { try CompactDecoder().decode(JSONValue.self, from: c.bytes) } throws: { Self.isRefusedCount($0) }
        #expect { try CompactDecoder().decode([Int?].self, from: c.bytes) } throws: { Self.isRefusedCount($0) }
        #expect { try CompactDecoder().decode([String: Int?].self, from: c.bytes) } throws: { Self.isRefusedCount($0) }
        #expect { try CompactJSON.text(from: c.bytes) } throws: { Self.isRefusedCount($0) }
    }

    @Test("Counts that fit exactly are accepted")
    func exactCountsAreAccepted() throws {
        #expect(try CompactDecoder().decode([Int?].self, from: [0x07, 0x02, 0x00, 0x00]) == [nil, nil])
        #expect(try CompactDecoder().decode([String: Int?].self, from: [0x08, 0x01, 0x00, 0x00]) == ["": nil])
        #expect(try CompactDecoder().decode([Int].self, from: [0x07, 0x00]) == [])
    }

    @Test("A million nulls decode into [Int?], JSONValue and JSON, each exactly once")
    func manyNulls() throws {
        let n = 1_000_000
        let bytes = Self.nulls(n)
        let optionals = try CompactDecoder().decode([Int?].self, from: bytes)
        #expect(optionals.count == n)
        #expect(optionals.allSatisfy { $0 == nil })
        guard case .array(let items) = try CompactDecoder().decode(JSONValue.self, from: bytes) else {
            Issue.record("not an array")
            return
        }
        #expect(items.count == n)
        #expect(items.capacity <= n + 1024, "JSONValue arrays are allocated at their stored size, not grown")
        let json = try CompactJSON.text(from: bytes)
        #expect(json.count == 2 + 4 * n + (n - 1))
        #expect(Array(json.prefix(10)) == Array("[null,null".utf8))
    }

    #if os(Linux)
    /// Peak resident memory of `Mapper.open` on a 4 KB record whose compact payload is 4 MiB of
    /// nulls, measured in a child process (nothing else runs there). The JSON text alone is
    /// 20 MiB; building a JSONValue tree and encoding it with JSONEncoder took over 300 MB.
    @Test("Exporting a record of millions of nulls takes memory proportional to its payload, not a tree")
    func openPeakMemory() async {
        await #expect(processExitsWith: .success) {
            func status(_ field: String) -> Int {
                let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
                for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
                    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
                }
                return -1
            }
            let n = 4 << 20
            let payload = CompactBoundsTests.nulls(n)
            let body = try ZlibCompressor().compress(payload)
            guard body.count < 8 << 10 else { exit(20) }
            let state = StateHeader(flags: [.compact, .compressed], keyScope: nil, keyVersion: 0, nonce: []).bytes + body
            let stored = StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: "T.nulls", state: state)
            let mapper = Mapper(keyring: nil, configuration: .init(plaintextReads: .allowed))
            // Reset the peak (VmHWM) to the current resident size, then measure from here.
            guard (try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)) != nil else { exit(21) }
            let before = status("VmRSS")
            let json = try await mapper.open(stored, snapshot: false)
            let peak = status("VmHWM")
            guard before > 0, peak > 0, json.count == 5 * n + 1 else { exit(22) }
            let grownKiB = peak - before
            // The payload and the text are 24 MiB together; allow for the allocator and the decompressor.
            exit(grownKiB < 64 << 10 ? 0 : 1)
        }
    }
    #endif

    // MARK: Time

    /// Reads `[[[…[null × n]…]]]`, counting the nesting and the nulls.
    struct Nest: Decodable {
        var depth = 0
        var nulls = 0
        init(from decoder: any Decoder) throws {
            var c = try decoder.unkeyedContainer()
            if c.count == 1, try !c.decodeNil() {
                let inner = try c.decode(Nest.self)
                depth = inner.depth + 1
                nulls = inner.nulls
            } else {
                while !c.isAtEnd {
                    guard try c.decodeNil() else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "not null") }
                    nulls += 1
                }
            }
        }
    }

    @Test("Deep nesting costs no more than shallow nesting: every byte is skipped once, not once per level")
    func nestingIsLinear() throws {
        let n = 100_000
        let shallow = [0x07, 0x01] + Self.nulls(n)
        let deep = Array([[UInt8]](repeating: [0x07, 0x01], count: 254).joined()) + Self.nulls(n)
        let s = try CompactDecoder().decode(Nest.self, from: shallow)
        let d = try CompactDecoder().decode(Nest.self, from: deep)
        #expect(s.depth == 1 && s.nulls == n)
        #expect(d.depth == 254 && d.nulls == n)
        let tShallow = try Self.fastest { _ = try CompactDecoder().decode(Nest.self, from: shallow) }
        let tDeep = try Self.fastest { _ = try CompactDecoder().decode(Nest.self, from: deep) }
        // Re-skipping the tail at each level made this ratio over 100.
        #expect(tDeep / tShallow < 8, "deep \(tDeep), shallow \(tShallow)")
    }

    static func keys(_ n: Int) -> [UInt8] {
        var map: [String: Int] = [:]
        for i in 0..<n { map["key\(i)"] = i }
        return (try? CompactEncoder().encode(map)) ?? []
    }

    @Test("Map key look-up is linear overall: 16 times the keys take about 16 times as long")
    func manyKeysAreLinear() throws {
        let small = Self.keys(1_000), large = Self.keys(16_000)
        #expect(try CompactDecoder().decode([String: Int].self, from: large).count == 16_000)
        let tSmall = try Self.fastest { _ = try CompactDecoder().decode([String: Int].self, from: small) }
        let tLarge = try Self.fastest { _ = try CompactDecoder().decode([String: Int].self, from: large) }
        // Per key, the large map costs the same as the small one; with a linear scan per key it was 16 times as much.
        #expect(tLarge / tSmall / 16 < 5, "16,000 keys \(tLarge), 1,000 keys \(tSmall)")
    }

    // MARK: Repeated keys

    /// Counts how many times it is decoded (the count is read and reset under `lock`).
    struct Probe: Decodable, Equatable {
        nonisolated(unsafe) static var decoded = 0
        static let lock = NSLock()
        var value: Int
        init(value: Int) { self.value = value }
        init(from decoder: any Decoder) throws {
            value = try decoder.singleValueContainer().decode(Int.self)
            Self.decoded += 1  // the test decoding holds `lock`
        }
    }

    /// A map with `count` entries, every one keyed `key`, valued 0, 1, 2, …
    static func repeated(_ key: String, _ count: Int) -> [UInt8] {
        var out: [UInt8] = [0x08] + varint(UInt64(count))
        for i in 0..<count {
            CompactNode.string(key, &out)
            out += [0x03] + varint(UInt64(i) << 1)
        }
        return out
    }

    @Test("A repeated map key decodes as its first entry, once, everywhere", arguments: [2, 8, 9, 5_000])
    func repeatedKeys(_ count: Int) throws {
        struct A: Decodable { var a: Int }
        let bytes = Self.repeated("a", count)
        #expect(try CompactDecoder().decode(A.self, from: bytes).a == 0)
        #expect(try CompactDecoder().decode([String: Int].self, from: bytes) == ["a": 0])
        #expect(try CompactDecoder().decode(JSONValue.self, from: bytes) == .object(["a": .int(0)]))
        #expect(String(decoding: try CompactJSON.text(from: bytes), as: UTF8.self) == #"{"a":0}"#)
        // Dictionary decoding walks allKeys: each key must be listed once, or the first value is decoded once per copy.
        let probes = try Probe.lock.withLock {
            Probe.decoded = 0
            let d = try CompactDecoder().decode([String: Probe].self, from: bytes)
            return (d, Probe.decoded)
        }
        #expect(probes.0 == ["a": Probe(value: 0)])
        #expect(probes.1 == 1)
    }

    @Test("Repeated keys among distinct ones: first entries win, the rest keep their order")
    func repeatedAmongDistinct() throws {
        var bytes: [UInt8] = [0x08] + Self.varint(40)
        for i in 0..<40 {
            CompactNode.string("k\(i % 20)", &bytes)
            bytes += [0x03] + Self.varint(UInt64(i) << 1)
        }
        let d = try CompactDecoder().decode([String: Int].self, from: bytes)
        #expect(d.count == 20)
        for i in 0..<20 { #expect(d["k\(i)"] == i) }
        let text = String(decoding: try CompactJSON.text(from: bytes), as: UTF8.self)
        #expect(text == "{" + (0..<20).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + "}")
    }

    // MARK: Strictness that keeps every reader in step

    @Test("A varint that overflows 64 bits is refused, not truncated")
    func varintOverflow() throws {
        // 10 bytes whose last carries more than the 64th bit.
        let overflow: [UInt8] = [0x04] + [UInt8](repeating: 0xFF, count: 9) + [0x02]
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(UInt64.self, from: overflow) }
        let max: [UInt8] = [0x04] + [UInt8](repeating: 0xFF, count: 9) + [0x01]
        #expect(try CompactDecoder().decode(UInt64.self, from: max) == .max)
    }

    static func nested(_ depth: Int) -> JSONValue {
        var v = JSONValue.null
        for _ in 0..<depth { v = .array([v]) }
        return v
    }

    @Test("The encoder refuses to write nesting the decoder refuses to read; the deepest readable value round-trips")
    func encoderDepth() throws {
        let deepest = Self.nested(255)
        let bytes = try CompactEncoder().encode(deepest)
        #expect(try CompactDecoder().decode(JSONValue.self, from: bytes) == deepest)
        let text = try CompactJSON.text(from: bytes)
        #expect(text == Array((String(repeating: "[", count: 255) + "null" + String(repeating: "]", count: 255)).utf8))
        #expect(throws: EncodingError.self) { try CompactEncoder().encode(Self.nested(256)) }
        #expect(throws: EncodingError.self) { try CompactEncoder().encode(Self.nested(10_000)) }
        // One level deeper by hand: refused on reading.
        #expect(throws: DecodingError.self) { try CompactDecoder().decode(JSONValue.self, from: [0x07, 0x01] + bytes) }
    }

    // MARK: The reader

    @Test("Every read of the reader is bounds-checked on its own, whatever position it is given")
    func readerChecksEveryRead() throws {
        let reader = try CompactReader(CompactEncoder().encode(["a": [1.5, 2.5]]))
        let end = reader.count
        for offset in [-1, end, end + 1, Int.max] {
            #expect(reader.peek(offset) == nil)
            #expect(throws: DecodingError.self) { try reader.tag(at: offset) }
            #expect(throws: DecodingError.self) { try reader.double(at: offset) }
            var pos = offset
            #expect(throws: DecodingError.self) { try reader.varint(&pos) }
            #expect(throws: DecodingError.self) { try reader.after(CompactCursor(offset: offset, container: 0)) }
        }
        #expect(throws: DecodingError.self) { try reader.double(at: end - 7) }
        #expect(throws: DecodingError.self) { try reader.withBytes(0..<(end + 1)) { _ in } }
        #expect(throws: DecodingError.self) { try reader.string(-1..<2) }
        // A position that is not where the index says a container starts is refused, not trusted.
        #expect(throws: DecodingError.self) { try reader.after(CompactCursor(offset: 0, container: 1)) }
        #expect(throws: DecodingError.self) { try reader.open(CompactCursor(offset: 0, container: 5), .map) }
        #expect(throws: DecodingError.self) { try reader.open(reader.root, .array) }
        #expect(try reader.after(reader.root).offset == end)
    }
}
