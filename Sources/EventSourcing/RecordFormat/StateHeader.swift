import Foundation

/// The header at the start of every stored `state` (byte layout in SECURITY.md).
///
/// ```
/// 0      magic 0xE5
/// 1      magic 0x53 ("S")
/// 2      format version (1)
/// 3      flags: bit 0 compressed, bit 1 encrypted, bit 2 snapshot, bit 3 UUID scope,
///        bit 4 compact payload (else JSON); other bits 0
/// if encrypted and bit 3 is clear:
/// 4      scope length L (1…255)
/// 5…     scope id, L bytes UTF-8
/// if encrypted and bit 3 is set (the scope is a UUID in canonical lowercase text form):
/// 4…19   the UUID's 16 bytes
/// then, if encrypted:
/// +4     data-key version, u32 big-endian
/// +12    nonce
/// ```
/// An encrypted body is `ciphertext || tag(16)`; otherwise the body is the (maybe compressed) payload.
public struct StateHeader: Sendable, Hashable {
    /// The two magic bytes.
    public static let magic: [UInt8] = [0xE5, 0x53]
    /// The format version this library writes.
    public static let formatVersion: UInt8 = 1
    /// The longest topic, in UTF-8 bytes (its length is a u16 in the associated data).
    public static let maxTopicLength = 0xFFFF

