import Foundation
import KeyManagement

/// An append-only, event-sourced sequence of values, used as an index: "every customer id",
/// "the customer ids by e-mail hash" (Python `eventsourcing`'s `EventSourcedLog`).
///
/// ```swift
/// let customers = try EventSourcedLog<UUID>(name: "customers", application: app)
/// try await customers.append(customer.id, keyScope: customer.keyScope)
/// let newest = try await customers.last()?.value
/// let page = try await customers.entries(after: 100, limit: 50)
/// ```
///
/// Each entry is one event of one originator, the log's id (``id(forName:)``, derived from its
/// name), at version = the entry's ``LoggedEntry/position`` (1, 2, 3, …: no gaps). Entries are
/// stored like every event: encoded, compressed and sealed by the application's mapper; the
/// record's plaintext columns hold only the log id, the position and the topic ``topic``.
/// The name is never stored (only the id derived from it).
///
/// An entry may name a key scope (a data subject): it is then sealed under that subject's data
/// key, so shredding the subject erases the entry too, and reads return it as
/// ``LoggedEntry/Content/shredded(keyScope:at:)`` (its position stays). Without one, it is
/// sealed under the log's own scope (its id).
///
/// Appends from many tasks or processes all land: an append reads the last position, writes the
/// next, and on a concurrency conflict (another append took that position) reads again and
/// retries. The log order is the order in which appends committed.
///
/// ``append(_:keyScope:maxAttempts:)`` is a save of its own. To keep an index consistent with
/// the aggregate it indexes, save the entry with it in one atomic save
/// (``pendingEntry(_:keyScope:)``, then `app.save(&customer, &entry)`), or keep the index in a
/// process application and collect the entry in its ``ProcessingContext``, where it commits
/// with the tracking record, exactly once. An `append` from a process policy is not part of
/// that commit and is repeated when the event is processed again.
///
/// An index keyed by personal data (an e-mail address) must not store the address, not even
/// inside an entry that is encrypted, when the entry's purpose is a look-up: store a keyed hash
/// (HMAC-SHA-256 with a secret kept out of the store) of the normalised address, and seal the
/// entry under the person's scope. An unkeyed hash of an address is personal data too: anyone
/// can hash a list of addresses and compare.
public struct EventSourcedLog<Entry: Codable & Sendable>: Sendable {
    /// The log's name, as given (not stored: only the id derived from it is).
    public let name: String
    /// The originator id of the log's events: ``id(forName:)``.
    public let id: UUID
    /// The application the log is stored in.
    public let application: Application

    /// The topic of every entry of every log.
    public static var topic: String { LogEntries<Entry>.typeName + "." + LogEntries<Entry>.eventTopicName }
    /// The longest name, in bytes of UTF-8.
    public static var maxNameBytes: Int { 255 }
    /// The most entries one read returns.
    public static var maxPageSize: Int { 1000 }
    /// How many times ``append(_:keyScope:maxAttempts:)`` tries by default.
    public static var defaultAttempts: Int { 100 }

    /// A log named `name` in `application`.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for a name that is empty, longer
    ///   than ``maxNameBytes`` bytes of UTF-8, or holds NUL (described by its length, never quoted).
    public init(name: String, application: Application) throws(EventSourcingError) {
        self.id = try Self.id(forName: name)
        self.name = name
        self.application = application
    }

    /// The log id of `name`: a version-8 UUID made of the first 16 bytes of
    /// SHA-256(`"eventsourcing.log/1\0"` || the name's UTF-8 bytes), with the RFC 9562 version
    /// and variant bits set. Aggregate ids are random version-4 UUIDs and erasure records use
    /// another prefix, so a log never shares an aggregate's id by chance.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for a bad name (see ``init(name:application:)``).
    public static func id(forName name: String) throws(EventSourcingError) -> UUID {
        let bytes = name.utf8.count
        guard bytes >= 1 else { throw EventSourcingError(.invalidArgument, "an event-sourced log's name must not be empty") }
        guard bytes <= maxNameBytes else {
            throw EventSourcingError(.invalidArgument,
                                     "an event-sourced log's name is at most \(maxNameBytes) bytes of UTF-8; this one has \(bytes)")
        }
        guard !name.utf8.contains(0) else {
            throw EventSourcingError(.invalidArgument, "an event-sourced log's name must not contain NUL (this one of \(bytes) bytes does)")
        }
        return try DerivedID.v8(Array("eventsourcing.log/1\0".utf8) + Array(name.utf8))
    }

    // MARK: Appending

