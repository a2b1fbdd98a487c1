import Foundation
import KeyManagement

extension Mapper {
    // MARK: Snapshots

    /// Encodes a snapshot of `root` at its current version, stamping its key scope on the record.
    /// - Returns: the record, and the key minted for it if it must be persisted first.
    package func encodeSnapshot<A: Aggregate>(_ root: AggregateRoot<A>) async throws -> (StoredEvent, SealingKey?) {
        let writeKey = try await sealingKey(for: root.keyScope, likelyNew: false)
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
        let stored = StoredEvent(originatorID: root.id, originatorVersion: root.version, topic: A.snapshotTopic, state: state,
                                 keyScope: writeKey?.key.scope)
        return (stored, writeKey?.minted == nil ? nil : writeKey)
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
                                 state: state, keyScope: RecordFormat.keyScope(of: stored.state))
        } catch {
            throw EventSourcingError(.decodingFailed, "snapshot does not decode as \(A.typeName): \(Self.describe(error))",
                                     originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                     topic: stored.topic)
        }
    }
}
