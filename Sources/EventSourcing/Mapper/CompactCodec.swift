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
// bytes are an error, a value inside more than 255 containers is refused (the encoder refuses
// to write one), a count the remaining bytes cannot hold is refused, and a key repeated in a
// map decodes as its first entry. Decoding: CompactDecoder.swift over the checked reader of
// CompactReader.swift; JSON views of a payload: CompactJSON.swift.

enum CompactTag: UInt8 {
    case null = 0, falseValue, trueValue, int, uint, double, string, array, map
}

/// Encodes `Encodable` values in the compact binary format.
public struct CompactEncoder: Sendable {
    /// Context for the values' `encode(to:)`, as `Encoder.userInfo` (the mapper passes its
    /// personal-field sealer here, as it does to a `JSONEncoder`).
    public let userInfo: [CodingUserInfoKey: any Sendable]
    /// ``userInfo`` as `Encoder.userInfo` wants it, converted once.
    nonisolated(unsafe) private let info: [CodingUserInfoKey: Any]

    /// Creates an encoder.
    public init(userInfo: [CodingUserInfoKey: any Sendable] = [:]) {
        self.userInfo = userInfo
        self.info = userInfo.isEmpty ? [:] : userInfo.mapValues { $0 as Any }
    }

    /// Encodes `value`.
    /// - Throws: `EncodingError` from the value's `encode(to:)`, or if it nests deeper than the
    ///   decoder accepts.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let root = CompactNode.Box()
        try value.encode(to: CompactEncoding(box: root, codingPath: [], userInfo: info))
        var out: [UInt8] = []
        out.reserveCapacity(256)
        guard root.value.write(to: &out, depth: 0) else {
            throw EncodingError.invalidValue(T.self, .init(codingPath: [],
                debugDescription: "nested deeper than \(CompactReader.maxDepth) levels, which no reader accepts"))
        }
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

    /// Appends the encoding; false if a value sits inside `CompactReader.maxDepth` or more containers.
    func write(to out: inout [UInt8], depth: Int) -> Bool {
        guard depth < CompactReader.maxDepth else { return false }
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
            for item in a.items where !item.write(to: &out, depth: depth + 1) { return false }
        case .map(let m):
            out.append(CompactTag.map.rawValue)
            CompactNode.varint(UInt64(m.entries.count), &out)
            for (k, v) in m.entries {
                CompactNode.string(k, &out)
                guard v.write(to: &out, depth: depth + 1) else { return false }
            }
        case .pending(let box): return box.value.write(to: &out, depth: depth)
        }
        return true
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
    /// How many containers enclose the value being encoded.
    var depth = 0
    let userInfo: [CodingUserInfoKey: Any]

    init(box: CompactNode.Box, codingPath: [any CodingKey], depth: Int = 0, userInfo: [CodingUserInfoKey: Any]) {
        self.box = box
        self.codingPath = codingPath
        self.depth = depth
        self.userInfo = userInfo
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let map: CompactNode.MapBox
        if case .map(let existing) = box.value { map = existing } else {
            map = CompactNode.MapBox()
            box.value = .map(map)
        }
        return KeyedEncodingContainer(CompactKeyedEncoder<Key>(map: map, codingPath: codingPath, depth: depth, userInfo: userInfo))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let array: CompactNode.ArrayBox
        if case .array(let existing) = box.value { array = existing } else {
            array = CompactNode.ArrayBox()
            box.value = .array(array)
        }
        return CompactUnkeyedEncoder(array: array, codingPath: codingPath, depth: depth, userInfo: userInfo)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { CompactSingleEncoder(box: box, codingPath: codingPath, depth: depth, userInfo: userInfo) }

    /// The node for `value`, which sits inside `depth` containers. Nesting is refused here, as
    /// deep as the decoder reads and no deeper, before it can exhaust the stack.
    static func node<T: Encodable>(_ value: T, path: [any CodingKey], depth: Int,
                                   userInfo: [CodingUserInfoKey: Any]) throws -> CompactNode {
        guard depth < CompactReader.maxDepth else {
            // The type, not the value: describing a value this deep would itself exhaust the stack.
            throw EncodingError.invalidValue(T.self, .init(codingPath: path,
                debugDescription: "nested deeper than \(CompactReader.maxDepth) levels, which no reader accepts"))
        }
        switch value {
        case let s as String: return .string(s)
        case let b as Bool: return .bool(b)
        case let i as Int: return .int(Int64(i))
        case let d as Double: return .double(d)
        default:
            let box = CompactNode.Box()
            try value.encode(to: CompactEncoding(box: box, codingPath: path, depth: depth, userInfo: userInfo))
            return box.value
        }
    }
}

struct CompactKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let map: CompactNode.MapBox
    var codingPath: [any CodingKey]
    var depth: Int
    let userInfo: [CodingUserInfoKey: Any]

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
        map.entries.append((key.stringValue, try CompactEncoding.node(value, path: codingPath + [key], depth: depth + 1, userInfo: userInfo)))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactNode.MapBox()
        map.entries.append((key.stringValue, .map(nested)))
        return KeyedEncodingContainer(CompactKeyedEncoder<NestedKey>(map: nested, codingPath: codingPath + [key], depth: depth + 1, userInfo: userInfo))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = CompactNode.ArrayBox()
        map.entries.append((key.stringValue, .array(nested)))
        return CompactUnkeyedEncoder(array: nested, codingPath: codingPath + [key], depth: depth + 1, userInfo: userInfo)
    }

    mutating func superEncoder() -> any Encoder {
        let box = CompactNode.Box()
        map.entries.append(("super", .pending(box)))
        return CompactEncoding(box: box, codingPath: codingPath + [AnyKey("super")], depth: depth + 1, userInfo: userInfo)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let box = CompactNode.Box()
        map.entries.append((key.stringValue, .pending(box)))
        return CompactEncoding(box: box, codingPath: codingPath + [key], depth: depth + 1, userInfo: userInfo)
    }
}

struct CompactUnkeyedEncoder: UnkeyedEncodingContainer {
    let array: CompactNode.ArrayBox
    var codingPath: [any CodingKey]
    var depth: Int
    let userInfo: [CodingUserInfoKey: Any]
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
        array.items.append(try CompactEncoding.node(value, path: codingPath, depth: depth + 1, userInfo: userInfo))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactNode.MapBox()
        array.items.append(.map(nested))
        return KeyedEncodingContainer(CompactKeyedEncoder<NestedKey>(map: nested, codingPath: codingPath, depth: depth + 1, userInfo: userInfo))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let nested = CompactNode.ArrayBox()
        array.items.append(.array(nested))
        return CompactUnkeyedEncoder(array: nested, codingPath: codingPath, depth: depth + 1, userInfo: userInfo)
    }

    mutating func superEncoder() -> any Encoder {
        let box = CompactNode.Box()
        array.items.append(.pending(box))
        return CompactEncoding(box: box, codingPath: codingPath, depth: depth + 1, userInfo: userInfo)
    }
}

struct CompactSingleEncoder: SingleValueEncodingContainer {
    let box: CompactNode.Box
    var codingPath: [any CodingKey]
    var depth: Int
    let userInfo: [CodingUserInfoKey: Any]

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
    mutating func encode<T: Encodable>(_ value: T) throws { box.value = try CompactEncoding.node(value, path: codingPath, depth: depth, userInfo: userInfo) }
}
