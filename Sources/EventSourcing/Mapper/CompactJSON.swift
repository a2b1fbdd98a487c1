// Compact payloads as JSON documents: straight to a `JSONValue` (upcasters), and straight to
// JSON text (exports and verification, `Mapper.open`), both by walking the payload through the
// checked `CompactReader` without an intermediate tree.

enum CompactJSON {
    // MARK: JSONValue

    /// The value at `at` as a `JSONValue`, as JSONValue's own `init(from:)` would decode it
    /// (integers that fit Int64 as `.int`, larger unsigned ones as `.double`), with arrays and
    /// objects allocated at their exact sizes. A repeated map key keeps its first entry.
    static func value(_ reader: CompactReader, _ at: CompactCursor, codingPath: [any CodingKey],
                      depth: Int = 0) throws -> JSONValue {
        guard depth < CompactReader.maxDepth else { throw CompactReader.corrupt("nesting too deep", codingPath) }
        var pos = at.offset + 1
        switch try reader.tag(at: at.offset) {
        case .null: return .null
        case .falseValue: return .bool(false)
        case .trueValue: return .bool(true)
        case .int:
            let z = try reader.varint(&pos)
            return .int(Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1))))
        case .uint:
            let u = try reader.varint(&pos)
            return u <= UInt64(Int64.max) ? .int(Int64(u)) : .double(Double(u))
        case .double: return .double(try reader.double(at: pos))
        case .string: return .string(try reader.string(reader.stringRange(&pos)))
        case .array:
            let (n, first) = try reader.open(at, .array)
            var items: [JSONValue] = []
            items.reserveCapacity(n)
            var c = first
            for _ in 0..<n {
                items.append(try value(reader, c, codingPath: codingPath, depth: depth + 1))
                c = try reader.after(c)
            }
            return .array(items)
        case .map:
            let map = try reader.mapEntries(at)
            var object = [String: JSONValue](minimumCapacity: map.entries.count)
            for e in map.entries {
                let key = try reader.string(e.key)
                // Distinct bytes can still be equal Strings (canonical equivalence): first one wins.
                guard object[key] == nil else { continue }
                object[key] = try value(reader, e.value, codingPath: codingPath, depth: depth + 1)
            }
            return .object(object)
        }
    }

    // MARK: JSON text

    /// The compact payload `bytes` as UTF-8 JSON, written in two passes (measure, then write
    /// into a buffer of exactly that size), so memory is the input plus the output.
    ///
    /// The text is what Foundation's `JSONEncoder` writes for the same document with default
    /// settings (no spaces, `/` escaped, whole doubles without `.0`), except that object
    /// members keep their stored order, a repeated key keeps only its first entry, and unsigned
    /// integers above `Int64.max` are written exactly.
    /// - Throws: `DecodingError` for a malformed payload or a non-finite double (JSON has none).
    static func text(from bytes: [UInt8]) throws -> [UInt8] {
        let reader = try CompactReader(bytes)
        var size = Measure()
        try write(reader, reader.root, to: &size, depth: 0)
        var out = Output(capacity: size.count)
        try write(reader, reader.root, to: &out, depth: 0)
        return out.bytes
    }

    private protocol Sink {
        mutating func byte(_ b: UInt8)
        mutating func ascii(_ s: String)
    }

    private struct Measure: Sink {
        var count = 0
        mutating func byte(_ b: UInt8) { count += 1 }
        mutating func ascii(_ s: String) { count += s.utf8.count }
    }

    private struct Output: Sink {
        var bytes: [UInt8] = []
        init(capacity: Int) { bytes.reserveCapacity(capacity) }
        mutating func byte(_ b: UInt8) { bytes.append(b) }
        mutating func ascii(_ s: String) { bytes.append(contentsOf: s.utf8) }
    }

    private static func write<S: Sink>(_ reader: CompactReader, _ at: CompactCursor, to out: inout S, depth: Int) throws {
        guard depth < CompactReader.maxDepth else { throw CompactReader.corrupt("nesting too deep") }
        var pos = at.offset + 1
        switch try reader.tag(at: at.offset) {
        case .null: out.ascii("null")
        case .falseValue: out.ascii("false")
        case .trueValue: out.ascii("true")
        case .int:
            let z = try reader.varint(&pos)
            out.ascii(String(Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))))
        case .uint: out.ascii(String(try reader.varint(&pos)))
        case .double:
            let d = try reader.double(at: pos)
            guard d.isFinite else { throw CompactReader.corrupt("a non-finite number has no JSON form") }
            var s = d.description
            if s.hasSuffix(".0") { s.removeLast(2) }
            out.ascii(s)
        case .string: try string(reader, reader.stringRange(&pos), to: &out)
        case .array:
            let (n, first) = try reader.open(at, .array)
            out.byte(UInt8(ascii: "["))
            var c = first
            for i in 0..<n {
                if i > 0 { out.byte(UInt8(ascii: ",")) }
                try write(reader, c, to: &out, depth: depth + 1)
                c = try reader.after(c)
            }
            out.byte(UInt8(ascii: "]"))
        case .map:
            let map = try reader.mapEntries(at)
            out.byte(UInt8(ascii: "{"))
            for (i, e) in map.entries.enumerated() {
                if i > 0 { out.byte(UInt8(ascii: ",")) }
                try string(reader, e.key, to: &out)
                out.byte(UInt8(ascii: ":"))
                try write(reader, e.value, to: &out, depth: depth + 1)
            }
            out.byte(UInt8(ascii: "}"))
        }
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// A JSON string literal of the UTF-8 in `range`, escaped as JSONEncoder does.
    private static func string<S: Sink>(_ reader: CompactReader, _ range: Range<Int>, to out: inout S) throws {
        let s = try reader.string(range)  // checks the UTF-8
        out.byte(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
                out.byte(UInt8(ascii: "\\"))
                out.byte(b)
            case 0x08: out.ascii("\\b")
            case 0x0C: out.ascii("\\f")
            case 0x0A: out.ascii("\\n")
            case 0x0D: out.ascii("\\r")
            case 0x09: out.ascii("\\t")
            case 0..<0x20:
                out.ascii("\\u00")
                out.byte(hex[Int(b >> 4)])
                out.byte(hex[Int(b & 0x0F)])
            default: out.byte(b)
            }
        }
        out.byte(UInt8(ascii: "\""))
    }
}
