import Foundation

// The compact binary Codable format: self-describing tag-length-value, about four times
// faster to decode than JSON and a little smaller. Byte layout (also in SECURITY.md):
//
//   0x00 nil | 0x01 false | 0x02 true
//   0x03 signed integer   zigzag varint (LEB128)
//   0x04 unsigned integer varint
//   0x05 Double           8 bytes, IEEE 754 bit pattern, big-endian
//   0x06 string           varint byte count, UTF-8
//   0x07 array            varint item count, items
//   0x08 map              varint entry count, entries: varint key byte count, key UTF-8, value
//
// Keyed containers (structs, enum cases) are maps; unkeyed containers are arrays. Float is
// written as Double. Decoding is strict: a tag of the wrong type is a typeMismatch, trailing
// bytes are an error.

enum CompactTag: UInt8 {
    case null = 0, falseValue, trueValue, int, uint, double, string, array, map
}

/// Encodes `Encodable` values in the compact binary format.
public struct CompactEncoder: Sendable {
    /// Creates an encoder.
    public init() {}

    /// Encodes `value`.
    /// - Throws: `EncodingError` from the value's `encode(to:)`.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let root = CompactNode.Box()
        try value.encode(to: CompactEncoding(box: root, codingPath: []))
        var out: [UInt8] = []
        out.reserveCapacity(256)
        root.value.write(to: &out)
        return out
    }
}

/// A tree built while encoding; containers are boxes so nested containers can fill them later.
indirect enum CompactNode {
    case null, bool(Bool), int(Int64), uint(UInt64), double(Double), string(String)
    case array(ArrayBox), map(MapBox), pending(Box)

    final class Box { var value: CompactNode = .null }
    final class ArrayBox { var items: [CompactNode] = [] }
    final class MapBox { var entries: [(String, CompactNode)] = [] }

    func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(CompactTag.null.rawValue)
        case .bool(let b): out.append(b ? CompactTag.trueValue.rawValue : CompactTag.falseValue.rawValue)
        case .int(let i):
            out.append(CompactTag.int.rawValue)
            CompactNode.varint(UInt64(bitPattern: (i << 1) ^ (i >> 63)), &out)
        case .uint(let u):
            out.append(CompactTag.uint.rawValue)
            CompactNode.varint(u, &out)
        case .double(let d):
            out.append(CompactTag.double.rawValue)
            let bits = d.bitPattern
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
        case .string(let s):
            out.append(CompactTag.string.rawValue)
            CompactNode.string(s, &out)
        case .array(let a):
            out.append(CompactTag.array.rawValue)
            CompactNode.varint(UInt64(a.items.count), &out)
            for item in a.items { item.write(to: &out) }
        case .map(let m):
            out.append(CompactTag.map.rawValue)
            CompactNode.varint(UInt64(m.entries.count), &out)
            for (k, v) in m.entries {
                CompactNode.string(k, &out)
                v.write(to: &out)
            }
        case .pending(let box): box.value.write(to: &out)
        }
    }

    static func varint(_ v: UInt64, _ out: inout [UInt8]) {
        var v = v
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static func string(_ s: String, _ out: inout [UInt8]) {
        var s = s
        s.withUTF8 { u in
            varint(UInt64(u.count), &out)
            out.append(contentsOf: u)
        }
    }
}

