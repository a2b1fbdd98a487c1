import Dispatch
import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import Logging
import Synchronization

/// The embedded default store: events, snapshots, wrapped data keys, master-key checks,
/// tombstones and the schema version in one SQLite file (WAL mode).
///
/// One writer connection on its own thread takes every write; saves that arrive while a
/// commit is in flight are coalesced into the next transaction (group commit, one fsync),
/// each in its own savepoint so each fails alone. Reads use a bounded pool of reader
/// connections and run on the caller's thread (a hand-over to a reader thread per read cost
/// more than the query; a long read can be cancelled).
/// Waiting reads and writes are bounded, and a cancelled read or save stops and throws
/// `CancellationError`.
/// A scope's first data key is written in the same transaction as its first events.
public final class SQLiteStore: ApplicationRecorder, SnapshotRecorder, KeyCommittingRecorder, KeyStore, KeyScopeCounting {
    /// How hard each commit waits for the disk.
    public enum Synchronous: String, Sendable {
        /// fsync on every commit: an acknowledged save survives power loss. The default.
        case full = "FULL"
        /// fsync only at checkpoints: a power loss may lose the last commits (never corrupts).
        case normal = "NORMAL"
    }

    /// Store settings.
    public struct Configuration: Sendable {
        /// Durability of commits; `.full` by default.
        public var synchronous: Synchronous
        /// How long to wait for another process's lock before failing with `.databaseLocked`.
        public var busyTimeout: Duration
        /// The most reader connections open at once (at least 1); a read that finds them all busy
        /// waits for one.
        public var readers: Int
        /// The most reads that wait for a reader connection at once; past that a read fails with
        /// `EventSourcingError.Code.storeOverloaded`. 10,000 by default.
        public var maxWaitingReads: Int = 10_000
        /// The most saves (and other writes) that wait for the group commit in flight; past that
        /// a save fails with `EventSourcingError.Code.storeOverloaded` and writes
        /// nothing. 10,000 by default.
        public var maxWaitingWrites: Int = 10_000
        /// For migrations only: accept unencrypted events and snapshots although the store has
        /// a master key (an encrypted application uses it). Off by default: such a store refuses
        /// them with `EventSourcingError.Code.plaintextRejected`, so an
        /// application opened without its keyring cannot write personal data in the clear.
        public var allowsPlaintextWrites: Bool
        /// Open the store for reading only, without changing a byte of the database, its `-wal`
        /// or its `-shm` file, and without creating any file beside it (also when a WAL left by a
        /// crash, or copied with a backup, holds commits the database file lacks: they are read,
        /// not checkpointed). The database must exist; it is neither created nor migrated (an
        /// older schema is read as it is). Every write throws
        /// `EventSourcingError.Code.databaseUnavailable`. For inspection tools and
        /// for checks that must change nothing, such as a master-key check before a write.
        public var readOnly: Bool
        /// How long a shred (and the snapshot deletion after it) waits for the WAL checkpoint
        /// that removes the old database pages holding the erased key, which a long read
        /// transaction can hold up. When it runs out the shred returns anyway, with the residue
        /// reported as pending (``scrubErasureResidue(timeout:)`` finishes it). 1 second by
        /// default; negative values count as zero (one attempt, no wait).
        public var scrubTimeout: Duration = .seconds(1)
        /// How often a subscription to the notification log reads again when nothing woke it: the
        /// bound on how late it sees a commit made by another process (or another `SQLiteStore`
        /// on the same file); this store's own commits wake it at once. 500 ms by default; values
        /// under 10 ms count as 10 ms (see SQLiteStore+Subscriptions.swift).
        public var subscriptionPollInterval: Duration = .milliseconds(500)
        /// Creates settings.
        public init(synchronous: Synchronous = .full, busyTimeout: Duration = .seconds(5), readers: Int = 4,
                    allowsPlaintextWrites: Bool = false, readOnly: Bool = false) {
            self.synchronous = synchronous
            self.busyTimeout = busyTimeout
            self.readers = max(1, readers)
            self.allowsPlaintextWrites = allowsPlaintextWrites
            self.readOnly = readOnly
        }
    }

    /// A duration's whole milliseconds for SQLite's busy timeout, clamped to 0…Int32.max (a huge
    /// or negative `busyTimeout` must not trap).
    static func milliseconds(_ c: (seconds: Int64, attoseconds: Int64)) -> Int32 {
        let (ms, overflow) = c.seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow else { return c.seconds < 0 ? 0 : Int32.max }
        let total = ms.addingReportingOverflow(c.attoseconds / 1_000_000_000_000_000)
        return total.overflow ? Int32.max : Int32(clamping: max(0, total.partialValue))
    }

    /// The schema version this code writes.
    public static let schemaVersion = 5

