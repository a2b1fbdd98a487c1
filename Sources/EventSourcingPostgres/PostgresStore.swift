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
    private let pending = Mutex(PendingSaves())
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

    struct PendingSaves {
        var queue: [PendingSave] = []
        var draining = false
        /// The current committer; a committer replaced after its deadline stops at its next step.
        var drainer: UInt64 = 0
        /// The group commit waiting for this many queued saves (see ``gather(_:)``).
        var gathering: (count: Int, continuation: CheckedContinuation<Void, Never>)?
    }

    /// How long a group commit waits for the writers of the previous group to queue again.
    static let gatherWindow: TimeAmount = .microseconds(600)

    struct PendingSave: Sendable {
        var events: [StoredEvent]
        var keys: [WrappedDataKey]
        var continuation: CheckedContinuation<[Int64], any Error>
        var enqueued: ContinuousClock.Instant
    }

    /// Connects, and creates or migrates the schema.
    /// - Throws: ``EventSourcingError`` `.databaseUnavailable` (cannot connect or authenticate),
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

    // MARK: Schema

    private func migrate() async throws {
        let s = schema
        try await timed {
            try await self.client.withTransaction(logger: self.logger) { conn in
                try await conn.query("SELECT pg_advisory_xact_lock(hashtext(\("eventsourcing-schema:" + self.configuration.schema)))",
                                     logger: self.logger)
                try await conn.query("CREATE SCHEMA IF NOT EXISTS \(unescaped: s)", logger: self.logger)
                try await conn.query(
                    "CREATE TABLE IF NOT EXISTS \(unescaped: s).es_meta (key text PRIMARY KEY, value bigint NOT NULL)",
                    logger: self.logger)
                var stored: Int64?
                for try await v in try await conn.query(
                    "SELECT value FROM \(unescaped: s).es_meta WHERE key = 'schema_version'", logger: self.logger).decode(Int64.self) {
                    stored = v
                }
                // Only this function writes the version, after the tables, in one transaction.
                if let stored, stored < 1 {
                    throw EventSourcingError(.databaseCorrupt,
                        "schema \(s) has schema_version \(stored), not a schema version (1 or more)")
                }
                let found = stored.map { Int(clamping: $0) } ?? 0
                if found > PostgresStore.schemaVersion {
                    throw EventSourcingError(.unsupportedSchema,
                        "schema \(s) has version \(found); this library reads up to \(PostgresStore.schemaVersion). Upgrade the library.")
                }
                if found < 1 {
                    for statement in PostgresSchema.version1(s) {
                        try await conn.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                    }
                }
                // Unencrypted events, counted without a scan (encrypted rows never enter the index).
                try await conn.query(
                    "CREATE INDEX IF NOT EXISTS events_plaintext ON \(unescaped: s).events (notification_id) WHERE key_scope IS NULL",
                    logger: self.logger)
                // The functions are replaced on every start, so a fix to them needs no migration.
                try await conn.query(PostgresQuery(unsafeSQL: PostgresSchema.insertSavesFunction(s)), logger: self.logger)
                try await conn.query(PostgresQuery(unsafeSQL: PostgresSchema.readAggregatesFunction(s)), logger: self.logger)
                try await conn.query(
                    "INSERT INTO \(unescaped: s).es_meta (key, value) VALUES ('schema_version', \(Int64(PostgresStore.schemaVersion))) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    logger: self.logger)
            }
        }
    }

    // MARK: Plaintext

    /// Throws `.plaintextRejected` naming `record` if the store has a master key (unless
    /// ``PostgresConfiguration/allowsPlaintextWrites``). A store that has a master key keeps it
    /// (rotation adds the new check before retiring the old), so a positive answer is cached.
    func refusePlaintext(_ record: StoredEvent, snapshot: Bool) async throws {
        guard !configuration.allowsPlaintextWrites else { return }
        if !hasMasterKey.load(ordering: .relaxed) {
            let s = schema
            let found: Bool = try await run { client in
                var found = false
                for try await v in try await client.query(
                    "SELECT EXISTS (SELECT 1 FROM \(unescaped: s).master_key_checks)", logger: self.logger).decode(Bool.self) {
                    found = v
                }
                return found
            }
            guard found else { return }
            hasMasterKey.store(true, ordering: .relaxed)
        }
        throw EventSourcingError(.plaintextRejected,
            "unencrypted \(snapshot ? "snapshot" : "event") refused: this store has a master key, so its records must be "
            + "encrypted (give the application's Mapper a Keyring, or set allowsPlaintextWrites for a migration)",
            originatorID: record.originatorID, originatorVersion: record.originatorVersion, topic: record.topic)
    }

    public func countPlaintextEvents() async throws -> Int {
        let s = schema
        return try await run { client in
            var n: Int64 = 0
            for try await v in try await client.query("SELECT count(*) FROM \(unescaped: s).events WHERE key_scope IS NULL",
                                                      logger: self.logger).decode(Int64.self) { n = v }
            return Int(n)
        }
    }

    // MARK: Saving (group commit)

    public func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try await insertEvents(events, newKeys: [])
    }

    public var keyStore: any KeyStore { self }

    public func insertEvents(_ events: [StoredEvent], newKeys: [WrappedDataKey]) async throws -> [Int64] {
        guard !events.isEmpty || !newKeys.isEmpty else { return [] }
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        if let e = events.first(where: { $0.keyScope == nil }) { try await refusePlaintext(e, snapshot: false) }
        forgetPrefetchedKeys(newKeys.map(\.scope))
        let enqueued = ContinuousClock.now
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<[Int64], any Error>) in
            let (start, gathered) = pending.withLock { p -> (Bool, CheckedContinuation<Void, Never>?) in
                p.queue.append(PendingSave(events: events, keys: newKeys, continuation: c, enqueued: enqueued))
                if let g = p.gathering, p.queue.count >= g.count {
                    p.gathering = nil
                    return (false, g.continuation)
                }
                if p.draining { return (false, nil) }
                p.draining = true
                return (true, nil)
            }
            gathered?.resume()
            if start { startDraining() }
        }
    }

    /// Waits until `count` saves are queued, or ``gatherWindow`` has passed. After a group of
    /// several saves, its writers were just answered and are encoding their next saves; waiting
    /// for them briefly keeps the groups large (one commit and fsync for all of them).
    private func gather(_ count: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let waiting = pending.withLock { p -> Bool in
                guard p.queue.count < count else { return false }
                p.gathering = (count, c)
                return true
            }
            guard waiting else { return c.resume() }
            executor.loop.scheduleTask(in: PostgresStore.gatherWindow) { [self] in
                self.pending.withLock { p -> CheckedContinuation<Void, Never>? in
                    defer { p.gathering = nil }
                    return p.gathering?.continuation
                }?.resume()
            }
        }
    }

    /// Commits queued saves group by group in one task (`draining` must already be set). A group
    /// that runs past the operation timeout fails its callers, cancels that task (which gives up
    /// a wait for a pool connection) and hands the queue to a new task at once: a query stuck on
    /// a dead connection may not notice the cancellation, and the saves behind it must not wait.
    private func startDraining() {
        let id = pending.withLock { p -> UInt64 in
            p.drainer &+= 1
            return p.drainer
        }
        let handle = CancelHandle()
        handle.set(Task(executorPreference: executor) { await self.drain(id, handle) })
    }

    /// Called when a group of committer `id` timed out: a new committer takes over, unless one already did.
    private func replaceDrainer(_ id: UInt64) {
        if pending.withLock({ $0.drainer == id }) { startDraining() }
    }

    private func drain(_ id: UInt64, _ handle: CancelHandle) async {
        var lastGroup = 0
        while true {
            if lastGroup > 1 { await gather(lastGroup) }
            let taken = pending.withLock { p -> [PendingSave]? in
                guard p.drainer == id else { return nil }   // replaced: the new committer goes on
                // At most ~5,000 events per round trip; the rest wait for the next one.
                var n = 0
                var k = 0
                while k < p.queue.count, n < 5_000 {
                    n += p.queue[k].events.count
                    k += 1
                }
                let b = Array(p.queue.prefix(k))
                p.queue.removeFirst(k)
                if b.isEmpty { p.draining = false }
                return b
            }
            guard let batch = taken, !batch.isEmpty else { return }
            let waiters = Waiters(batch.map(\.continuation))
            let token = groupDeadline(oldest: batch.map(\.enqueued).min(), waiters, handle,
                                      outcome: "the save's outcome is unknown") { [weak self] in self?.replaceDrainer(id) }
            await commit(batch, waiters)
            deadlines.remove(token)
            lastGroup = batch.count
        }
    }

    /// Registers the deadline of a group of saves or reads: its oldest member's start plus the
    /// operation timeout (so one queued behind a stuck group still fails on time). When it
    /// passes, the group's callers fail and `handle`'s task is cancelled.
    /// Only a deadline that fails the group does anything: one that fires just after the group
    /// finished leaves the task (by then on its next group) alone.
    func groupDeadline<T: Sendable>(oldest: ContinuousClock.Instant?, _ waiters: Waiters<T>, _ handle: CancelHandle,
                                    outcome: String, replace: @escaping @Sendable () -> Void) -> UInt64? {
        let timeout = configuration.operationTimeout
        return deadlines.add(after: (oldest ?? .now) + timeout - .now) {
            guard waiters.fail(EventSourcingError(.databaseUnavailable,
                                                  "PostgreSQL did not answer within \(timeout); \(outcome)")) else { return }
            replace()
            handle.cancel()
        }
    }

    private func commit(_ batch: [PendingSave], _ waiters: Waiters<[Int64]>) async {
        var evCounts: [Int32] = [], ids: [UUID] = [], versions: [Int64] = [], topics: [String] = []
        var states: [ByteBuffer] = [], scopes: [String] = []
        var keyCounts: [Int32] = [], kScopes: [String] = [], kVersions: [Int64] = [], kKeks: [String] = []
        var kWrapped: [ByteBuffer] = [], kCreated: [Double] = []
        for save in batch {
            evCounts.append(Int32(save.events.count))
            for e in save.events {
                ids.append(e.originatorID)
                versions.append(Int64(e.originatorVersion))
                topics.append(e.topic)
                states.append(e.state.byteBuffer)
                scopes.append(e.keyScope ?? "")
            }
            keyCounts.append(Int32(save.keys.count))
            for k in save.keys {
                kScopes.append(k.scope)
                kVersions.append(Int64(k.version))
                kKeks.append(k.kekID)
                kWrapped.append(k.wrapped.byteBuffer)
                kCreated.append(k.createdAt.timeIntervalSince1970)
            }
        }
        let s = schema
        let lockMillis = Int64(configuration.lockTimeout.components.seconds * 1000
                               + configuration.lockTimeout.components.attoseconds / 1_000_000_000_000_000)
        do {
            let rows = try await client.query("""
                SELECT save_index, status, detail, first_id FROM \(unescaped: s).insert_saves(
                    \(lockMillis), \(evCounts), \(ids), \(versions), \(topics), \(states), \(scopes),
                    \(keyCounts), \(kScopes), \(kVersions), \(kKeks), \(kWrapped), \(kCreated))
                """, logger: logger)
            // Collected, then decoded synchronously (no suspension per row).
            let results = try await rows.collect().map { try $0.decode((Int32, String, String?, Int64?).self) }
            guard results.count == batch.count else {
                throw EventSourcingError(.recorderFailure, "the save function returned \(results.count) results for \(batch.count) saves")
            }
            waiters.resume { i in
                let (save, r) = (batch[i], results[i])
                switch r.1 {
                case "ok":
                    let first = r.3 ?? 0
                    return .success((0..<Int64(save.events.count)).map { first + $0 })
                case "conflict":
                    return .failure(conflictError(save.events, detail: r.2))
                case "constraint":
                    return .failure(constraintError(save.events, detail: r.2))
                case "shredded":
                    return .failure(KeyManagementError(.shredded, "the scope was shredded", scope: r.2))
                case "key_exists":
                    return .failure(KeyManagementError(.keyExists, "data key exists", scope: r.2))
                default:
                    return .failure(EventSourcingError(.recorderFailure, "unknown save status \(r.1)"))
                }
            }
        } catch {
            waiters.fail(PostgresStore.translate(error, configuration: configuration))
        }
    }

    private func conflictError(_ events: [StoredEvent], detail: String?) -> EventSourcingError {
        let parts = (detail ?? "").split(separator: ":")
        let id = parts.first.flatMap { UUID(uuidString: String($0)) }
        let version = parts.count > 1 ? Int(parts[1]) : nil
        let topic = events.first { $0.originatorID == id && $0.originatorVersion == version }?.topic
        return EventSourcingError(.concurrencyConflict, "an event with this originator id and version exists",
                                  originatorID: id ?? events.first?.originatorID, originatorVersion: version, topic: topic,
                                  storeCode: "23505")
    }

    /// A save the server refused for a constraint other than the events' primary key (a NOT
    /// NULL, a CHECK, another unique index, a foreign key added to the schema): `detail` is
    /// `SQLSTATE:constraint name`. The server does not say which of the save's events broke it.
    private func constraintError(_ events: [StoredEvent], detail: String?) -> EventSourcingError {
        let parts = (detail ?? "").split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let state = parts.first.map(String.init) ?? ""
        let constraint = parts.count > 1 && !parts[1].isEmpty ? "constraint \(parts[1])" : "a constraint"
        let first = events.first
        return EventSourcingError(.constraintViolation,
                                  "the save (\(events.count) event\(events.count == 1 ? "" : "s")) broke \(constraint) (\(state))",
                                  originatorID: first?.originatorID, originatorVersion: events.count == 1 ? first?.originatorVersion : nil,
                                  topic: events.count == 1 ? first?.topic : nil, storeCode: state.isEmpty ? nil : state)
    }

    // MARK: Errors and timeouts

    /// Runs `body`, failing with `.databaseUnavailable` after the operation timeout instead of hanging.
    func timed<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        let timeout = configuration.operationTimeout
        let waiters = Waiters<T>()
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            waiters.set([c])
            let handle = CancelHandle()
            // The work runs in a task of its own so the timeout can cancel it (which also gives
            // up a wait for a pool connection) and answer the caller at once.
            let token = deadlines.add(after: timeout) {
                guard waiters.fail(EventSourcingError(.databaseUnavailable,
                    "PostgreSQL did not answer within \(timeout); the operation's outcome is unknown")) else { return }
                handle.cancel()
            }
            handle.set(Task(executorPreference: executor) {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                self.deadlines.remove(token)
                waiters.resume { _ in result }
            })
        }
    }

    /// Maps driver errors to typed errors without leaking the password or query values.
    static func translate(_ error: any Error, configuration: PostgresConfiguration) -> any Error {
        if error is EventSourcingError || error is KeyManagementError { return error }
        if let t = error as? PostgresTransactionError {
            if let inner = t.closureError ?? t.beginError ?? t.commitError { return translate(inner, configuration: configuration) }
            return EventSourcingError(.databaseUnavailable, "PostgreSQL transaction failed")
        }
        if let d = error as? PostgresDecodingError {
            // Only a schema changed outside the library (a NOT NULL dropped, a column retyped)
            // lets a row hold this. Named by column and type, never by value.
            let what = d.code == .missingData ? "NULL" : "a \(d.postgresType) value"
            return EventSourcingError(.databaseCorrupt,
                                      "PostgreSQL returned \(what) in column \(d.columnName), which the store cannot read as \(d.targetType)")
        }
        guard let p = error as? PSQLError else {
            // NIO connect errors (refused, timed out, unresolvable) name no secrets; keep their text.
            let text = String(describing: error).replacingOccurrences(of: configuration.password ?? "\u{0}", with: "***")
            return EventSourcingError(.databaseUnavailable, "PostgreSQL at \(configuration.host):\(configuration.port): \(text)")
        }
        let where_ = "PostgreSQL at \(configuration.host):\(configuration.port)"
        if p.code == .server, let info = p.serverInfo {
            let state = info[.sqlState] ?? ""
            let message = info[.message] ?? "server error"
            let code = state.isEmpty ? nil : state
            switch state {
            case "55P03", "40P01": return EventSourcingError(.databaseLocked, "\(where_): \(message) (\(state))", storeCode: code)
            // 57014: the statement ran past statement_timeout (the operation timeout) or was
            // cancelled by an operator, like a server that did not answer.
            case "28P01", "28000", "3D000", "57P01", "57P02", "57P03", "53300", "57014":
                return EventSourcingError(.databaseUnavailable, "\(where_): \(message) (\(state))", storeCode: code)
            // Only the events' primary key is a concurrency conflict; any other unique index,
            // NOT NULL, CHECK or foreign key is a constraint violation.
            case "23505" where info[.constraintName] == "events_pkey":
                return EventSourcingError(.concurrencyConflict, "\(where_): \(message)", storeCode: code)
            case _ where state.hasPrefix("23"):
                return EventSourcingError(.constraintViolation, "\(where_): \(message) (\(state))", storeCode: code)
            // Raised by the save function: the notification ids would pass the largest bigint.
            case "ES004": return EventSourcingError(.databaseCorrupt, "\(where_): \(message)", storeCode: code)
            default: return EventSourcingError(.recorderFailure, "\(where_): \(message) (\(state))", storeCode: code)
            }
        }
        switch p.code {
        case .serverClosedConnection, .connectionError, .uncleanShutdown, .clientClosedConnection, .poolClosed:
            return EventSourcingError(.databaseUnavailable,
                "\(where_): connection lost (\(p.code)); an in-flight save may or may not have committed")
        default:
            return EventSourcingError(.databaseUnavailable, "\(where_): \(p.code)")
        }
    }

    /// Runs a query through the pool with the operation timeout and typed errors. The timeout
    /// matters most while the server is down: the pool would otherwise wait for a connection
    /// for as long as it takes (statement_timeout only bounds statements that reached it).
    func run<T: Sendable>(_ body: @escaping @Sendable (PostgresClient) async throws -> T) async throws -> T {
        do {
            return try await timed { try await body(self.client) }
        } catch {
            throw PostgresStore.translate(error, configuration: configuration)
        }
    }
}

