import Foundation

/// Whether a follower of a notification log (a projection, a process application) has
/// processed a notification: its position has reached it, or no item the follower reads lies
/// between its position and it (items of other topics are never processed, so the position can
/// stop before the target for good).
///
/// The items the follower reads up to the target are looked up a page at a time, and the log
/// is read again only once the position has passed the last of them: a wait that wakes at
/// every step of a long catch-up reads the log once per page of such items, not once per step.
struct FollowerProgress: Sendable {
    let log: NotificationLog
    /// The follower's topics (empty: every item).
    let topics: [String]
    /// The notification waited for.
    let target: Int64
    /// The most item ids looked up at once.
    static let pageSize = 100

    /// The last item at or below the target known to be read by the follower, and whether no
    /// other lies between it and the target.
    private var known: (through: Int64, complete: Bool)?

    init(log: NotificationLog, topics: [String], target: Int64) {
        self.log = log
        self.topics = topics
        self.target = target
    }

    /// Whether a follower at `position` has processed the target (and every item it reads
    /// before it).
    mutating func reached(_ position: Int64) async throws -> Bool {
        if position >= target { return true }
        if let known {
            if position < known.through { return false }
            if known.complete { return true }
        }
        let page = try await log.select(start: position + 1, limit: Self.pageSize, stop: target, topics: topics)
        guard let last = page.last?.id else { return true }
        known = (last, page.count < Self.pageSize)
        return false
    }
}

/// A page of a follower's read of the log, and how far the log was looked at for it.
struct FollowerPage: Sendable {
    var items: [LogItem]
    /// The id up to which the log was looked at: past the last item when a topic filter
    /// skipped ids of other topics.
    var scanned: Int64
}

extension NotificationLog {
    /// The topics a follower (a projection, a process application) reads: its own plus the
    /// erasure records' (``ErasureRecord/topic``), or every topic when it names none.
    static func followerTopics(_ own: [String]) -> [String] {
        guard !own.isEmpty else { return [] }
        return own.contains(ErasureRecord.topic) ? own : own + [ErasureRecord.topic]
    }

    /// Reads up to `limit` items of `topics` after `scanned`, for a follower. With a topic
    /// filter, a page bounded by the log's last id that comes back short has looked at every id
    /// up to that one (ids become visible in ascending order, as subscriptions assume): the
    /// page's `scanned` moves there, so a wake-up does not scan those ids again.
    func readFollowerPage(after scanned: Int64, topics: [String], limit: Int) async throws -> FollowerPage {
        guard scanned < Int64.max else { return FollowerPage(items: [], scanned: scanned) }
        if topics.isEmpty {
            return FollowerPage(items: try await read(start: scanned + 1, limit: limit), scanned: scanned)
        }
        guard let last = try await maxNotificationID, last > scanned else { return FollowerPage(items: [], scanned: scanned) }
        let items = try await read(start: scanned + 1, limit: limit, stop: last, topics: topics)
        return FollowerPage(items: items, scanned: items.count < limit ? last : scanned)
    }
}
