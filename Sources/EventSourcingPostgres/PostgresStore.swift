import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

/// Events, snapshots, wrapped data keys, master-key checks, tombstones and the schema version
/// in one PostgreSQL schema, shared by many application instances.
///
/// Saves go through one server-side function call per group of concurrent saves: it takes an
/// EXCLUSIVE lock on the events table (so notification ids are assigned in commit order and
/// a reader tailing the log never skips an event), checks tombstones and conflicts, inserts the
/// scopes' new data keys and the events, each save in its own subtransaction so each fails alone.
public final class PostgresStore: ApplicationRecorder, SnapshotRecorder, KeyCommittingRecorder, KeyStore, KeyScopeCounting {
    /// The schema version this code writes.
    public static let schemaVersion = 2

    /// The connection settings (password redacted in `description`).
    public let configuration: PostgresStore.Configuration
    let client: PostgresClient
    let logger: Logger
    let schema: String
    /// The task running a client this store made itself (the URL / configuration initialiser);
    /// nil for a client the application injected and runs.
    private let runTask: Task<Void, Never>?
    /// Whether the client is the application's (``init(client:configuration:logger:)``).
    public var usesInjectedClient: Bool { runTask == nil }
    let deadlines: Deadlines
    /// Runs the store's tasks on the event loop of its connections.
    let executor: EventLoopExecutor

    /// The executor of the event loop this store's connections use. Code that waits on the store
    /// one call after another can run there (`withTaskExecutorPreference(store.taskExecutor) { … }`)
    /// so each reply resumes it without waking another thread. Keep long computations off it.
    public var taskExecutor: any TaskExecutor { executor }
    let pending = Mutex(PendingSaves())
    let pendingReads = Mutex(PendingReads())
    /// Reads of whole aggregates waiting for the next group (see PostgresStore+GroupedReads.swift).
    let readQueue: BatchingQueue<PendingRead>
    /// Saves waiting for the next group commit (see PostgresStore+GroupCommit.swift).
    let saveQueue: BatchingQueue<PendingSave>
    let closed = Atomic<Bool>(false)
    /// Whether the store was seen to have a master-key check (see ``refusePlaintext(_:snapshot:)``).
    let hasMasterKey = Atomic<Bool>(false)
    /// Whether the store was seen to refuse unencrypted records for good (PostgresStore+PlaintextRefusal.swift).
    let plaintextRefused = Atomic<Bool>(false)
    /// Whether lone reads may use the prepared statement, which finds the tables through
    /// `search_path`: false when the setting did not reach the server (see ``checkSearchPath()``).
    let preparedReads = Atomic<Bool>(true)
    /// Lone reads the prepared statement could not answer, answered by the function instead.
    let preparedReadFallbacks = Atomic<Int>(0)
    /// Data keys read together with events, for the key ring's next cache miss (see ``dataKeys(scope:reading:)``).
    let prefetchedKeys = DataKeyPrefetch()
    /// Wakes the notification log's subscribers (see PostgresStore+Subscriptions.swift).
    let listener = CommitListener()

    /// Connects with a client of its own (run by the store, closed by ``close()``), and creates
    /// or migrates the schema.
    /// - Throws: `EventSourcingError` `.databaseUnavailable` (cannot connect or authenticate,
    ///   TLS refused), `.unsupportedSchema` (written by a newer version), `.invalidArgument`
    ///   (a bad schema name, an unreadable TLS file).
    public convenience init(configuration: PostgresStore.Configuration, logger: Logger = Logger(label: "eventsourcing.postgres")) async throws {
        // Also when set in code, not only from a URL: the name is written into SQL (quoted).
        try PostgresStore.Configuration.validateSchema(configuration.schema)
        let config = try PostgresStore.clientConfiguration(for: configuration)
        // One direct connection first: a wrong password, an unknown database, a refused
        // certificate or nothing listening fails here at once, where the pool would keep
        // retrying in the background.
        try await PostgresStore.probe(config, configuration: configuration, logger: logger)
        // Every connection of this store on one event loop, and the store's own tasks (group
        // commits, grouped reads, timed queries, deadlines) run on it too: a reply then resumes
        // the task waiting for it on the thread that read it, instead of waking another thread.
        let loop = PostgresClient.defaultEventLoopGroup.next()
        let client = PostgresClient(configuration: config, eventLoopGroup: loop)
        let runTask = Task { await client.run() }
        try await self.init(client: client, runTask: runTask, loop: loop, configuration: configuration, logger: logger)
    }

