import EventSourcing

/// Wake-ups for the notification log's subscribers (`NotificationLog.subscribe`).
///
/// The writer signals ``commitSignal`` right after each commit, so a subscriber of this store
/// sees the store's own saves at once. Saves committed through another connection to the
/// same file (another process, or another `SQLiteStore` instance in this one) cannot signal
/// it: a subscriber reads the log again at least every
/// ``Configuration/subscriptionPollInterval`` and finds them then. Such a read is one indexed
/// range query on a reader connection, which finds nothing in the common case.
extension SQLiteStore: CommitNotifying {
    public var commitPollInterval: Duration? {
        max(configuration.subscriptionPollInterval, .milliseconds(10))
    }
}
