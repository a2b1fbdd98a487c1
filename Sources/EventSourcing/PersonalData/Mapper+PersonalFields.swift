import Foundation
import KeyManagement

/// One personal field of a stored record, as ``Mapper/personalFields(of:snapshot:notificationID:)``
/// finds it: for exports (a subject's fields in other subjects' aggregates) and verification
/// (a redacted field is not a failure).
public struct PersonalFieldReading: Sendable {
    /// What opening the field gave.
    public enum Outcome: Sendable {
        /// The field opened: its value as JSON text (converted from the compact encoding if need be).
        case value([UInt8])
        /// The subject was shredded (or the field was written redacted): no value.
        case redacted(Redaction)
        /// The field does not open (tampered, moved, missing key): the error names the record and path.
        case failed(EventSourcingError)
    }

    /// The field's coding path as stored (`p`), or where it sits in the payload (array items
    /// left out, as in `p`) for a field written redacted, which stores none.
    public var path: [String]
    /// The data subject whose key seals it (the record's own key scope when it names none).
    public var subject: String
    /// Whether the field names its subject (`s`), rather than using the record's key scope.
    public var namesSubject: Bool
    /// The subject key version that sealed it; nil for a field written redacted.
    public var keyVersion: UInt32?
    /// What opening it gave.
    public var outcome: Outcome
}

extension Mapper {
    /// The payload's personal fields: each sealed-field object of the payload tree with the
    /// path where it sits. Empty when the payload holds no marker or does not parse (decoding
    /// reports a malformed payload).
    static func sealedFieldObjects(in payload: Payload) -> [(at: [String], object: [String: JSONValue])] {
        guard PersonalFieldFormat.mayContainFields(payload.bytes) else { return [] }
        let tree: JSONValue
        do {
            switch payload.encoding {
            case .compact:
                let reader = try CompactReader(payload.bytes)
                tree = try CompactJSON.value(reader, reader.root, codingPath: [])
            case .json:
                tree = try jsonDecoder.decode(JSONValue.self, from: Data(payload.bytes))
            }
        } catch { return [] }
        var found: [(at: [String], object: [String: JSONValue])] = []
        var path: [String] = []
        collect(tree, &path, &found)
        return found
    }

    private static func collect(_ v: JSONValue, _ path: inout [String], _ found: inout [(at: [String], object: [String: JSONValue])]) {
        switch v {
        case .object(let o):
            if o[PersonalFieldFormat.Key.marker.rawValue] != nil {
                found.append((path, o))
                return
            }
            for (k, child) in o {
                path.append(k)
                collect(child, &path, &found)
                path.removeLast()
            }
        case .array(let items):
            // Array items are left out of paths, as in stored paths (`p`).
            for child in items { collect(child, &path, &found) }
        default: return
        }
    }

    /// Fetches the subject keys `payload`'s personal fields need (a shredded subject's fields
    /// become redacted). Records without personal fields: one byte search, nothing else.
    /// - Throws: ``EventSourcingError`` naming the record: `.keyUnavailable`, `.integrityFailure`
    ///   for a key version that never existed, `.recorderFailure`.
    func fetchFieldKeys(for payload: inout Payload, stored: StoredEvent, recordScope: String?,
                        notificationID: Int64?) async throws {
        let objects = Self.sealedFieldObjects(in: payload)
        guard !objects.isEmpty else { return }
        var keys = PersonalFieldKeys(recordScope: recordScope)
        for (_, o) in objects {
            guard o[PersonalFieldFormat.Key.redacted.rawValue] == nil,
                  case .int(let k)? = o[PersonalFieldFormat.Key.keyVersion.rawValue], let version = UInt32(exactly: k) else { continue }
            let subject: String
            if case .string(let s)? = o[PersonalFieldFormat.Key.subject.rawValue] { subject = s } else {
                guard let recordScope else { continue }
                subject = recordScope
            }
            try await addFieldKey(FieldKeyID(scope: ExactScope(subject), version: version), to: &keys, stored: stored,
                                  notificationID: notificationID)
        }
        payload.personalKeys = keys
    }

    func addFieldKey(_ id: FieldKeyID, to keys: inout PersonalFieldKeys, stored: StoredEvent, notificationID: Int64?) async throws {
        guard keys.entries[id] == nil else { return }
        guard let cipher else {
            throw record(.keyUnavailable, "the record has personal fields but the mapper has no keyring", stored, notificationID)
        }
        do {
            keys.entries[id] = .key(try await cipher.openingKey(scope: id.scope.scope, version: id.version))
        } catch {
            var e = Self.translate(error, stored: stored, scope: id.scope.scope)
            e.notificationID = notificationID
            if (error as? KeyManagementError)?.code == .keyNotFound {
                e.message = "a personal field names data key v\(id.version) of its subject, which does not exist: tampered or corrupt, or keys lost"
            }
            guard e.code == .shredded else { throw e }
            keys.entries[id] = .shredded(e.shreddedAt)
        }
    }