    /// A store over the application's own `PostgresClient`, which the application runs
    /// (`client.run()` in its task group or service group, as postgres-nio documents) and
    /// shuts down: ``close()`` leaves the client alone. Creates or migrates the schema.
    ///
    /// Of `configuration`, the client's connection settings (host, user, TLS, pool size,
    /// keep-alive, connect timeout) are ignored: the client has its own. The schema, timeouts
    /// and ``PostgresStore/Configuration/allowsPlaintextWrites`` apply. Build the client with
    /// ``clientConfiguration(for:)`` to give its connections the store's session settings
    /// (`search_path` for the prepared read, `statement_timeout`, and
    /// `client_connection_check_interval`, with which the server stops a cancelled query at
    /// once); without them every operation is still bounded by the operation timeout.
    /// - Throws: as ``init(configuration:logger:)``; `.databaseUnavailable` after the operation
    ///   timeout when the client is not running.
    public convenience init(client: PostgresClient, configuration: PostgresStore.Configuration,
                            logger: Logger = Logger(label: "eventsourcing.postgres")) async throws {
        try PostgresStore.Configuration.validateSchema(configuration.schema)
        try await self.init(client: client, runTask: nil, loop: PostgresClient.defaultEventLoopGroup.next(),
                            configuration: configuration, logger: logger)
    }

    private init(client: PostgresClient, runTask: Task<Void, Never>?, loop: any EventLoop,
                 configuration: PostgresStore.Configuration, logger: Logger) async throws {
        self.configuration = configuration
        self.readQueue = BatchingQueue(maxWaiting: configuration.maxWaitingReads)
        self.saveQueue = BatchingQueue(maxWaiting: configuration.maxWaitingWrites)
        self.logger = logger
        // Always quoted, so names that are SQL keywords ("user", "select") work too.
        self.schema = "\"" + configuration.schema + "\""
        self.executor = EventLoopExecutor(loop)
        self.deadlines = Deadlines(loop: loop)
        self.client = client
        self.runTask = runTask
        do {
            try await migrate()
            try await checkSearchPath()
        } catch {
            runTask?.cancel()
            deadlines.stop()
            var e = PostgresStore.translate(error, configuration: configuration)
            if runTask == nil, var typed = e as? EventSourcingError, typed.code == .databaseUnavailable,
               typed.message.contains("did not answer within") {
                typed.message += " (is the PostgresClient running? call client.run() in a task or service group)"
                e = typed
            }
            throw e
        }
    }

    /// The postgres-nio client configuration for `configuration`: its host, credentials, TLS
    /// (``PostgresStore/Configuration/tls`` with ``PostgresStore/Configuration/tlsSettings``), pool size,
    /// keep-alive and connect timeout, and the session settings this store's queries expect
    /// (`search_path` = the store's schema, `statement_timeout` = the operation timeout,
    /// `client_connection_check_interval`). For an application that runs its own client
    /// (``init(client:configuration:logger:)``): adjust what it needs, then make the client.
    /// - Throws: `EventSourcingError` `.invalidArgument` (a bad schema name, an unreadable TLS file).
    public static func clientConfiguration(for configuration: PostgresStore.Configuration) throws -> PostgresClient.Configuration {
        try PostgresStore.Configuration.validateSchema(configuration.schema)
        var config = PostgresClient.Configuration(host: configuration.host, port: configuration.port,
                                                  username: configuration.username, password: configuration.password,
                                                  database: configuration.database, tls: try configuration.clientTLS())
        config.options.maximumConnections = configuration.poolSize
        // One connection stays open (it needs no idle timer), and idle connections are pinged only
        // on request: the pool sets and cancels those timers on every query otherwise.
        config.options.minimumConnections = min(1, configuration.poolSize - 1)
        config.options.keepAliveBehavior = configuration.keepAliveInterval.map { .init(frequency: $0) }
        config.options.connectTimeout = configuration.connectTimeout
        // The server cancels any statement that runs past the operation timeout.
        let op = configuration.operationTimeout.components
        config.options.additionalStartupParameters = [
            ("statement_timeout", String(op.seconds * 1000 + op.attoseconds / 1_000_000_000_000_000)),
            // Only this store's schema (pg_catalog is always searched first; the session's
            // temporary schema, named last, is searched last). Every statement names the
            // schema, except the prepared ones (PostgresStatements.swift): their SQL is fixed
            // at compile time and finds the tables here.
            ("search_path", "\"" + configuration.schema + "\", pg_temp"),
            // A query whose connection the store closed (its task was cancelled) stops within
            // this while it computes or waits for a lock, not only when it next writes.
            ("client_connection_check_interval", "100"),
        ]
        return config
    }

