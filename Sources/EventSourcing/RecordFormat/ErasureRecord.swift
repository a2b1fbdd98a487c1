import Foundation
import KeyManagement

/// The record a shred leaves in the notification log, so every reader that follows the log
/// (a projection, a process application, another process) learns of the erasure in log order.
///
/// It is the one stored event that is never encrypted, and it holds no personal data: only the
/// erased key scope (stored in plaintext anyway, in the tombstone and in every record header) and
/// the time of the shred. Its coordinates are fixed by the scope:
///
/// - topic: ``topic`` (`"eventsourcing.erasure/1"`), reserved: no aggregate may use it;
/// - originator id: ``originatorID(forKeyScope:)``, a version-8 UUID made of the first 16 bytes
///   of SHA-256(`"eventsourcing.erasure/1\0"` || scope's UTF-8 bytes), with the RFC 9562
///   version and variant bits set. Aggregate ids are random version-4 UUIDs, so an erasure
///   record never shares an aggregate's id, and each scope has exactly one erasure id;
/// - originator version: 1. A second erasure record for the same scope (a repeated shred, two
///   racing shreds, a retry after a crash) would reuse the same `(originator id, version)`,
///   which every recorder refuses: one scope, at most one erasure record.
///
/// `state` is a plain (unencrypted, uncompressed, JSON) record in the record format: the 4-byte
/// header `E5 53 01 00`, then exactly the JSON text
/// `{"keyScope":"<scope>","shreddedAt":<seconds since 1970>}` with no white space, the scope
/// escaping only `"` and `\` (a scope has no control characters), and the seconds written as
/// Swift writes a `Double` (the shortest text that reads back as the same number). The decoder
/// is strict: it accepts exactly what the encoder writes, at most ``maxStateLength`` bytes.
public struct ErasureRecord: Sendable, Hashable {
    /// The reserved topic of erasure records.
    public static let topic = "eventsourcing.erasure/1"
    /// The originator version of every erasure record.
    public static let originatorVersion = 1
    /// The longest `state` an erasure record can have: the header, the JSON frame, a scope of
    /// 255 bytes all escaped, and a time.
    public static let maxStateLength = 4 + 2 * KeyScope.maxLength + 64

