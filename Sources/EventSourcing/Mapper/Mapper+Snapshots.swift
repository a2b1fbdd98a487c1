import Foundation
import KeyManagement

extension Mapper {
    // MARK: Snapshots

    /// Encodes a snapshot of `root` at its current version, stamping its key scope on the record.
    /// - Returns: the record, and the key minted for it if it must be persisted first.
    package func encodeSnapshot<A: Aggregate>(_ root: AggregateRoot<A>) async throws -> (StoredEvent, SealingKey?) {
        let writeKey = try await sealingKey(for: root.keyScope, likelyNew: false)
        let json: [UInt8]
        let fields = fieldSealer(snapshot: true, writeKey: writeKey)
        fields.record.originatorID = root.id
        fields.record.originatorVersion = root.version
        fields.record.topic = A.snapshotTopic
        var minted: [SealingKey] = []
        do {
            let envelope = SnapshotEnvelope<A>(v: A.snapshotSchemaVersion, c: root.createdOn.timeIntervalSince1970,
                                               m: root.modifiedOn.timeIntervalSince1970, s: root.state)
            let encoder = RecordEncoder(configuration.encoding, fields: fields)
            json = try await sealingFields(envelope, encoder, fields, newKeys: &minted)
        } catch let e as EventSourcingError {
            throw e
        } catch {
            throw EventSourcingError(.invalidArgument, "snapshot could not be encoded: \(Self.describe(error))",
                                     originatorID: root.id, originatorVersion: root.version)
        }
        if !minted.isEmpty, let cipher {
            // A subject first named by this snapshot: its key is stored before the snapshot
            // (snapshot stores never share the key store's transactions).
            do { try await cipher.persist(minted) } catch { throw Self.translate(error, stored: nil, scope: minted[0].key.scope) }
        }
        let state = try seal(json, key: writeKey?.key, snapshot: true, originatorID: root.id,
                             originatorVersion: root.version, topic: A.snapshotTopic)
        let stored = StoredEvent(originatorID: root.id, originatorVersion: root.version, topic: A.snapshotTopic, state: state,
                                 keyScope: writeKey?.key.scope)
        return (stored, writeKey?.minted == nil ? nil : writeKey)
    }

    /// Decodes a snapshot record into a root.
    public func decodeSnapshot<A: Aggregate>(_ stored: StoredEvent, as type: A.Type) async throws -> AggregateRoot<A> {
        try Self.checkTopic(stored, of: A.self, snapshot: true, notificationID: nil)
        let payload = try await openPayload(stored, snapshot: true)
        guard payload.personalKeys != nil else { return try Self.decodeSnapshot(payload, stored: stored, as: A.self) }
        return try await decodingFields(payload, stored: stored, notificationID: nil) {
            try Self.decodeSnapshot($0, stored: stored, as: A.self)
        }
    }

    static func decodeSnapshot<A: Aggregate>(_ payload: Payload, stored: StoredEvent, as type: A.Type) throws -> AggregateRoot<A> {
        do {
            let fields = fieldOpener(payload, stored: stored, snapshot: true, notificationID: nil)
            let env = try Self.deserialise(StoredSnapshotEnvelope<A>.self, payload, fields: fields)
            let state = try env.s.value(currentVersion: A.snapshotSchemaVersion, encoding: payload.encoding, fields: fields,
                                        step: A.upcastSnapshot)
            return AggregateRoot(id: stored.originatorID, version: stored.originatorVersion,
                                 createdOn: Date(timeIntervalSince1970: env.c), modifiedOn: Date(timeIntervalSince1970: env.m),
                                 state: state, keyScope: RecordFormat.keyScope(of: stored.state))
        } catch let need as PersonalFieldNeedsKeys {
            throw need
        } catch let e as EventSourcingError {
            var e = e
            e.originatorID = stored.originatorID
            e.originatorVersion = stored.originatorVersion
            e.topic = stored.topic
            throw e
        } catch {
            throw EventSourcingError(.decodingFailed, "snapshot does not decode as \(A.typeName): \(Self.describe(error))",
                                     originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                     topic: stored.topic)
        }
    }
}
