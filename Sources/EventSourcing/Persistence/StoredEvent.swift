import Foundation

/// An event (or snapshot) as a recorder stores it: plaintext coordinates plus opaque `state`.
///
/// `originatorID`, `originatorVersion` and `topic` are stored in plaintext for ordering,
/// concurrency control and topic filters: they must never carry personal data.
public struct StoredEvent: Sendable, Hashable {
    /// The aggregate id.
    public var originatorID: UUID
    /// The aggregate version this event produces (1 for the creation event).
    public var originatorVersion: Int
    /// The stable topic, e.g. `"Customer.registered"`.
    public var topic: String
    /// The mapper's output: header and (usually compressed and encrypted) payload.
    public var state: [UInt8]

    /// Creates a stored event.
    public init(originatorID: UUID, originatorVersion: Int, topic: String, state: [UInt8]) {
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.topic = topic
        self.state = state
    }

    /// The key scope named in the state's header, or nil for an unencrypted record.
    /// Recorders may store it in a column to find a scope's records without decrypting.
    public var keyScope: String? { StateHeader.peekKeyScope(state) }
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