    /// The database file.
    public let path: String
    /// The settings it was opened with.
    public let configuration: Configuration
    let logger: Logger
    let writer: ConnectionBox
    /// How a read-only store reads (nil when opened for writing).
    let readOnlyAccess: ReadOnlyAccess?
    /// False only for a read-only store over a new, empty database (no schema yet).
    let hasSchema: Bool
    let writerQueue: DispatchQueue
    /// Writes waiting for the writer thread; it takes them all as the next group.
    let writes: BatchingQueue<any WriteRequest>
    let readerPool: ReaderPool
    /// The threads reads run on (at most ``Configuration/readers``), off the cooperative pool.
    let readThreads: ThreadPoolExecutor
    /// Data keys read with events, for the key ring's next miss (SQLiteStore+Events.swift);
    /// every commit of the writer drops them.
    let prefetchedKeys = DataKeyPrefetch()
    let closed = Atomic<Bool>(false)
    /// For tests: reader connections opened so far.
    let readerConnectionsOpened: Counter
    /// For tests only (`@testable import`): called with each transaction statement of a group
    /// commit; an error it returns is thrown instead of running the statement.
    let faultInjection = Mutex<(@Sendable (String) -> EventSourcingError?)?>(nil)
    /// What this process knows of copies the files may still hold of erased keys (SQLiteStore+Scrub.swift).
    let scrubState = Mutex(ScrubState())
    /// Signalled after each commit of the writer, to wake the log's subscribers (SQLiteStore+Subscriptions.swift).
    public let commitSignal = CommitSignal()

    /// Writes waiting for the writer (for tests, to know a group has formed).
    var queuedWrites: Int { writes.waitingCount }

    /// Opens (creating if needed) the store at `path`; with ``Configuration/readOnly``, opens
    /// an existing store for reading only.
    /// - Throws: `EventSourcingError` `.databaseCorrupt` for a file that is not a SQLite database
    ///   or is truncated, `.unsupportedSchema` for a newer schema or a database that is not an
    ///   event store, `.databaseUnavailable` for a path that cannot be opened or written (read
    ///   only: that does not exist), `.databaseLocked`. The file is not changed when opening fails.
    public init(path: String, configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "eventsourcing.sqlite")) throws {
        self.path = path
        self.configuration = configuration
        self.logger = logger
        try SQLiteFile.validate(path: path)
        let c = configuration.busyTimeout.components
        let busy = SQLiteStore.milliseconds(c)
        let readOnlyURI: String?
        if configuration.readOnly {
            let access = try ReadOnlyAccess(path: path)
            do {
                let conn = try SQLiteConnection(readOnlyURI: access.uri, path: path, busyTimeoutMillis: busy)
                // Read, never migrated: an older schema is read as it is.
                hasSchema = try SQLiteStore.storedSchemaVersion(conn) > 0
                try access.checkUnchanged(path)
                writer = ConnectionBox(conn)
            } catch {
                access.remove()
                throw error
            }
            readOnlyAccess = access
            readOnlyURI = access.uri
        } else {
            let conn = try SQLiteConnection(path: path, create: true, busyTimeoutMillis: busy)
            try SQLiteStore.prepare(conn, configuration: configuration)
            writer = ConnectionBox(conn)
            readOnlyAccess = nil
            readOnlyURI = nil
            hasSchema = true
        }
        writerQueue = DispatchQueue(label: "eventsourcing.sqlite.writer")
        writes = BatchingQueue(maxWaiting: configuration.maxWaitingWrites)
        let opened = Counter()
        readerConnectionsOpened = opened
        readerPool = SQLiteStore.makeReaderPool(path: path, configuration: configuration, readOnlyURI: readOnlyURI,
                                                busyMillis: busy, opened: { opened.increment() })
        readThreads = ThreadPoolExecutor(name: "eventsourcing.sqlite.reader", maxThreads: configuration.readers)
    }

    deinit {
        closeConnections()
        readOnlyAccess?.remove()
    }

    /// Closes every connection. Later calls fail.
    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Refuse later writes, and wait (suspended, not polling) until the group in flight and
        // the writes queued before this call have committed.
        await writes.close()
        closeConnections()
        readOnlyAccess?.remove()
    }

    private func closeConnections() {
        writer.connection.close()
        // Free readers close now; readers in use close when their read gives them back.
        readerPool.close()
        readThreads.shutdown()
    }

}

/// A count shared between threads (for tests).
final class Counter: Sendable {
    private let value = Atomic(0)
    func increment() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// The writer connection, handed to the writer queue.
final class ConnectionBox: @unchecked Sendable {
    // @unchecked: the writer box is used only on the serial writer queue (and closed once no
    // write is in flight).
    let connection: SQLiteConnection
    init(_ connection: SQLiteConnection) { self.connection = connection }
}
