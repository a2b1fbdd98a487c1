import CSQLite
import Dispatch
import EventSourcing
import Foundation
import Synchronization

/// A value bound to, or read from, a read model's SQL (``SQLiteViewTransaction``).
public enum SQLiteValue: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByNilLiteral {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])

    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .real(value) }
    public init(nilLiteral: ()) { self = .null }

    /// The value if it is an integer.
    public var integerValue: Int64? { if case .integer(let v) = self { return v } else { return nil } }
    /// The value if it is text.
    public var textValue: String? { if case .text(let v) = self { return v } else { return nil } }
    /// The value if it is a real (or an integer, which a REAL column may hold).
    public var realValue: Double? {
        switch self {
        case .real(let v): return v
        case .integer(let v): return Double(v)
        default: return nil
        }
    }
    /// The value if it is a blob.
    public var blobValue: [UInt8]? { if case .blob(let v) = self { return v } else { return nil } }
}

/// A row of a read model's query: its column names and values.
public struct SQLiteRow: Sendable, Hashable {
    /// The column names, as the query named them.
    public var columns: [String]
    /// The values, one per column.
    public var values: [SQLiteValue]

    /// The value of column `index`, nil past the last column.
    public subscript(_ index: Int) -> SQLiteValue? { values.indices.contains(index) ? values[index] : nil }
    /// The value of the first column named `name`, nil for none.
    public subscript(_ name: String) -> SQLiteValue? { columns.firstIndex(of: name).map { values[$0] } }
}

/// A transaction on a ``SQLiteStore``'s database for a read model that lives in it: what a
/// `Projection` whose `Context` is this type gets from its `ProjectionRunner`, and what
/// ``SQLiteStore/readView(_:)`` gives to read the view.
///
/// In a runner it is a savepoint of a transaction on the store's writer connection: the view's
/// writes and the projection's tracking record commit together, so each notification is
/// processed exactly once. While the projection's call runs, the store's writer waits for it
/// (saves queue up): keep the call short, and do not save to the same store from inside it
/// (that is refused with `.invalidArgument` rather than left to wait for ever). The deletions of
/// an erase are zeroed on disk (`secure_delete`), and the store checkpoints its WAL after a
/// batch that erased, so the old page images leave the `-wal` file too (as after a shred).
///
/// Statements are prepared once and kept on the connection (at most 32, of SQL up to 4 KiB;
/// the one used longest ago makes room), so use `?` parameters with values rather than text
/// pasted into the SQL: that is safe, and compiled once. A statement may not control the transaction (`BEGIN`, `COMMIT`,
/// `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`), attach or detach databases, `VACUUM`, or run a
/// `PRAGMA`: those are refused with `.invalidArgument`. The transaction is valid only during
/// the call that received it; later uses throw `.invalidArgument`. Errors name the SQLite error
/// (a constraint's table and columns), never the values.
public final class SQLiteViewTransaction: @unchecked Sendable {
    // @unchecked: `connection` and `current` are read and written only under `lock`, which
    // also serialises the calls on the connection (used by one thread at a time), including
    // calls from tasks the projection starts itself.
    private let lock = NSLock()
    private var connection: SQLiteConnection?
    private var current: Int64 = 0

    /// The projection's name (empty for ``SQLiteStore/readView(_:)``).
    public let projectionName: String
    /// Whether only reading statements are allowed (``SQLiteStore/readView(_:)``).
    public let isReadOnly: Bool

    init(connection: SQLiteConnection, projectionName: String, readOnly: Bool) {
        self.projectionName = projectionName
        self.isReadOnly = readOnly
        self.connection = connection
    }

    /// The notification being processed (the erasure record's for an erase); 0 outside one
    /// (set-up, drop, reading).
    public var notificationID: Int64 { lock.withLock { current } }

    func begin(_ notificationID: Int64) { lock.withLock { current = notificationID } }

    /// Ends the transaction's validity: later calls throw.
    func close() { lock.withLock { connection = nil } }

    /// Runs the runner's own transaction control (`SAVEPOINT`, `ROLLBACK TO`, `RELEASE`) on the
    /// connection, in turn with the projection's statements.
    func control(_ sql: String) throws {
        try lock.withLock {
            guard let conn = connection else {
                throw EventSourcingError(.invalidArgument, "the view transaction of projection \"\(projectionName)\" is over")
            }
            try conn.execute(sql)
        }
    }

    /// Whether the connection is still in the runner's transaction (a statement that ended it
    /// fails the batch: ``SQLiteStore/checkStillInTransaction(_:_:_:)``).
    func checkStillInTransaction(_ id: Int64?) throws {
        try lock.withLock {
            guard let conn = connection else {
                throw EventSourcingError(.invalidArgument, "the view transaction of projection \"\(projectionName)\" is over")
            }
            try SQLiteStore.checkStillInTransaction(conn, projectionName, id)
        }
    }

