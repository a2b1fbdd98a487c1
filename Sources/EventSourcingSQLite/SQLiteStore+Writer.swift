import Dispatch
import ESConcurrency
import EventSourcing
import Foundation
import KeyManagement
import Logging
import Synchronization

extension SQLiteStore {
    // MARK: Writer

    /// Runs `body` on the writer connection inside a transaction shared with other writes
    /// that arrive meanwhile (group commit); `body` runs in its own savepoint.
    ///
    /// Writes run on the store's writer thread, never on a cooperative thread (an fsync there
    /// would starve other tasks); writes that arrive while a commit is in flight wait without a
    /// thread and are committed together as one group. At most ``Configuration/maxWaitingWrites``
    /// wait: past that a write fails with `.storeOverloaded` and nothing of it runs.
    ///
    /// A write whose task is cancelled while it waits never runs; one cancelled while its body
    /// runs is rolled back to its savepoint once the body returns (the others of its group still
    /// commit). Both throw `CancellationError`. A write cancelled after its body returned
    /// commits with its group.
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
        try refuseWriteInsideViewTransaction()
        let request = Request(body: body, outsideTransaction: outsideTransaction)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
                // A task cancelled before this point is answered here, and never queued.
                guard request.attach(c) else { return }
                switch writes.enqueue(request) {
                case .startDraining: writerQueue.async { self.drain() }
                case .queued: break
                case .full:
                    request.fail(EventSourcingError(.storeOverloaded,
                        "the write was refused: \(writes.maxWaiting) writes already wait for the store at \(path) (Configuration.maxWaitingWrites); nothing was written"))
                case .closed:
                    request.fail(EventSourcingError(.databaseUnavailable, "the store at \(path) is closed: nothing was written"))
                }
            }
        } onCancel: {
            // Still queued: answered now, and taken out of the queue. Running: the writer sees it.
            if request.cancel() { _ = writes.removeWaiting { $0 === request } }
        }
    }

    private func run(_ batch: [any WriteRequest]) {
        let inTx = batch.filter { !$0.outsideTransaction }
        if !inTx.isEmpty { commit(inTx) }
        for r in batch where r.outsideTransaction {
            do {
                guard r.begin() else { continue }
                try r.perform(writer.connection)
                r.succeed()
            } catch {
                r.fail(error)
            }
        }
    }

    private func drain() {
        while true {
            let batch = writes.nextBatch()
            if batch.isEmpty { return }
            run(batch)
        }
    }

    private func commit(_ group: [any WriteRequest]) {
        // Writes cancelled while they waited were answered already: they do not run.
        let batch = group.filter { !$0.isCancelled }
        guard !batch.isEmpty else { return }
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
                guard r.begin() else { throw CancellationError() }
                try r.perform(conn)
                // Cancelled while the body ran: its writes are rolled back like a failed save's.
                guard r.finish() else { throw CancellationError() }
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
            // Keys read with events before this commit may be older than it (a shred, a new
            // version): no read that started before keeps any.
            prefetchedKeys.forgetAll()
            commitSignal.signal()
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
    /// Whether the request was cancelled before it ran (it was answered then, and must not run).
    var isCancelled: Bool { get }
    /// On the writer, right before ``perform(_:)``: false if cancelled (it must not run).
    func begin() -> Bool
    /// On the writer, right after ``perform(_:)``: false if cancelled while it ran (its writes
    /// must be undone); from then on a cancellation is too late.
    func finish() -> Bool
    func perform(_ conn: SQLiteConnection) throws
    func succeed()
    func fail(_ error: any Error)
}

final class Request<T: Sendable>: WriteRequest, @unchecked Sendable {
    // @unchecked: `result` is written and read only on the writer queue; everything shared with
    // the cancelling and enqueuing tasks is in `state`, and the continuation is resumed exactly
    // once (whoever takes it out of `state`).
    private enum Phase { case queued, running, cancelled, finishing }
    private struct State {
        var phase = Phase.queued
        var continuation: CheckedContinuation<T, any Error>?
    }
    private let body: @Sendable (SQLiteConnection) throws -> T
    private let state = Mutex(State())
    private var result: T?
    let outsideTransaction: Bool

    init(body: @escaping @Sendable (SQLiteConnection) throws -> T, outsideTransaction: Bool) {
        self.body = body
        self.outsideTransaction = outsideTransaction
    }

    /// Gives the request the continuation to answer; false (answered with `CancellationError`)
    /// if the task was cancelled before: it must not be queued.
    func attach(_ c: CheckedContinuation<T, any Error>) -> Bool {
        let cancelled = state.withLock { s -> Bool in
            if s.phase == .cancelled { return true }
            s.continuation = c
            return false
        }
        if cancelled { c.resume(throwing: CancellationError()) }
        return !cancelled
    }

    /// Marks the request cancelled; true if it had not started (it was answered now, and its
    /// place in the queue can be freed).
    func cancel() -> Bool {
        let (answered, c) = state.withLock { s -> (Bool, CheckedContinuation<T, any Error>?) in
            switch s.phase {
            case .queued:
                s.phase = .cancelled
                let c = s.continuation
                s.continuation = nil
                return (true, c)
            case .running:
                s.phase = .cancelled
                return (false, nil)
            case .cancelled, .finishing:
                return (false, nil)
            }
        }
        c?.resume(throwing: CancellationError())
        return answered
    }

    var isCancelled: Bool { state.withLock { $0.phase == .cancelled } }

    func begin() -> Bool {
        state.withLock { s in
            guard s.phase == .queued else { return false }
            s.phase = .running
            return true
        }
    }

    func finish() -> Bool {
        state.withLock { s in
            guard s.phase == .running else { return false }
            s.phase = .finishing
            return true
        }
    }

    func perform(_ conn: SQLiteConnection) throws { result = try body(conn) }

    func succeed() {
        if let result { answer(.success(result)) } else {
            answer(.failure(EventSourcingError(.recorderFailure, "write produced no result")))
        }
    }

    func fail(_ error: any Error) { answer(.failure(error)) }

    private func answer(_ outcome: Result<T, any Error>) {
        let c = state.withLock { s -> CheckedContinuation<T, any Error>? in
            let c = s.continuation
            s.continuation = nil
            return c
        }
        c?.resume(with: outcome)
    }
}
