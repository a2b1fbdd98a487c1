import Foundation
import KeyManagement

/// The mapper's step of encrypting a store written without a cipher
/// (``Application/encryptPlaintextRecords(options:progress:)``): an unencrypted record sealed,
/// as it is, under a key scope's data key.
extension Mapper {
    /// `stored`, an unencrypted event or snapshot, sealed under `key` at the same coordinates:
    /// its payload is kept byte for byte (compressed or not, compact or JSON, as it was written),
    /// with a header that names `key`'s scope and version and a fresh nonce, and the associated
    /// data of its own coordinates, so it reads exactly as if it had been written encrypted.
    ///
    /// The payload is checked first, so that sealing never authenticates bytes no mapper wrote:
    /// it must decompress (when its header says it is compressed) and parse in its encoding, and
    /// it must hold no personal-field container (a mapper without a cipher refuses to write
    /// personal fields, so one in an unencrypted record was not written by this library).
    /// - Returns: the sealed record, stamped with `key`'s scope; nil when `stored` is encrypted
    ///   already (it is left as it is).
    /// - Throws: ``EventSourcingError`` naming the record: `.integrityFailure` for a header that
    ///   does not parse, an event where a snapshot belongs (or the reverse), a compressed payload
    ///   that does not decompress, or a personal-field container; `.decodingFailed` for a payload
    ///   that does not parse; `.recorderFailure` if the cipher fails.
    package func sealPlaintext(_ stored: StoredEvent, snapshot: Bool, key: DataKey,
                               notificationID: Int64?) throws(EventSourcingError) -> StoredEvent? {
        let state = stored.state
        let header: StateHeader
        let bodyOffset: Int
        switch StateHeader.parse(state) {
        case .success(let (h, o)): (header, bodyOffset) = (h, o)
        case .failure(let f):
            throw record(.integrityFailure, "stored state has an invalid header (\(f)); the record was left as it is", stored, notificationID)
        }
        guard !header.flags.contains(.encrypted) else { return nil }
        guard header.flags.contains(.snapshot) == snapshot else {
            throw record(.integrityFailure, snapshot ? "record is an event, not a snapshot" : "record is a snapshot, not an event",
                         stored, notificationID)
        }
        let body = Array(state[bodyOffset...])
        var payload = body
        if header.flags.contains(.compressed) {
            payload = try decompressed(body, stored, notificationID, corrupt: "compressed payload is corrupt; the record was left as it is")
        }
        let encoding: PayloadEncoding = header.flags.contains(.compact) ? .compact : .json
        switch encoding {
        case .compact:
            do { _ = try CompactJSON.text(from: payload) } catch {
                throw record(.decodingFailed, "compact payload is malformed: \(Self.describe(error)); the record was left as it is",
                             stored, notificationID)
            }
        case .json:
            guard (try? JSONSerialization.jsonObject(with: Data(payload))) is [String: Any] else {
                throw record(.decodingFailed, "payload is not a JSON object; the record was left as it is", stored, notificationID)
            }
        }
        if !Self.sealedFieldObjects(in: Payload(bytes: payload, encoding: encoding)).isEmpty {
            throw record(.integrityFailure,
                         "an unencrypted record holds a personal-field container, which a mapper without a cipher never writes; "
                         + "the record was left as it is", stored, notificationID)
        }
        let flags = header.flags.intersection([.compressed, .compact, .snapshot])
        let sealed: [UInt8]
        do {
            sealed = try RecordFormat.seal(body, flags: flags, key: key,
                                           at: .init(snapshot: snapshot, originatorID: stored.originatorID,
                                                     originatorVersion: stored.originatorVersion, topic: stored.topic))
        } catch {
            throw EventSourcingError(.recorderFailure, "encryption failed (\(error.code))", originatorID: stored.originatorID,
                                     originatorVersion: stored.originatorVersion, topic: stored.topic,
                                     notificationID: notificationID, keyScope: key.scope)
        }
        return StoredEvent(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion, topic: stored.topic,
                           state: sealed, keyScope: key.scope)
    }

    /// The scope an encrypted record's authenticated header names (nil: unencrypted, or a header
    /// that does not parse).
    package static func sealedScope(of state: [UInt8]) -> String? {
        guard case .success(let (h, _)) = StateHeader.parse(state), h.flags.contains(.encrypted) else { return nil }
        return h.keyScope
    }
}