    /// A connection pooler may drop the startup settings. Then `search_path` is the server's
    /// default, and the prepared statement would find no tables, or another schema's tables of
    /// the same names; lone reads then use the function, which names the schema.
    private func checkSearchPath() async throws {
        let logger = self.logger
        let current = try await run { client in
            var current: String?
            for try await name in try await client.query("SELECT current_schema()::text", logger: logger).decode(String?.self) {
                current = name
            }
            return current
        }
        guard current != configuration.schema else { return }
        preparedReads.store(false, ordering: .releasing)
        if usesInjectedClient {
            logger.notice("the PostgresClient's connections do not search this store's schema first (search_path starts with \(current ?? "no schema")): reads of single aggregates use the server function (make the client with PostgresStore.clientConfiguration(for:) for the faster prepared read)",
                          metadata: ["schema": "\(configuration.schema)"])
            return
        }
        logger.warning("PostgreSQL did not take this store's connection settings (search_path starts with \(current ?? "no schema"), not the store's schema; a connection pooler?): reads of single aggregates use the server function, and statement_timeout may not apply",
                       metadata: ["schema": "\(configuration.schema)"])
    }

    deinit {
        listener.cancel()
        runTask?.cancel()
        deadlines.stop()
    }

    private static func probe(_ config: PostgresClient.Configuration, configuration: PostgresStore.Configuration,
                              logger: Logger) async throws {
        let tls: PostgresConnection.Configuration.TLS
        do {
            switch configuration.tls {
            case .disable: tls = .disable
            case .prefer: tls = .prefer(try NIOSSLContext(configuration: try configuration.makeTLSConfiguration()))
            case .require: tls = .require(try NIOSSLContext(configuration: try configuration.makeTLSConfiguration()))
            }
        } catch let e as EventSourcingError {
            throw e
        } catch {
            throw EventSourcingError(.invalidArgument, "cannot set up TLS: \(error)")
        }
        var c = PostgresConnection.Configuration(host: configuration.host, port: configuration.port,
                                                 username: configuration.username, password: configuration.password,
                                                 database: configuration.database, tls: tls)
        let t = configuration.connectTimeout.components
        c.options.connectTimeout = .nanoseconds(t.seconds * 1_000_000_000 + t.attoseconds / 1_000_000_000)
        do {
            let connection = try await PostgresConnection.connect(configuration: c, id: 0, logger: logger)
            try? await connection.close()
        } catch {
            let e = translate(error, configuration: configuration)
            guard var typed = e as? EventSourcingError, typed.code == .databaseUnavailable else { throw e }
            typed.message = typed.message.replacingOccurrences(
                of: "; an in-flight save may or may not have committed", with: "") + " (while connecting)"
            throw typed
        }
    }

    /// Closes the store: later calls fail. A client the store made itself is shut down (its
    /// connections closed); an injected client is the application's and stays running.
    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await listener.stop()
        // Saves and reads queued before the close are served (or fail by their deadline) first.
        await saveQueue.close()
        await readQueue.close()
        if let runTask {
            runTask.cancel()
            _ = await runTask.value
        }
        deadlines.stop()
    }
}

/// A task executor that runs jobs on one NIO event loop.
final class EventLoopExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}
extension ByteBuffer {
    var bytes: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}

extension Array where Element == UInt8 {
    var byteBuffer: ByteBuffer { ByteBuffer(bytes: self) }
}
