import EventSourcing
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// A transaction on one connection of a ``PostgresStore`` for a read model that lives in the
/// store's database: what a `Projection` whose `Context` is this type gets from its
/// `ProjectionRunner`. The view's writes and the projection's tracking record commit
/// together, so each notification is processed exactly once.
///
/// Name the view's tables with the store's schema (``schema``, already quoted):
/// `"INSERT INTO \(unescaped: tx.schema).customer_directory …"`, with values as bound
/// parameters (`\(value)` in a `PostgresQuery`). A statement may not control the transaction
/// (`BEGIN`, `START`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `SAVEPOINT`, `RELEASE`, `PREPARE`)
/// or change the pooled connection's session (`SET` other than `SET LOCAL`, `RESET`, `DISCARD`,
/// `LISTEN`, `UNLISTEN`): those are refused with `.invalidArgument`. The transaction is valid only
/// during the call that received it. A whole batch must finish within the store's operation
/// timeout. Deleted rows stay in the table's pages as dead tuples until `VACUUM` reclaims them
/// (SECURITY.md says what that means for erasure).
public final class PostgresViewTransaction: Sendable {
    private struct State: Sendable {
        var connection: PostgresConnection?
        var notificationID: Int64 = 0
    }

    /// The projection's name.
    public let projectionName: String
    /// The store's schema, quoted (`"\"events\""`), to name the view's tables.
    public let schema: String
    let logger: Logger
    private let state: Mutex<State>

    init(connection: PostgresConnection, projectionName: String, schema: String, logger: Logger) {
        self.projectionName = projectionName
        self.schema = schema
        self.logger = logger
        self.state = Mutex(State(connection: connection))
    }

    /// The notification being processed (the erasure record's for an erase); 0 outside one.
    public var notificationID: Int64 { state.withLock { $0.notificationID } }

    func begin(_ id: Int64) { state.withLock { $0.notificationID = id } }
    func close() { state.withLock { $0.connection = nil } }

    /// Runs one statement; its rows, if any, are read and dropped.
    public func execute(_ query: PostgresQuery) async throws {
        let conn = try connection(for: query)
        _ = try await conn.query(query, logger: logger).collect()
    }

    /// Runs one query and returns its rows.
    /// - Parameters:
    ///   - query: one statement, values bound as parameters.
    ///   - maxRows: the most rows returned (a bound on memory, 1 to 1,000,000).
    /// - Throws: `.invalidArgument` when the query has more rows than `maxRows`.
    public func query(_ query: PostgresQuery, maxRows: Int = 10_000) async throws -> [PostgresRow] {
        guard (1...1_000_000).contains(maxRows) else {
            throw EventSourcingError(.invalidArgument, "maxRows must be 1 to 1,000,000, got \(maxRows)")
        }
        let conn = try connection(for: query)
        var rows: [PostgresRow] = []
        for try await row in try await conn.query(query, logger: logger) {
            guard rows.count < maxRows else {
                throw EventSourcingError(.invalidArgument,
                                         "the query returned more than \(maxRows) rows (maxRows): page it with LIMIT or a key")
            }
            rows.append(row)
        }
        return rows
    }

    private func connection(for query: PostgresQuery) throws -> PostgresConnection {
        try Self.refuseControl(query.sql)
        guard let conn = state.withLock({ $0.connection }) else {
            throw EventSourcingError(.invalidArgument,
                "the view transaction of projection \"\(projectionName)\" is over: use it only during the call that received it")
        }
        return conn
    }

    static func refuseControl(_ sql: String) throws(EventSourcingError) {
        let words = ViewSQL.keywords(sql, count: 2)
        let first = words.first ?? ""
        let refused: Set = ["BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE",
                            "RESET", "DISCARD", "LISTEN", "UNLISTEN"]
        if refused.contains(first) || (first == "SET" && words.dropFirst().first != "LOCAL") {
            throw EventSourcingError(.invalidArgument,
                "a view transaction does not run \(first) statements (the runner owns the transaction; the connection goes back to the pool)")
        }
    }
}

/// Read models in the store's own database, processed exactly once: the runner's batch is one
/// transaction on one pooled connection holding the view's writes and the tracking record (`insert_tracking`, which refuses to move a
/// position back: a second runner of the same name fails with `.trackingConflict`).
extension PostgresStore: ProjectionStore {
    public typealias Context = PostgresViewTransaction

    public func projectionPosition(_ name: String) async throws -> Int64? {
        try await maxTrackingID(name)
    }

