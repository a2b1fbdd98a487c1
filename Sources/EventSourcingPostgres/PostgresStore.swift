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
    public static let schemaVersion = 1

    /// The connection settings (password redacted in `description`).
    public let configuration: PostgresConfiguration
    let client: PostgresClient
    let logger: Logger
    let schema: String
    private let runTask: Task<Void, Never>
    private let deadlineTask: Task<Void, Never>
    let deadlines = Deadlines()
    /// Runs the store's tasks on the event loop of its connections.
    let executor: EventLoopExecutor

    /// The executor of the event loop this store's connections use. Code that waits on the store
    /// one call after another can run there (`withTaskExecutorPreference(store.taskExecutor) { … }`)
    /// so each reply resumes it without waking another thread. Keep long computations off it.
    public var taskExecutor: any TaskExecutor { executor }
    let pending = Mutex(PendingSaves())
    let pendingReads = Mutex(PendingReads())
    let closed = Atomic<Bool>(false)
    /// Whether the store was seen to have a master-key check (see ``refusePlaintext(_:snapshot:)``).
    let hasMasterKey = Atomic<Bool>(false)
    /// Whether lone reads may use the prepared statement, which finds the tables through
    /// `search_path`: false when the setting did not reach the server (see ``checkSearchPath()``).
    let preparedReads = Atomic<Bool>(true)
    /// Lone reads the prepared statement could not answer, answered by the function instead.
    let preparedReadFallbacks = Atomic<Int>(0)
    /// Data keys read together with events, for the key ring's next cache miss (see ``dataKeys(scope:reading:)``).
    let prefetchedKeys = Mutex(PrefetchedKeys())

    /// Connects, and creates or migrates the schema.
    /// - Throws: `EventSourcingError` `.databaseUnavailable` (cannot connect or authenticate),
    ///   `.unsupportedSchema` (written by a newer version), `.invalidArgument`.
    public init(configuration: PostgresConfiguration, logger: Logger = Logger(label: "eventsourcing.postgres")) async throws {
        // Also when set in code, not only from a URL: the name is written into SQL (quoted, below).
        try PostgresConfiguration.validateSchema(configuration.schema)
        self.configuration = configuration
        self.logger = logger
        // Always quoted, so names that are SQL keywords ("user", "select") work too.
        self.schema = "\"" + configuration.schema + "\""
        var config: PostgresClient.Configuration
        switch configuration.tls {
        case .disable:
            config = .init(host: configuration.host, port: configuration.port, username: configuration.username,
                           password: configuration.password, database: configuration.database, tls: .disable)
        case .prefer:
            config = .init(host: configuration.host, port: configuration.port, username: configuration.username,
                           password: configuration.password, database: configuration.database,
                           tls: .prefer(.makeClientConfiguration()))
        case .require:
            config = .init(host: configuration.host, port: configuration.port, username: configuration.username,
                           password: configuration.password, database: configuration.database,
                           tls: .require(.makeClientConfiguration()))
        }
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
            ("search_path", self.schema + ", pg_temp"),
        ]
        // One direct connection first: a wrong password, an unknown database or nothing
        // listening fails here at once, where the pool would keep retrying in the background.
        try await PostgresStore.probe(config, configuration: configuration, logger: logger)
        // Every connection of this store on one event loop, and the store's own tasks (group
        // commits, grouped reads, timed queries) run on it too: a reply then resumes the task
        // waiting for it on the thread that read it, instead of waking another thread.
        let loop = PostgresClient.defaultEventLoopGroup.next()
        self.executor = EventLoopExecutor(loop)
        let client = PostgresClient(configuration: config, eventLoopGroup: loop)
        self.client = client
        runTask = Task { await client.run() }
        deadlineTask = Task { [deadlines] in await Deadlines.check(deadlines) }
        do {
            try await migrate()
            try await checkSearchPath()
        } catch {
            runTask.cancel()
            deadlines.stop()
            deadlineTask.cancel()
            throw PostgresStore.translate(error, configuration: configuration)
        }
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
        logger.warning("PostgreSQL did not take this store's connection settings (search_path starts with \(current ?? "no schema"), not the store's schema; a connection pooler?): reads of single aggregates use the server function, and statement_timeout may not apply",
                       metadata: ["schema": "\(configuration.schema)"])
    }

    deinit {
        runTask.cancel()
        deadlines.stop()
        deadlineTask.cancel()
    }

    private static func probe(_ config: PostgresClient.Configuration, configuration: PostgresConfiguration,
                              logger: Logger) async throws {
        let tls: PostgresConnection.Configuration.TLS
        do {
            switch configuration.tls {
            case .disable: tls = .disable
            case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
            case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
        } catch {
            throw EventSourcingError(.databaseUnavailable, "cannot set up TLS: \(error)")
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

    /// Closes the connection pool. Later calls fail.
    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        runTask.cancel()
        _ = await runTask.value
        deadlines.stop()
        deadlineTask.cancel()
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
