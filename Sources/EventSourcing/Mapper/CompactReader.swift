// The one bounds-checked reader of compact payloads (format: CompactCodec.swift, SECURITY.md §5.13).
//
// Every byte the decoder, the JSONValue builder and the JSON transcoder look at is read through
// `CompactReader`: each read checks its offset against the payload and throws a DecodingError
// past the end, so no read depends on an earlier pass having validated the bytes.
//
// Cost is bounded by the input, whatever it claims:
// - One linear pass at open checks the structure (tags, varints, lengths, counts, nesting) and
//   records, per container (array or map), where it ends. Skipping any value is then O(1),
//   so every container decodes in time linear in its own size, at any depth.
// - A count is refused at once if the bytes left cannot hold that many items (each item takes
//   at least one byte, each map entry two), before anything proportional to it is allocated.
// - The decoder's own structures are a small constant times the input: 12 bytes per container
//   (which takes at least 2 bytes), and for the map being read 12 bytes per entry plus a hash
//   index of at most 16 bytes per entry (an entry takes at least 2 bytes).

/// A position in a payload: a byte offset, and the preorder number of the first container that
/// starts at or after it (the key into the structure index).
struct CompactCursor {
    var offset: Int
    var container: Int
}

/// A checked view of one compact payload and the structure index of its containers.
final class CompactReader {
    /// Values nested deeper than this (counting enclosing containers) are refused.
    static let maxDepth = 256
    /// Payloads longer than this are refused: the structure index stores 32-bit offsets.
    static let maxLength = Int(UInt32.max)
    /// Maps with more entries than this get a hash index for key look-ups.
    static let indexedMapThreshold = 8

    private let bytes: [UInt8]
    /// One container of the structure index.
    private struct Container {
        /// Its start offset, the offset just past it, and the preorder number just past its subtree.
        var start: UInt32
        var end: UInt32
        var next: UInt32
    }
    /// Per container, in preorder. Written once by `init`, read only afterwards.
    private let index: [Container]
    /// The decoder's `userInfo`, handed to every value's `init(from:)`.
    var userInfo: [CodingUserInfoKey: Any] = [:]

    /// The payload's length in bytes.
    var count: Int { bytes.count }
    /// The number of containers in the payload (what the structure index holds).
    var containerCount: Int { index.count }
    /// The payload's single top-level value.
    var root: CompactCursor { CompactCursor(offset: 0, container: 0) }

    /// Checks the structure of `bytes`, which must hold exactly one value, and indexes its containers.
    /// - Throws: `DecodingError.dataCorrupted` for malformed input, an over-long payload or trailing bytes.
    init(_ bytes: [UInt8]) throws {
        self.bytes = bytes
        guard bytes.count <= Self.maxLength else { throw Self.corrupt("payload is longer than 4 GiB") }
        let (end, index) = try Self.indexStructure(bytes)
        guard end == bytes.count else { throw Self.corrupt("trailing bytes after the value") }
        self.index = index
    }

    static func corrupt(_ what: String, _ path: [any CodingKey] = []) -> DecodingError {
        .dataCorrupted(.init(codingPath: path, debugDescription: what))
    }

    // MARK: Checked reads

    /// The byte at `offset`, or nil past the end.
    func peek(_ offset: Int) -> UInt8? {
        offset >= 0 && offset < bytes.count ? bytes[offset] : nil
    }

    /// The tag of the value at `offset`.
    func tag(at offset: Int) throws -> CompactTag {
        guard let b = peek(offset) else { throw Self.corrupt("unexpected end of data") }
        guard let tag = CompactTag(rawValue: b) else { throw Self.corrupt("unknown tag") }
        return tag
    }

    /// A LEB128 varint of at most 64 bits; longer or overflowing encodings are refused.
    func varint(_ pos: inout Int) throws -> UInt64 {
        try bytes.withUnsafeBufferPointer { try Self.varint(in: $0, &pos) }
    }

