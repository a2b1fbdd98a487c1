// Decoding of the compact binary Codable format (CompactCodec.swift). Values are decoded in
// place, by position, through the checked `CompactReader`; nothing is copied into a tree.

/// Decodes values written by ``CompactEncoder``.
///
/// Decoding takes time linear in the input and, besides the decoded value itself, memory a small
/// constant times the input; a count that the remaining bytes cannot hold is refused before
/// anything is allocated for it. A key repeated in a map decodes as its first entry.
public struct CompactDecoder: Sendable {
    /// Context for the values' `init(from:)`, as `Decoder.userInfo` (the mapper passes its
    /// personal-field opener here, as it does to a `JSONDecoder`).
    public var userInfo: [CodingUserInfoKey: any Sendable]

    /// Creates a decoder.
    public init(userInfo: [CodingUserInfoKey: any Sendable] = [:]) { self.userInfo = userInfo }

    /// Decodes a `T` from `bytes`.
    /// - Throws: `DecodingError` for malformed input, a type mismatch, or trailing bytes.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        let reader = try CompactReader(bytes)
        if !userInfo.isEmpty { reader.userInfo = userInfo.mapValues { $0 as Any } }
        return try CompactValue(reader: reader, at: reader.root, codingPath: []).decode(T.self)
    }
}

struct CompactDecoding: Decoder {
    let reader: CompactReader
    let at: CompactCursor
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { reader.userInfo }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try CompactKeyedDecoder<Key>(reader: reader, at: at, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try CompactUnkeyedDecoder(reader: reader, at: at, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        CompactSingleDecoder(value: CompactValue(reader: reader, at: at, codingPath: codingPath))
    }
}

/// Decodes one value at a known position: shared by all three container kinds.
struct CompactValue {
    let reader: CompactReader
    let at: CompactCursor
    let codingPath: [any CodingKey]

    var tag: CompactTag? { try? reader.tag(at: at.offset) }

    func mismatch(_ type: Any.Type) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath, debugDescription: "found tag \(reader.peek(at.offset).map(String.init) ?? "none")"))
    }

    func isNil() -> Bool { tag == .null }

    func bool() throws -> Bool {
        switch tag {
        case .trueValue: return true
        case .falseValue: return false
        default: throw mismatch(Bool.self)
        }
    }

    func int64() throws -> Int64 {
        var pos = at.offset + 1
        switch tag {
        case .int:
            let z = try reader.varint(&pos)
            return Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))
        case .uint:
            let u = try reader.varint(&pos)
            guard u <= UInt64(Int64.max) else { throw mismatch(Int64.self) }
            return Int64(u)
        default: throw mismatch(Int64.self)
        }
    }

    func uint64() throws -> UInt64 {
        var pos = at.offset + 1
        switch tag {
        case .uint: return try reader.varint(&pos)
        case .int:
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
        case .double: return try reader.double(at: at.offset + 1)
        case .int: return Double(try int64())
        case .uint: return Double(try uint64())
        default: throw mismatch(Double.self)
        }
    }

    func string() throws -> String {
        guard tag == .string else { throw mismatch(String.self) }
        var pos = at.offset + 1
        return try reader.string(reader.stringRange(&pos))
    }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        // Fast paths for the common leaf types; the casts cannot fail once the type matches.
        if T.self == String.self, let v = try string() as? T { return v }
        if T.self == Double.self, let v = try double() as? T { return v }
        if T.self == Int.self, let v = try integer(Int.self) as? T { return v }
        if T.self == Bool.self, let v = try bool() as? T { return v }
        if T.self == JSONValue.self, let v = try CompactJSON.value(reader, at, codingPath: codingPath) as? T { return v }
        return try T(from: CompactDecoding(reader: reader, at: at, codingPath: codingPath))
    }
}

