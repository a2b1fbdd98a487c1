import Dispatch
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
/// each in its own savepoint so each fails alone. Reads use a pool of reader connections.
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
        /// Reader connections kept open.
        public var readers: Int
        /// For migrations only: accept unencrypted events and snapshots although the store has
        /// a master key (an encrypted application uses it). Off by default: such a store refuses
        /// them with ``EventSourcing/EventSourcingError/Code/plaintextRejected``, so an
        /// application opened without its keyring cannot write personal data in the clear.
        public var allowsPlaintextWrites: Bool
        /// Open the store for reading only, without changing a byte of the database, its `-wal`
        /// or its `-shm` file, and without creating any file beside it (also when a WAL left by a
        /// crash, or copied with a backup, holds commits the database file lacks: they are read,
        /// not checkpointed). The database must exist; it is neither created nor migrated (an
        /// older schema is read as it is). Every write throws
        /// ``EventSourcing/EventSourcingError/Code/databaseUnavailable``. For inspection tools and
        /// for checks that must change nothing, such as a master-key check before a write.
        public var readOnly: Bool
        /// How long a shred (and the snapshot deletion after it) waits for the WAL checkpoint
        /// that removes the old database pages holding the erased key, which a long read
        /// transaction can hold up. When it runs out the shred returns anyway, with the residue
        /// reported as pending (``scrubErasureResidue(timeout:)`` finishes it). 1 second by
        /// default; negative values count as zero (one attempt, no wait).
        public var scrubTimeout: Duration = .seconds(1)
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
    public static let schemaVersion = 3

    /// The database file.
    public let path: String
    /// The settings it was opened with.
    public let configuration: Configuration
    let logger: Logger
    private let writer: ConnectionBox
    /// How a read-only store reads (nil when opened for writing).
    private let readOnlyAccess: ReadOnlyAccess?
    /// False only for a read-only store over a new, empty database (no schema yet).
    let hasSchema: Bool
    private let writerQueue: DispatchQueue
    private let readers = Mutex<[ConnectionBox]>([])
    private let pending = Mutex<PendingWrites>(PendingWrites())
    private let closed = Atomic<Bool>(false)
    /// For tests only (`@testable import`): called with each transaction statement of a group
    /// commit; an error it returns is thrown instead of running the statement.
    let faultInjection = Mutex<(@Sendable (String) -> EventSourcingError?)?>(nil)
    /// What this process knows of copies the files may still hold of erased keys (SQLiteStore+Scrub.swift).
    let scrubState = Mutex(ScrubState())

    /// Writes waiting for the writer (for tests, to know a group has formed).
    var queuedWrites: Int { pending.withLock { $0.queue.count } }

    private struct PendingWrites {
        var queue: [any WriteRequest] = []
        var draining = false
    }

    private var busyMillis: Int32 {
        let c = configuration.busyTimeout.components
        return SQLiteStore.milliseconds(c)
    }

    /// Opens (creating if needed) the store at `path`; with ``Configuration/readOnly``, opens
    /// an existing store for reading only.
    /// - Throws: ``EventSourcingError`` `.databaseCorrupt` for a file that is not a SQLite database
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
        } else {
            let conn = try SQLiteConnection(path: path, create: true, busyTimeoutMillis: busy)
            try SQLiteStore.prepare(conn, configuration: configuration)
            writer = ConnectionBox(conn)
            readOnlyAccess = nil
            hasSchema = true
        }
        writerQueue = DispatchQueue(label: "eventsourcing.sqlite.writer")
    }

    deinit {
        closeConnections()
        readOnlyAccess?.remove()
    }

    /// Closes every connection. Later calls fail.
    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Wait until no writer is committing, and keep the writer slot for good.
        while !pending.withLock({ p -> Bool in
            if p.draining { return false }
            p.draining = true
            return true
        }) {
            try? await Task.sleep(for: .milliseconds(1))
        }
        closeConnections()
        readOnlyAccess?.remove()
    }

    private func closeConnections() {
        writer.connection.close()
        readers.withLock { r in
            for b in r { b.connection.close() }
            r.removeAll()
        }
    }

    // MARK: Schema

    private static func prepare(_ conn: SQLiteConnection, configuration: Configuration) throws(EventSourcingError) {
        // Read first: a file that is not a database, or a newer schema, fails here before any write.
        let found = try storedSchemaVersion(conn)
        // Changing the journal mode can return SQLITE_BUSY without waiting (when other processes
        // open the same new file at once): retry it for the busy timeout.
        let deadline = ContinuousClock.now + configuration.busyTimeout
        while true {
            do {
                try conn.execute("PRAGMA journal_mode = WAL")
                break
            } catch where error.code == .databaseLocked && ContinuousClock.now < deadline {
                usleep(10_000)
            }
        }
        try conn.execute("PRAGMA synchronous = \(configuration.synchronous.rawValue)")
        // Deleted key rows are overwritten with zeros, not just unlinked (crypto-shredding).
        try conn.execute("PRAGMA secure_delete = ON")
        guard found < schemaVersion else { return }
        try conn.execute("BEGIN IMMEDIATE")
        do {
            // Read again under the write lock: another process may have created or migrated
            // the schema since the first read.
            let current = try storedSchemaVersion(conn)
            if current < schemaVersion {
                for version in (current + 1)...schemaVersion {
                    try conn.execute(migrations[version - 1])
                }
                try conn.execute("INSERT OR REPLACE INTO es_meta (key, value) VALUES ('schema_version', \(schemaVersion))")
            }
            try conn.execute("COMMIT")
        } catch {
            try? conn.execute("ROLLBACK")
            throw error
        }
    }

    /// The schema version stored in the database, 0 for an empty database.
    /// - Throws: `.unsupportedSchema` for a newer schema or a database that is not an event store;
    ///   `.databaseCorrupt` for an event store whose schema version is missing, not an integer
    ///   or below 1 (only the migration writes it, with the tables, in one transaction).
    private static func storedSchemaVersion(_ conn: SQLiteConnection) throws(EventSourcingError) -> Int {
        var tables: [String] = []
        let list = try conn.statement("SELECT name FROM sqlite_master WHERE type = 'table'")
        while try list.step() { tables.append(list.text(0)) }
        list.reset()
        var found = 0
        if tables.contains("es_meta") {
            let v = try conn.statement("SELECT value FROM es_meta WHERE key = 'schema_version'")
            defer { v.reset() }
            guard try v.step() else {
                throw EventSourcingError(.databaseCorrupt, "\(conn.path) has an es_meta table without a schema_version")
            }
            guard let stored = v.integer(0), stored >= 1 else {
                throw EventSourcingError(.databaseCorrupt,
                    "\(conn.path) has a schema_version that is \(v.describeColumn(0)), not a schema version (1 or more)")
            }
            found = Int(clamping: stored)
            if found > schemaVersion {
                throw EventSourcingError(.unsupportedSchema,
                    "\(conn.path) has schema version \(found); this library reads up to \(schemaVersion). Upgrade the library.")
            }
        } else if !tables.filter({ !$0.hasPrefix("sqlite_") }).isEmpty {
            throw EventSourcingError(.unsupportedSchema, "\(conn.path) is a SQLite database but not an event store")
        }
        return found
    }

    /// Forward migrations: entry `i` takes schema `i` to `i + 1`.
    static let migrations: [String] = [
        """
        CREATE TABLE IF NOT EXISTS es_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE events (
            notification_id INTEGER PRIMARY KEY,
            originator_id BLOB NOT NULL,
            originator_version INTEGER NOT NULL,
            topic TEXT NOT NULL,
            state BLOB NOT NULL,
            key_scope TEXT,
            UNIQUE (originator_id, originator_version)
        );
        -- No index on key_scope: it would add a random B-tree write to every commit; the
        -- admin queries that filter by scope (count, export) scan instead.
        CREATE TABLE snapshots (
            originator_id BLOB NOT NULL,
            originator_version INTEGER NOT NULL,
            topic TEXT NOT NULL,
            state BLOB NOT NULL,
            key_scope TEXT,
            PRIMARY KEY (originator_id, originator_version)
        ) WITHOUT ROWID;
        CREATE INDEX snapshots_key_scope ON snapshots (key_scope) WHERE key_scope IS NOT NULL;
        CREATE TABLE data_keys (
            scope TEXT NOT NULL,
            version INTEGER NOT NULL,
            kek_id TEXT NOT NULL,
            wrapped BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (scope, version)
        ) WITHOUT ROWID;
        CREATE TABLE tombstones (
            scope TEXT PRIMARY KEY,
            shredded_at REAL NOT NULL,
            destroyed_versions TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE master_key_checks (
            kek_id TEXT PRIMARY KEY,
            sealed BLOB NOT NULL,
            kdf TEXT,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
        // 2: unencrypted events, found without a scan (a partial index: encrypted rows never enter it).
        """
        CREATE INDEX IF NOT EXISTS events_plaintext ON events (notification_id) WHERE key_scope IS NULL;
        """,
        // 3: data keys in a rowid table, so a shred erases a key in place at a cost that does not
        // grow with the store (SQLiteStore+KeyStore.swift: `eraseDataKeys`, `rowidDataKeys`).
        // Copying the rows in order leaves no stale copy of any key in the new table; the old
        // table's pages are freed, and secure_delete zeroes them.
        rowidDataKeys,
    ]

    // MARK: Writer

    /// Runs `body` on the writer connection inside a transaction shared with other writes
    /// that arrive meanwhile (group commit); `body` runs in its own savepoint.
    ///
    /// Writes run on the store's writer thread, never on a cooperative thread (an fsync there
    /// would starve other tasks); writes that arrive while a commit is in flight wait without a
    /// thread and are committed together as one group.
    func write<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await enqueue(body, outsideTransaction: false)
    }

    /// Runs `body` on the writer connection outside any transaction (checkpoints, pragmas),
    /// in turn with the writes.
    func writeOutsideTransaction<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await enqueue(body, outsideTransaction: true)
    }

    private func enqueue<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T,
                                      outsideTransaction: Bool) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the store at \(path) is closed")
        }
        guard readOnlyAccess == nil else {
            throw EventSourcingError(.databaseUnavailable, "the store at \(path) is open read-only: nothing was written")
        }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            let request = Request(body: body, continuation: c, outsideTransaction: outsideTransaction)
            let startDrain = pending.withLock { p -> Bool in
                p.queue.append(request)
                if p.draining { return false }
                p.draining = true
                return true
            }
            if startDrain { writerQueue.async { self.drain() } }
        }
    }

    private func run(_ batch: [any WriteRequest]) {
        let inTx = batch.filter { !$0.outsideTransaction }
        if !inTx.isEmpty { commit(inTx) }
        for r in batch where r.outsideTransaction {
            do {
                try r.perform(writer.connection)
                r.succeed()
            } catch {
                r.fail(error)
            }
        }
    }

    private func drain() {
        while true {
            let batch = pending.withLock { p -> [any WriteRequest] in
                let b = p.queue
                p.queue = []
                if b.isEmpty { p.draining = false }
                return b
            }
            if batch.isEmpty { return }
            run(batch)
        }
    }

    private func commit(_ batch: [any WriteRequest]) {
        let conn = writer.connection
        // A transaction left open by a ROLLBACK that failed must not take this group's writes in.
        if conn.inTransaction { try? control("ROLLBACK", conn) }
        do {
            try control("BEGIN IMMEDIATE", conn)
        } catch {
            for r in batch { r.fail(error) }
            return
        }
        var ok: [any WriteRequest] = []
        let single = batch.count == 1
        for (index, r) in batch.enumerated() {
            do {
                if !single { try control("SAVEPOINT w", conn) }
            } catch {
                return abandon(batch, failed: nil, error, conn)
            }
            do {
                try r.perform(conn)
            } catch {
                if single {
                    try? control("ROLLBACK", conn)
                    r.fail(error)
                    return
                }
                if !conn.inTransaction {
                    // Some errors (disk full, I/O) make SQLite roll back the whole transaction:
                    // the saves before this one are gone too, and later ones must not run alone.
                    r.fail(error)
                    for other in ok + batch[(index + 1)...] { other.fail(error) }
                    return
                }
                do {
                    try control("ROLLBACK TO w", conn)
                    try control("RELEASE w", conn)
                } catch let undo {
                    // This save's writes may still be in the transaction: nothing of it may commit.
                    return abandon(batch, failed: (r, error), undo, conn)
                }
                r.fail(error)
                continue
            }
            do {
                if !single { try control("RELEASE w", conn) }
            } catch {
                return abandon(batch, failed: nil, error, conn)
            }
            ok.append(r)
        }
        do {
            try control("COMMIT", conn)
            for r in ok { r.succeed() }
        } catch {
            if conn.inTransaction { try? control("ROLLBACK", conn) }
            for r in ok { r.fail(error) }
        }
    }

    /// Rolls the group's transaction back after a savepoint of it could not be made, released
    /// or rolled back to, and fails every request of `batch`: `failed` (the save whose own error
    /// came first, which gets that error) and all the others, which get `cause`.
    private func abandon(_ batch: [any WriteRequest], failed: (request: any WriteRequest, error: any Error)?,
                         _ cause: any Error, _ conn: SQLiteConnection) {
        if conn.inTransaction { try? control("ROLLBACK", conn) }
        var error = cause as? EventSourcingError ?? EventSourcingError(.recorderFailure, "\(cause)")
        error.message = "nothing of this group of saves was written: a savepoint of its transaction failed (\(error.message))"
        for r in batch {
            if let failed, failed.request === r { r.fail(failed.error) } else { r.fail(error) }
        }
        logger.error("a savepoint of a group commit failed; the group was rolled back",
                     metadata: ["path": "\(path)", "code": "\(error.storeCode ?? "\(error.code)")"])
    }

    /// Runs one of the group commit's transaction statements (BEGIN, SAVEPOINT, RELEASE,
    /// ROLLBACK TO, COMMIT, ROLLBACK), or fails it when a test set ``faultInjection`` to.
    private func control(_ sql: String, _ conn: SQLiteConnection) throws(EventSourcingError) {
        if let fault = faultInjection.withLock({ $0 }), let error = fault(sql) { throw error }
        try conn.execute(sql)
    }

    // MARK: Readers

    /// Runs `body` on a pooled reader connection, on the caller's thread: reads are short,
    /// and a thread hand-over would cost more than the query.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the store at \(path) is closed")
        }
        let box = try takeReader()
        defer { giveReader(box) }
        guard let readOnlyAccess else { return try body(box.connection) }
        guard hasSchema else {
            throw EventSourcingError(.databaseUnavailable,
                                     "\(path) holds no event store yet (a new, empty database), and a read-only store creates none")
        }
        try readOnlyAccess.checkUnchanged(path)
        let result = try body(box.connection)
        try readOnlyAccess.checkUnchanged(path)
        return result
    }

    private func takeReader() throws -> ConnectionBox {
        if let b = readers.withLock({ $0.popLast() }) { return b }
        let conn = if let readOnlyAccess {
            try SQLiteConnection(readOnlyURI: readOnlyAccess.uri, path: path, busyTimeoutMillis: busyMillis)
        } else {
            try SQLiteConnection(path: path, create: false, busyTimeoutMillis: busyMillis)
        }
        try conn.execute("PRAGMA query_only = ON")
        return ConnectionBox(conn)
    }

    private func giveReader(_ b: ConnectionBox) {
        let kept = readers.withLock { r -> Bool in
            guard r.count < configuration.readers, !closed.load(ordering: .acquiring) else { return false }
            r.append(b)
            return true
        }
        if !kept { b.connection.close() }
    }
}

/// A connection handed between threads by the store.
final class ConnectionBox: @unchecked Sendable {
    // @unchecked: a reader box is used by exactly one reader thread between takeReader() and
    // giveReader() (the pool's Mutex orders hand-overs); the writer box only on the serial writer queue.
    let connection: SQLiteConnection
    init(_ connection: SQLiteConnection) { self.connection = connection }
}

protocol WriteRequest: AnyObject, Sendable {
    var outsideTransaction: Bool { get }
    func perform(_ conn: SQLiteConnection) throws
    func succeed()
    func fail(_ error: any Error)
}

final class Request<T: Sendable>: WriteRequest, @unchecked Sendable {
    // @unchecked: `result` is written and read only by the current leader (one at a time, handed
    // over under the store's Mutex), and the continuation is resumed exactly once.
    private let body: @Sendable (SQLiteConnection) throws -> T
    private let continuation: CheckedContinuation<T, any Error>
    private var result: T?
    let outsideTransaction: Bool

    init(body: @escaping @Sendable (SQLiteConnection) throws -> T, continuation: CheckedContinuation<T, any Error>,
         outsideTransaction: Bool) {
        self.body = body
        self.continuation = continuation
        self.outsideTransaction = outsideTransaction
    }

    func perform(_ conn: SQLiteConnection) throws { result = try body(conn) }

    func succeed() {
        if let result { continuation.resume(returning: result) } else {
            continuation.resume(throwing: EventSourcingError(.recorderFailure, "write produced no result"))
        }
    }

    func fail(_ error: any Error) { continuation.resume(throwing: error) }
}
