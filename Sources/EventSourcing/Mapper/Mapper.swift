import Foundation
import KeyManagement

/// Turns domain events and snapshots into stored records and back, through the transcoder
/// pipeline: Codable (JSON) → compressor (zlib) → cipher (AES-256-GCM under the key scope's
/// data key). Nothing above the mapper sees bytes or keys; nothing below it sees plaintext.
public final class Mapper: Sendable {
    /// Whether a mapper with a keyring reads records without encryption. (A mapper without a
    /// keyring writes and reads only such records.)
    public enum PlaintextReads: Sendable {
        /// Read them: for a migration, while a store written before encryption was turned on
        /// still holds plaintext records.
        case allowed
        /// Refuse them with ``EventSourcingError/Code/plaintextRejected`` (the default): this
        /// stops anyone with write access from injecting unauthenticated records, and personal
        /// data written in the clear by mistake from being read as if it were protected.
        case rejected
    }

    /// How payloads are serialised (the Codable stage).
    public enum PayloadEncoding: Sendable {
        /// The compact binary Codable format (the default): several times faster to decode than JSON.
        case compact
        /// JSON: readable by any tool once decrypted, slower.
        case json
    }

    /// A decrypted, decompressed payload and how it is encoded.
    public struct Payload: Sendable {
        /// The payload bytes.
        public var bytes: [UInt8]
        /// Their encoding.
        public var encoding: PayloadEncoding
    }

    /// Pipeline settings.
    public struct Options: Sendable {
        /// The Codable stage's format for new records; records of either format are always read.
        public var encoding: PayloadEncoding
        /// The compression stage, or nil for none.
        public var compressor: (any Compressor)?
        /// Topics never compressed: events that put attacker-chosen text next to secrets, where
        /// the compressed length could leak the secret (see SECURITY.md).
        public var uncompressedTopics: Set<String>
        /// Whether a mapper with a keyring reads unencrypted records.
        public var plaintextReads: PlaintextReads

        /// Creates options; by default the compact encoding, zlib, every topic compressed, and
        /// (with a keyring) unencrypted records refused.
        public init(encoding: PayloadEncoding = .compact, compressor: (any Compressor)? = ZlibCompressor(),
                    uncompressedTopics: Set<String> = [], plaintextReads: PlaintextReads = .rejected) {
            self.encoding = encoding
            self.compressor = compressor
            self.uncompressedTopics = uncompressedTopics
            self.plaintextReads = plaintextReads
        }
    }

    /// Events encoded for one save, with any data keys minted for them.
    public struct EncodedBatch: Sendable {
        /// The records to insert.
        public var events: [StoredEvent]
        /// Keys minted for these records that are not stored yet.
        public var newKeys: [Keyring.WriteKey]
    }

    // Shared: both are thread-safe, and their option storage is never changed after creation.
    static let jsonEncoder = JSONEncoder()
    static let jsonDecoder = JSONDecoder()

    /// The cipher's key source; nil writes plaintext (with compression, if any).
    public let keyring: Keyring?
    /// The pipeline settings.
    public let options: Options

    /// Creates a mapper.
    public init(keyring: Keyring? = nil, options: Options = Options()) {
        self.keyring = keyring
        self.options = options
    }

    // MARK: Events

