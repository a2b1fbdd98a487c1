import Foundation

/// One upstream event's processing: what the policy reads and saves; everything collected is
/// committed with the tracking record, atomically, when process returns.
public final class ProcessingContext: Sendable {
    /// The follower's own application.
    public let application: Application

    init(application: Application) {
        self.application = application
    }

    /// The event being processed; nil in ``ProcessPolicy/erase(keyScope:in:)``.
    public var upstream: UpstreamEvent? { fatalError("unimplemented") }

    /// Gets one of the follower's own aggregates, with the events collected in this context applied.
    public func get<A: Aggregate>(_ type: A.Type, id: UUID) async throws -> AggregateRoot<A> {
        fatalError("unimplemented")
    }

    /// Whether the follower's own store (or this context's collected events) holds aggregate `id`.
    public func contains(_ id: UUID) async throws -> Bool {
        fatalError("unimplemented")
    }

    /// Queues `root`'s pending events for the commit with the tracking record and marks them saved.
    public func collect<A: Aggregate>(_ root: inout AggregateRoot<A>) throws {
        fatalError("unimplemented")
    }
}