    /// Decodes `payload` with its personal fields opened; a field naming a key the scan did not
    /// fetch (an upcaster that wrote one) has it fetched and the payload decoded again.
    func decodingFields<T>(_ payload: Payload, stored: StoredEvent, notificationID: Int64?,
                           _ body: (Payload) throws -> T) async throws -> T {
        var payload = payload
        for _ in 0..<8 {
            do { return try body(payload) } catch let need as PersonalFieldNeedsKeys {
                var keys = payload.personalKeys ?? PersonalFieldKeys(recordScope: RecordFormat.keyScope(of: stored.state))
                for k in need.keys {
                    try await addFieldKey(FieldKeyID(scope: ExactScope(k.scope), version: k.version), to: &keys,
                                          stored: stored, notificationID: notificationID)
                }
                payload.personalKeys = keys
            }
        }
        throw record(.decodingFailed, "personal fields kept naming keys not fetched", stored, notificationID)
    }

    /// The personal fields of a stored record, each opened (or redacted, or failed), for
    /// exports and verification. The record itself must open.
    /// - Throws: as ``openPayload(_:snapshot:notificationID:)``.
    public func personalFields(of stored: StoredEvent, snapshot: Bool, notificationID: Int64? = nil) async throws -> [PersonalFieldReading] {
        let payload = try await openPayload(stored, snapshot: snapshot, notificationID: notificationID)
        let objects = Self.sealedFieldObjects(in: payload)
        guard !objects.isEmpty else { return [] }
        let recordScope = payload.personalKeys?.recordScope ?? RecordFormat.keyScope(of: stored.state)
        let rec = PersonalFieldFormat.Record(snapshot: snapshot, originatorID: stored.originatorID,
                                             originatorVersion: stored.originatorVersion, topic: stored.topic,
                                             notificationID: notificationID, scope: recordScope, encoding: payload.encoding)
        let opener = PersonalFieldOpener(record: rec, keys: payload.personalKeys ?? PersonalFieldKeys(recordScope: recordScope))
        var out: [PersonalFieldReading] = []
        for (at, o) in objects {
            out.append(opener.read(o, at: at))
        }
        return out
    }
}

extension Mapper {
    /// A sealer for one batch of records sealed under `writeKey` (nil: no cipher, personal
    /// fields refused).
    func fieldSealer(snapshot: Bool, writeKey: SealingKey?) -> PersonalFieldSealer {
        let sealer = PersonalFieldSealer(record: .init(snapshot: snapshot, originatorID: UUID.redactedValue,
                                                       originatorVersion: 0, topic: nil, notificationID: nil,
                                                       scope: writeKey?.key.scope, encoding: configuration.encoding),
                                         refuse: cipher == nil)
        if let writeKey { sealer.keys[ExactScope(writeKey.key.scope)] = writeKey.key }
        return sealer
    }

    /// Runs `encode` (a record's serialisation through `sealer`); when it met subjects without
    /// a key, fetches their current keys (minting a new subject's first key, added to
    /// `newKeys` to persist with the records) and runs it again.
    /// - Throws: ``EventSourcingError`` `.shredded` naming the subject's scope and the record,
    ///   `.keyUnavailable`; what `encode` throws.
    func sealingFields<T: Encodable>(_ value: T, _ encoder: RecordEncoder, _ sealer: PersonalFieldSealer,
                                     newKeys: inout [SealingKey]) async throws -> [UInt8] {
        sealer.paths = nil
        for _ in 0..<5 {
            sealer.missing = []
            sealer.fields = 0
            sealer.needsPaths = false
            let bytes = try encoder.encode(value)
            if sealer.needsPaths {
                sealer.collecting = true
                sealer.collected = []
                defer { sealer.collecting = false }
                _ = try CompactEncoder(userInfo: [.personalFields: sealer]).encode(value)
                sealer.paths = sealer.collected
                continue
            }
            guard !sealer.missing.isEmpty else { return bytes }
            for subject in sealer.missing {
                let key: SealingKey
                do {
                    guard let k = try await sealingKey(for: subject, likelyNew: false) else {
                        throw sealer.error(.plaintextRejected, "a personal field needs a cipher to be sealed")
                    }
                    key = k
                } catch var e as EventSourcingError {
                    e.originatorID = sealer.record.originatorID
                    e.originatorVersion = sealer.record.originatorVersion
                    e.topic = sealer.record.topic
                    if e.code == .shredded {
                        e.message = "a personal field names a crypto-shredded data subject: it cannot be written"
                    }
                    throw e
                }
                sealer.keys[ExactScope(subject)] = key.key
                if key.minted != nil { newKeys.append(key) }
            }
        }
        throw sealer.error(.invalidArgument, "the record's personal fields kept naming subjects without keys")
    }
}