    /// Flag bits.
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The payload was zlib-compressed before encryption.
        public static let compressed = Flags(rawValue: 1)
        /// The body is AES-256-GCM ciphertext and tag.
        public static let encrypted = Flags(rawValue: 2)
        /// The record is a snapshot, not an event.
        public static let snapshot = Flags(rawValue: 4)
        /// The key scope is a UUID stored as 16 raw bytes instead of 36 characters.
        public static let uuidScope = Flags(rawValue: 8)
        /// The payload is in the compact binary Codable format, not JSON.
        public static let compact = Flags(rawValue: 16)
        static let known: Flags = [.compressed, .encrypted, .snapshot, .uuidScope, .compact]
    }

    /// The flags.
    public var flags: Flags
    /// The key scope (encrypted records only).
    public var keyScope: String?
    /// The data-key version (encrypted records only).
    public var keyVersion: UInt32
    /// The nonce (encrypted records only).
    public var nonce: [UInt8]

    /// Creates a header. A canonical lowercase UUID scope is written in its 16-byte form.
    public init(flags: Flags, keyScope: String?, keyVersion: UInt32, nonce: [UInt8]) {
        self.flags = flags
        self.keyScope = keyScope
        self.keyVersion = keyVersion
        self.nonce = nonce
    }

    /// The encoded header bytes.
    public var bytes: [UInt8] {
        var f = flags
        f.remove(.uuidScope)
        var compact: uuid_t?
        if f.contains(.encrypted), let keyScope, let u = StateHeader.canonicalUUID(keyScope) {
            f.insert(.uuidScope)
            compact = u
        }
        var b = StateHeader.magic + [StateHeader.formatVersion, f.rawValue]
        b.reserveCapacity(4 + 1 + 36 + 4 + 12)
        if f.contains(.encrypted), let keyScope {
            if let u = compact {
                b += [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
            } else {
                let s = Array(keyScope.utf8)
                b.append(UInt8(truncatingIfNeeded: s.count))
                b += s
            }
            b += [UInt8(keyVersion >> 24 & 0xFF), UInt8(keyVersion >> 16 & 0xFF),
                  UInt8(keyVersion >> 8 & 0xFF), UInt8(keyVersion & 0xFF)]
            b += nonce
        }
        return b
    }

    /// Why a header could not be parsed.
    public enum ParseFailure: Error, Sendable {
        case truncated, badMagic, unsupportedVersion(UInt8), unknownFlags(UInt8), badScope
    }

    /// Parses the header at the start of `state`; returns it and the offset of the body.
    public static func parse(_ state: [UInt8]) -> Result<(StateHeader, Int), ParseFailure> {
        guard state.count >= 4 else { return .failure(.truncated) }
        guard state[0] == magic[0], state[1] == magic[1] else { return .failure(.badMagic) }
        guard state[2] == formatVersion else { return .failure(.unsupportedVersion(state[2])) }
        let flags = Flags(rawValue: state[3])
        guard Flags.known.isSuperset(of: flags) else { return .failure(.unknownFlags(state[3])) }
        guard flags.contains(.encrypted) else {
            return .success((StateHeader(flags: flags, keyScope: nil, keyVersion: 0, nonce: []), 4))
        }
        let scope: String
        let v: Int
        if flags.contains(.uuidScope) {
            guard state.count >= 4 + 16 + 4 + 12 else { return .failure(.truncated) }
            scope = StateHeader.lowercaseUUIDString(state[4..<20])
            v = 20
        } else {
            guard state.count >= 5 else { return .failure(.truncated) }
            let l = Int(state[4])
            guard l > 0 else { return .failure(.badScope) }
            guard state.count >= 5 + l + 4 + 12 else { return .failure(.truncated) }
            // Scope ids have no control characters (KeyScope.validate); a header that claims one is corrupt.
            guard !state[5..<(5 + l)].contains(where: { $0 < 0x20 || $0 == 0x7F }),
                  let s = String(validating: state[5..<(5 + l)], as: UTF8.self) else { return .failure(.badScope) }
            scope = s
            v = 5 + l
        }
        let end = v + 4 + 12
        let version = UInt32(state[v]) << 24 | UInt32(state[v + 1]) << 16 | UInt32(state[v + 2]) << 8 | UInt32(state[v + 3])
        let nonce = Array(state[(v + 4)..<end])
        return .success((StateHeader(flags: flags, keyScope: scope, keyVersion: version, nonce: nonce), end))
    }

    /// The 16 bytes of `scope` if it is a UUID in canonical lowercase form (which then round-trips).
    static func canonicalUUID(_ scope: String) -> uuid_t? {
        // Hand-rolled: Foundation's UUID parsing and formatting go through scanf/printf, which
        // showed up in every record's encode and decode.
        var bytes = [UInt8](repeating: 0, count: 16)
        var n = 0
        var i = 0
        var high: UInt8? = nil
        for c in scope.utf8 {
            defer { i += 1 }
            if i == 8 || i == 13 || i == 18 || i == 23 {
                guard c == UInt8(ascii: "-") else { return nil }
                continue
            }
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            default: return nil   // uppercase is not canonical: it would not round-trip
            }
            guard n < 16 else { return nil }
            if let h = high {
                bytes[n] = h << 4 | v
                n += 1
                high = nil
            } else {
                high = v
            }
        }
        guard i == 36, n == 16 else { return nil }
        return (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15])
    }

    /// The canonical lowercase text form of 16 UUID bytes.
    static func lowercaseUUIDString(_ b: ArraySlice<UInt8>) -> String {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        return String(unsafeUninitializedCapacity: 36) { out in
            var o = 0
            for (k, byte) in b.enumerated() {
                if k == 4 || k == 6 || k == 8 || k == 10 {
                    out[o] = UInt8(ascii: "-")
                    o += 1
                }
                out[o] = hex[Int(byte >> 4)]
                out[o + 1] = hex[Int(byte & 0x0F)]
                o += 2
            }
            return o
        }
    }

    /// The key scope of an encrypted record, without decrypting; nil for anything else.
    public static func peekKeyScope(_ state: [UInt8]) -> String? {
        if case .success(let (h, _)) = parse(state) { return h.keyScope }
        return nil
    }

    /// Associated data for a record: label ("ESEV" event / "ESSN" snapshot) || header ||
    /// originator id (16 bytes) || originator version (u64 BE) || topic length (u16 BE) || topic.
    static func associatedData(header: [UInt8], snapshot: Bool, originatorID: UUID,
                               originatorVersion: Int, topic: String) -> [UInt8] {
        var aad: [UInt8] = []
        let t = Array(topic.utf8)
        aad.reserveCapacity(4 + header.count + 16 + 8 + 2 + t.count)
        aad += snapshot ? [0x45, 0x53, 0x53, 0x4E] : [0x45, 0x53, 0x45, 0x56]
        aad += header
        let u = originatorID.uuid
        aad += [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
        let v = UInt64(bitPattern: Int64(originatorVersion))
        for shift in stride(from: 56, through: 0, by: -8) { aad.append(UInt8(v >> UInt64(shift) & 0xFF)) }
        let tl = min(t.count, 0xFFFF)
        aad += [UInt8(tl >> 8 & 0xFF), UInt8(tl & 0xFF)]
        aad += t
        return aad
    }
}