    /// Encodes events of one aggregate under `keyScope`'s current data key.
    /// - Parameter newScope: the scope was only just created (see ``Keyring/writeKey(for:likelyNew:)``).
    /// - Throws: ``EventSourcingError`` with `.shredded` for a shredded scope, `.keyUnavailable`.
    public func encode<A: Aggregate>(_ events: [DomainEvent<A.Event>], of type: A.Type, keyScope: String,
                                     newScope: Bool = false) async throws -> EncodedBatch {
        var writeKey: Keyring.WriteKey?
        if let keyring, !events.isEmpty {
            do { writeKey = try await keyring.writeKey(for: keyScope, likelyNew: newScope) } catch {
                throw Self.translate(error, stored: nil, scope: keyScope)
            }
        }
        var out: [StoredEvent] = []
        out.reserveCapacity(events.count)
        for e in events {
            let topic = A.topic(of: e.event)
            guard topic.utf8.count > A.typeName.utf8.count + 1 else {
                throw EventSourcingError(.invalidArgument,
                    "no topic can be derived for \(A.typeName)'s event type \(A.Event.self): default topics are enum case "
                    + "names as Codable writes them; declare \(A.self).topicName(of:)",
                    originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            guard topic.utf8.count <= StateHeader.maxTopicLength else {
                throw EventSourcingError(.invalidArgument, "topic is longer than \(StateHeader.maxTopicLength) bytes",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            let json: [UInt8]
            do {
                json = try serialise(EventEnvelope<A>(v: A.eventSchemaVersion, t: e.timestamp.timeIntervalSince1970, e: e.event))
            } catch {
                throw EventSourcingError(.invalidArgument, "event could not be encoded: \(Self.describe(error))",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion, topic: topic)
            }
            let state = try seal(json, key: writeKey?.key, snapshot: false, originatorID: e.originatorID,
                                 originatorVersion: e.originatorVersion, topic: topic)
            out.append(StoredEvent(originatorID: e.originatorID, originatorVersion: e.originatorVersion, topic: topic, state: state))
        }
        let pending = writeKey.flatMap { $0.pending == nil ? nil : [$0] } ?? []
        return EncodedBatch(events: out, newKeys: pending)
    }

    /// Decodes a stored event of aggregate type `A`.
    /// - Throws: ``EventSourcingError`` with `.integrityFailure` (tampered or corrupt, names the
    ///   record), `.shredded`, `.keyUnavailable`, `.decodingFailed` (names the topic), `.plaintextRejected`.
    public func decode<A: Aggregate>(_ stored: StoredEvent, as type: A.Type, notificationID: Int64? = nil) async throws -> DomainEvent<A.Event> {
        try Self.checkTopic(stored, of: A.self, snapshot: false, notificationID: notificationID)
        let payload = try await openPayload(stored, snapshot: false, notificationID: notificationID)
        return try Self.decodeEvent(payload, as: type, stored: stored, notificationID: notificationID)
    }

    /// Decrypts and decompresses a stored record, returning its payload as JSON (converted
    /// from the compact encoding if need be), for tools such as exports and verification.
    /// - Throws: as ``decode(_:as:notificationID:)``; `.decodingFailed` if a compact payload is malformed.
    public func open(_ stored: StoredEvent, snapshot: Bool, notificationID: Int64? = nil) async throws -> [UInt8] {
        let payload = try await openPayload(stored, snapshot: snapshot, notificationID: notificationID)
        guard payload.encoding == .compact else { return payload.bytes }
        do {
            // Transcoded directly, without a tree: memory is the payload plus the JSON text.
            return try CompactJSON.text(from: payload.bytes)
        } catch {
            throw record(.decodingFailed, "compact payload is malformed: \(Self.describe(error))", stored, notificationID)
        }
    }

    /// Decrypts and decompresses a stored record, returning its payload in its own encoding.
    /// - Throws: as ``decode(_:as:notificationID:)``, except `.decodingFailed`.
    public func openPayload(_ stored: StoredEvent, snapshot: Bool, notificationID: Int64? = nil) async throws -> Payload {
        let state = stored.state
        let header: StateHeader
        let bodyOffset: Int
        switch StateHeader.parse(state) {
        case .success(let (h, o)): (header, bodyOffset) = (h, o)
        case .failure(let f):
            throw record(.integrityFailure, "stored state has an invalid header (\(f))", stored, notificationID)
        }
        guard header.flags.contains(.snapshot) == snapshot else {
            throw record(.integrityFailure, snapshot ? "record is an event, not a snapshot" : "record is a snapshot, not an event",
                         stored, notificationID)
        }
        var body: [UInt8]
        if header.flags.contains(.encrypted) {
            guard let keyring, let scope = header.keyScope else {
                throw record(.keyUnavailable, "record is encrypted but the mapper has no keyring", stored, notificationID)
            }
            let key: DataKey
            do { key = try await keyring.readKey(scope: scope, version: header.keyVersion) } catch {
                var e = Self.translate(error, stored: stored, scope: scope)
                e.notificationID = notificationID
                throw e
            }
            let aad = StateHeader.associatedData(header: Array(state[0..<bodyOffset]), snapshot: snapshot,
                                                 originatorID: stored.originatorID,
                                                 originatorVersion: stored.originatorVersion, topic: stored.topic)
            let opened: [UInt8]?
            do {
                opened = try AES256GCM.open(state, from: bodyOffset, key: key.material, nonce: header.nonce, aadParts: [aad])
            } catch {
                throw record(.integrityFailure, "record could not be decrypted (\(error.code))", stored, notificationID)
            }
            guard let opened else {
                throw record(.integrityFailure, "authentication tag does not match: record tampered, corrupt or moved",
                             stored, notificationID)
            }
            body = opened
        } else {
            guard keyring == nil || options.plaintextReads == .allowed else {
                throw record(.plaintextRejected,
                             "record is not encrypted; a mapper with a keyring refuses plaintext unless plaintextReads is .allowed (for a migration)",
                             stored, notificationID)
            }
            body = Array(state[bodyOffset...])
        }
        if header.flags.contains(.compressed) {
            let compressor = options.compressor ?? ZlibCompressor()
            do { body = try compressor.decompress(body) } catch {
                throw record(.integrityFailure, "compressed payload is corrupt", stored, notificationID)
            }
        }
        return Payload(bytes: body, encoding: header.flags.contains(.compact) ? .compact : .json)
    }

    static func decodeEvent<A: Aggregate>(_ payload: Payload, as type: A.Type, stored: StoredEvent,
                                         notificationID: Int64?) throws -> DomainEvent<A.Event> {
        do {
            let env = try deserialise(StoredEventEnvelope<A>.self, payload)
            let event = try env.e.value(currentVersion: A.eventSchemaVersion, encoding: payload.encoding, step: A.upcastEvent)
            return DomainEvent(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                               timestamp: Date(timeIntervalSince1970: env.t), event: event)
        } catch let e as EventSourcingError {
            var e = e
            e.originatorID = stored.originatorID
            e.originatorVersion = stored.originatorVersion
            e.topic = stored.topic
            e.notificationID = notificationID
            throw e
        } catch {
            throw EventSourcingError(.decodingFailed, "payload does not decode as \(A.typeName) event: \(Self.describe(error))",
                                     originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                     topic: stored.topic, notificationID: notificationID)
        }
    }

    // MARK: Snapshots

    /// Encodes a snapshot of `root` at its current version.
    public func encodeSnapshot<A: Aggregate>(_ root: AggregateRoot<A>) async throws -> (StoredEvent, Keyring.WriteKey?) {
        var writeKey: Keyring.WriteKey?
        if let keyring {
            do { writeKey = try await keyring.writeKey(for: root.keyScope) } catch {
                throw Self.translate(error, stored: nil, scope: root.keyScope)
            }
        }
        let json: [UInt8]
        do {
            json = try serialise(SnapshotEnvelope<A>(v: A.snapshotSchemaVersion, c: root.createdOn.timeIntervalSince1970,
                                                     m: root.modifiedOn.timeIntervalSince1970, s: root.state))
        } catch {
            throw EventSourcingError(.invalidArgument, "snapshot could not be encoded: \(Self.describe(error))",
                                     originatorID: root.id, originatorVersion: root.version)
        }
        let state = try seal(json, key: writeKey?.key, snapshot: true, originatorID: root.id,
                             originatorVersion: root.version, topic: A.snapshotTopic)
        let stored = StoredEvent(originatorID: root.id, originatorVersion: root.version, topic: A.snapshotTopic, state: state)
        return (stored, writeKey?.pending == nil ? nil : writeKey)
    }

    /// Decodes a snapshot record into a root.
    public func decodeSnapshot<A: Aggregate>(_ stored: StoredEvent, as type: A.Type) async throws -> AggregateRoot<A> {
        try Self.checkTopic(stored, of: A.self, snapshot: true, notificationID: nil)
        let payload = try await openPayload(stored, snapshot: true)
        do {
            let env = try Self.deserialise(StoredSnapshotEnvelope<A>.self, payload)
            let state = try env.s.value(currentVersion: A.snapshotSchemaVersion, encoding: payload.encoding, step: A.upcastSnapshot)
            return AggregateRoot(id: stored.originatorID, version: stored.originatorVersion,
                                 createdOn: Date(timeIntervalSince1970: env.c), modifiedOn: Date(timeIntervalSince1970: env.m),
                                 state: state)
        } catch {
            throw EventSourcingError(.decodingFailed, "snapshot does not decode as \(A.typeName): \(Self.describe(error))",
                                     originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                     topic: stored.topic)
        }
    }

    // MARK: Internals

    /// Refuses a record stored for another aggregate type: its topic must be `A.typeName + "."`
    /// followed by an event name (or `A.snapshotTopic`). Without this, an aggregate whose events
    /// happen to have the same shape would be read as the wrong type.
    static func checkTopic<A: Aggregate>(_ stored: StoredEvent, of type: A.Type, snapshot: Bool,
                                         notificationID: Int64?) throws(EventSourcingError) {
        let ok: Bool
        if snapshot {
            ok = stored.topic == A.snapshotTopic
        } else {
            let name = A.typeName.utf8
            let topic = stored.topic.utf8
            ok = topic.count > name.count + 1 && topic.starts(with: name)
                && topic[topic.index(topic.startIndex, offsetBy: name.count)] == UInt8(ascii: ".")
        }
        guard ok else {
            throw EventSourcingError(.aggregateTypeMismatch,
                "the record belongs to another aggregate type than \(A.typeName) (asked for \(A.self))",
                originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                topic: stored.topic, notificationID: notificationID)
        }
    }

    private func serialise<T: Encodable>(_ value: T) throws -> [UInt8] {
        switch options.encoding {
        case .compact: return try CompactEncoder().encode(value)
        case .json: return Array(try Mapper.jsonEncoder.encode(value))
        }
    }

    static func deserialise<T: Decodable>(_ type: T.Type, _ payload: Payload) throws -> T {
        switch payload.encoding {
        case .compact: return try CompactDecoder().decode(T.self, from: payload.bytes)
        case .json: return try jsonDecoder.decode(T.self, from: Data(payload.bytes))
        }
    }

    private func seal(_ json: [UInt8], key: DataKey?, snapshot: Bool, originatorID: UUID,
                      originatorVersion: Int, topic: String) throws -> [UInt8] {
        var payload = json
        var flags: StateHeader.Flags = snapshot ? [.snapshot] : []
        if options.encoding == .compact { flags.insert(.compact) }
        if let compressor = options.compressor, !options.uncompressedTopics.contains(topic) {
            let z = try compressor.compress(json)
            if z.count < json.count {
                payload = z
                flags.insert(.compressed)
            }
        }
        guard let key else {
            return StateHeader(flags: flags, keyScope: nil, keyVersion: 0, nonce: []).bytes + payload
        }
        flags.insert(.encrypted)
        do {
            let header = StateHeader(flags: flags, keyScope: key.scope, keyVersion: key.version,
                                     nonce: try AES256GCM.randomNonce()).bytes
            let aad = StateHeader.associatedData(header: header, snapshot: snapshot, originatorID: originatorID,
                                                 originatorVersion: originatorVersion, topic: topic)
            return try AES256GCM.seal(payload, key: key.material, nonce: Array(header.suffix(AES256GCM.nonceLength)),
                                      aadParts: [aad], prefix: header)
        } catch {
            throw EventSourcingError(.recorderFailure, "encryption failed (\(error.code))", originatorID: originatorID,
                                     originatorVersion: originatorVersion, topic: topic, keyScope: key.scope)
        }
    }

    func record(_ code: EventSourcingError.Code, _ message: String, _ stored: StoredEvent,
                        _ notificationID: Int64?) -> EventSourcingError {
        EventSourcingError(code, message, originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                           topic: stored.topic, notificationID: notificationID, keyScope: StateHeader.peekKeyScope(stored.state))
    }

    /// Maps key-management errors onto the read outcomes listed in Docs/Concepts.md.
    static func translate(_ error: any Error, stored: StoredEvent?, scope: String) -> EventSourcingError {
        if var e = error as? EventSourcingError {
            // A store error raised while fetching the key (a corrupt database, say) still names the record.
            if let stored, e.originatorID == nil {
                e.originatorID = stored.originatorID
                e.originatorVersion = stored.originatorVersion
                e.topic = stored.topic
            }
            if e.keyScope == nil { e.keyScope = scope }
            return e
        }
        guard let k = error as? KeyManagementError else {
            return EventSourcingError(.recorderFailure, "key store failed: \(error)", originatorID: stored?.originatorID,
                                      originatorVersion: stored?.originatorVersion, topic: stored?.topic, keyScope: scope)
        }
        let code: EventSourcingError.Code
        var message = k.message
        switch k.code {
        case .shredded:
            code = .shredded
            message = "the key scope was crypto-shredded; its records cannot be read or written"
        case .wrongMasterKey: code = .wrongMasterKey
        case .authenticationFailed: code = .integrityFailure
        case .keyUnavailable: code = .keyUnavailable
        case .keyNotFound where stored != nil:
            // A record naming a key that never existed (and was not shredded) has a forged or
            // corrupt header; the tag cannot even be checked.
            code = .integrityFailure
            message = "the record names data key v\(k.keyVersion ?? 0) of its scope, which does not exist: header tampered or corrupt, or keys lost"
        case .keyNotFound: code = .keyUnavailable
        case .invalidScope where stored != nil: code = .integrityFailure
        case .invalidScope: code = .invalidArgument
        default: code = .recorderFailure
        }
        return EventSourcingError(code, message, originatorID: stored?.originatorID,
                                  originatorVersion: stored?.originatorVersion, topic: stored?.topic,
                                  keyScope: scope, shreddedAt: k.shreddedAt)
    }

    /// A decoding error's coding path, without the payload values.
    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let ctx):
            return "missing key '\(key.stringValue)' at \(path(ctx.codingPath))"
        case DecodingError.typeMismatch(let type, let ctx):
            return "expected \(type) at \(path(ctx.codingPath))"
        case DecodingError.valueNotFound(let type, let ctx):
            return "missing \(type) at \(path(ctx.codingPath))"
        case DecodingError.dataCorrupted(let ctx):
            return "malformed data at \(path(ctx.codingPath))"
        case EncodingError.invalidValue(_, let ctx):
            return "value cannot be encoded at \(path(ctx.codingPath))"
        default:
            return "\(type(of: error))"
        }
    }

    private static func path(_ p: [any CodingKey]) -> String {
        p.isEmpty ? "top level" : p.map(\.stringValue).joined(separator: ".")
    }
}

/// The envelope written for an event: schema version, timestamp, and the event.
struct EventEnvelope<A: Aggregate>: Encodable {
    var v: Int
    var t: Double
    var e: A.Event
}

/// The envelope written for a snapshot: schema version, created/modified times, and the state.
struct SnapshotEnvelope<A: Aggregate>: Encodable {
    var v: Int
    var c: Double
    var m: Double
    var s: A
}

/// A stored envelope's body: decoded, or (an older schema) kept as a tree for the upcasters.
enum StoredBody<T: Decodable>: Sendable where T: Sendable {
    case current(T)
    case older(version: Int, JSONValue)

