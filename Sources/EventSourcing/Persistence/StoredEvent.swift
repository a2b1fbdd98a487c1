import Foundation

/// An event (or snapshot) as a recorder stores it: plaintext coordinates plus opaque `state`.
///
/// `originatorID`, `originatorVersion` and `topic` are stored in plaintext for ordering,
/// concurrency control and topic filters: they must never carry personal data.
///
/// The mapper stamps ``keyScope`` on every record it seals, so a recorder can store it in a
/// column (to find a scope's records without decrypting) without knowing the record format.
/// Equality and hashing are the stored record's (`originatorID`, `originatorVersion`, `topic`,
/// `state`): ``keyScope`` is a copy of what the header says, and a recorder that does not keep
/// it reads records back with `keyScope == nil`.
public struct StoredEvent: Sendable, Hashable {
    /// The aggregate id.
    public var originatorID: UUID
    /// The aggregate version this event produces (1 for the creation event).
    public var originatorVersion: Int
    /// The stable topic, e.g. `"Customer.registered"`.
    public var topic: String
    /// The mapper's output: header and (usually compressed and encrypted) payload.
    public var state: [UInt8]
    /// The key scope the record is sealed under, as stamped by the mapper (nil for an
    /// unencrypted record, or a record read from a recorder that does not keep it).
    ///
    /// A hint for recorders (a `key_scope` column, a plaintext check, a tombstone check), never
    /// trusted on reads: the mapper opens a record under the scope its authenticated header
    /// names. A record built by hand (a test, a tool) must stamp it itself.
    public var keyScope: String?

    /// Creates a stored event.
    public init(originatorID: UUID, originatorVersion: Int, topic: String, state: [UInt8], keyScope: String? = nil) {
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.topic = topic
        self.state = state
        self.keyScope = keyScope
    }

    public static func == (a: StoredEvent, b: StoredEvent) -> Bool {
        a.originatorID == b.originatorID && a.originatorVersion == b.originatorVersion && a.topic == b.topic && a.state == b.state
    }

    public func hash(into h: inout Hasher) {
        h.combine(originatorID)
        h.combine(originatorVersion)
        h.combine(topic)
        h.combine(state)
    }
}

/// A stored event together with its position in the application's notification log.
public struct StoredNotification: Sendable, Hashable {
    /// Position in the log: 1, 2, 3, … in commit order.
    public var id: Int64
    /// The aggregate id.
    public var originatorID: UUID
    /// The aggregate version.
    public var originatorVersion: Int
    /// The topic.
    public var topic: String
    /// The stored state bytes.
    public var state: [UInt8]

    /// Creates a notification.
    public init(id: Int64, originatorID: UUID, originatorVersion: Int, topic: String, state: [UInt8]) {
        self.id = id
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.topic = topic
        self.state = state
    }

    /// The stored event this notification carries.
    public var storedEvent: StoredEvent {
        StoredEvent(originatorID: originatorID, originatorVersion: originatorVersion, topic: topic, state: state)
    }
}