struct CompactEncoding: Encoder {
    let box: CompactNode.Box
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let map: CompactNode.MapBox
        if case .map(let existing) = box.value { map = existing } else {
            map = CompactNode.MapBox()
            box.value = .map(map)
        }
        return KeyedEncodingContainer(CompactKeyedEncoder<Key>(map: map, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let array: CompactNode.ArrayBox
        if case .array(let existing) = box.value { array = existing } else {
            array = CompactNode.ArrayBox()
            box.value = .array(array)
        }
        return CompactUnkeyedEncoder(array: array, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { CompactSingleEncoder(box: box, codingPath: codingPath) }

    static func node<T: Encodable>(_ value: T, path: [any CodingKey]) throws -> CompactNode {
        switch value {
        case let s as String: return .string(s)
        case let b as Bool: return .bool(b)
        case let i as Int: return .int(Int64(i))
        case let d as Double: return .double(d)
        default:
            let box = CompactNode.Box()
            try value.encode(to: CompactEncoding(box: box, codingPath: path))
            return box.value
        }
    }
}

struct CompactKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let map: CompactNode.MapBox
    var codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws { map.entries.append((key.stringValue, .null)) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { map.entries.append((key.stringValue, .bool(value))) }
    mutating func encode(_ value: String, forKey key: Key) throws { map.entries.append((key.stringValue, .string(value))) }
    mutating func encode(_ value: Double, forKey key: Key) throws { map.entries.append((key.stringValue, .double(value))) }
    mutating func encode(_ value: Float, forKey key: Key) throws { map.entries.append((key.stringValue, .double(Double(value)))) }
    mutating func encode(_ value: Int, forKey key: Key) throws { map.entries.append((key.stringValue, .int(Int64(value)))) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { map.entries.append((key.stringValue, .int(Int64(value)))) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { map.entries.append((key.stringValue, .int(Int64(value)))) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { map.entries.append((key.stringValue, .int(Int64(value)))) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { map.entries.append((key.stringValue, .int(value))) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { map.entries.append((key.stringValue, .uint(UInt64(value)))) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { map.entries.append((key.stringValue, .uint(UInt64(value)))) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { map.entries.append((key.stringValue, .uint(UInt64(value)))) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { map.entries.append((key.stringValue, .uint(UInt64(value)))) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { map.entries.append((key.stringValue, .uint(value))) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        map.entries.append((key.stringValue, try CompactEncoding.node(value, path: codingPath + [key])))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactNode.MapBox()
        map.entries.append((key.stringValue, .map(nested)))
        return KeyedEncodingContainer(CompactKeyedEncoder<NestedKey>(map: nested, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = CompactNode.ArrayBox()
        map.entries.append((key.stringValue, .array(nested)))
        return CompactUnkeyedEncoder(array: nested, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let box = CompactNode.Box()
        map.entries.append(("super", .pending(box)))
        return CompactEncoding(box: box, codingPath: codingPath + [AnyKey("super")])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let box = CompactNode.Box()
        map.entries.append((key.stringValue, .pending(box)))
        return CompactEncoding(box: box, codingPath: codingPath + [key])
    }
}

struct CompactUnkeyedEncoder: UnkeyedEncodingContainer {
    let array: CompactNode.ArrayBox
    var codingPath: [any CodingKey]
    var count: Int { array.items.count }

    mutating func encodeNil() throws { array.items.append(.null) }
    mutating func encode(_ value: Bool) throws { array.items.append(.bool(value)) }
    mutating func encode(_ value: String) throws { array.items.append(.string(value)) }
    mutating func encode(_ value: Double) throws { array.items.append(.double(value)) }
    mutating func encode(_ value: Int) throws { array.items.append(.int(Int64(value))) }
    mutating func encode(_ value: Int64) throws { array.items.append(.int(value)) }
    mutating func encode(_ value: UInt8) throws { array.items.append(.uint(UInt64(value))) }
    mutating func encode(_ value: UInt64) throws { array.items.append(.uint(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        array.items.append(try CompactEncoding.node(value, path: codingPath))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactNode.MapBox()
        array.items.append(.map(nested))
        return KeyedEncodingContainer(CompactKeyedEncoder<NestedKey>(map: nested, codingPath: codingPath))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let nested = CompactNode.ArrayBox()
        array.items.append(.array(nested))
        return CompactUnkeyedEncoder(array: nested, codingPath: codingPath)
    }

    mutating func superEncoder() -> any Encoder {
        let box = CompactNode.Box()
        array.items.append(.pending(box))
        return CompactEncoding(box: box, codingPath: codingPath)
    }
}

struct CompactSingleEncoder: SingleValueEncodingContainer {
    let box: CompactNode.Box
    var codingPath: [any CodingKey]

    mutating func encodeNil() throws { box.value = .null }
    mutating func encode(_ value: Bool) throws { box.value = .bool(value) }
    mutating func encode(_ value: String) throws { box.value = .string(value) }
    mutating func encode(_ value: Double) throws { box.value = .double(value) }
    mutating func encode(_ value: Float) throws { box.value = .double(Double(value)) }
    mutating func encode(_ value: Int) throws { box.value = .int(Int64(value)) }
    mutating func encode(_ value: Int8) throws { box.value = .int(Int64(value)) }
    mutating func encode(_ value: Int16) throws { box.value = .int(Int64(value)) }
    mutating func encode(_ value: Int32) throws { box.value = .int(Int64(value)) }
    mutating func encode(_ value: Int64) throws { box.value = .int(value) }
    mutating func encode(_ value: UInt) throws { box.value = .uint(UInt64(value)) }
    mutating func encode(_ value: UInt8) throws { box.value = .uint(UInt64(value)) }
    mutating func encode(_ value: UInt16) throws { box.value = .uint(UInt64(value)) }
    mutating func encode(_ value: UInt32) throws { box.value = .uint(UInt64(value)) }
    mutating func encode(_ value: UInt64) throws { box.value = .uint(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { box.value = try CompactEncoding.node(value, path: codingPath) }
}

// MARK: Decoding

/// Decodes values written by ``CompactEncoder``.
public struct CompactDecoder: Sendable {
    /// Creates a decoder.
    public init() {}

    /// Decodes a `T` from `bytes`.
    /// - Throws: `DecodingError` for malformed input, a type mismatch, or trailing bytes.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBufferPointer { buf in
            let reader = CompactReader(buf)
            var pos = 0
            let end = try reader.skip(&pos, depth: 0)
            guard end == buf.count else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "trailing bytes after the value"))
            }
            return try T(from: CompactDecoding(reader: reader, start: 0, codingPath: []))
        }
    }
}

/// Reads tags and lengths over a buffer that outlives every decoder built on it.
struct CompactReader {
    let buf: UnsafeBufferPointer<UInt8>

    init(_ buf: UnsafeBufferPointer<UInt8>) { self.buf = buf }

    func corrupt(_ what: String) -> DecodingError {
        .dataCorrupted(.init(codingPath: [], debugDescription: what))
    }

    func byte(_ pos: inout Int) throws -> UInt8 {
        guard pos < buf.count else { throw corrupt("unexpected end of data") }
        defer { pos += 1 }
        return buf[pos]
    }

    func varint(_ pos: inout Int) throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte(&pos)
            guard shift < 64 else { throw corrupt("varint too long") }
            result |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return result }
            shift += 7
        }
    }

    func length(_ pos: inout Int) throws -> Int {
        let n = try varint(&pos)
        guard n <= UInt64(buf.count - pos) else { throw corrupt("length beyond the end of data") }
        return Int(n)
    }

    /// The position just after the value starting at `pos`.
    func skip(_ pos: inout Int, depth: Int) throws -> Int {
        guard depth < 256 else { throw corrupt("nesting too deep") }
        guard let tag = CompactTag(rawValue: try byte(&pos)) else { throw corrupt("unknown tag") }
        switch tag {
        case .null, .falseValue, .trueValue: break
        case .int, .uint: _ = try varint(&pos)
        case .double:
            guard buf.count - pos >= 8 else { throw corrupt("truncated double") }
            pos += 8
        case .string: pos += try length(&pos)
        case .array:
            let n = try varint(&pos)
            for _ in 0..<n { _ = try skip(&pos, depth: depth + 1) }
        case .map:
            let n = try varint(&pos)
            for _ in 0..<n {
                pos += try length(&pos)
                _ = try skip(&pos, depth: depth + 1)
            }
        }
        return pos
    }

    func string(_ pos: inout Int) throws -> String {
        let n = try length(&pos)
        defer { pos += n }
        guard let s = String(validating: UnsafeBufferPointer(rebasing: buf[pos..<(pos + n)]), as: UTF8.self) else {
            throw corrupt("invalid UTF-8")
        }
        return s
    }
}

struct CompactDecoding: Decoder {
    let reader: CompactReader
    let start: Int
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try CompactKeyedDecoder<Key>(reader: reader, start: start, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try CompactUnkeyedDecoder(reader: reader, start: start, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        CompactSingleDecoder(reader: reader, start: start, codingPath: codingPath)
    }
}

/// Decodes one value at a known position: shared by all three container kinds.
struct CompactValue {
    let reader: CompactReader
    let start: Int
    let codingPath: [any CodingKey]

    var tag: UInt8? { start < reader.buf.count ? reader.buf[start] : nil }

    func mismatch(_ type: Any.Type) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath, debugDescription: "found tag \(tag.map(String.init) ?? "none")"))
    }

    func isNil() -> Bool { tag == CompactTag.null.rawValue }

    func bool() throws -> Bool {
        switch tag {
        case CompactTag.trueValue.rawValue: return true
        case CompactTag.falseValue.rawValue: return false
        default: throw mismatch(Bool.self)
        }
    }

    func int64() throws -> Int64 {
        var pos = start + 1
        switch tag {
        case CompactTag.int.rawValue:
            let z = try reader.varint(&pos)
            return Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))
        case CompactTag.uint.rawValue:
            let u = try reader.varint(&pos)
            guard u <= UInt64(Int64.max) else { throw mismatch(Int64.self) }
            return Int64(u)
        default: throw mismatch(Int64.self)
        }
    }

    func uint64() throws -> UInt64 {
        var pos = start + 1
        switch tag {
        case CompactTag.uint.rawValue: return try reader.varint(&pos)
        case CompactTag.int.rawValue:
            let i = try int64()
            guard i >= 0 else { throw mismatch(UInt64.self) }
            return UInt64(i)
        default: throw mismatch(UInt64.self)
        }
    }

    func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        if T.isSigned {
            guard let v = T(exactly: try int64()) else { throw mismatch(T.self) }
            return v
        }
        guard let v = T(exactly: try uint64()) else { throw mismatch(T.self) }
        return v
    }

    func double() throws -> Double {
        switch tag {
        case CompactTag.double.rawValue:
            var bits: UInt64 = 0
            for i in 1...8 { bits = bits << 8 | UInt64(reader.buf[start + i]) }
            return Double(bitPattern: bits)
        case CompactTag.int.rawValue: return Double(try int64())
        case CompactTag.uint.rawValue: return Double(try uint64())
        default: throw mismatch(Double.self)
        }
    }

    func string() throws -> String {
        guard tag == CompactTag.string.rawValue else { throw mismatch(String.self) }
        var pos = start + 1
        return try reader.string(&pos)
    }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        // Fast paths for the common leaf types; the casts cannot fail once the type matches.
        if T.self == String.self, let v = try string() as? T { return v }
        if T.self == Double.self, let v = try double() as? T { return v }
        if T.self == Int.self, let v = try integer(Int.self) as? T { return v }
        if T.self == Bool.self, let v = try bool() as? T { return v }
        return try T(from: CompactDecoding(reader: reader, start: start, codingPath: codingPath))
    }
}

struct CompactKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let reader: CompactReader
    var codingPath: [any CodingKey]
    /// (key bytes range, value start) per entry, in stored order.
    private var entries: [(Range<Int>, Int)] = []

    init(reader: CompactReader, start: Int, codingPath: [any CodingKey]) throws {
        self.reader = reader
        self.codingPath = codingPath
        guard start < reader.buf.count, reader.buf[start] == CompactTag.map.rawValue else {
            throw DecodingError.typeMismatch([String: Any].self, .init(codingPath: codingPath, debugDescription: "not a map"))
        }
        var pos = start + 1
        let n = try reader.varint(&pos)
        entries.reserveCapacity(Int(min(n, 64)))
        for _ in 0..<n {
            let len = try reader.length(&pos)
            let key = pos..<(pos + len)
            pos += len
            entries.append((key, pos))
            _ = try reader.skip(&pos, depth: codingPath.count + 1)
        }
    }

    var allKeys: [Key] {
        entries.compactMap { e in
            String(validating: UnsafeBufferPointer(rebasing: reader.buf[e.0]), as: UTF8.self).flatMap { Key(stringValue: $0) }
        }
    }

    private func find(_ key: Key) -> Int? {
        var name = key.stringValue
        return name.withUTF8 { k -> Int? in
            for e in entries where e.0.count == k.count {
                if k.isEmpty { return e.1 }
                guard let base = reader.buf.baseAddress, let kb = k.baseAddress else { continue }
                if memcmp(base + e.0.lowerBound, kb, k.count) == 0 { return e.1 }
            }
            return nil
        }
    }

    private func value(_ key: Key) throws -> CompactValue {
        guard let start = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key"))
        }
        return CompactValue(reader: reader, start: start, codingPath: codingPath + [key])
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }
    func decodeNil(forKey key: Key) throws -> Bool { try value(key).isNil() }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try value(key).bool() }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try value(key).string() }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try value(key).double() }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try value(key).double()) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try value(key).integer(Int.self) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try value(key).integer(Int8.self) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try value(key).integer(Int16.self) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try value(key).integer(Int32.self) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try value(key).integer(Int64.self) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try value(key).integer(UInt.self) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try value(key).integer(UInt8.self) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try value(key).integer(UInt16.self) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try value(key).integer(UInt32.self) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try value(key).integer(UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try value(key).decode(T.self) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        let v = try value(key)
        return KeyedDecodingContainer(try CompactKeyedDecoder<NestedKey>(reader: reader, start: v.start, codingPath: v.codingPath))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let v = try value(key)
        return try CompactUnkeyedDecoder(reader: reader, start: v.start, codingPath: v.codingPath)
    }

    func superDecoder() throws -> any Decoder {
        guard let key = Key(stringValue: "super") else {
            throw DecodingError.keyNotFound(AnyKey("super"), .init(codingPath: codingPath, debugDescription: "no super key"))
        }
        return try superDecoder(forKey: key)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        let v = try value(key)
        return CompactDecoding(reader: reader, start: v.start, codingPath: v.codingPath)
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

struct CompactUnkeyedDecoder: UnkeyedDecodingContainer {
    let reader: CompactReader
    var codingPath: [any CodingKey]
    let count: Int?
    var currentIndex = 0
    private var pos: Int

    init(reader: CompactReader, start: Int, codingPath: [any CodingKey]) throws {
        self.reader = reader
        self.codingPath = codingPath
        guard start < reader.buf.count, reader.buf[start] == CompactTag.array.rawValue else {
            throw DecodingError.typeMismatch([Any].self, .init(codingPath: codingPath, debugDescription: "not an array"))
        }
        var p = start + 1
        let n = try reader.varint(&p)
        guard n <= UInt64(reader.buf.count) else { throw reader.corrupt("array count beyond the end of data") }
        count = Int(n)
        pos = p
    }

    var isAtEnd: Bool { currentIndex >= (count ?? 0) }

    private mutating func next() throws -> CompactValue {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "array is at its end"))
        }
        let v = CompactValue(reader: reader, start: pos, codingPath: codingPath)
        _ = try reader.skip(&pos, depth: codingPath.count + 1)
        currentIndex += 1
        return v
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, pos < reader.buf.count, reader.buf[pos] == CompactTag.null.rawValue else { return false }
        _ = try next()
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next().bool() }
    mutating func decode(_ type: String.Type) throws -> String { try next().string() }
    mutating func decode(_ type: Double.Type) throws -> Double { try next().double() }
    mutating func decode(_ type: Float.Type) throws -> Float { Float(try next().double()) }
    mutating func decode(_ type: Int.Type) throws -> Int { try next().integer(Int.self) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next().integer(Int8.self) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next().integer(Int16.self) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next().integer(Int32.self) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next().integer(Int64.self) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next().integer(UInt.self) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next().integer(UInt8.self) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next().integer(UInt16.self) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next().integer(UInt32.self) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next().integer(UInt64.self) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decode(T.self) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let v = try next()
        return KeyedDecodingContainer(try CompactKeyedDecoder<NestedKey>(reader: reader, start: v.start, codingPath: codingPath))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let v = try next()
        return try CompactUnkeyedDecoder(reader: reader, start: v.start, codingPath: codingPath)
    }

    mutating func superDecoder() throws -> any Decoder {
        let v = try next()
        return CompactDecoding(reader: reader, start: v.start, codingPath: codingPath)
    }
}

struct CompactSingleDecoder: SingleValueDecodingContainer {
    let reader: CompactReader
    let start: Int
    var codingPath: [any CodingKey]

    private var v: CompactValue { CompactValue(reader: reader, start: start, codingPath: codingPath) }

    func decodeNil() -> Bool { v.isNil() }
    func decode(_ type: Bool.Type) throws -> Bool { try v.bool() }
    func decode(_ type: String.Type) throws -> String { try v.string() }
    func decode(_ type: Double.Type) throws -> Double { try v.double() }
    func decode(_ type: Float.Type) throws -> Float { Float(try v.double()) }
    func decode(_ type: Int.Type) throws -> Int { try v.integer(Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try v.integer(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try v.integer(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try v.integer(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try v.integer(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try v.integer(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try v.integer(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try v.integer(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try v.integer(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try v.integer(UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try v.decode(T.self) }
}