    /// A byte count that must fit in the rest of the payload.
    func length(_ pos: inout Int) throws -> Int {
        try bytes.withUnsafeBufferPointer { try Self.length(in: $0, &pos) }
    }

    /// The varint at `pos` in `bytes` (the one reading of varints: the structure pass's and the
    /// decoder's); `pos` moves past it. Every byte read is checked against `bytes.count`.
    private static func varint(in bytes: UnsafeBufferPointer<UInt8>, _ pos: inout Int) throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos >= 0, pos < bytes.count else { throw corrupt("unexpected end of data") }
            let b = bytes[pos]
            pos += 1
            if shift == 63, b > 1 { throw corrupt("varint overflows 64 bits") }
            result |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return result }
            shift += 7
        }
    }

    /// A byte count at `pos` in `bytes` that must fit in the rest of them; `pos` moves past the count.
    private static func length(in bytes: UnsafeBufferPointer<UInt8>, _ pos: inout Int) throws -> Int {
        let n = try varint(in: bytes, &pos)
        guard n <= UInt64(bytes.count - pos) else { throw corrupt("length beyond the end of data") }
        return Int(n)
    }

    /// The byte range of a length-prefixed string whose length varint is at `pos`; `pos` moves past it.
    func stringRange(_ pos: inout Int) throws -> Range<Int> {
        let n = try length(&pos)
        defer { pos += n }
        return pos..<(pos + n)
    }

    /// The bytes of `range`, which must lie in the payload.
    func withBytes<R>(_ range: Range<Int>, _ body: (UnsafeBufferPointer<UInt8>) throws -> R) throws -> R {
        guard range.lowerBound >= 0, range.upperBound <= bytes.count else { throw Self.corrupt("range beyond the end of data") }
        return try bytes.withUnsafeBufferPointer { try body(UnsafeBufferPointer(rebasing: $0[range])) }
    }

    /// The UTF-8 text in `range`.
    func string(_ range: Range<Int>) throws -> String {
        guard let s = try withBytes(range, { String(validating: $0, as: UTF8.self) }) else {
            throw Self.corrupt("invalid UTF-8")
        }
        return s
    }

    /// The 8-byte big-endian IEEE 754 double at `offset`.
    func double(at offset: Int) throws -> Double {
        guard offset >= 0, bytes.count - offset >= 8 else { throw Self.corrupt("truncated double") }
        var bits: UInt64 = 0
        for i in offset..<(offset + 8) { bits = bits << 8 | UInt64(bytes[i]) }
        return Double(bitPattern: bits)
    }

    /// Whether the bytes of `range` equal `key`.
    func equals(_ range: Range<Int>, _ key: UnsafeBufferPointer<UInt8>) -> Bool {
        guard range.count == key.count, range.lowerBound >= 0, range.upperBound <= bytes.count else { return false }
        var i = range.lowerBound
        for k in key {
            guard bytes[i] == k else { return false }
            i += 1
        }
        return true
    }

    /// Whether the bytes of two ranges are equal.
    func equals(_ a: Range<Int>, _ b: Range<Int>) -> Bool {
        (try? withBytes(b) { equals(a, $0) }) ?? false
    }

    /// A per-process seeded hash of the bytes of `range` (SipHash: hostile keys cannot be made to collide).
    func hash(_ range: Range<Int>) -> Int {
        var h = Hasher()
        _ = try? withBytes(range) { h.combine(bytes: UnsafeRawBufferPointer($0)) }
        return h.finalize()
    }

    // MARK: Navigation

    /// The position just past the value at `c`, in O(1): containers through the structure index.
    func after(_ c: CompactCursor) throws -> CompactCursor {
        var pos = c.offset
        switch try tag(at: pos) {
        case .null, .falseValue, .trueValue: return CompactCursor(offset: pos + 1, container: c.container)
        case .int, .uint:
            pos += 1
            _ = try varint(&pos)
        case .double:
            guard bytes.count - pos > 8 else { throw Self.corrupt("truncated double") }
            pos += 9
        case .string:
            pos += 1
            pos = try stringRange(&pos).upperBound
        case .array, .map:
            let k = try containerIndex(c)
            return CompactCursor(offset: Int(index[k].end), container: Int(index[k].next))
        }
        return CompactCursor(offset: pos, container: c.container)
    }

    /// The item or entry count of the container at `c`, and the position of its first item or entry.
    func open(_ c: CompactCursor, _ kind: CompactTag) throws -> (count: Int, first: CompactCursor) {
        guard try tag(at: c.offset) == kind else { throw Self.corrupt("not a container of that kind") }
        let k = try containerIndex(c)
        var pos = c.offset + 1
        let n = try varint(&pos)
        guard n <= UInt64(bytes.count - pos) else { throw Self.corrupt("count beyond the end of data") }
        return (Int(n), CompactCursor(offset: pos, container: k + 1))
    }

    private func containerIndex(_ c: CompactCursor) throws -> Int {
        guard c.container >= 0, c.container < index.count, Int(index[c.container].start) == c.offset else {
            throw Self.corrupt("position is not a known container")
        }
        return c.container
    }

    /// The entries of the map at `c`, each key once (a repeated key's later entries are dropped).
    func mapEntries(_ c: CompactCursor) throws -> CompactMapEntries {
        let (n, first) = try open(c, .map)
        return try CompactMapEntries(reader: self, count: n, first: first)
    }

    // MARK: Structure pass

    private struct Frame {
        var remaining: UInt64
        var isMap: Bool
        var container: Int
    }

    /// One linear, non-recursive pass over the value at offset 0: checks every tag, varint,
    /// length, count, key and the nesting depth, and builds the structure index. It reads the
    /// bytes through a bounds-checked view of its own (a static function, so the index is built
    /// in a local array, not through the object): every read is checked against the payload.
    /// - Returns: the offset just past the value, and the index.
    private static func indexStructure(_ payload: [UInt8]) throws -> (Int, [Container]) {
        try payload.withUnsafeBufferPointer { bytes in
            var pos = 0
            func byte() throws -> UInt8 {
                guard pos < bytes.count else { throw corrupt("unexpected end of data") }
                defer { pos += 1 }
                return bytes[pos]
            }
            func varint() throws -> UInt64 { try Self.varint(in: bytes, &pos) }
            /// Skips a length-prefixed string; returns its bytes.
            func string() throws -> UnsafeBufferPointer<UInt8> {
                let n = try Self.length(in: bytes, &pos)
                defer { pos += n }
                return UnsafeBufferPointer(rebasing: bytes[pos..<(pos + n)])
            }
            // Each container takes at least 2 bytes: the reservation is bounded by the input.
            var index: [Container] = []
            index.reserveCapacity(min(bytes.count / 2, 8))
            var stack: [Frame] = []
            stack.reserveCapacity(4)
            var started = false
            while true {
                if let top = stack.last {
                    if top.remaining == 0 {
                        index[top.container].end = UInt32(pos)
                        index[top.container].next = UInt32(index.count)
                        stack.removeLast()
                        if stack.isEmpty { return (pos, index) }
                        continue
                    }
                    stack[stack.count - 1].remaining -= 1
                    if top.isMap {
                        // Keys are checked here, so allKeys never drops an undecodable one. ASCII
                        // (the usual key) is valid UTF-8 without building a String.
                        let key = try string()
                        guard key.allSatisfy({ $0 < 0x80 }) || String(validating: key, as: UTF8.self) != nil else {
                            throw corrupt("invalid UTF-8 in a map key")
                        }
                    }
                } else if started {
                    return (pos, index)
                }
                started = true
                guard stack.count < maxDepth else { throw corrupt("nesting too deep") }
                guard let tag = CompactTag(rawValue: try byte()) else {
                    // The same message as tag(at:); an end of data is reported by byte().
                    throw corrupt("unknown tag")
                }
                switch tag {
                case .null, .falseValue, .trueValue: break
                case .int, .uint: _ = try varint()
                case .double:
                    guard bytes.count - pos >= 8 else { throw corrupt("truncated double") }
                    pos += 8
                case .string: _ = try string()
                case .array, .map:
                    let start = pos - 1
                    let n = try varint()
                    let left = UInt64(bytes.count - pos)
                    // Each item takes at least one byte; each entry a key length and a value.
                    guard tag == .array ? n <= left : n <= left / 2 else {
                        throw corrupt(tag == .array ? "array claims more items than bytes remain"
                                                    : "map claims more entries than bytes remain")
                    }
                    let k = index.count
                    index.append(Container(start: UInt32(start), end: 0, next: 0))
                    if n == 0 {
                        index[k].end = UInt32(pos)
                        index[k].next = UInt32(index.count)
                    } else {
                        stack.append(Frame(remaining: n, isMap: tag == .map, container: k))
                    }
                }
            }
        }
    }
}