/// Continuations resumed exactly once, by whichever of the work and its deadline comes first.
final class Waiters<T: Sendable>: Sendable {
    private let slot = Mutex<[CheckedContinuation<T, any Error>]?>(nil)

    init(_ continuations: [CheckedContinuation<T, any Error>]? = nil) {
        slot.withLock { $0 = continuations }
    }

    func set(_ continuations: [CheckedContinuation<T, any Error>]) {
        slot.withLock { $0 = continuations }
    }

    /// Resumes continuation `i` with `result(i)`, unless already failed by the deadline.
    /// Returns false if the deadline had already failed them.
    @discardableResult
    func resume(_ result: (Int) -> Result<T, any Error>) -> Bool {
        guard let all = slot.withLock({ $0.take() }) else { return false }
        for (i, c) in all.enumerated() { c.resume(with: result(i)) }
        return true
    }

    /// Returns false if they were already resumed.
    @discardableResult
    func fail(_ error: any Error) -> Bool {
        guard let all = slot.withLock({ $0.take() }) else { return false }
        for c in all { c.resume(throwing: error) }
        return true
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

/// Cancels a task that may not have been created yet when cancellation is asked for.
final class CancelHandle: Sendable {
    private let state = Mutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))

    func set(_ task: Task<Void, Never>) {
        let cancelled = state.withLock { s -> Bool in
            s.task = task
            return s.cancelled
        }
        if cancelled { task.cancel() }
    }

    func cancel() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.cancelled = true
            return s.task
        }
        task?.cancel()
    }
}

extension ByteBuffer {
    var bytes: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}

extension Array where Element == UInt8 {
    var byteBuffer: ByteBuffer { ByteBuffer(bytes: self) }
}
