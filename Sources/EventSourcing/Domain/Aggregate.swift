import Foundation

/// An event-sourced aggregate: a value type whose state changes only by applying its events.
///
/// ```swift
/// struct Dog: Aggregate {
///     static let typeName = "Dog"
///     enum Event: Codable, Sendable { case registered(name: String), addedTrick(String) }
///     var name = ""
///     var tricks: [String] = []
///     mutating func apply(_ event: Event) {
///         switch event {
///         case .registered(let name): self.name = name
///         case .addedTrick(let trick): tricks.append(trick)
///         }
///     }
/// }
/// ```
///
/// Topics are `"\(typeName).\(case name)"`. `typeName` is declared, not derived from the
/// Swift type name, so renaming or moving the Swift type never changes stored topics. The
/// enum's case names are part of the stored format (Codable writes them too): rename a case
/// only together with an upcaster.
public protocol Aggregate: Codable, Sendable {
    /// The aggregate's events.
    associatedtype Event: Codable, Sendable

    /// The stable name used in topics. Never change it once events are stored.
    static var typeName: String { get }
    /// The schema version written with new events (default 1). Bump it when the event
    /// encoding changes, and teach ``upcastEvent(_:from:)`` the step from the previous version.
    static var eventSchemaVersion: Int { get }
    /// The schema version written with new snapshots (default 1).
    static var snapshotSchemaVersion: Int { get }

    /// The empty state before the first event.
    init()
    /// Applies one event to the state.
    /// - Throws: whatever the domain rules throw; the event is then not recorded.
    mutating func apply(_ event: Event) throws

    /// The data subject whose key encrypts this aggregate's events, or nil for the aggregate's
    /// own id. Give all of one person's aggregates the same subject so one shred erases them all.
    /// It is stored in plaintext in every record header: use an opaque id, never PII.
    var dataSubject: String? { get }

    /// The topic suffix for `event`; by default its enum case name.
    static func topicName(of event: Event) -> String

    /// Upgrades a stored event's JSON from schema `version` to `version + 1`.
    /// Called in a chain, v1 → v2 → …, when reading events stored with an older schema.
    static func upcastEvent(_ json: inout JSONValue, from version: Int) throws
    /// Upgrades a stored snapshot's JSON from schema `version` to `version + 1`.
    static func upcastSnapshot(_ json: inout JSONValue, from version: Int) throws
}

extension Aggregate {
    public static var eventSchemaVersion: Int { 1 }
    public static var snapshotSchemaVersion: Int { 1 }
    public var dataSubject: String? { nil }

    public static func topicName(of event: Event) -> String {
        // Enum cases with payloads reflect as one labelled child; bare cases describe as their name.
        if let label = Mirror(reflecting: event).children.first?.label { return label }
        return String(describing: event)
    }

    public static func upcastEvent(_ json: inout JSONValue, from version: Int) throws {
        throw EventSourcingError(.decodingFailed,
                                 "\(typeName) has no upcaster from event schema version \(version)")
    }

    public static func upcastSnapshot(_ json: inout JSONValue, from version: Int) throws {
        throw EventSourcingError(.decodingFailed,
                                 "\(typeName) has no upcaster from snapshot schema version \(version)")
    }

    /// The full topic of `event`: `"\(typeName).\(topicName(of:))"`.
    public static func topic(of event: Event) -> String { typeName + "." + topicName(of: event) }

    /// The topic under which snapshots of this type are stored.
    public static var snapshotTopic: String { typeName + "#snapshot" }
}

/// One recorded event of an aggregate: who, which version, when, and what.
public struct DomainEvent<Event: Sendable>: Sendable {
    /// The aggregate id.
    public let originatorID: UUID
    /// The aggregate version this event produces.
    public let originatorVersion: Int
    /// When the event was recorded.
    public let timestamp: Date
    /// The event itself.
    public let event: Event

    /// Creates an event.
    public init(originatorID: UUID, originatorVersion: Int, timestamp: Date, event: Event) {
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.timestamp = timestamp
        self.event = event
    }
}

extension DomainEvent: Equatable where Event: Equatable {}
