import Foundation
import Logging

/// Reconstructs aggregates from their snapshots and events.
public struct Repository: Sendable {
    let app: Application

    /// Gets aggregate `id` at `version` (the latest when nil), from the latest snapshot at or
    /// below that version plus the events after it.
    /// - Throws: ``EventSourcingError`` `.aggregateNotFound`; `.shredded` when its key scope
    ///   was erased; `.integrityFailure` naming a tampered record; `.decodingFailed`; `.keyUnavailable`.
    public func get<A: Aggregate>(_ type: A.Type = A.self, id: UUID, version: Int? = nil) async throws -> AggregateRoot<A> {
        try await app.instruments.get(A.typeName) { try await load(A.self, id: id, version: version) }
    }

    private func load<A: Aggregate>(_ type: A.Type, id: UUID, version: Int?) async throws -> AggregateRoot<A> {
        if let version, version < 1 {
            throw EventSourcingError(.invalidArgument, "version must be at least 1", originatorID: id, originatorVersion: version)
        }
        var root = AggregateRoot<A>(id: id)
        if let snapshots = app.snapshotRecorder, let snap = try await snapshots.selectSnapshot(originatorID: id, lte: version) {
            do {
                root = try await app.mapper.decodeSnapshot(snap, as: A.self)
            } catch let e as EventSourcingError where e.code == .decodingFailed {
                // A snapshot is a cache: if its schema can no longer be read, replay the events.
                app.logger.warning("snapshot unreadable, replaying events",
                                   metadata: ["aggregate": "\(id)", "version": "\(snap.originatorVersion)"])
            }
        }
        let stored = try await app.recorder.selectEvents(originatorID: id, after: root.version == 0 ? nil : root.version, upTo: version)
        // A shred's erasure record has an id of its own in the log, never an aggregate's.
        if let first = stored.first, ErasureRecord.isErasure(topic: first.topic) {
            throw EventSourcingError(.aggregateNotFound, "no such aggregate: the id is a shred's erasure record's",
                                     originatorID: id, originatorVersion: version)
        }
        for s in stored {
            try root.apply(try await app.mapper.decode(s, as: A.self))
        }
        guard root.version > 0 else {
            throw EventSourcingError(.aggregateNotFound, "no such aggregate" + (version.map { " at or below version \($0)" } ?? ""),
                                     originatorID: id, originatorVersion: version)
        }
        return root
    }

    /// Whether any event exists for `id`.
    public func contains(_ id: UUID) async throws -> Bool {
        guard let first = try await app.recorder.selectEvents(originatorID: id, limit: 1).first else { return false }
        return !ErasureRecord.isErasure(topic: first.topic)
    }
}
