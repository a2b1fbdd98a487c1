import Foundation

extension NotificationLog {
    /// The poll interval of a subscription to a recorder that does not adopt ``CommitNotifying``.
    public static let defaultPollInterval: Duration = .seconds(1)

    /// Follows the log: every item with an id above `after` (all of them for 0), then each new
    /// item as it commits, for ever (until the task is cancelled).
    ///
    /// Items are read and decrypted like ``read(start:limit:stop:topics:)``, a page at a time
    /// and only when the consumer asks for the next one, so a slow consumer holds at most one
    /// page in memory. A shredded or unreadable item arrives as such (its ``LogItem/outcome``)
    /// and never ends the sequence.
    ///
    /// - Ids ascend, no item is skipped or repeated: the subscription relies on the recorder's
    ///   notification ids becoming visible in ascending order (every recorder of the library
    ///   commits them so).
    /// - New items: a recorder adopting ``CommitNotifying`` wakes the subscription when it
    ///   commits, and it reads again at least every ``CommitNotifying/commitPollInterval`` (for
    ///   commits the recorder does not see, such as another process's); any other recorder is
    ///   polled every `pollInterval`.
    /// - Cancelling the consuming task ends the sequence promptly: the pending or next call to
    ///   `next()` throws `CancellationError` (a `for try await` loop rethrows it).
    /// - A read that fails (the database is unavailable) is thrown by `next()`; the position is
    ///   kept, so calling `next()` again retries the same read.
    ///
    /// - Parameters:
    ///   - after: the last id already seen: 0 for the whole log. A position past the end of the
    ///     log is not an error: the subscription waits for the log to reach it.
    ///   - topics: only items with one of these topics (all items when empty).
    ///   - pageSize: the most items read (and held) at once, 1 to 10,000; 100 by default.
    ///   - pollInterval: how often to read again without a wake-up: for a ``CommitNotifying``
    ///     recorder its own bound applies unless this is shorter; for other recorders
    ///     ``defaultPollInterval`` when nil.
    /// - Returns: the subscription; a bad argument (`after < 0`, `pageSize` out of range, a
    ///   `pollInterval` that is not positive) is thrown as ``EventSourcingError/Code/invalidArgument``
    ///   by the first `next()`.
    public func subscribe(after: Int64 = 0, topics: [String] = [], pageSize: Int = 100,
                          pollInterval: Duration? = nil) -> LogSubscription {
        LogSubscription(log: self, after: after, topics: topics, pageSize: pageSize, pollInterval: pollInterval)
    }
}

/// The items of the notification log after a position, then the new ones as they commit: an
/// `AsyncSequence` of ``LogItem`` from ``NotificationLog/subscribe(after:topics:pageSize:pollInterval:)``.
public struct LogSubscription: AsyncSequence, Sendable {
    public typealias Element = LogItem

    let log: NotificationLog
    /// The last id already seen.
    public let after: Int64
    /// Only these topics (all when empty).
    public let topics: [String]
    /// The most items read at once.
    public let pageSize: Int
    let pollInterval: Duration?

    public func makeAsyncIterator() -> Iterator {
        Iterator(subscription: self)
    }

    /// Reads a page when the one it holds is used up, and waits for a commit when the log has
    /// nothing new.
    public struct Iterator: AsyncIteratorProtocol {
        private let log: NotificationLog
        private let topics: [String]
        private let pageSize: Int
        private let signal: CommitSignal?
        /// How long to wait for a signal before reading again; nil waits for the signal only.
        private let interval: Duration?
        /// A bad argument, thrown by the first `next()`.
        private var invalid: EventSourcingError?
        /// The next id to read from; nil once the log's last possible id was delivered.
        private var start: Int64?
        private var page: [LogItem] = []
        private var index = 0

        init(subscription s: LogSubscription) {
            log = s.log
            topics = s.topics
            pageSize = s.pageSize
            start = s.after == Int64.max ? nil : s.after + 1
            if s.after < 0 {
                invalid = EventSourcingError(.invalidArgument, "a subscription's position must be 0 or more, got \(s.after)")
            } else if !(1...10_000).contains(s.pageSize) {
                invalid = EventSourcingError(.invalidArgument, "a subscription's page size must be 1 to 10,000, got \(s.pageSize)")
            } else if let p = s.pollInterval, p <= .zero {
                invalid = EventSourcingError(.invalidArgument, "a subscription's poll interval must be positive, got \(p)")
            }
            if let notifying = s.log.app.recorder as? any CommitNotifying {
                signal = notifying.commitSignal
                switch (notifying.commitPollInterval, s.pollInterval) {
                case (let own?, let asked?): interval = Swift.min(own, asked)
                case (let own, let asked): interval = own ?? asked
                }
            } else {
                signal = nil
                interval = s.pollInterval ?? NotificationLog.defaultPollInterval
            }
        }

        /// The next item, waiting for one to commit if the log has none yet.
        /// - Throws: `CancellationError` once the task is cancelled; ``EventSourcingError``
        ///   `.invalidArgument` for a bad argument, or the error of a failed read.
        public mutating func next() async throws -> LogItem? {
            if let invalid { throw invalid }
            while true {
                try Task.checkCancellation()
                if index < page.count {
                    defer { index += 1 }
                    return page[index]
                }
                page = []
                index = 0
                let seen = signal?.generation
                if try await readPage() { continue }
                if let signal, let seen {
                    await signal.wait(since: seen, timeout: start == nil ? nil : interval)
                } else {
                    // Polling a recorder that cannot wake us; a cancelled sleep throws.
                    try await Task.sleep(for: interval ?? NotificationLog.defaultPollInterval)
                }
            }
        }

        /// Reads the next page into `page`; false when there is nothing new.
        private mutating func readPage() async throws -> Bool {
            guard let from = start else { return false }
            do {
                // With a topic filter, the page is bounded by the log's last id read first: when
                // it is not full, every id up to that one was looked at, and the next read starts
                // after it instead of scanning the same unwanted items again.
                var stop: Int64?
                if !topics.isEmpty {
                    guard let max = try await log.maxNotificationID, max >= from else { return false }
                    stop = max
                }
                let items = try await log.read(start: from, limit: pageSize, stop: stop, topics: topics)
                if let last = items.last {
                    start = last.notification.id == Int64.max ? nil : try NotificationLog.next(after: last.notification.id, from: from)
                }
                if items.count < pageSize, let stop, let next = start, stop >= next {
                    start = stop == Int64.max ? nil : stop + 1
                }
                page = items
                return !items.isEmpty
            } catch {
                // A read stopped by the cancellation says so, whatever the recorder threw.
                if Task.isCancelled { throw CancellationError() }
                throw error
            }
        }
    }
}
