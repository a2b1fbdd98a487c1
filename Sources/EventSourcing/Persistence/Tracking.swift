import Foundation
import KeyManagement

/// A tracking record: the position a follower of a notification log (a projection, a process
/// application) has reached, as `(name, notification id)`.
///
/// A recorder keeps, per name, the highest notification id recorded: a new record must be higher
/// (a position only moves forward, so it can't fill in a gap: 24 then 23 fails, and 24 then 24
/// fails). Written in the same transaction as a follower's own writes (events through
/// ``ProcessRecorder/insertEvents(_:tracking:)``, or a read model's rows), it makes processing
/// a notification exactly-once: the writes and the new position commit together or not at all,
/// and a restart resumes after ``TrackingRecorder/maxTrackingID(_:)``.
///
/// The name is stored in plaintext beside the events: it must not carry personal data.
public struct Tracking: Sendable, Hashable {
    /// The follower's name (an application or projection name): 1 to ``maxNameBytes`` bytes of
    /// UTF-8, without NUL.
    public var name: String
    /// The notification id processed (1 or more).
    public var notificationID: Int64

    /// Creates a tracking record (checked when it is inserted).
    public init(name: String, notificationID: Int64) {
        self.name = name
        self.notificationID = notificationID
    }

    /// The longest tracking name, in bytes of UTF-8.
    public static let maxNameBytes = 255

    /// Checks a tracking name: 1 to ``maxNameBytes`` bytes of UTF-8, without NUL.
    /// - Throws: `EventSourcingError` `.invalidArgument` saying what is wrong with it (a
    ///   name too long or holding NUL is described by its length, never quoted).
    public static func validate(name: String) throws(EventSourcingError) {
        let bytes = name.utf8.count
        if bytes == 0 {
            throw EventSourcingError(.invalidArgument, "a tracking name must not be empty")
        }
        if bytes > maxNameBytes {
            throw EventSourcingError(.invalidArgument,
                                     "a tracking name is at most \(maxNameBytes) bytes of UTF-8; this one has \(bytes)")
        }
        if name.utf8.contains(0) {
            throw EventSourcingError(.invalidArgument, "a tracking name must not contain NUL (this one of \(bytes) bytes does)")
        }
    }

    /// Checks the record: its name (``validate(name:)``) and a notification id of 1 or more
    /// (notification ids start at 1).
    /// - Throws: `EventSourcingError` `.invalidArgument`.
    public func validate() throws(EventSourcingError) {
        try Tracking.validate(name: name)
        guard notificationID >= 1 else {
            throw EventSourcingError(.invalidArgument,
                                     "tracking \"\(name)\": notification id \(notificationID) is not a notification id (they start at 1)",
                                     notificationID: notificationID)
        }
    }

    /// Whether `self` may follow `recorded` (the highest id recorded for its name, nil for none).
    /// - Throws: `EventSourcingError` `.trackingConflict` naming the name and both ids.
    public func checkFollows(_ recorded: Int64?) throws(EventSourcingError) {
        guard let recorded, notificationID <= recorded else { return }
        throw Tracking.conflict(name: name, recorded: recorded, refused: notificationID)
    }

    /// The error for a tracking record whose id is not above the recorded one.
    public static func conflict(name: String, recorded: Int64, refused: Int64) -> EventSourcingError {
        EventSourcingError(.trackingConflict,
                           "tracking \"\(name)\" has recorded notification id \(recorded); \(refused) is not higher (a tracking position only moves forward); nothing was written",
                           notificationID: refused)
    }
}

/// Records how far followers of a notification log have got: one position per name, which only
/// moves forward.
///
/// Implementations are used from many tasks at once: of concurrent inserts of the same id for
/// one name, exactly one succeeds.
public protocol TrackingRecorder: Sendable {
    /// Records `tracking` as its name's position.
    /// - Throws: `EventSourcingError` `.trackingConflict` if its id is not higher than the one
    ///   recorded for the name (nothing changes then); `.invalidArgument` for a bad name
    ///   (``Tracking/validate(name:)``) or an id below 1.
    func insertTracking(_ tracking: Tracking) async throws

