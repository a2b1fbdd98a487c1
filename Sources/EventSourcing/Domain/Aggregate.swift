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
    /// Read once, after the creation event: ``AggregateRoot/keyScope`` keeps that scope for
    /// the aggregate's whole life, whatever later events do to this property.
    var dataSubject: String? { get }

    /// The topic suffix for `event`; by default its enum case name as Codable writes it (never
    /// a description). Declare it for events that are not enums.
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

    /// The case name Codable writes for an `enum` event (the key of its keyed encoding, which is
    /// the case name for synthesised conformances), or for a payload-less `String`/`Int` raw-value
    /// enum, its case name. Never a `description`. Empty when no name can be derived (a `struct`
    /// event, or a raw-value enum with a custom description): the mapper then refuses to encode
    /// the event, and the type must declare `topicName(of:)`.
    public static func topicName(of event: Event) -> String {
        TopicNames.caseName(of: event)
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

/// Derives default topic names from the Codable encoding of enum events.
enum TopicNames {
    /// Stops the probe encoder as soon as the case name is known.
    private struct Stop: Error {}

    static func caseName<E: Encodable>(of event: E) -> String {
        // Only enums have case names: a struct's first property must never become its topic.
        guard Mirror(reflecting: event).displayStyle == .enum else { return "" }
        let probe = Probe()
        _ = try? event.encode(to: probe)
        if let key = probe.firstKey { return key }
        // A raw-value enum encodes as a single value: its case name is its description unless
        // it provides its own, which would make topics follow an edited description.
        if probe.singleValue, !(event is any CustomStringConvertible), !(event is any CustomDebugStringConvertible) {
            return String(describing: event)
        }
        return ""
    }

    /// An encoder that records the first key of the top-level keyed container and stops.
    private final class Probe: Encoder {
        var codingPath: [any CodingKey] { [] }
        var userInfo: [CodingUserInfoKey: Any] { [:] }
        var firstKey: String?
        var singleValue = false
        var started = false

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            defer { started = true }
            return KeyedEncodingContainer(Keyed<Key>(probe: started ? nil : self))
        }
        func unkeyedContainer() -> any UnkeyedEncodingContainer {
            started = true
            return Unkeyed()
        }
        func singleValueContainer() -> any SingleValueEncodingContainer {
            if !started { singleValue = true }
            started = true
            return Single()
        }

        func note(_ key: any CodingKey) { if firstKey == nil { firstKey = key.stringValue } }
    }

    private struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let probe: Probe?
        var codingPath: [any CodingKey] { [] }
        mutating func encodeNil(forKey key: Key) throws { probe?.note(key); throw Stop() }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { probe?.note(key); throw Stop() }
        mutating func nestedContainer<N: CodingKey>(keyedBy keyType: N.Type, forKey key: Key) -> KeyedEncodingContainer<N> {
            probe?.note(key)
            return KeyedEncodingContainer(Keyed<N>(probe: nil))
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            probe?.note(key)
            return Unkeyed()
        }
        mutating func superEncoder() -> any Encoder { Probe() }
        mutating func superEncoder(forKey key: Key) -> any Encoder {
            probe?.note(key)
            return Probe()
        }
    }

    private struct Unkeyed: UnkeyedEncodingContainer {
        var codingPath: [any CodingKey] { [] }
        var count: Int { 0 }
        mutating func encodeNil() throws { throw Stop() }
        mutating func encode<T: Encodable>(_ value: T) throws { throw Stop() }
        mutating func nestedContainer<N: CodingKey>(keyedBy keyType: N.Type) -> KeyedEncodingContainer<N> {
            KeyedEncodingContainer(Keyed<N>(probe: nil))
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { Unkeyed() }
        mutating func superEncoder() -> any Encoder { Probe() }
    }

    private struct Single: SingleValueEncodingContainer {
        var codingPath: [any CodingKey] { [] }
        mutating func encodeNil() throws { throw Stop() }
        mutating func encode<T: Encodable>(_ value: T) throws { throw Stop() }
    }
}
