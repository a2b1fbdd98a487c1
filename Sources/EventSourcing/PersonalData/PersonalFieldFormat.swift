#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import KeyManagement

/// The stored form of a ``Personal`` field (also in SECURITY.md, "Personal fields").
///
/// Inside the record's payload (compact or JSON, then compressed and sealed under the record's
/// key as any payload), a personal field is an object of its own:
///
///     sealed:   {"$pf": 1, "s": subject?, "k": keyVersion, "p": [path…], "c": base64(nonce | ciphertext | tag), "r": replacement?}
///     redacted: {"$pf": 1, "s": subject?, "x": true, "d": shreddedAt?, "r": replacement?}
///
/// - `$pf`: the format, 1.
/// - `s`: the data subject (key scope) when the field names one; absent for the record's own
///   key scope (the scope in the record's header).
/// - `k`: the version of the subject's data key that sealed the field.
/// - `p`: the field's coding path, one string per coding key (`["e", "placed", "customer"]`),
///   array items left out (so in both encodings a field has the same path).
/// - `c`: standard base64 (with padding) of the 12-byte nonce, the AES-256-GCM ciphertext and
///   the 16-byte tag. The plaintext is the field value's encoding in the record's payload
///   encoding (compact bytes, or JSON text).
/// - `r`: the declared replacement, in the payload's encoding like any value; absent for the
///   type's default. Under the record's key only, so it survives the shred.
/// - `x`, `d`: a field written after its subject's shred (a snapshot of a redacted state):
///   nothing sealed; `d` is the shred time in seconds since 1970 when known.
///
/// Associated data (all integers big-endian):
///
///     "ESPF" | 0x01 | kind ('E' event, 'S' snapshot) | originator id (16 bytes)
///     | originator version (8 bytes, two's complement) | encoding ('c' compact, 'j' JSON)
///     | u32 subject byte count | subject UTF-8 (the record's scope when `s` is absent)
///     | u32 key version | u32 path segment count | per segment: u32 byte count | UTF-8
enum PersonalFieldFormat {
    /// The `$pf` value this code writes and reads.
    static let version = 1
    /// The marker key's bytes, as both payload encodings hold them: a payload without them has
    /// no personal field, and decoding it costs nothing extra.
    static let marker: [UInt8] = Array("$pf".utf8)

    enum Key: String, CodingKey {
        case marker = "$pf", subject = "s", keyVersion = "k", path = "p", ciphertext = "c", replacement = "r"
        case redacted = "x", shreddedAt = "d"
    }

    /// Where a field sits: its record, and that record's payload encoding and key scope.
    struct Record: Sendable {
        var snapshot: Bool
        var originatorID: UUID
        var originatorVersion: Int
        var topic: String?
        var notificationID: Int64?
        /// The record's key scope, the subject of fields that name none; nil without a cipher.
        var scope: String?
        var encoding: Mapper.PayloadEncoding
    }

    static func associatedData(_ record: Record, subject: String, keyVersion: UInt32, path: [String]) -> [UInt8] {
        var aad: [UInt8] = [0x45, 0x53, 0x50, 0x46, 0x01, record.snapshot ? 0x53 : 0x45]
        let u = record.originatorID.uuid
        aad += [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
        append(UInt64(bitPattern: Int64(record.originatorVersion)), bytes: 8, to: &aad)
        aad.append(record.encoding == .compact ? 0x63 : 0x6A)
        appendString(subject, to: &aad)
        append(UInt64(keyVersion), bytes: 4, to: &aad)
        append(UInt64(UInt32(clamping: path.count)), bytes: 4, to: &aad)
        for segment in path { appendString(segment, to: &aad) }
        return aad
    }

    private static func appendString(_ s: String, to aad: inout [UInt8]) {
        // A segment over 4 GiB cannot be encoded in the first place; clamping keeps this total.
        append(UInt64(UInt32(clamping: s.utf8.count)), bytes: 4, to: &aad)
        aad += s.utf8
    }

    private static func append(_ v: UInt64, bytes: Int, to aad: inout [UInt8]) {
        for shift in stride(from: (bytes - 1) * 8, through: 0, by: -8) { aad.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    /// A field's path: its coding keys' string values, without the keys of array items
    /// (`JSONDecoder` names them `"Index 0"`, the compact codec not at all), so both encodings
    /// give a field the same path. Items of one array therefore share a path.
    static func path(_ codingPath: [any CodingKey]) -> [String] {
        var out: [String] = []
        out.reserveCapacity(codingPath.count)
        for key in codingPath {
            if let i = key.intValue, key.stringValue == "Index \(i)" { continue }
            out.append(key.stringValue)
        }
        return out
    }

    /// Whether `a`'s segments appear in `b` in order (compared by their exact bytes).
    static func isSubsequence(_ a: [String], of b: [String]) -> Bool {
        var i = 0
        for segment in b where i < a.count && ExactScope(segment) == ExactScope(a[i]) { i += 1 }
        return i == a.count
    }

    /// Whether `payload` may hold a personal field (it holds the marker key's bytes).
    static func mayContainFields(_ payload: [UInt8]) -> Bool {
        guard payload.count >= 3 else { return false }
        return payload.withUnsafeBufferPointer { p in
            // Every '$' is a candidate; memchr skips to each (vectorised), so a payload without
            // one costs a single scan.
            guard let base = p.baseAddress else { return false }
            var offset = 0
            let end = p.count - 2
            while offset < end {
                guard let hit = memchr(base + offset, 0x24, end - offset) else { return false }
                let i = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                if p[i + 1] == 0x70, p[i + 2] == 0x66 { return true }
                offset = i + 1
            }
            return false
        }
    }

    /// The value's plaintext encoding in the payload's format.
    static func encodeValue<V: Encodable>(_ value: V, _ encoding: Mapper.PayloadEncoding) throws -> [UInt8] {
        switch encoding {
        case .compact: return try CompactEncoder().encode(value)
        case .json: return Array(try Mapper.jsonEncoder.encode(value))
        }
    }

    static func decodeValue<V: Decodable>(_ type: V.Type, _ bytes: [UInt8], _ encoding: Mapper.PayloadEncoding) throws -> V {
        switch encoding {
        case .compact: return try CompactDecoder().decode(V.self, from: bytes)
        case .json: return try Mapper.jsonDecoder.decode(V.self, from: Data(bytes))
        }
    }
}

/// A scope and key version, compared by the scope's exact bytes.
struct FieldKeyID: Hashable, Sendable {
    var scope: ExactScope
    var version: UInt32
}

/// The subject keys a payload's personal fields need, fetched (async) before decoding it
/// (sync): an opened key, or the scope's shred.
struct PersonalFieldKeys: Sendable {
    enum Entry: Sendable {
        case key(DataKey)
        case shredded(Date?)
    }
    var entries: [FieldKeyID: Entry] = [:]
    /// The record's key scope (the subject of fields that name none).
    var recordScope: String?
}

/// The user-info key under which the mapper hands its sealer or opener to `Personal`.
extension CodingUserInfoKey {
    static let personalFields = CodingUserInfoKey(rawValue: "eventsourcing.personalFields")!
}
