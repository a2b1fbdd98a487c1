import Foundation

/// What a projection whose view lives outside the store's database gets with each call: its
/// name and the notification being processed.
///
/// Such a view cannot share a transaction with the tracking record, so delivery is **at least
/// once**: a crash (or a failed tracking write) after the view was written and before the
/// position was recorded delivers the notification again. Make the view's writes idempotent:
/// keyed writes (upserts, deletes), or the notification id stored with each row and compared.
public struct ProjectionContext: Sendable, Hashable {
    /// The projection's name.
    public var name: String
    /// The notification being processed (the erasure record's for an erase); 0 outside a
    /// notification (set-up, drop).
    public var notificationID: Int64

    public init(name: String, notificationID: Int64) {
        self.name = name
        self.notificationID = notificationID
    }
}

/// A ``ProjectionStore`` for views that live anywhere (in memory, another database, a search
/// index): the tracking position is kept by `tracking` (any ``TrackingRecorder``, such as the
/// application's store) and written after the projection's calls return. At least once: see
/// ``ProjectionContext``.
public struct AtLeastOnceProjectionStore: ProjectionStore {
    public typealias Context = ProjectionContext

    /// Where the positions are kept.
    public let tracking: any TrackingRecorder

    public init(tracking: any TrackingRecorder) {
        self.tracking = tracking
    }

    public func projectionPosition(_ name: String) async throws -> Int64? {
        try await tracking.maxTrackingID(name)
    }

    /// Runs the steps one after another, then records the last one that completed. A failing
    /// step's own writes are not undone (the view is the projection's); the steps before it are
    /// recorded.
    public func applyProjectionBatch(_ batch: ProjectionBatch<ProjectionContext>) async throws
        -> ProjectionBatch<ProjectionContext>.Outcome {
        var done: Int64?
        var failure: (notificationID: Int64, error: any Error)?
        for step in batch.steps {
            if let body = step.body {
                do {
                    try await body(ProjectionContext(name: batch.name, notificationID: step.notificationID))
                } catch {
                    failure = (step.notificationID, error)
                    break
                }
            }
            done = step.notificationID
        }
        if let done { try await tracking.insertTracking(Tracking(name: batch.name, notificationID: done)) }
        return .init(committedThrough: done, failure: failure)
    }

    /// Runs `body`. When resetting, the tracking record is deleted **first**: a crash before
    /// `body` (the drop) completes leaves the old view with no position, and the next run
    /// processes the log again into it (which an at-least-once view tolerates), never an empty
    /// view that claims to be up to date.
    public func projectionTransaction(_ name: String, resettingTracking: Bool,
                                      _ body: @escaping @Sendable (ProjectionContext) async throws -> Void) async throws {
        try Tracking.validate(name: name)
        if resettingTracking { try await tracking.deleteTracking(name) }
        try await body(ProjectionContext(name: name, notificationID: 0))
    }
}