    /// The highest notification id recorded for `name`, or nil for a name never recorded.
    /// - Throws: `.invalidArgument` for a bad name.
    func maxTrackingID(_ name: String) async throws -> Int64?

    /// Whether `notificationID` has been processed by `name`: true when it is at or below the
    /// recorded position.
    /// - Throws: `.invalidArgument` for a bad name.
    func hasTrackingID(_ name: String, _ notificationID: Int64) async throws -> Bool

    /// Forgets `name`'s position (for a rebuild from the start); nothing happens for an unknown name.
    /// - Throws: `.invalidArgument` for a bad name.
    func deleteTracking(_ name: String) async throws

    /// One page of every recorded position: the names after `name` (nil: from the first), in
    /// ascending order of their UTF-8 bytes, at most `limit` of them. Pass the last name of a
    /// page to get the next; an empty page is the end. (What `esctl projections` lists.)
    /// - Throws: `.invalidArgument` for a `limit` outside 1 to ``Tracking/maxPageSize`` or a bad
    ///   `name` (``Tracking/validate(name:)``).
    func trackingPositions(after name: String?, limit: Int) async throws -> [Tracking]
}

extension TrackingRecorder {
    /// Every recorded position, in ascending order of the names' UTF-8 bytes, read page by page
    /// (``trackingPositions(after:limit:)``). The result grows with the number of names: one
    /// per projection or process application.
    public func trackingPositions() async throws -> [Tracking] {
        var all: [Tracking] = []
        var after: String?
        while true {
            let page = try await trackingPositions(after: after, limit: Tracking.maxPageSize)
            guard let last = page.last else { return all }
            // A page that does not move on would repeat for ever.
            if let after, !Tracking.precedes(after, last.name) {
                throw EventSourcingError(.recorderFailure,
                    "the recorder's tracking page after \"\(after)\" ended at \"\(last.name)\", not after it: names out of order")
            }
            all += page
            after = last.name
        }
    }
}

extension Tracking {
    /// The most positions one ``TrackingRecorder/trackingPositions(after:limit:)`` page holds.
    public static let maxPageSize = 10_000

    /// Checks the arguments of ``TrackingRecorder/trackingPositions(after:limit:)``.
    /// - Throws: `.invalidArgument`.
    public static func validatePage(after name: String?, limit: Int) throws(EventSourcingError) {
        if let name { try validate(name: name) }
        guard (1...maxPageSize).contains(limit) else {
            throw EventSourcingError(.invalidArgument, "a page of tracking positions holds 1 to \(maxPageSize) names, not \(limit)")
        }
    }

    /// Whether name `a` comes before `b` in the order pages list names: by their UTF-8 bytes
    /// (SQLite's BINARY collation, PostgreSQL's "C").
    public static func precedes(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }
}

/// An ``ApplicationRecorder`` that writes new events and a tracking record in one transaction,
/// for a follower that turns notifications into events (a process application) exactly once.
public protocol ProcessRecorder: ApplicationRecorder, TrackingRecorder {
    /// Inserts `events` and, when given, `tracking` in one transaction: both or neither.
    ///
    /// An event conflict writes no tracking record; a tracking id that is not higher than the
    /// recorded one writes no event (and uses no notification id). With `tracking` nil, this is
    /// ``AggregateRecorder/insertEvents(_:)``.
    /// - Returns: the notification ids given to the events, in order.
    /// - Throws: like ``AggregateRecorder/insertEvents(_:)``, and like
    ///   ``TrackingRecorder/insertTracking(_:)`` for the tracking record.
    func insertEvents(_ events: [StoredEvent], tracking: Tracking?) async throws -> [Int64]
}

/// A recorder that commits new data keys, events and a tracking record in one transaction.
public protocol KeyCommittingProcessRecorder: KeyCommittingRecorder, ProcessRecorder {
    /// Inserts `newKeys`, `events` and, when given, `tracking` in one transaction: all or
    /// nothing. Throws like ``KeyCommittingRecorder/insertEvents(_:newKeys:)`` and
    /// ``ProcessRecorder/insertEvents(_:tracking:)``.
    func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey], tracking: Tracking?) async throws -> [Int64]
}