    /// Runs one statement that returns no rows (or whose rows are not needed).
    /// - Returns: the number of rows it inserted, updated or deleted.
    @discardableResult
    public func execute(_ sql: String, _ values: SQLiteValue...) throws -> Int {
        try execute(sql, values: values)
    }

    /// Runs one statement with `values` bound to its parameters, in order.
    /// - Returns: the number of rows it inserted, updated or deleted.
    @discardableResult
    public func execute(_ sql: String, values: [SQLiteValue]) throws -> Int {
        try withStatement(sql, values) { s, conn in
            while try s.step() {}
            return conn.changes
        }
    }

    /// Runs one query and returns its rows.
    public func query(_ sql: String, _ values: SQLiteValue...) throws -> [SQLiteRow] {
        try query(sql, values: values)
    }

    /// Runs one query with `values` bound to its parameters, and returns its rows.
    /// - Parameters:
    ///   - sql: one statement, with `?` parameters.
    ///   - values: the parameters' values, in order (as many as the statement has).
    ///   - maxRows: the most rows returned (a bound on memory, 1 to 1,000,000).
    /// - Throws: `.invalidArgument` when the query has more rows than `maxRows` (none are returned).
    public func query(_ sql: String, values: [SQLiteValue], maxRows: Int = 10_000) throws -> [SQLiteRow] {
        guard (1...1_000_000).contains(maxRows) else {
            throw EventSourcingError(.invalidArgument, "maxRows must be 1 to 1,000,000, got \(maxRows)")
        }
        return try withStatement(sql, values) { s, _ in
            // The columns are read after the first step: a kept statement whose tables changed
            // since it was prepared is prepared again by that step (and may have other columns).
            var columns: [String]?
            var rows: [SQLiteRow] = []
            while try s.step() {
                guard rows.count < maxRows else {
                    throw EventSourcingError(.invalidArgument,
                                             "the query returned more than \(maxRows) rows (maxRows): page it with LIMIT and OFFSET or a key")
                }
                let names = columns ?? (0..<sqlite3_column_count(s.handle)).map { c in
                    sqlite3_column_name(s.handle, c).map { String(cString: $0) } ?? ""
                }
                columns = names
                rows.append(SQLiteRow(columns: names, values: names.indices.map { s.viewValue(Int32($0)) }))
            }
            return rows
        }
    }

    private func withStatement<T>(_ sql: String, _ values: [SQLiteValue],
                                  _ body: (Statement, SQLiteConnection) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        do {
            guard let conn = connection else {
                throw EventSourcingError(.invalidArgument,
                    "the view transaction of projection \"\(projectionName)\" is over: use it only during the call that received it")
            }
            // The SQL is checked when it is prepared: a kept statement passed already.
            return try conn.withViewStatement(sql, check: { try Self.refuseControl(sql) }) { statement in
                if isReadOnly, sqlite3_stmt_readonly(statement.handle) == 0 {
                    throw EventSourcingError(.invalidArgument, "a view read (SQLiteStore.readView) runs only statements that read")
                }
                let expected = Int(sqlite3_bind_parameter_count(statement.handle))
                guard expected == values.count else {
                    throw EventSourcingError(.invalidArgument,
                                             "the statement has \(expected) parameters, and \(values.count) values were given")
                }
                for (i, v) in values.enumerated() { statement.bind(Int32(i + 1), v) }
                return try body(statement, conn)
            }
        }
    }

    /// Refuses statements that would end, nest or leave the runner's transaction, or change the
    /// connection's settings (secure_delete, journal mode, synchronous).
    static func refuseControl(_ sql: String) throws(EventSourcingError) {
        let word = ViewSQL.firstKeyword(sql)
        if refusedKeywords.contains(word) {
            throw EventSourcingError(.invalidArgument,
                                     "a view transaction does not run \(word) statements (the runner owns the transaction and the connection's settings)")
        }
    }

    private static let refusedKeywords: Set = ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ATTACH", "DETACH",
                                               "VACUUM", "PRAGMA"]

    // MARK: Running a projection's async call on the writer thread

    /// Whether the current task is inside a view transaction's call, and of which store: a write
    /// to that store from there would wait for the writer the call holds.
    @TaskLocal static var holdingWriter: ObjectIdentifier?

    /// Runs `operation` in a task and blocks this (the writer's) thread until it is done.
    static func block<T: Sendable>(_ cancellation: ViewCancellation, store: ObjectIdentifier,
                                   _ operation: @escaping @Sendable () async throws -> T) -> Result<T, any Error> {
        let outcome = OutcomeBox<T>()
        let done = DispatchSemaphore(value: 0)
        let task = Task {
            let result: Result<T, any Error>
            do {
                result = .success(try await $holdingWriter.withValue(store) { try await operation() })
            } catch {
                result = .failure(error)
            }
            outcome.set(result)
            done.signal()
        }
        cancellation.set(task)
        done.wait()
        cancellation.set(nil)
        return outcome.take() ?? .failure(EventSourcingError(.recorderFailure, "a projection's call ended without a result"))
    }
}

