import Foundation

/// What a process application does with each event of its leaders.
public protocol ProcessPolicy: Sendable {
    /// Topics wanted from the leaders (empty: all); erasure records always arrive (erase below).
    var topics: [String] { get }
    /// One upstream event, in its leader's log order; may get and collect own aggregates.
    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws
    /// A leader's erasure record for keyScope, after the library has made the scope shredded
    /// in the follower's own store; default does nothing.
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