    /// Appends `value` at the next position, in a save of its own.
    /// - Parameters:
    ///   - value: the entry.
    ///   - keyScope: the data subject the entry belongs to (sealed under its key, erased by its
    ///     shred); nil for the log's own scope. A UUID-shaped scope is used in lowercase, the
    ///     form aggregate ids are stored under.
    ///   - maxAttempts: how many times to try when other appends take the position first
    ///     (1 or more).
    /// - Returns: the entry's recording: its position is ``Recording/originatorVersion``.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` (a bad scope or `maxAttempts`),
    ///   `.shredded` (the scope was erased), `.aggregateTypeMismatch` when the log's id holds
    ///   another aggregate's events, `.concurrencyConflict` after `maxAttempts` lost races,
    ///   and what a save throws. Nothing is written when it throws.
    @discardableResult
    public func append(_ value: Entry, keyScope: String? = nil, maxAttempts: Int = defaultAttempts) async throws -> Recording {
        guard maxAttempts >= 1 else {
            throw EventSourcingError(.invalidArgument, "maxAttempts must be at least 1, got \(maxAttempts)", originatorID: id)
        }
        var attempt = 1
        while true {
            var entry = try await pendingEntry(value, keyScope: keyScope)
            do {
                let recordings = try await application.save(&entry)
                guard let recording = recordings.first else {
                    throw EventSourcingError(.recorderFailure, "the recorder stored the entry but returned no recording",
                                             originatorID: id, originatorVersion: entry.version)
                }
                return recording
            } catch let e as EventSourcingError where e.isConcurrencyConflict && attempt < maxAttempts {
                // Another append took the position: read the new head and try the next one.
                attempt += 1
                await Task.yield()
            }
        }
    }

    /// The next entry, not saved yet: a root of the log's events with `value` pending at the
    /// position after the last one, to save atomically with other aggregates
    /// (`app.save(&customer, &entry)`, Python's `trigger_event`), or to collect in a process
    /// application's ``ProcessingContext`` (`context.collect(&entry)`), so the entry commits
    /// with the policy's other events and its tracking record, exactly once.
    ///
    /// More entries under the same key scope can be recorded on the root before it is saved
    /// (`try entry.record(.init(value: next))`). A save that fails with `.concurrencyConflict`
    /// lost the position to another append: get a new pending entry and save again
    /// (``Application/retryingOnConflict(maxAttempts:isolation:_:)``). Only one pending entry
    /// per log goes in one save.
    /// - Throws: as ``append(_:keyScope:maxAttempts:)`` (a shredded scope is refused by the save).
    public func pendingEntry(_ value: Entry, keyScope: String? = nil) async throws -> AggregateRoot<LogEntries<Entry>> {
        let scope = try keyScope.map(entryScope) ?? AggregateRoot<LogEntries<Entry>>.ownScope(id)
        let head = try await application.recorder.selectEvents(originatorID: id, order: .descending, limit: 1).first
        if let head { try check(head) }
        let version = head?.originatorVersion ?? 0
        guard version < Int.max else {
            throw EventSourcingError(.invalidEvent, "the log is at the highest position (\(version)): no entry can follow",
                                     originatorID: id, originatorVersion: version)
        }
        // A root at the log's last position whose key scope is the entry's (the state's subject
        // gives it to a first entry too): its pending events are sealed under that scope.
        var root = AggregateRoot<LogEntries<Entry>>(id: id, version: version, createdOn: Date(), modifiedOn: Date(),
                                                    state: LogEntries(subject: scope), keyScope: scope)
        try root.record(LogEntries<Entry>.Event(value: value))
        return root
    }

    /// `scope` checked, a UUID-shaped one in lowercase.
    private func entryScope(_ scope: String) throws(EventSourcingError) -> String {
        do { try KeyScope.validate(scope) } catch {
            throw EventSourcingError(.invalidArgument, "not a key scope id: \(error.message)", originatorID: id)
        }
        return Application.canonicalScope(scope)
    }

    // MARK: Reading

    /// The first entry, nil for an empty log.
    /// - Throws: as ``entries(after:upTo:order:limit:)``.
    public func first() async throws -> LoggedEntry<Entry>? {
        try await entries(limit: 1).first
    }

    /// The last entry, nil for an empty log.
    /// - Throws: as ``entries(after:upTo:order:limit:)``.
    public func last() async throws -> LoggedEntry<Entry>? {
        try await entries(order: .descending, limit: 1).first
    }

    /// The entry at `position`, nil when there is none.
    /// - Throws: `.invalidArgument` for a position below 1; as ``entries(after:upTo:order:limit:)``.
    public func entry(at position: Int) async throws -> LoggedEntry<Entry>? {
        guard position >= 1 else {
            throw EventSourcingError(.invalidArgument, "log positions start at 1, got \(position)", originatorID: id)
        }
        return try await entries(after: position - 1, upTo: position, limit: 1).first
    }

