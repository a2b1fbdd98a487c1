import Synchronization

/// Every insert signals the log's subscribers while it still holds the recorder's lock, so a
/// woken subscriber reads the new items at once; nothing else writes the log, so subscribers
/// never need to poll.
extension InMemoryRecorder: CommitNotifying {
    public var commitSignal: CommitSignal { state.withLock { $0.commits } }
    public var commitPollInterval: Duration? { nil }
}
