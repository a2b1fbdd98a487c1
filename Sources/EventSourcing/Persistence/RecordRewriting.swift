import Foundation
import Synchronization

/// One stored record's replacement state, applied only if the stored state is still what was
/// read (a compare-and-swap on the record's bytes).
///
/// The record is named by its coordinates, which a rewrite never changes: the replacement is
/// sealed for the same `(originatorID, originatorVersion, topic)`, so its associated data (see
/// SECURITY.md) is that of the record it replaces.
public struct RecordRewrite: Sendable, Hashable {
    /// The aggregate id of the record.
    public var originatorID: UUID
    /// Its version.
    public var originatorVersion: Int
    /// The state as it was read: the replacement is written only where the stored state still
    /// equals it, byte for byte.
    public var expected: [UInt8]
    /// The replacement state.
    public var state: [UInt8]
    /// The key scope stamped for the replacement (the recorders' `key_scope` column; nil for an
    /// unencrypted record), as ``StoredEvent/keyScope`` is for an insert.
    public var keyScope: String?

    /// Creates a rewrite.
    public init(originatorID: UUID, originatorVersion: Int, expected: [UInt8], state: [UInt8], keyScope: String?) {
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.expected = expected
        self.state = state
        self.keyScope = keyScope
    }

    /// The most rewrites one call of ``RecordRewriting/rewriteEvents(_:)`` or
    /// ``RecordRewriting/rewriteSnapshots(_:)`` takes: a bigger batch is refused.
    public static let maxBatchSize = 1_000

    /// Checks a batch before anything is changed: at most ``maxBatchSize`` rewrites, each record
    /// named once (two rewrites of one record in one transaction would depend on the order they
    /// are applied in), versions that a recorder can store, and a replacement that is not empty.
    /// Implementations of ``RecordRewriting`` call this first.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` naming the record (or the size).
    public static func checkBatch(_ rewrites: [RecordRewrite], what: String = "records") throws(EventSourcingError) {
        guard rewrites.count <= maxBatchSize else {
            throw EventSourcingError(.invalidArgument,
                "a batch of \(rewrites.count) rewrites of \(what) is refused: at most \(maxBatchSize) per call; nothing was rewritten")
        }
        struct Position: Hashable { var id: UUID; var version: Int }
        var seen = Set<Position>(minimumCapacity: rewrites.count)
        for r in rewrites {
            guard r.originatorVersion >= 0 else {
                throw EventSourcingError(.invalidArgument, "a rewrite names a negative version; nothing was rewritten",
                                         originatorID: r.originatorID, originatorVersion: r.originatorVersion)
            }
            guard !r.state.isEmpty else {
                throw EventSourcingError(.invalidArgument, "a rewrite's replacement state is empty; nothing was rewritten",
                                         originatorID: r.originatorID, originatorVersion: r.originatorVersion)
            }
            guard seen.insert(Position(id: r.originatorID, version: r.originatorVersion)).inserted else {
                throw EventSourcingError(.invalidArgument,
                    "a batch of rewrites names this record twice; nothing was rewritten",
                    originatorID: r.originatorID, originatorVersion: r.originatorVersion)
            }
        }
    }
}

/// A recorder whose stored records can be replaced in place: the primitive under re-encryption
/// (`Application.reencrypt(keyScope:pageSize:progress:)`) and the encryption of a plaintext store.
///
/// A rewrite replaces a record's `state` (and its key-scope column) and nothing else: never its
/// coordinates, topic or notification id, and it never creates a notification, so followers of
/// the log do not see it again. Each replacement is conditional on the stored state still being
/// the one read (``RecordRewrite/expected``), so a rewrite racing another rewrite of the same
/// record changes it once, and never undoes the other.
public protocol RecordRewriting: Sendable {
    /// Replaces each event's `state` (and key-scope column) only where the stored state still
    /// equals `expected`, all in ONE transaction; returns how many were replaced.
    /// Never changes coordinates, topic or notification id; never creates a notification.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for a batch that
    ///   ``RecordRewrite/checkBatch(_:what:)`` refuses, and `KeyManagementError` `.shredded` if a
    ///   replacement is stamped with a scope the store holds a tombstone for (a recorder that
    ///   keeps tombstones); nothing is changed then.
    func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int
    /// The same for snapshots.
    func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int
    /// Every snapshot, paged in `(originatorID, originatorVersion)` order (ids compared by
    /// their 16 bytes), strictly after `cursor`; at most `limit` (none for a limit below 1).
    func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent]
}

extension InMemoryRecorder: RecordRewriting {
    public func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites, what: "events")
        guard !rewrites.isEmpty else { return 0 }
        return state.withLock { s in
            // First decide every replacement, then apply them all: one atomic step under the lock.
            var wanted: [UUID: [Int: RecordRewrite]] = [:]
            for r in rewrites { wanted[r.originatorID, default: [:]][r.originatorVersion] = r }
            var replaced = 0
            var logChanges: [UUID: [Int: [UInt8]]] = [:]
            for (id, byVersion) in wanted {
                guard var list = s.events[id] else { continue }
                var changed = false
                for i in list.indices {
                    guard let r = byVersion[list[i].originatorVersion], list[i].state == r.expected else { continue }
                    list[i].state = r.state
                    list[i].keyScope = r.keyScope
                    logChanges[id, default: [:]][r.originatorVersion] = r.state
                    replaced += 1
                    changed = true
                }
                if changed { s.events[id] = list }
            }
            if !logChanges.isEmpty {
                var left = replaced
                for i in s.log.indices where left > 0 {
                    if let st = logChanges[s.log[i].originatorID]?[s.log[i].originatorVersion] {
                        s.log[i].state = st
                        left -= 1
                    }
                }
            }
            return replaced
        }
    }

    public func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites, what: "snapshots")
        guard !rewrites.isEmpty else { return 0 }
        return state.withLock { s in
            var replaced = 0
            for r in rewrites {
                guard var list = s.snapshots[r.originatorID],
                      let i = list.firstIndex(where: { $0.originatorVersion == r.originatorVersion }),
                      list[i].state == r.expected else { continue }
                list[i].state = r.state
                list[i].keyScope = r.keyScope
                s.snapshots[r.originatorID] = list
                replaced += 1
            }
            return replaced
        }
    }

    public func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent] {
        guard limit > 0 else { return [] }
        return state.withLock { s in
            var ids = Array(s.snapshots.keys)
            if let cursor { ids.removeAll { UUIDOrder.less($0, cursor.originatorID) } }
            ids.sort(by: UUIDOrder.less)
            var out: [StoredEvent] = []
            for id in ids {
                for snap in s.snapshots[id] ?? [] {
                    if let cursor, id == cursor.originatorID, snap.originatorVersion <= cursor.originatorVersion { continue }
                    out.append(snap)
                    if out.count == limit { return out }
                }
            }
            return out
        }
    }
}

/// UUIDs in the order of their 16 bytes (the order of SQLite's BLOB and PostgreSQL's uuid).
enum UUIDOrder {
    static func less(_ a: UUID, _ b: UUID) -> Bool {
        withUnsafeBytes(of: a.uuid) { x in
            withUnsafeBytes(of: b.uuid) { y in x.lexicographicallyPrecedes(y) }
        }
    }
}
