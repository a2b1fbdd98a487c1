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
