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
    /// When the aggregate was discarded (``discard(at:)``), nil while it is not. A discarded
    /// root takes no more events.
    public private(set) var discardedOn: Date?
    /// Whether ``discard(at:)``'s marker is recorded but not saved yet.
    var discardPending = false
    /// The cipher's ``RecordCipher/erasureGeneration`` when this root was read from the store
    /// (nil for a root made in this process, or a cipher that cannot tell): the aggregate cache
    /// keeps a saved root only under the older of this and the save's own generation.
    var cacheGeneration: UInt64?

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

    /// Whether the aggregate was discarded (see ``discard(at:)``).
    public var isDiscarded: Bool { discardedOn != nil }

    /// Records a new event: applies it to the state and queues it for the next save.
    /// - Throws: ``EventSourcingError/Code/invalidEvent`` if the aggregate was discarded, or is
    ///   at the highest version (`Int.max`, which only a forged record can give it); whatever
    ///   `apply` throws. The state and queue are unchanged then.
    public mutating func record(_ event: A.Event, at time: Date = Date()) throws {
        try refuseIfDiscarded()
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
        try refuseIfDiscarded()
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

    /// Discards the aggregate: records the library's discard marker as its next version (`N`),
    /// to be saved like an event by ``Application/save(_:)``. Once it is saved,
    /// ``Repository/contains(_:)`` is false for the id, ``Repository/get(_:id:version:)`` throws
    /// ``EventSourcingError/Code/aggregateNotFound`` saying it was discarded at version `N`, and a
    /// get at a version below `N` still returns that version. The events stay in the store and
    /// the notification log, where the marker follows them (topic ``Aggregate/discardTopic``).
    /// The state is kept, readable, as it was; no event can be recorded after the marker.
    /// - Throws: ``EventSourcingError/Code/invalidEvent`` if the aggregate was already discarded
    ///   or is at the highest version; the root is unchanged then.
    public mutating func discard(at time: Date = Date()) throws {
        try refuseIfDiscarded()
        guard version < Int.max else {
            throw EventSourcingError(.invalidEvent, "the aggregate is at the highest version (\(version)): it cannot be discarded",
                                     originatorID: id, originatorVersion: version)
        }
        version += 1
        modifiedOn = time
        discardedOn = time
        discardPending = true
    }

    /// The unsaved discard marker's version and time, if ``discard(at:)`` was called since the last save.
    var pendingDiscard: (version: Int, at: Date)? {
        guard discardPending, let discardedOn else { return nil }
        return (version, discardedOn)
    }

    private func refuseIfDiscarded() throws(EventSourcingError) {
        guard isDiscarded else { return }
        throw EventSourcingError(.invalidEvent,
            "the aggregate was discarded at version \(version): no event can follow",
            originatorID: id, originatorVersion: version, topic: A.discardTopic)
    }

    /// Clears the pending events (and discard marker) after they were saved.
    mutating func markSaved(through savedVersion: Int) {
        pendingEvents.removeAll { $0.originatorVersion <= savedVersion }
        if discardPending, version <= savedVersion { discardPending = false }
    }

    /// The root with its timestamps as a stored record gives them back (seconds since 1970 as a
    /// `Double`), for the aggregate cache: a cached saved root reads like one loaded.
    func withStoredTimestamps() -> AggregateRoot<A> {
        var r = self
        r.createdOn = Date(timeIntervalSince1970: createdOn.timeIntervalSince1970)
        r.modifiedOn = Date(timeIntervalSince1970: modifiedOn.timeIntervalSince1970)
        r.discardedOn = discardedOn.map { Date(timeIntervalSince1970: $0.timeIntervalSince1970) }
        return r
    }
}
