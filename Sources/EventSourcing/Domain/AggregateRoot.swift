import Foundation

/// Wraps an ``Aggregate``'s state with its identity, version, timestamps and the events
/// recorded but not yet saved. Read state through it directly: `dog.name`.
@dynamicMemberLookup
public struct AggregateRoot<A: Aggregate>: Sendable {
    /// The aggregate id.
    public let id: UUID
    /// The version: the number of events applied (0 before the first).
    public private(set) var version: Int
    /// When the first event was recorded.
    public private(set) var createdOn: Date
    /// When the latest event was recorded.
    public private(set) var modifiedOn: Date
    /// The current state.
    public private(set) var state: A
    /// Events recorded since the last save, oldest first.
    public private(set) var pendingEvents: [DomainEvent<A.Event>]
    /// The key scope that encrypts this aggregate's records: its data subject as of its
    /// creation event, else its id. Captured when the creation event is applied (or taken from
    /// the snapshot the root is restored from) and never changed after: a later event that
    /// changes ``Aggregate/dataSubject`` cannot move the aggregate's records to another scope.
    public private(set) var keyScope: String

    /// Starts a new aggregate with its creation event.
    /// - Throws: whatever `apply` throws for the event.
    public init(id: UUID = UUID(), _ creation: A.Event, at time: Date = Date()) throws {
        self.id = id
        self.version = 0
        self.createdOn = time
        self.modifiedOn = time
        self.state = A()
        self.pendingEvents = []
        self.keyScope = Self.ownScope(id)
        try record(creation, at: time)
    }

    /// An empty root to replay stored events into.
    init(id: UUID) {
        self.id = id
        self.version = 0
        self.createdOn = Date(timeIntervalSince1970: 0)
        self.modifiedOn = createdOn
        self.state = A()
        self.pendingEvents = []
        self.keyScope = Self.ownScope(id)
    }

    /// A root restored from a snapshot sealed under `keyScope` (nil for an unencrypted
    /// snapshot: the scope is then the state's data subject, else the id).
    init(id: UUID, version: Int, createdOn: Date, modifiedOn: Date, state: A, keyScope: String? = nil) {
        self.id = id
        self.version = version
        self.createdOn = createdOn
        self.modifiedOn = modifiedOn
        self.state = state
        self.pendingEvents = []
        self.keyScope = keyScope ?? state.dataSubject ?? Self.ownScope(id)
    }

    /// The scope of an aggregate without a data subject: its id in lowercase text form.
    static func ownScope(_ id: UUID) -> String { id.uuidString.lowercased() }

    /// Reads state: `root.name` is `root.state.name`.
    public subscript<T>(dynamicMember keyPath: KeyPath<A, T>) -> T { state[keyPath: keyPath] }

    /// Records a new event: applies it to the state and queues it for the next save.
    /// - Throws: ``EventSourcingError/Code/invalidEvent`` if the aggregate is at the highest
    ///   version (`Int.max`, which only a forged record can give it); whatever `apply` throws.
    ///   The state and queue are unchanged then.
    public mutating func record(_ event: A.Event, at time: Date = Date()) throws {
        guard version < Int.max else {
            throw EventSourcingError(.invalidEvent, "the aggregate is at the highest version (\(version)): no event can follow",
                                     originatorID: id, originatorVersion: version)
        }
        let e = DomainEvent(originatorID: id, originatorVersion: version + 1, timestamp: time, event: event)
        try apply(e)
        pendingEvents.append(e)
    }

    /// Applies an already recorded event (replay).
    /// - Throws: ``EventSourcingError/Code/invalidEvent`` if it belongs to another aggregate or
    ///   its version is not `version + 1`; whatever `apply` throws.
    public mutating func apply(_ e: DomainEvent<A.Event>) throws {
        guard e.originatorID == id else {
            throw EventSourcingError(.invalidEvent, "event belongs to another aggregate",
                                     originatorID: e.originatorID, originatorVersion: e.originatorVersion)
        }
        guard version < Int.max, e.originatorVersion == version + 1 else {
            throw EventSourcingError(.invalidEvent, version < Int.max ? "expected version \(version + 1)"
                                         : "the aggregate is at the highest version (\(version)): no event can follow",
                                     originatorID: id, originatorVersion: e.originatorVersion)
        }
        var next = state
        try next.apply(e.event)
        state = next
        if version == 0 {
            createdOn = e.timestamp
            keyScope = next.dataSubject ?? Self.ownScope(id)
        }
        version = e.originatorVersion
        modifiedOn = e.timestamp
    }

    /// Clears the pending events after they were saved.
    mutating func markSaved(through savedVersion: Int) {
        pendingEvents.removeAll { $0.originatorVersion <= savedVersion }
    }
}
