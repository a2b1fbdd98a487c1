import Dispatch
import EventSourcing
import Foundation
import Logging
import Synchronization

extension SQLiteStore {
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
