import Foundation

/// What a process application does with each event of its leaders.
///
/// A ``SystemRunner`` calls it for one upstream event at a time, in each leader's log order,
/// with a fresh ``ProcessingContext``. The policy reads its own aggregates through the context
/// (``ProcessingContext/get(_:id:)``) and hands what it changed to
/// ``ProcessingContext/collect(_:)``; when the call returns, the collected events and the
/// follower's new position in the leader's log commit in one transaction: each event is
/// processed **exactly once** (its effects are stored once, whenever the process stops). The
/// call itself may run again: after a crash before the commit, or a concurrency conflict on
/// the follower's own aggregates (then with a fresh context), so anything it does besides
/// collecting (sending mail, calling a service) happens at least once.
///
/// When it throws, the runner stops with `.processFailed` naming the follower, the leader, the
/// notification and its topic; nothing of that event is kept, and running again gives it again.
public protocol ProcessPolicy: Sendable {
    /// Topics wanted from the leaders (empty: all); erasure records always arrive
    /// (``erase(keyScope:in:)``). Events of other topics are skipped without a call.
    var topics: [String] { get }
    /// One upstream event, in its leader's log order; may get and collect own aggregates.
    /// Copies of personal data belong in aggregates of the same data subject
    /// (``Aggregate/dataSubject``) as the upstream event's, so one shred erases them too.
    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws
    /// A leader's erasure record for `keyScope`, after the library has made the scope shredded
    /// in the follower's own store: shredded in its keyring if that still had a key for it,
    /// its snapshots deleted. The erasure record is then committed to the follower's own log
    /// (for its projections and followers) with what this call collects and the tracking
    /// record. Delete or redact here what the follower keeps outside its encrypted events
    /// (a plaintext follower's copies). The default does nothing.
    func erase(keyScope: String, in context: ProcessingContext) async throws
}

extension ProcessPolicy {
    public var topics: [String] { [] }
    public func erase(keyScope: String, in context: ProcessingContext) async throws {}
}

/// One event of a leader's notification log, decrypted, as a process application's policy gets it.
public struct UpstreamEvent: Sendable {
    /// The leader application's name in the system.
    public let leader: String
    /// The log item (decrypted: ``LogItem/Outcome/decoded(_:)``).
    public let item: LogItem

    /// Creates an upstream event.
    public init(leader: String, item: LogItem) {
        self.leader = leader
        self.item = item
    }

    /// The event's position in the leader's notification log.
    public var notificationID: Int64 { item.notification.id }
    /// The event's topic.
    public var topic: String { item.notification.topic }
    /// The id of the leader's aggregate that recorded the event.
    public var originatorID: UUID { item.notification.originatorID }
    /// The event's version in that aggregate.
    public var originatorVersion: Int { item.notification.originatorVersion }

    /// Decodes the event as an event of aggregate type `A`.
    /// - Throws: as ``LogItem/event(as:)``: `.aggregateTypeMismatch` for another type's event.
    public func event<A: Aggregate>(as type: A.Type) throws -> DomainEvent<A.Event> {
        try item.event(as: type)
    }

    /// Nil when the topic is not one of A's (`typeName + "."`), else the decoded event.
    /// - Throws: as ``event(as:)`` for an event of `A`'s topics.
    public func event<A: Aggregate>(if type: A.Type) throws -> DomainEvent<A.Event>? {
        guard topic.hasPrefix(A.typeName + ".") else { return nil }
        return try item.event(as: type)
    }
}