    /// Applies the batch in one transaction. A step that throws is rolled back; the steps
    /// before it and their tracking record commit. A cancelled batch, or one that runs past the
    /// operation timeout, commits nothing.
    ///
    /// The steps run first without a savepoint each (no round trips between notifications);
    /// only when a step throws is the batch rolled back and run again from its first step with
    /// a savepoint per notification, up to the one that throws (whose writes alone are undone).
    /// So a batch with a failing notification calls the projection twice for the notifications
    /// before it; the first run's writes are gone, so the view still holds each once.
    public func applyProjectionBatch(_ batch: ProjectionBatch<PostgresViewTransaction>) async throws
        -> ProjectionBatch<PostgresViewTransaction>.Outcome {
        try Tracking.validate(name: batch.name)
        guard !batch.steps.isEmpty else { return .init(committedThrough: nil, failure: nil) }
        let (s, logger) = (schema, self.logger)
        return try await run { conn in
            try await PostgresStore.inTransaction(conn, logger) {
                let tx = PostgresViewTransaction(connection: conn, projectionName: batch.name, schema: s, logger: logger)
                defer { tx.close() }
                _ = try await conn.query("SAVEPOINT es_projection_batch", logger: logger).collect()
                var outcome = try await PostgresStore.runSteps(batch.steps, in: tx, conn, logger, savepointEach: false)
                if outcome.failure != nil {
                    // A step threw (and may have aborted the transaction): nothing of this run is
                    // kept; the steps before it run again, each in a savepoint.
                    _ = try await conn.query("ROLLBACK TO SAVEPOINT es_projection_batch", logger: logger).collect()
                    outcome = try await PostgresStore.runSteps(batch.steps, in: tx, conn, logger, savepointEach: true)
                }
                _ = try await conn.query("RELEASE SAVEPOINT es_projection_batch", logger: logger).collect()
                if let done = outcome.committedThrough {
                    let tracking = Tracking(name: batch.name, notificationID: done)
                    try await PostgresStore.translatingTrackingConflict(tracking) {
                        _ = try await conn.query("SELECT \(unescaped: s).insert_tracking(\(batch.name), \(done))",
                                                 logger: logger).collect()
                    }
                }
                return outcome
            }
        }
    }

    /// Runs `steps` in order until one throws; with `savepointEach`, each in a savepoint that
    /// is rolled back when it throws.
    static func runSteps(_ steps: [ProjectionBatch<PostgresViewTransaction>.Step], in tx: PostgresViewTransaction,
                         _ conn: PostgresConnection, _ logger: Logger,
                         savepointEach: Bool) async throws -> ProjectionBatch<PostgresViewTransaction>.Outcome {
        var done: Int64?
        for step in steps {
            try Task.checkCancellation()
            if let body = step.body {
                if savepointEach { _ = try await conn.query("SAVEPOINT es_projection_step", logger: logger).collect() }
                tx.begin(step.notificationID)
                do {
                    try await body(tx)
                } catch {
                    if Task.isCancelled { throw CancellationError() }
                    if savepointEach {
                        _ = try await conn.query("ROLLBACK TO SAVEPOINT es_projection_step", logger: logger).collect()
                        _ = try await conn.query("RELEASE SAVEPOINT es_projection_step", logger: logger).collect()
                    }
                    return .init(committedThrough: done, failure: (step.notificationID, error))
                }
                if savepointEach { _ = try await conn.query("RELEASE SAVEPOINT es_projection_step", logger: logger).collect() }
            }
            done = step.notificationID
        }
        return .init(committedThrough: done, failure: nil)
    }

    /// Runs `body` in one transaction (with the tracking record's deletion when resetting): all
    /// of it commits, or nothing when it throws.
    public func projectionTransaction(_ name: String, resettingTracking: Bool,
                                      _ body: @escaping @Sendable (PostgresViewTransaction) async throws -> Void) async throws {
        try Tracking.validate(name: name)
        let (s, logger) = (schema, self.logger)
        try await run { conn in
            try await PostgresStore.inTransaction(conn, logger) {
                if resettingTracking {
                    _ = try await conn.query("DELETE FROM \(unescaped: s).tracking WHERE name = \(name)", logger: logger).collect()
                }
                let tx = PostgresViewTransaction(connection: conn, projectionName: name, schema: s, logger: logger)
                defer { tx.close() }
                try await body(tx)
            }
        }
    }

    /// Runs `body` between BEGIN and COMMIT on `conn`; rolls back when it throws.
    static func inTransaction<T>(_ conn: PostgresConnection, _ logger: Logger, _ body: () async throws -> T) async throws -> T {
        _ = try await conn.query("BEGIN", logger: logger).collect()
        do {
            let result = try await body()
            // Fails in a transaction a swallowed error aborted, where COMMIT would roll back silently.
            _ = try await conn.query("SELECT 1", logger: logger).collect()
            _ = try await conn.query("COMMIT", logger: logger).collect()
            return result
        } catch {
            _ = try? await conn.query("ROLLBACK", logger: logger).collect()
            throw error
        }
    }
}
