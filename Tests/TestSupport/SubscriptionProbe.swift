import EventSourcing
import Foundation

/// Reads a notification-log subscription in tests, with a time limit instead of a hang.
public enum SubscriptionProbe {
    /// A subscription did not deliver what a test waited for in time.
    public struct TimedOut: Error, CustomStringConvertible {
        public let wanted: Int
        public let got: [Int64]
        public var description: String { "the subscription delivered \(got.count) of \(wanted) items in time (ids \(got))" }
    }

    /// The first `count` items of `subscription`, read by a task of their own; throws
    /// ``TimedOut`` if they do not all arrive within `within`.
    public static func take(_ count: Int, from subscription: LogSubscription,
                            within: Duration = .seconds(90)) async throws -> [LogItem] {
        let seen = Seen()
        return try await withThrowingTaskGroup(of: [LogItem]?.self) { group in
            group.addTask {
                var out: [LogItem] = []
                if count == 0 { return out }
                for try await item in subscription {
                    out.append(item)
                    seen.add(item.notification.id)
                    if out.count == count { break }
                }
                return out
            }
            group.addTask {
                try await Task.sleep(for: within)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            guard let first else { throw TimedOut(wanted: count, got: seen.ids) }
            return first
        }
    }

    /// Whether `subscription` delivers any item within `quiet` (a subscription at the end of
    /// the log must not).
    public static func deliversNothing(_ subscription: LogSubscription, within quiet: Duration) async throws -> Bool {
        do {
            _ = try await take(1, from: subscription, within: quiet)
            return false
        } catch is TimedOut {
            return true
        }
    }
}

private final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [Int64] = []
    func add(_ id: Int64) { lock.withLock { list.append(id) } }
    var ids: [Int64] { lock.withLock { list } }
}