/// The result of a projection's call, handed from its task to the writer thread.
final class OutcomeBox<T: Sendable>: Sendable {
    private let value = Mutex<Result<T, any Error>?>(nil)
    func set(_ r: Result<T, any Error>) { value.withLock { $0 = r } }
    func take() -> Result<T, any Error>? { value.withLock { $0.take() } }
}

/// Cancels the projection call that runs for a write whose task was cancelled.
final class ViewCancellation: Sendable {
    private let state = Mutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))

    func set(_ task: Task<Void, Never>?) {
        let cancelled = state.withLock { s -> Bool in
            s.task = task
            return s.cancelled
        }
        if cancelled { task?.cancel() }
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    func cancel() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.cancelled = true
            return s.task
        }
        task?.cancel()
    }
}

extension Statement {
    func bind(_ i: Int32, _ v: SQLiteValue) {
        switch v {
        case .null: sqlite3_bind_null(handle, i)
        case .integer(let x): bind(i, x)
        case .real(let x): bind(i, x)
        case .text(let x): bind(i, x)
        case .blob(let x): bind(i, x)
        }
    }

    func viewValue(_ c: Int32) -> SQLiteValue {
        switch sqlite3_column_type(handle, c) {
        case SQLITE_INTEGER: return .integer(int64(c))
        case SQLITE_FLOAT: return .real(double(c))
        case SQLITE_TEXT: return .text(text(c))
        case SQLITE_BLOB: return .blob(blob(c))
        default: return .null
        }
    }
}

/// Read models in the store's own database file, processed exactly once: the runner's batch is
/// one write on the store's writer connection (a savepoint of a group commit) holding the
/// view's writes and the tracking record.
extension SQLiteStore: ProjectionStore {
    public typealias Context = SQLiteViewTransaction

    public func projectionPosition(_ name: String) async throws -> Int64? {
        try await maxTrackingID(name)
    }

    /// Applies the batch in one transaction on the writer connection. A step that throws is
    /// rolled back; the steps before it and their tracking record commit. A cancelled batch
    /// commits nothing. After a batch that erased, the WAL is checkpointed (as after a shred:
    /// bounded by ``Configuration/scrubTimeout``, see ``erasureResidue()``).
    ///
    /// The steps run one after another in one task while the writer thread waits for it (one
    /// hand-over per batch, not per notification), first without a savepoint each; only when
    /// a step throws is the batch rolled back and run again from its first step with a
    /// savepoint per notification, up to the one that throws (whose writes alone are undone).
    /// So a batch with a failing notification calls the projection twice for the notifications
    /// before it; the first run's writes are gone, so the view still holds each once.
    public func applyProjectionBatch(_ batch: ProjectionBatch<SQLiteViewTransaction>) async throws
        -> ProjectionBatch<SQLiteViewTransaction>.Outcome {
        try Tracking.validate(name: batch.name)
        guard !batch.steps.isEmpty else { return .init(committedThrough: nil, failure: nil) }
        let cancellation = ViewCancellation()
        let id = ObjectIdentifier(self)
        let outcome = try await withTaskCancellationHandler {
            try await write { conn -> ProjectionBatch<SQLiteViewTransaction>.Outcome in
                let tx = SQLiteViewTransaction(connection: conn, projectionName: batch.name, readOnly: false)
                defer { tx.close() }
                let result = SQLiteViewTransaction.block(cancellation, store: id) {
                    try await SQLiteStore.runSteps(batch.steps, in: tx, cancellation)
                }
                let outcome = try result.get()
                if let done = outcome.committedThrough {
                    try SQLiteStore.insertTrackingRow(Tracking(name: batch.name, notificationID: done), conn)
                }
                return outcome
            }
        } onCancel: {
            cancellation.cancel()
        }
        if let through = outcome.committedThrough,
           batch.steps.contains(where: { $0.isErasure && $0.notificationID <= through }) {
            await scrubAfterErasure()
        }
        return outcome
    }