/// A map's entries with each key once, and a hash index over the keys when there are many.
/// A key repeated in a map is kept at its first entry; later entries with that key are ignored
/// (the rule of SECURITY.md §5.13, and what the decoder has always returned).
struct CompactMapEntries {
    struct Entry {
        var keyStart: UInt32
        var keyEnd: UInt32
        /// The preorder number of the first container at or after the value.
        var container: UInt32
        var key: Range<Int> { Int(keyStart)..<Int(keyEnd) }
        var value: CompactCursor { CompactCursor(offset: Int(keyEnd), container: Int(container)) }
    }

    let reader: CompactReader
    private(set) var entries: [Entry] = []
    /// Open addressing, linear probing: entry index + 1, or 0 for an empty slot.
    private var slots: [UInt32] = []

    init(reader: CompactReader, count: Int, first: CompactCursor) throws {
        self.reader = reader
        // `count` was checked against the bytes left, so these allocations are bounded by the input.
        entries.reserveCapacity(count)
        if count > CompactReader.indexedMapThreshold {
            var size = 16
            while size < count * 2 { size *= 2 }
            slots = [UInt32](repeating: 0, count: size)
        }
        var c = first
        for _ in 0..<count {
            var pos = c.offset
            let key = try reader.stringRange(&pos)
            let value = CompactCursor(offset: pos, container: c.container)
            if try !isRepeat(key) {
                entries.append(Entry(keyStart: UInt32(key.lowerBound), keyEnd: UInt32(key.upperBound),
                                     container: UInt32(value.container)))
            }
            c = try reader.after(value)
        }
    }