struct CompactKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let reader: CompactReader
    var codingPath: [any CodingKey]
    private let map: CompactMapEntries

    init(reader: CompactReader, at: CompactCursor, codingPath: [any CodingKey]) throws {
        self.reader = reader
        self.codingPath = codingPath
        guard (try? reader.tag(at: at.offset)) == .map else {
            throw DecodingError.typeMismatch([String: Any].self, .init(codingPath: codingPath, debugDescription: "not a map"))
        }
        map = try reader.mapEntries(at)
    }

    /// Each key once, in stored order (a repeated key's later entries are not listed).
    var allKeys: [Key] {
        map.entries.compactMap { e in (try? reader.string(e.key)).flatMap { Key(stringValue: $0) } }
    }

    private func value(_ key: Key) throws -> CompactValue {
        guard let at = map.find(key.stringValue) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key"))
        }
        return CompactValue(reader: reader, at: at, codingPath: codingPath + [key])
    }

    func contains(_ key: Key) -> Bool { map.find(key.stringValue) != nil }
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
        return KeyedDecodingContainer(try CompactKeyedDecoder<NestedKey>(reader: reader, at: v.at, codingPath: v.codingPath))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let v = try value(key)
        return try CompactUnkeyedDecoder(reader: reader, at: v.at, codingPath: v.codingPath)
    }

    func superDecoder() throws -> any Decoder {
        guard let key = Key(stringValue: "super") else {
            throw DecodingError.keyNotFound(AnyKey("super"), .init(codingPath: codingPath, debugDescription: "no super key"))
        }
        return try superDecoder(forKey: key)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        let v = try value(key)
        return CompactDecoding(reader: reader, at: v.at, codingPath: v.codingPath)
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
    private var next: CompactCursor

    init(reader: CompactReader, at: CompactCursor, codingPath: [any CodingKey]) throws {
        self.reader = reader
        self.codingPath = codingPath
        guard (try? reader.tag(at: at.offset)) == .array else {
            throw DecodingError.typeMismatch([Any].self, .init(codingPath: codingPath, debugDescription: "not an array"))
        }
        let (n, first) = try reader.open(at, .array)
        count = n
        next = first
    }

    var isAtEnd: Bool { currentIndex >= (count ?? 0) }

    private mutating func advance() throws -> CompactValue {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "array is at its end"))
        }
        let v = CompactValue(reader: reader, at: next, codingPath: codingPath)
        next = try reader.after(next)
        currentIndex += 1
        return v
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, (try? reader.tag(at: next.offset)) == .null else { return false }
        _ = try advance()
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try advance().bool() }
    mutating func decode(_ type: String.Type) throws -> String { try advance().string() }
    mutating func decode(_ type: Double.Type) throws -> Double { try advance().double() }
    mutating func decode(_ type: Float.Type) throws -> Float { Float(try advance().double()) }
    mutating func decode(_ type: Int.Type) throws -> Int { try advance().integer(Int.self) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try advance().integer(Int8.self) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try advance().integer(Int16.self) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try advance().integer(Int32.self) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try advance().integer(Int64.self) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try advance().integer(UInt.self) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try advance().integer(UInt8.self) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try advance().integer(UInt16.self) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try advance().integer(UInt32.self) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try advance().integer(UInt64.self) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try advance().decode(T.self) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let v = try advance()
        return KeyedDecodingContainer(try CompactKeyedDecoder<NestedKey>(reader: reader, at: v.at, codingPath: codingPath))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let v = try advance()
        return try CompactUnkeyedDecoder(reader: reader, at: v.at, codingPath: codingPath)
    }

    mutating func superDecoder() throws -> any Decoder {
        let v = try advance()
        return CompactDecoding(reader: reader, at: v.at, codingPath: codingPath)
    }
}

struct CompactSingleDecoder: SingleValueDecodingContainer {
    let value: CompactValue
    var codingPath: [any CodingKey] { value.codingPath }

    func decodeNil() -> Bool { value.isNil() }
    func decode(_ type: Bool.Type) throws -> Bool { try value.bool() }
    func decode(_ type: String.Type) throws -> String { try value.string() }
    func decode(_ type: Double.Type) throws -> Double { try value.double() }
    func decode(_ type: Float.Type) throws -> Float { Float(try value.double()) }
    func decode(_ type: Int.Type) throws -> Int { try value.integer(Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try value.integer(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try value.integer(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try value.integer(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try value.integer(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try value.integer(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try value.integer(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try value.integer(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try value.integer(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try value.integer(UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try value.decode(T.self) }
}
