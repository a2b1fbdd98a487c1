import Foundation
import KeyManagement
import Synchronization

/// An application recorder and snapshot store in process memory.
///
/// A product feature, not a test double: thread-safe, with the same guarantees as the
/// database recorders (atomic batches, optimistic concurrency, gap-free notification ids),
/// for tests, demos, caches and short-lived processes. Nothing survives the process.
public final class InMemoryRecorder: ApplicationRecorder, SnapshotRecorder {
    struct State {
        /// Per aggregate, events indexed by `version - 1` when contiguous; kept sorted.
        var events: [UUID: [StoredEvent]] = [:]
        var log: [StoredNotification] = []
        var snapshots: [UUID: [StoredEvent]] = [:]
        /// Per tracking name, the highest notification id recorded (InMemoryRecorder+Tracking.swift).
        var tracking: [String: Int64] = [:]
        /// Wakes the log's subscribers after each insert (InMemoryRecorder+Subscriptions.swift).
        let commits = CommitSignal()
    }

    let state = Mutex(State())

    /// Creates an empty recorder.
    public init() {}

    public func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try state.withLock { (s) throws(EventSourcingError) -> [Int64] in try Self.insert(events, into: &s) }
    }

    /// Checks every event first, so a conflicting batch writes nothing; then appends them all.
    static func insert(_ events: [StoredEvent], into s: inout State) throws(EventSourcingError) -> [Int64] {
        var seen = Set<EventKey>()
        for e in events {
            let key = EventKey(id: e.originatorID, version: e.originatorVersion)
            if !seen.insert(key).inserted || Self.contains(s.events[e.originatorID], version: e.originatorVersion) {
                throw EventSourcingError(.concurrencyConflict, "an event with this originator id and version exists",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
        }
        var ids: [Int64] = []
        ids.reserveCapacity(events.count)
        for e in events {
            Self.insertSorted(e, into: &s.events[e.originatorID, default: []])
            let id = Int64(s.log.count + 1)
            s.log.append(StoredNotification(id: id, originatorID: e.originatorID, originatorVersion: e.originatorVersion,
                                      topic: e.topic, state: e.state))
            ids.append(id)
        }
        s.commits.signal()
        return ids
    }

    public func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        let all = state.withLock { $0.events[query.originatorID] ?? [] }
        var out = all.filter { query.contains(version: $0.originatorVersion) }
        if query.order == .descending { out.reverse() }
        if let limit = query.limit { out = Array(out.prefix(max(0, limit))) }
        return out
    }

    public func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        guard limit > 0 else { return [] }
        let topicSet = Set(topics)
        return state.withLock { s in
            var out: [StoredNotification] = []
            var i = max(0, Int(clamping: start) - 1)
            while i < s.log.count, out.count < limit {
                let n = s.log[i]
                if let stop, n.id > stop { break }
                if topicSet.isEmpty || topicSet.contains(n.topic) { out.append(n) }
                i += 1
            }
            return out
        }
    }

    public func maxNotificationID() async throws -> Int64? {
        state.withLock { $0.log.last?.id }
    }

    public func insertSnapshot(_ snapshot: StoredEvent) async throws {
        state.withLock { s in
            var list = s.snapshots[snapshot.originatorID] ?? []
            list.removeAll { $0.originatorVersion == snapshot.originatorVersion }
            Self.insertSorted(snapshot, into: &list)
            s.snapshots[snapshot.originatorID] = list
        }
    }

    public func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        state.withLock { s in
            (s.snapshots[originatorID] ?? []).last { snap in lte.map { snap.originatorVersion <= $0 } ?? true }
        }
    }

    public func deleteSnapshots(keyScope: String) async throws -> Int {
        state.withLock { s in
            var deleted = 0
            for (id, list) in s.snapshots {
                let kept = list.filter { $0.keyScope.map { !ExactScope.same($0, keyScope) } ?? true }
                deleted += list.count - kept.count
                s.snapshots[id] = kept.isEmpty ? nil : kept
            }
            return deleted
        }
    }

    private struct EventKey: Hashable { var id: UUID; var version: Int }

    private static func contains(_ list: [StoredEvent]?, version: Int) -> Bool {
        guard let list, !list.isEmpty else { return false }
        // Contiguous versions from 1 is the common case: O(1) probe before the search.
        if version >= 1, version <= list.count, list[version - 1].originatorVersion == version { return true }
        return list.contains { $0.originatorVersion == version }
    }

    private static func insertSorted(_ e: StoredEvent, into list: inout [StoredEvent]) {
        if let last = list.last, last.originatorVersion > e.originatorVersion {
            let i = list.firstIndex { $0.originatorVersion > e.originatorVersion } ?? list.count
            list.insert(e, at: i)
        } else {
            list.append(e)
        }
    }
}