    /// Whether `key` is already an entry's key; if not, and the map is indexed, indexes it as
    /// the entry about to be appended.
    private mutating func isRepeat(_ key: Range<Int>) throws -> Bool {
        if slots.isEmpty {
            return entries.contains { reader.equals($0.key, key) }
        }
        let mask = slots.count - 1
        var i = reader.hash(key) & mask
        while slots[i] != 0 {
            if reader.equals(entries[Int(slots[i] - 1)].key, key) { return true }
            i = (i + 1) & mask
        }
        slots[i] = UInt32(entries.count + 1)
        return false
    }

    /// The value of `key` (UTF-8), or nil.
    func find(_ key: UnsafeBufferPointer<UInt8>) -> CompactCursor? {
        if slots.isEmpty {
            for e in entries where reader.equals(e.key, key) { return e.value }
            return nil
        }
        var h = Hasher()
        h.combine(bytes: UnsafeRawBufferPointer(key))
        let mask = slots.count - 1
        var i = h.finalize() & mask
        while slots[i] != 0 {
            let e = entries[Int(slots[i] - 1)]
            if reader.equals(e.key, key) { return e.value }
            i = (i + 1) & mask
        }
        return nil
    }

    /// The value of `key`, or nil.
    func find(_ key: String) -> CompactCursor? {
        var key = key
        return key.withUTF8 { find($0) }
    }
}
