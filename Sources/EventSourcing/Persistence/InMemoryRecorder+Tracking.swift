import Foundation
import Synchronization

/// Tracking records in memory: one position per name, checked and moved under the recorder's
/// lock, so a tracked insert's events and position change together.
extension InMemoryRecorder: ProcessRecorder {
    public func insertTracking(_ tracking: Tracking) async throws {
        try tracking.validate()
        try state.withLock { (s) throws(EventSourcingError) in
            try tracking.checkFollows(s.tracking[tracking.name])
            s.tracking[tracking.name] = tracking.notificationID
        }
    }

    public func maxTrackingID(_ name: String) async throws -> Int64? {
        try Tracking.validate(name: name)
        return state.withLock { $0.tracking[name] }
    }

    public func hasTrackingID(_ name: String, _ notificationID: Int64) async throws -> Bool {
        try Tracking.validate(name: name)
        return state.withLock { s in s.tracking[name].map { notificationID <= $0 } ?? false }
    }

    public func deleteTracking(_ name: String) async throws {
        try Tracking.validate(name: name)
        state.withLock { _ = $0.tracking.removeValue(forKey: name) }
    }

    public func trackingPositions(after name: String?, limit: Int) async throws -> [Tracking] {
        try Tracking.validatePage(after: name, limit: limit)
        let recorded = state.withLock { $0.tracking }
        return recorded.filter { entry in name.map { Tracking.precedes($0, entry.key) } ?? true }
            .sorted { Tracking.precedes($0.key, $1.key) }
            .prefix(limit)
            .map { Tracking(name: $0.key, notificationID: $0.value) }
    }

    public func insertEvents(_ events: [StoredEvent], tracking: Tracking?) async throws -> [Int64] {
        guard let tracking else { return try await insertEvents(events) }
        try tracking.validate()
        return try state.withLock { (s) throws(EventSourcingError) -> [Int64] in
            // The position is checked before anything is appended: a refused write changes nothing.
            try tracking.checkFollows(s.tracking[tracking.name])
            let ids = try Self.insert(events, into: &s)
            s.tracking[tracking.name] = tracking.notificationID
            return ids
        }
    }
}