    /// The entries whose position is after `after` (exclusive) and up to `upTo` (inclusive), in
    /// `order`, at most `limit` of them. To page, pass the last position read as `after`
    /// (ascending) or as `upTo` minus one (descending). An empty range (`upTo <= after`) reads
    /// nothing.
    ///
    /// A shredded entry is returned as ``LoggedEntry/Content/shredded(keyScope:at:)``, not thrown.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` for `limit` outside
    ///   1...``maxPageSize`` or a negative `after` or `upTo`; `.aggregateTypeMismatch` when the
    ///   log's id holds another aggregate's events; `.integrityFailure`, `.keyUnavailable`,
    ///   `.decodingFailed` naming the record that failed.
    public func entries(after: Int? = nil, upTo: Int? = nil, order: EventOrder = .ascending,
                        limit: Int) async throws -> [LoggedEntry<Entry>] {
        guard (1...Self.maxPageSize).contains(limit) else {
            throw EventSourcingError(.invalidArgument, "a read of an event-sourced log returns 1 to \(Self.maxPageSize) entries, not \(limit)",
                                     originatorID: id)
        }
        if let after, after < 0 {
            throw EventSourcingError(.invalidArgument, "after must not be negative, got \(after)", originatorID: id)
        }
        if let upTo, upTo < 0 {
            throw EventSourcingError(.invalidArgument, "upTo must not be negative, got \(upTo)", originatorID: id)
        }
        if let after, let upTo, upTo <= after { return [] }
        let query = EventQuery(originatorID: id, after: after, upTo: upTo, order: order, limit: limit)
        let stored = try await application.recorder.selectEvents(query)
        guard stored.count <= limit else {
            throw EventSourcingError(.recorderFailure, "the recorder returned \(stored.count) events for a limit of \(limit)",
                                     originatorID: id)
        }
        await application.mapper.prefetchKeys(for: stored)
        var out: [LoggedEntry<Entry>] = []
        out.reserveCapacity(stored.count)
        for s in stored {
            guard s.originatorID == id, query.contains(version: s.originatorVersion) else {
                throw EventSourcingError(.recorderFailure, "the recorder returned an event outside the log's range",
                                         originatorID: s.originatorID, originatorVersion: s.originatorVersion, topic: s.topic)
            }
            try check(s)
            let scope = RecordFormat.keyScope(of: s.state)
            do {
                let e = try await application.mapper.decode(s, as: LogEntries<Entry>.self)
                out.append(LoggedEntry(logID: id, position: s.originatorVersion, keyScope: scope,
                                       content: .value(e.event.value, recordedAt: e.timestamp)))
            } catch let e as EventSourcingError where e.code == .shredded {
                out.append(LoggedEntry(logID: id, position: s.originatorVersion, keyScope: e.keyScope ?? scope,
                                       content: .shredded(keyScope: e.keyScope ?? scope ?? "", at: e.shreddedAt)))
            }
        }
        return out
    }

    /// Refuses a record at the log's id that is not a log entry (another aggregate's event, or
    /// an erasure record), naming it.
    private func check(_ s: StoredEvent) throws(EventSourcingError) {
        guard s.topic == Self.topic else {
            throw EventSourcingError(.aggregateTypeMismatch,
                                     "the event-sourced log's id holds a record that is not a log entry: nothing was read or written",
                                     originatorID: s.originatorID, originatorVersion: s.originatorVersion, topic: s.topic)
        }
    }
}

/// One entry of an ``EventSourcedLog``.
public struct LoggedEntry<Entry: Codable & Sendable>: Sendable {
    /// What the entry holds.
    public enum Content: Sendable {
        /// The value, and when it was appended.
        case value(Entry, recordedAt: Date)
        /// The entry's key scope was crypto-shredded at `at`: its value is gone for good.
        case shredded(keyScope: String, at: Date?)
    }

    /// The log's id (the originator id of its events).
    public let logID: UUID
    /// The entry's position in the log: 1, 2, 3, … (its event's originator version).
    public let position: Int
    /// The key scope the entry is sealed under (from its record header); nil when unencrypted.
    public let keyScope: String?
    /// What the entry holds.
    public let content: Content

    /// The value, nil when shredded.
    public var value: Entry? { if case .value(let v, _) = content { return v } else { return nil } }

    /// Whether the entry's key scope was shredded.
    public var isShredded: Bool { if case .shredded = content { return true } else { return false } }

    /// The value.
    /// - Throws: ``EventSourcingError/Code/shredded`` naming the log id, the position and the scope.
    public func get() throws(EventSourcingError) -> Entry {
        switch content {
        case .value(let v, _): return v
        case .shredded(let scope, let at):
            throw EventSourcingError(.shredded, "the log entry's key scope was crypto-shredded", originatorID: logID,
                                     originatorVersion: position, topic: EventSourcedLog<Entry>.topic, keyScope: scope, shreddedAt: at)
        }
    }
}

/// The events of an ``EventSourcedLog``, as an aggregate type: what
/// ``EventSourcedLog/pendingEntry(_:keyScope:)`` returns a root of. It is never read back as an
/// aggregate (it has no state; read the log). Its topic is `eventsourcing.log/1.appended` and
/// its event's JSON is `{"value": <the entry>}`.
public struct LogEntries<Entry: Codable & Sendable>: Aggregate {
    public static var typeName: String { "eventsourcing.log/1" }
    static var eventTopicName: String { "appended" }

    /// One entry.
    public struct Event: Codable, Sendable {
        /// The entry's value.
        public var value: Entry
        /// An entry of `value`.
        public init(value: Entry) { self.value = value }
    }

    public static func topicName(of event: Event) -> String { eventTopicName }

    /// The key scope of the entries pending on a root (never stored: the record header holds it).
    var subject: String?

    public init() {}
    init(subject: String) { self.subject = subject }

    public var dataSubject: String? { subject }
    public mutating func apply(_ event: Event) {}

    private enum CodingKeys: CodingKey {}
}
