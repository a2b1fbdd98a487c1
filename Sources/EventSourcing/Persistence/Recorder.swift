import Foundation
import KeyManagement

/// Stores the events of aggregates, with optimistic concurrency on `(originatorID, originatorVersion)`.
///
/// Implementations are used from many tasks at once.
public protocol AggregateRecorder: Sendable {
    /// Inserts all `events` atomically: either every one is stored or none is.
    /// - Returns: the notification ids given to the events, in order (empty if the recorder has none).
    /// - Throws: ``EventSourcingError/Code/concurrencyConflict`` naming the first conflicting
    ///   `(originatorID, originatorVersion)` if any already exists; nothing is written then.
    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64]

    /// The events of one aggregate that `query` selects: versions after ``EventQuery/after``
    /// (exclusive) and up to ``EventQuery/upTo`` (inclusive), in ``EventQuery/order``, at most
    /// ``EventQuery/limit`` of them. Callers usually write
    /// ``selectEvents(originatorID:after:upTo:order:limit:)``.
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent]
}

/// An ``AggregateRecorder`` that also keeps the application's totally ordered notification log.
public protocol ApplicationRecorder: AggregateRecorder {
    /// Notifications with `start <= id` (and `id <= stop` if given), ascending, at most
    /// `limit`, only those whose topic is in `topics` when `topics` is not empty.
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification]

    /// The highest notification id, or nil when the log is empty.
    func maxNotificationID() async throws -> Int64?
}

/// Stores aggregate snapshots. A snapshot is a ``StoredEvent`` whose version is the
/// aggregate version it captures.
public protocol SnapshotRecorder: Sendable {
    /// Stores a snapshot; a second snapshot of the same `(originatorID, originatorVersion)` replaces it.
    func insertSnapshot(_ snapshot: StoredEvent) async throws
    /// The latest snapshot with version ≤ `lte` (any version when nil).
    func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent?
    /// Deletes every snapshot whose header names `keyScope`; returns how many were deleted.
    func deleteSnapshots(keyScope: String) async throws -> Int
}

/// A recorder that can store newly created data keys in the same transaction as the events
/// encrypted under them, so a crash never leaves one without the other.
public protocol KeyCommittingRecorder: ApplicationRecorder {
    /// Inserts `newKeys` and `events` in one transaction.
    /// - Throws: like ``AggregateRecorder/insertEvents(_:)``, and `KeyManagementError` with
    ///   `.keyExists` if another writer created one of the keys first, or `.shredded` if a
    ///   scope was shredded meanwhile.
    func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey]) async throws -> [Int64]

    /// The key store that shares this recorder's transactions.
    var keyStore: any KeyStore { get }

    /// Whether keys inserted into `keyStore` can be stored in the same transaction as events
    /// through ``insertEvents(_:newKeys:)``. When false, the application persists a save's new
    /// keys through `keyStore` first and then inserts the events: a failure between the two
    /// leaves a key without records, never records without their key. The default is true only
    /// when `keyStore` is the very object ``keyStore`` returns.
    func sharesTransactions(with keyStore: any KeyStore) -> Bool
}

extension KeyCommittingRecorder {
    public func sharesTransactions(with keyStore: any KeyStore) -> Bool {
        (keyStore as AnyObject) === (self.keyStore as AnyObject)
    }
}

/// The order of an aggregate's events in a read.
public enum EventOrder: Sendable, Hashable {
    /// Oldest first (ascending versions).
    case ascending
    /// Newest first (descending versions).
    case descending
}

/// Which events of one aggregate a read selects (see ``AggregateRecorder/selectEvents(_:)``).
public struct EventQuery: Sendable, Hashable {
    /// The aggregate.
    public var originatorID: UUID
    /// Only versions above this one (exclusive); nil for no lower bound.
    public var after: Int?
    /// Only versions up to this one (inclusive); nil for no upper bound.
    public var upTo: Int?
    /// Oldest or newest first.
    public var order: EventOrder
    /// At most this many events (zero or less selects none); nil for no limit.
    public var limit: Int?

    public init(originatorID: UUID, after: Int? = nil, upTo: Int? = nil, order: EventOrder = .ascending, limit: Int? = nil) {
        self.originatorID = originatorID
        self.after = after
        self.upTo = upTo
        self.order = order
        self.limit = limit
    }

    /// Whether `version` lies in the query's range.
    public func contains(version: Int) -> Bool {
        (after.map { version > $0 } ?? true) && (upTo.map { version <= $0 } ?? true)
    }
}

extension AggregateRecorder {
    /// The events of one aggregate whose version is after `after` (exclusive) and up to `upTo`
    /// (inclusive), in `order`, at most `limit` of them; with no arguments, all of its events,
    /// oldest first.
    public func selectEvents(originatorID: UUID, after: Int? = nil, upTo: Int? = nil, order: EventOrder = .ascending,
                             limit: Int? = nil) async throws -> [StoredEvent] {
        try await selectEvents(EventQuery(originatorID: originatorID, after: after, upTo: upTo, order: order, limit: limit))
    }

    @available(*, deprecated, renamed: "selectEvents(originatorID:after:upTo:order:limit:)")
    public func selectEvents(originatorID: UUID, gt: Int?, lte: Int?, desc: Bool, limit: Int?) async throws -> [StoredEvent] {
        try await selectEvents(EventQuery(originatorID: originatorID, after: gt, upTo: lte, order: desc ? .descending : .ascending, limit: limit))
    }
}
