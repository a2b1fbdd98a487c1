import Foundation
import Logging

/// Reconstructs aggregates from their snapshots and events.
public struct Repository: Sendable {
    let app: Application

    /// Gets aggregate `id` at `version` (the latest when nil), from the latest snapshot at or
    /// below that version plus the events after it. With the application's aggregate cache on
    /// (``AggregateCache``), the latest comes from the cache, brought up to date with the events
    /// stored after the cached version; a version bypasses the cache.
    /// - Throws: ``EventSourcingError`` `.aggregateNotFound` (also for an aggregate discarded at or
    ///   below `version`: the message says it was discarded and ``EventSourcingError/originatorVersion``
    ///   is the discard marker's version); `.shredded` when its key scope was erased;
    ///   `.integrityFailure` naming a tampered record; `.decodingFailed`; `.keyUnavailable`.
    public func get<A: Aggregate>(_ type: A.Type = A.self, id: UUID, version: Int? = nil) async throws -> AggregateRoot<A> {
        try await app.instruments.get(A.typeName) {
            if version == nil, let cache = app.aggregateCache { return try await cached(A.self, id: id, in: cache) }
            return try await load(A.self, id: id, version: version)
        }
    }

    /// The latest version of `id` through the cache: a hit is brought up to date from the
    /// records after its version, a miss is loaded and cached. Any failure removes the entry.
    private func cached<A: Aggregate>(_ type: A.Type, id: UUID, in cache: AggregateCache) async throws -> AggregateRoot<A> {
        // Shreds made by other processes move the generation before it is compared.
        do { try await app.mapper.cipher?.checkKeyChanges() } catch let e as EventSourcingError { throw e } catch {
            throw EventSourcingError(.recorderFailure, "the key store's key-change feed could not be read: \(error)", originatorID: id)
        }
        guard var root = cache.get(id, as: A.self, generation: app.erasureGeneration) else {
            let root = try await load(A.self, id: id, version: nil)
            cache.put(root)
            return root
        }
        do {
            // The cached version's own record too: its header names the key to check. Newest
            // first (then reversed): a store reads no data keys ahead for such a read, and the
            // key of a hit is normally in the keyring's cache already.
            let stored = Array(try await app.recorder.selectEvents(originatorID: id, after: root.version - 1,
                                                                   order: .descending).reversed())
            guard let latest = stored.first, latest.originatorVersion == root.version, latest.topic != A.discardTopic else {
                // The store no longer holds what the cache does (restored from a backup?): read it afresh.
                cache.remove(id)
                let fresh = try await load(A.self, id: id, version: nil)
                cache.put(fresh)
                return fresh
            }
            try await checkKey(of: latest)
            for s in stored.dropFirst() {
                if s.topic == A.discardTopic { throw try await discarded(s) }
                try root.apply(try await app.mapper.decode(s, as: A.self))
            }
        } catch {
            cache.remove(id)
            throw error
        }
        cache.put(root)
        return root
    }

    /// Throws what reading `stored` would for its key (`.shredded`, `.keyUnavailable`), without
    /// decrypting it: a cached aggregate is not returned once its key is gone.
    private func checkKey(of stored: StoredEvent) async throws {
        guard let cipher = app.mapper.cipher, case .success(let (header, _)) = StateHeader.parse(stored.state),
              header.flags.contains(.encrypted), let scope = header.keyScope else { return }
        do { _ = try await cipher.openingKey(scope: scope, version: header.keyVersion) } catch {
            throw Mapper.translate(error, stored: stored, scope: scope)
        }
    }

    /// The not-found error for an aggregate whose discard marker is `stored` (authenticated first).
    private func discarded(_ stored: StoredEvent) async throws -> EventSourcingError {
        let at = try await app.mapper.openDiscardMarker(stored)
        return EventSourcingError(.aggregateNotFound,
            "no such aggregate: it was discarded at version \(stored.originatorVersion) (\(ISO8601DateFormatter().string(from: at))); "
            + "versions below \(stored.originatorVersion) can still be read",
            originatorID: stored.originatorID, originatorVersion: stored.originatorVersion, topic: stored.topic)
    }

    private func load<A: Aggregate>(_ type: A.Type, id: UUID, version: Int?) async throws -> AggregateRoot<A> {
        if let version, version < 1 {
            throw EventSourcingError(.invalidArgument, "version must be at least 1", originatorID: id, originatorVersion: version)
        }
        // Taken before anything is read: a shred during the read makes the cached root stale.
        let generation = app.erasureGeneration
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
            if s.topic == A.discardTopic { throw try await discarded(s) }
            try root.apply(try await app.mapper.decode(s, as: A.self))
        }
        guard root.version > 0 else {
            throw EventSourcingError(.aggregateNotFound, "no such aggregate" + (version.map { " at or below version \($0)" } ?? ""),
                                     originatorID: id, originatorVersion: version)
        }
        root.cacheGeneration = generation
        return root
    }

    /// Whether aggregate `id` exists: it has events and was not discarded (its latest record is
    /// not a discard marker, which is authenticated before it counts).
    /// - Throws: ``EventSourcingError`` `.integrityFailure` for a forged or moved discard marker;
    ///   the recorder's errors.
    public func contains(_ id: UUID) async throws -> Bool {
        guard let latest = try await app.recorder.selectEvents(originatorID: id, order: .descending, limit: 1).first else { return false }
        if ErasureRecord.isErasure(topic: latest.topic) { return false }
        guard DiscardMarker.isDiscard(topic: latest.topic) else { return true }
        do { _ = try await app.mapper.openDiscardMarker(latest) } catch let e as EventSourcingError where e.code == .shredded {
            // Discarded and erased: the marker can no longer be checked, and there is nothing left to read.
        }
        return false
    }
}
