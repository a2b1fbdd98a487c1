import ESConcurrency
import EventSourcing
import Foundation
import Synchronization

extension SQLiteStore {
    // MARK: Readers

    /// Runs `body` on a pooled reader connection, on one of the store's reader threads
    /// (``taskExecutor``), never on the cooperative pool: a read can wait for the disk, or for
    /// another process's lock for up to ``Configuration/busyTimeout`` (GRDB's model).
    ///
    /// The hand-over costs two thread wake-ups per read, tens of microseconds each on a virtual
    /// machine, often more than a read from the page cache. A caller already on a reader thread
    /// (a read-heavy loop run on ``taskExecutor``) reads inline, with no hand-over. (Spinning for
    /// the result instead of suspending was tried: on a 2-core machine it cost more than it saved.)
    ///
    /// At most ``Configuration/readers`` connections are open; a read that finds them all busy
    /// waits (without a thread) for one to come back, and at most
    /// ``Configuration/maxWaitingReads`` reads wait: past that it fails with
    /// `.storeOverloaded`. A cancelled read stops (`sqlite3_interrupt`, or it never starts) and
    /// throws `CancellationError`.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the store at \(path) is closed")
        }
        try Task.checkCancellation()
        let reader: ReaderConnection
        do {
            reader = try await readerPool.acquire()
        } catch let error as ResourcePoolError {
            switch error {
            case .closed:
                throw EventSourcingError(.databaseUnavailable, "the store at \(path) is closed")
            case .overloaded(let capacity, let waiters):
                throw EventSourcingError(.storeOverloaded,
                    "the read was refused: all \(capacity) reader connections of the store at \(path) are busy and \(waiters) reads already wait for one (Configuration.maxWaitingReads)")
            }
        }
        defer { readerPool.give(reader) }
        let id = reader.nextID()
        return try await withTaskCancellationHandler {
            if readThreads.isCurrent { return try self.run(body, on: reader, id) }
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
                readThreads.execute { c.resume(with: Result { try self.run(body, on: reader, id) }) }
            }
        } onCancel: {
            reader.cancel(id)
        }
    }

    /// The executor of the store's reader threads. Code that reads the store many times in a
    /// row (a batch job, a projection's catch-up) can run there
    /// (`withTaskExecutorPreference(store.taskExecutor) { … }`): its reads then run inline, with
    /// no hand-over at all. Keep long computations off it (it has ``Configuration/readers``
    /// threads, which the store's reads share).
    public var taskExecutor: any TaskExecutor { readThreads }

    /// Runs read `id` of `body` on `reader`, on the current (reader) thread.
    private func run<T>(_ body: (SQLiteConnection) throws -> T, on reader: ReaderConnection, _ id: UInt64) throws -> T {
        guard reader.begin(id) else { throw CancellationError() }
        let result = Result { try self.readHere(reader.connection, body) }
        // An error caused by the interrupt is the cancellation; a result is kept.
        let cancelled = reader.end(id)
        if cancelled, case .failure = result { throw CancellationError() }
        return try result.get()
    }

    /// Reads waiting for a reader connection (for tests).
    var waitingReads: Int { readerPool.waiterCount }

    /// For tests: holds a reader connection (as a read would) while `body` runs.
    func holdingReader(_ body: () async throws -> Void) async throws {
        let reader = try await readerPool.acquire()
        defer { readerPool.give(reader) }
        try await body()
    }

    /// Runs `body` on `conn` on the current thread (a reader's), with a read-only store's checks.
    private func readHere<T>(_ conn: SQLiteConnection, _ body: (SQLiteConnection) throws -> T) throws -> T {
        guard let readOnlyAccess else { return try body(conn) }
        guard hasSchema else {
            throw EventSourcingError(.databaseUnavailable,
                                     "\(path) holds no event store yet (a new, empty database), and a read-only store creates none")
        }
        try readOnlyAccess.checkUnchanged(path)
        let result = try body(conn)
        try readOnlyAccess.checkUnchanged(path)
        return result
    }

    /// The pool of reader connections, bounded by ``Configuration/readers``.
    static func makeReaderPool(path: String, configuration: Configuration, readOnlyURI: String?,
                               busyMillis: Int32, opened: @escaping @Sendable () -> Void) -> ReaderPool {
        ReaderPool(capacity: configuration.readers, maxWaiters: configuration.maxWaitingReads,
                   make: { () throws(EventSourcingError) -> ReaderConnection in
                       let conn = if let readOnlyURI {
                           try SQLiteConnection(readOnlyURI: readOnlyURI, path: path, busyTimeoutMillis: busyMillis)
                       } else {
                           try SQLiteConnection(path: path, create: false, busyTimeoutMillis: busyMillis)
                       }
                       try conn.execute("PRAGMA query_only = ON")
                       opened()
                       return ReaderConnection(conn)
                   },
                   drop: { $0.close() })
    }
}

typealias ReaderPool = ResourcePool<ReaderConnection, EventSourcingError>

/// A reader connection, and which read runs on it (for cancellation).
final class ReaderConnection: @unchecked Sendable {
    // @unchecked: `connection` is used by one read at a time (the pool lends the reader to one
    // read at a time, its Mutex orders the hand-overs), except `interrupt()`, which `state`'s
    // lock keeps to the time a read of the cancelling task runs; `close()` only once the pool
    // dropped it.
    let connection: SQLiteConnection
    private struct State {
        var lastID: UInt64 = 0
        var running: UInt64?
        var cancelled: UInt64?
    }
    private let state = Mutex(State())

    init(_ connection: SQLiteConnection) { self.connection = connection }

    /// An id for the next read of this reader.
    func nextID() -> UInt64 {
        state.withLock { s in
            s.lastID &+= 1
            return s.lastID
        }
    }

    /// Before read `id` runs: false if it was cancelled already (it must not run).
    func begin(_ id: UInt64) -> Bool {
        state.withLock { s in
            guard s.cancelled != id else { return false }
            s.running = id
            return true
        }
    }

    /// After read `id` ran: whether it was cancelled meanwhile.
    func end(_ id: UInt64) -> Bool {
        state.withLock { s in
            s.running = nil
            return s.cancelled == id
        }
    }

    /// Cancels read `id`: stops it if it runs, keeps it from starting if it has not.
    func cancel(_ id: UInt64) {
        state.withLock { s in
            s.cancelled = id
            if s.running == id { connection.interrupt() }
        }
    }

    func close() { connection.close() }
}
