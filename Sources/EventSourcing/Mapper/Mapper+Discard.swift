import Foundation
import KeyManagement

/// Sealing and opening the discard marker (``DiscardMarker``).
extension Mapper {
    /// Seals the discard marker of aggregate `originatorID` at `version` under `key` (nil: a
    /// plain record, for an application without encryption).
    func sealDiscardMarker<A: Aggregate>(of type: A.Type, originatorID: UUID, version: Int, at time: Date,
                                         key: SealingKey?) throws -> StoredEvent {
        let topic = A.discardTopic
        guard topic.utf8.count <= StateHeader.maxTopicLength else {
            throw EventSourcingError(.invalidArgument, "the discard topic is longer than \(StateHeader.maxTopicLength) bytes",
                                     originatorID: originatorID, originatorVersion: version)
        }
        let json: [UInt8]
        do {
            json = try serialise(DiscardMarker.Envelope(v: DiscardMarker.schemaVersion, t: time.timeIntervalSince1970))
        } catch {
            throw EventSourcingError(.invalidArgument, "the discard marker could not be encoded: \(Self.describe(error))",
                                     originatorID: originatorID, originatorVersion: version, topic: topic)
        }
        let state = try seal(json, key: key?.key, snapshot: false, originatorID: originatorID,
                             originatorVersion: version, topic: topic)
        return StoredEvent(originatorID: originatorID, originatorVersion: version, topic: topic, state: state,
                           keyScope: key?.key.scope)
    }

    /// Opens a stored discard marker (authenticating it when it is sealed) and returns when the
    /// aggregate was discarded.
    /// - Throws: as ``openPayload(_:snapshot:notificationID:)`` (`.integrityFailure` for a forged
    ///   or moved marker, `.shredded`, …); `.decodingFailed` if its payload is not a marker's.
    func openDiscardMarker(_ stored: StoredEvent, notificationID: Int64? = nil) async throws -> Date {
        let payload = try await openPayload(stored, snapshot: false, notificationID: notificationID)
        let env: DiscardMarker.Envelope
        do { env = try Self.deserialise(DiscardMarker.Envelope.self, payload) } catch {
            throw record(.decodingFailed, "the discard marker's payload does not decode: \(Self.describe(error))", stored, notificationID)
        }
        guard env.v == DiscardMarker.schemaVersion, env.t.isFinite else {
            throw record(.decodingFailed, "the discard marker's payload is not schema \(DiscardMarker.schemaVersion) with a finite time",
                         stored, notificationID)
        }
        return Date(timeIntervalSince1970: env.t)
    }
}
