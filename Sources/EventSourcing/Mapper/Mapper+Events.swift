import Foundation
import KeyManagement

extension Mapper {
    // MARK: Events

    /// Encodes events of one aggregate under `keyScope`'s current data key, stamping the scope
    /// on each record (``StoredEvent/keyScope``).
    /// - Parameter newScope: the scope was only just created (see ``RecordCipher/sealingKey(for:likelyNew:)``).
    /// - Parameter discard: the aggregate's discard marker to seal after the events (``DiscardMarker``).
    /// - Throws: ``EventSourcingError`` with `.shredded` for a shredded scope, `.keyUnavailable`.
    package func encode<A: Aggregate>(_ events: [DomainEvent<A.Event>], of type: A.Type, keyScope: String,
                                      newScope: Bool = false, discard: (id: UUID, version: Int, at: Date)? = nil) async throws -> EncodedBatch {
        let writeKey = events.isEmpty && discard == nil ? nil
            : try await sealingKey(for: keyScope, likelyNew: newScope, encryptions: events.count + (discard == nil ? 0 : 1))
        var out: [StoredEvent] = []
        out.reserveCapacity(events.count)
        var pending = writeKey.flatMap { $0.minted == nil ? nil : [$0] } ?? []
        let fields = fieldSealer(snapshot: false, writeKey: writeKey)
        let encoder = RecordEncoder(configuration.encoding, fields: fields)
        for e in events {
            let topic = A.topic(of: e.event)
            guard topic.utf8.count > A.typeName.utf8.count + 1 else {
                throw EventSourcingError(.invalidArgument,
                    "no topic can be derived for \(A.typeName)'s event type \(A.Event.self): default topics are enum case "
                    + "names as Codable writes them; declare \(A.self).topicName(of:)",
                    originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            guard !ErasureRecord.isErasure(topic: topic), !DiscardMarker.isDiscard(topic: topic) else {
                throw EventSourcingError(.invalidArgument, "the topic \(topic) is reserved for shreds' erasure records or discard markers",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            guard topic.utf8.count <= StateHeader.maxTopicLength else {
                throw EventSourcingError(.invalidArgument, "topic is longer than \(StateHeader.maxTopicLength) bytes",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            let json: [UInt8]
            fields.record.originatorID = e.originatorID
            fields.record.originatorVersion = e.originatorVersion
            fields.record.topic = topic
            do {
                let envelope = EventEnvelope<A>(v: A.eventSchemaVersion, t: e.timestamp.timeIntervalSince1970, e: e.event)
                json = try await sealingFields(envelope, encoder, fields, newKeys: &pending)
            } catch let e as EventSourcingError {
                throw e
            } catch {
                throw EventSourcingError(.invalidArgument, "event could not be encoded: \(Self.describe(error))",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion, topic: topic)
            }
            let state = try seal(json, key: writeKey?.key, snapshot: false, originatorID: e.originatorID,
                                 originatorVersion: e.originatorVersion, topic: topic)
            out.append(StoredEvent(originatorID: e.originatorID, originatorVersion: e.originatorVersion, topic: topic,
                                   state: state, keyScope: writeKey?.key.scope))
        }
        if let discard {
            out.append(try sealDiscardMarker(of: A.self, originatorID: discard.id, version: discard.version, at: discard.at, key: writeKey))
        }
        return EncodedBatch(events: out, newKeys: pending, published: events)
    }

    /// Decodes a stored event of aggregate type `A`.
    /// - Throws: ``EventSourcingError`` with `.integrityFailure` (tampered or corrupt, names the
    ///   record), `.shredded`, `.keyUnavailable`, `.decodingFailed` (names the topic), `.plaintextRejected`.
    public func decode<A: Aggregate>(_ stored: StoredEvent, as type: A.Type, notificationID: Int64? = nil) async throws -> DomainEvent<A.Event> {
        try Self.checkTopic(stored, of: A.self, snapshot: false, notificationID: notificationID)
        let payload = try await openPayload(stored, snapshot: false, notificationID: notificationID)
        guard payload.personalKeys != nil else {
            return try Self.decodeEvent(payload, as: type, stored: stored, notificationID: notificationID)
        }
        return try await decodingFields(payload, stored: stored, notificationID: notificationID) {
            try Self.decodeEvent($0, as: type, stored: stored, notificationID: notificationID, rethrowNeedsKeys: true)
        }
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
    /// Tells the key ring which data keys decoding `records` will need (see
    /// `Keyring.prefetch(_:)`); records that are not encrypted, or whose header does not parse,
    /// are left out (decoding them reports them).
    public func prefetchKeys(for records: some Sequence<StoredEvent>) async {
        guard let keyring else { return }
        var wanted: [(scope: String, version: UInt32)] = []
        for record in records {
            guard case .success(let (header, _)) = StateHeader.parse(record.state),
                  header.flags.contains(.encrypted), let scope = header.keyScope else { continue }
            wanted.append((scope, header.keyVersion))
        }
        await keyring.prefetch(wanted)
    }

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
            guard let cipher, let scope = header.keyScope else {
                throw record(.keyUnavailable, "record is encrypted but the mapper has no keyring", stored, notificationID)
            }
            let key: DataKey
            do { key = try await cipher.openingKey(scope: scope, version: header.keyVersion) } catch {
                var e = Self.translate(error, stored: stored, scope: scope)
                e.notificationID = notificationID
                throw e
            }
            let opened: [UInt8]?
            do {
                opened = try RecordFormat.open(state, header: header, bodyOffset: bodyOffset, key: key,
                                               at: .init(snapshot: snapshot, originatorID: stored.originatorID,
                                                         originatorVersion: stored.originatorVersion, topic: stored.topic))
            } catch {
                throw record(.integrityFailure, "record could not be decrypted (\(error.code))", stored, notificationID)
            }
            guard let opened else {
                throw record(.integrityFailure, "authentication tag does not match: record tampered, corrupt or moved",
                             stored, notificationID)
            }
            body = opened
        } else {
            guard cipher == nil || configuration.plaintextReads == .allowed else {
                throw record(.plaintextRejected,
                             "record is not encrypted; a mapper with a keyring refuses plaintext unless plaintextReads is .allowed (for a migration)",
                             stored, notificationID)
            }
            body = Array(state[bodyOffset...])
        }
        if header.flags.contains(.compressed) { body = try decompressed(body, stored, notificationID) }
        var payload = Payload(bytes: body, encoding: header.flags.contains(.compact) ? .compact : .json)
        if PersonalFieldFormat.mayContainFields(body) {
            // Its personal fields' subject keys, fetched now so that decoding (sync) opens them.
            try await fetchFieldKeys(for: &payload, stored: stored, recordScope: header.keyScope, notificationID: notificationID)
        }
        return payload
    }

    static func decodeEvent<A: Aggregate>(_ payload: Payload, as type: A.Type, stored: StoredEvent,
                                         notificationID: Int64?, rethrowNeedsKeys: Bool = false) throws -> DomainEvent<A.Event> {
        do {
            let fields = fieldOpener(payload, stored: stored, snapshot: false, notificationID: notificationID)
            let env = try deserialise(StoredEventEnvelope<A>.self, payload, fields: fields)
            let event = try env.e.value(currentVersion: A.eventSchemaVersion, encoding: payload.encoding, fields: fields,
                                        step: A.upcastEvent)
            return DomainEvent(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                               timestamp: Date(timeIntervalSince1970: env.t), event: event)
        } catch let need as PersonalFieldNeedsKeys {
            guard rethrowNeedsKeys else {
                throw EventSourcingError(.keyUnavailable, "a personal field names a data key that was not fetched when the record was read (written by an upcaster?)",
                                         originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                         topic: stored.topic, notificationID: notificationID, keyScope: need.keys.first?.scope)
            }
            throw need
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
}