    static func decode<K: CodingKey>(in c: KeyedDecodingContainer<K>, forKey key: K, storedVersion: Int,
                                     currentVersion: Int, what: String) throws -> StoredBody<T> {
        if storedVersion == currentVersion { return .current(try c.decode(T.self, forKey: key)) }
        guard storedVersion < currentVersion, storedVersion >= 1 else {
            throw EventSourcingError(.decodingFailed,
                "\(what) schema version \(storedVersion) is not readable by this code (current \(currentVersion))")
        }
        return .older(version: storedVersion, try c.decode(JSONValue.self, forKey: key))
    }

    /// The value, running `step` from the stored schema up to `currentVersion` first if need be.
    /// The upcast tree is decoded through the payload's own encoding (compact or JSON), so every
    /// type keeps the representation it was written with (`Data`, `Decimal`, `URL`, … differ
    /// between the two).
    func value(currentVersion: Int, encoding: Mapper.PayloadEncoding,
               step: (inout JSONValue, Int) throws -> Void) throws -> T {
        switch self {
        case .current(let v): return v
        case .older(let version, var json):
            for from in version..<currentVersion { try step(&json, from) }
            switch encoding {
            case .compact: return try CompactDecoder().decode(T.self, from: try CompactEncoder().encode(json))
            case .json: return try Mapper.jsonDecoder.decode(T.self, from: try Mapper.jsonEncoder.encode(json))
            }
        }
    }
}

/// A stored event envelope, as read.
struct StoredEventEnvelope<A: Aggregate>: Decodable {
    var v: Int
    var t: Double
    var e: StoredBody<A.Event>

    private enum CodingKeys: String, CodingKey { case v, t, e }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        v = try c.decode(Int.self, forKey: .v)
        t = try c.decode(Double.self, forKey: .t)
        e = try StoredBody.decode(in: c, forKey: .e, storedVersion: v, currentVersion: A.eventSchemaVersion, what: "event")
    }
}

/// A stored snapshot envelope, as read.
struct StoredSnapshotEnvelope<A: Aggregate>: Decodable {
    var v: Int
    var c: Double
    var m: Double
    var s: StoredBody<A>

    private enum CodingKeys: String, CodingKey { case v, c, m, s }

    init(from decoder: any Decoder) throws {
        let k = try decoder.container(keyedBy: CodingKeys.self)
        v = try k.decode(Int.self, forKey: .v)
        c = try k.decode(Double.self, forKey: .c)
        m = try k.decode(Double.self, forKey: .m)
        s = try StoredBody.decode(in: k, forKey: .s, storedVersion: v, currentVersion: A.snapshotSchemaVersion, what: "snapshot")
    }
}