    /// Runs `steps` in `tx` (inside the batch's write): all of them in one savepoint, and only
    /// after a step throws, again with a savepoint per step (``applyProjectionBatch(_:)``).
    /// Throws `CancellationError` for a cancelled batch (nothing of it is to be kept) and the
    /// error of a statement that ended the transaction.
    static func runSteps(_ steps: [ProjectionBatch<SQLiteViewTransaction>.Step], in tx: SQLiteViewTransaction,
                         _ cancellation: ViewCancellation) async throws -> ProjectionBatch<SQLiteViewTransaction>.Outcome {
        try tx.control("SAVEPOINT es_projection_batch")
        let fast = try await runSteps(steps, in: tx, cancellation, savepointEach: false)
        if fast.failure == nil {
            try tx.control("RELEASE es_projection_batch")
            return fast
        }
        // A step threw: nothing of this run is kept; the steps before it run again, each in a
        // savepoint, so the failing one's writes alone are undone.
        try tx.control("ROLLBACK TO es_projection_batch")
        let careful = try await runSteps(steps, in: tx, cancellation, savepointEach: true)
        try tx.control("RELEASE es_projection_batch")
        return careful
    }

    /// Runs `steps` in order until one throws; with `savepointEach`, each in a savepoint that
    /// is rolled back when it throws.
    private static func runSteps(_ steps: [ProjectionBatch<SQLiteViewTransaction>.Step], in tx: SQLiteViewTransaction,
                                 _ cancellation: ViewCancellation,
                                 savepointEach: Bool) async throws -> ProjectionBatch<SQLiteViewTransaction>.Outcome {
        var done: Int64?
        for step in steps {
            if cancellation.isCancelled || Task.isCancelled { throw CancellationError() }
            if let body = step.body {
                if savepointEach { try tx.control("SAVEPOINT es_projection_step") }
                tx.begin(step.notificationID)
                var thrown: (any Error)?
                do { try await body(tx) } catch { thrown = error }
                try tx.checkStillInTransaction(step.notificationID)
                if let thrown {
                    if thrown is CancellationError, cancellation.isCancelled || Task.isCancelled { throw thrown }
                    if savepointEach {
                        try tx.control("ROLLBACK TO es_projection_step")
                        try tx.control("RELEASE es_projection_step")
                    }
                    return .init(committedThrough: done, failure: (step.notificationID, thrown))
                }
                if savepointEach { try tx.control("RELEASE es_projection_step") }
            }
            done = step.notificationID
        }
        return .init(committedThrough: done, failure: nil)
    }

    /// Runs `body` in one write on the writer connection (with the tracking record's deletion
    /// when resetting): all of it commits, or nothing when it throws.
    public func projectionTransaction(_ name: String, resettingTracking: Bool,
                                      _ body: @escaping @Sendable (SQLiteViewTransaction) async throws -> Void) async throws {
        try Tracking.validate(name: name)
        let cancellation = ViewCancellation()
        let id = ObjectIdentifier(self)
        try await withTaskCancellationHandler {
            try await write { conn in
                if resettingTracking {
                    let s = try conn.statement("DELETE FROM tracking WHERE name = ?")
                    s.bind(1, name)
                    try s.run()
                }
                let tx = SQLiteViewTransaction(connection: conn, projectionName: name, readOnly: false)
                defer { tx.close() }
                let result = SQLiteViewTransaction.block(cancellation, store: id) { try await body(tx) }
                try SQLiteStore.checkStillInTransaction(conn, name, nil)
                try result.get()
            }
        } onCancel: {
            cancellation.cancel()
        }
    }

    /// Reads the store's database (a read model's tables) on a reader connection: what the
    /// last commits left, never a batch in flight. Only statements that read are allowed.
    public func readView<T: Sendable>(_ body: @escaping @Sendable (SQLiteViewTransaction) throws -> T) async throws -> T {
        try await read { conn in
            let tx = SQLiteViewTransaction(connection: conn, projectionName: "", readOnly: true)
            defer { tx.close() }
            return try body(tx)
        }
    }

    /// Refuses, with `.invalidArgument`, a write from inside one of this store's view
    /// transactions (it would wait for ever for the writer that transaction holds).
    func refuseWriteInsideViewTransaction() throws(EventSourcingError) {
        if SQLiteViewTransaction.holdingWriter == ObjectIdentifier(self) {
            throw EventSourcingError(.invalidArgument,
                "a write to the store at \(path) from inside a projection's view transaction on it would wait for ever (the transaction holds the writer): write through the view transaction, or after the call")
        }
    }

    /// A statement of the projection that ended the runner's transaction (which refuseControl
    /// should have stopped) fails the whole batch.
    static func checkStillInTransaction(_ conn: SQLiteConnection, _ name: String, _ id: Int64?) throws(EventSourcingError) {
        guard conn.inTransaction else {
            throw EventSourcingError(.projectionFailed,
                "projection \"\(name)\" ended its view transaction\(id.map { " at notification \($0)" } ?? ""): nothing of the batch was kept",
                notificationID: id)
        }
    }
}
