import Foundation
import KeyManagement

/// The write path, top to bottom: encode each aggregate's pending events through the mapper
/// (which asks the cipher for each scope's key and stamps the scope on the records), keep one
/// minted key per scope, store the minted keys with the events or before them, and retry when
/// another writer created a scope's first key meanwhile.
///
/// The one owner of new data keys on the write path: the application asks it to commit and
/// nothing else touches minted keys.
struct EventWriter: Sendable {
    let mapper: Mapper
    let recorder: any ApplicationRecorder
    /// The application's in-process publishing: what commits is published after the commit
    /// (see Application+Publishing.swift); nil publishes nothing.
    var hub: EventHub? = nil

    /// Encodes one aggregate's pending events; the argument is false on a retry after `keyExists`.
    typealias Encoder = @Sendable (_ optimistic: Bool) async throws -> Mapper.EncodedBatch

    /// How many times a save is encoded again after `KeyManagementError.Code.keyExists`.
    static let keyExistsRetries = 3

    /// Encodes and stores the events of `encoders` atomically.
    ///
    /// With `tracking` (a process application's position in a leader's log), the events,
    /// the records of `plain` (stored as they are, before the encoded ones: an erasure record)
    /// and the tracking record commit in one transaction of the ``ProcessRecorder``; the
    /// tracking record alone when there are no events.
    /// - Returns: one ``Recording`` per event, in order.
    /// - Throws: `.invalidArgument` for `tracking` or `plain` when the recorder is not a
    ///   ``ProcessRecorder`` (nothing is written).
    func commit(_ encoders: [Encoder], tracking: Tracking? = nil, plain: [StoredEvent] = []) async throws -> [Recording] {
        if tracking != nil || !plain.isEmpty, !(recorder is any ProcessRecorder) {
            throw EventSourcingError(.invalidArgument,
                "the application's recorder (\(type(of: recorder))) is not a ProcessRecorder: it cannot commit a tracking record with events")
        }
        let ticket = hub?.open()
        defer { ticket?.close() }   // a save that throws publishes nothing
        var attempt = 0
        while true {
            var events: [StoredEvent] = plain
            var keys: [SealingKey] = []
            var published: [EventHub.Batch] = [EventHub.Batch(count: plain.count, events: nil)]
            for encode in encoders {
                let batch = try await encode(attempt == 0)
                events += batch.events
                published.append(EventHub.Batch(count: batch.events.count, events: batch.published))
                Self.addMinted(batch.newKeys, to: &keys)
            }
            guard !events.isEmpty || tracking != nil else { return [] }
            do {
                let ids = try await insert(events, keys: keys, tracking: tracking)
                ticket?.publish(events, ids: ids, batches: published)
                return zip(events, ids).map {
                    Recording(originatorID: $0.originatorID, originatorVersion: $0.originatorVersion,
                              topic: $0.topic, notificationID: $1)
                }
            } catch let e as KeyManagementError where e.code == .keyExists && attempt < Self.keyExistsRetries {
                // Another writer created one of these scopes' first key: re-encode under its key.
                for k in keys { mapper.cipher?.invalidate(scope: k.key.scope) }
                attempt += 1
            } catch let e as KeyManagementError {
                throw Mapper.translate(e, stored: nil, scope: e.scope ?? keys.first?.key.scope ?? "")
            }
        }
    }

    /// Stores a snapshot, persisting a key minted for it first (snapshot stores never share the
    /// key store's transactions).
    func store<A: Aggregate>(snapshotOf root: AggregateRoot<A>, in snapshots: any SnapshotRecorder) async throws {
        let (stored, minted) = try await mapper.encodeSnapshot(root)
        if let minted, let cipher = mapper.cipher { try await cipher.persist([minted]) }
        try await snapshots.insertSnapshot(stored)
    }

    /// Adds minted keys not yet in `keys`: aggregates of one new subject share the key minted for
    /// the first of them. Scopes are compared byte by byte (canonically equivalent spellings are
    /// different subjects, with different keys).
    static func addMinted(_ minted: [SealingKey], to keys: inout [SealingKey]) {
        for k in minted where !keys.contains(where: { ExactScope.same($0.key.scope, k.key.scope) && $0.key.version == k.key.version }) {
            keys.append(k)
        }
    }

    /// Inserts `events` (with `tracking` when given: ``commit(_:tracking:plain:)`` checked the
    /// recorder is a ``ProcessRecorder``), with `keys` in the same transaction when the recorder
    /// shares the cipher's key store's transactions, else after persisting `keys` on their own (a
    /// failure between the two leaves a key without records, never records without their key).
    private func insert(_ events: [StoredEvent], keys: [SealingKey], tracking: Tracking?) async throws -> [Int64] {
        let process = tracking == nil ? nil : recorder as? any ProcessRecorder
        if !keys.isEmpty, let cipher = mapper.cipher {
            if let keyStore = cipher.keyStore, let combined = recorder as? any KeyCommittingRecorder,
               combined.sharesTransactions(with: keyStore) {
                let minted = keys.compactMap(\.minted)
                let ids: [Int64]?
                if let tracking {
                    ids = try await (combined as? any KeyCommittingProcessRecorder)?.insertEvents(events, newKeys: minted, tracking: tracking)
                } else {
                    ids = try await combined.insertEvents(events, newKeys: minted)
                }
                if let ids {
                    cipher.didPersist(keys)
                    return ids
                }
            }
            try await cipher.persist(keys)
        }
        if let tracking, let process { return try await process.insertEvents(events, tracking: tracking) }
        return try await recorder.insertEvents(events)
    }
}