    static let header: [UInt8] = StateHeader.magic + [StateHeader.formatVersion, 0]
    private static let scopeKey = Array(#"{"keyScope":""#.utf8)
    private static let timeKey = Array(#"","shreddedAt":"#.utf8)

    /// The erased key scope.
    public var keyScope: String
    /// When it was shredded (the tombstone's time).
    public var shreddedAt: Date

    /// An erasure record for `keyScope`, shredded at `shreddedAt`.
    public init(keyScope: String, shreddedAt: Date) {
        self.keyScope = keyScope
        self.shreddedAt = shreddedAt
    }

    /// Whether `topic` is the reserved erasure topic (the record may still be malformed:
    /// ``init(decoding:notificationID:)`` checks the rest).
    public static func isErasure(topic: String) -> Bool { topic == ErasureRecord.topic }

    /// The originator id of `keyScope`'s erasure record (see the type's documentation).
    /// - Throws: ``EventSourcingError/Code/recorderFailure`` if the digest cannot be computed
    ///   (out of memory).
    public static func originatorID(forKeyScope keyScope: String) throws(EventSourcingError) -> UUID {
        let d = Digest.sha256(Array((topic + "\0").utf8) + Array(keyScope.utf8))
        guard d.count >= 16 else {
            throw EventSourcingError(.recorderFailure, "SHA-256 failed computing the erasure record's id", keyScope: keyScope)
        }
        let b6 = d[6] & 0x0F | 0x80   // version 8
        let b8 = d[8] & 0x3F | 0x80   // RFC 9562 variant
        return UUID(uuid: (d[0], d[1], d[2], d[3], d[4], d[5], b6, d[7], b8, d[9], d[10], d[11], d[12], d[13], d[14], d[15]))
    }

    /// The stored event to insert (``StoredEvent/keyScope`` nil: it is not sealed).
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for a scope that is not a valid key
    ///   scope id; as ``originatorID(forKeyScope:)``.
    public func storedEvent() throws(EventSourcingError) -> StoredEvent {
        do { try KeyScope.validate(keyScope) } catch {
            throw EventSourcingError(.invalidArgument, "not a key scope id: \(error.message)")
        }
        guard shreddedAt.timeIntervalSince1970.isFinite else {
            throw EventSourcingError(.invalidArgument, "the shred time is not a finite date", keyScope: keyScope)
        }
        return StoredEvent(originatorID: try ErasureRecord.originatorID(forKeyScope: keyScope),
                           originatorVersion: ErasureRecord.originatorVersion, topic: ErasureRecord.topic,
                           state: state, keyScope: nil)
    }

    /// The `state` bytes (see the type's documentation).
    var state: [UInt8] { ErasureRecord.state(keyScope: keyScope, seconds: shreddedAt.timeIntervalSince1970) }

    private static func state(keyScope: String, seconds: Double) -> [UInt8] {
        var out = ErasureRecord.header + ErasureRecord.scopeKey
        for b in keyScope.utf8 {
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { out.append(UInt8(ascii: "\\")) }
            out.append(b)
        }
        out += ErasureRecord.timeKey
        out += Array("\(seconds)".utf8)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Whether `stored` is exactly an erasure record this library writes (topic, coordinates and
    /// state); never throws.
    public static func matches(_ stored: StoredEvent) -> Bool {
        (try? ErasureRecord(decoding: stored, notificationID: nil)) != nil
    }

    /// Decodes an erasure record, strictly.
    /// - Throws: ``EventSourcingError`` naming the record (and `notificationID`):
    ///   `.invalidArgument` if its topic is not ``topic``; `.decodingFailed` if its state is not
    ///   exactly the format (too long, another header, bad JSON, an invalid scope, a time that is
    ///   not a finite number); `.databaseCorrupt` if its originator id or version are not the
    ///   ones its scope fixes (a moved or forged row).
    public init(decoding stored: StoredEvent, notificationID: Int64?) throws(EventSourcingError) {
        func fail(_ code: EventSourcingError.Code, _ message: String) -> EventSourcingError {
            EventSourcingError(code, message, originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                               topic: stored.topic, notificationID: notificationID)
        }
        guard ErasureRecord.isErasure(topic: stored.topic) else {
            throw fail(.invalidArgument, "not an erasure record (its topic is not \(ErasureRecord.topic))")
        }
        let s = stored.state
        guard s.count <= ErasureRecord.maxStateLength else {
            throw fail(.decodingFailed, "malformed erasure record: its state is \(s.count) bytes, more than \(ErasureRecord.maxStateLength)")
        }
        guard s.starts(with: ErasureRecord.header + ErasureRecord.scopeKey) else {
            throw fail(.decodingFailed, "malformed erasure record: it does not start with the plain header and {\"keyScope\":\"")
        }
        var i = ErasureRecord.header.count + ErasureRecord.scopeKey.count
        var scope: [UInt8] = []
        var closed = false
        while i < s.count {
            let b = s[i]
            if b == UInt8(ascii: "\"") { closed = true; break }
            if b == UInt8(ascii: "\\") {
                guard i + 1 < s.count, s[i + 1] == UInt8(ascii: "\"") || s[i + 1] == UInt8(ascii: "\\") else {
                    throw fail(.decodingFailed, "malformed erasure record: an escape other than \\\" or \\\\ in the key scope")
                }
                scope.append(s[i + 1])
                i += 2
                continue
            }
            scope.append(b)
            i += 1
        }
        guard closed, s[i...].starts(with: ErasureRecord.timeKey), s.last == UInt8(ascii: "}") else {
            throw fail(.decodingFailed, "malformed erasure record: not {\"keyScope\":…,\"shreddedAt\":…}")
        }
        guard let text = String(validating: scope, as: UTF8.self), (try? KeyScope.validate(text)) != nil else {
            throw fail(.decodingFailed, "malformed erasure record: its key scope is not a valid key scope id")
        }
        let timeStart = i + ErasureRecord.timeKey.count
        guard timeStart < s.count - 1, let timeText = String(validating: s[timeStart..<(s.count - 1)], as: UTF8.self),
              let seconds = Double(timeText), seconds.isFinite, "\(seconds)" == timeText else {
            throw fail(.decodingFailed, "malformed erasure record: its shreddedAt is not a number of seconds as this library writes it")
        }
        guard ErasureRecord.state(keyScope: text, seconds: seconds) == s else {
            throw fail(.decodingFailed, "malformed erasure record: not in the one form this library writes")
        }
        guard stored.originatorVersion == ErasureRecord.originatorVersion,
              let id = try? ErasureRecord.originatorID(forKeyScope: text), id == stored.originatorID else {
            throw fail(.databaseCorrupt,
                       "erasure record at the wrong coordinates: its originator id and version are not the ones its key scope fixes")
        }
        self.init(keyScope: text, shreddedAt: Date(timeIntervalSince1970: seconds))
    }
}
