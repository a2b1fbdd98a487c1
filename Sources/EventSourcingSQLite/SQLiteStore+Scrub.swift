import EventSourcing
import Foundation
import Logging
import Synchronization

/// What a store knows, in this process, of copies its files may still hold of erased keys.
///
/// A shred changes a data-key row in place (see `shred(scope:at:)`), so once its transaction has
/// committed no table holds the key. Until a WAL checkpoint has copied the new page into the
/// database file and truncated the WAL, though, the database file still holds the old page and
/// the WAL may hold older images of it. A read transaction that started before the shred keeps
/// that checkpoint from completing.
struct ScrubState: Sendable {
    /// A checkpoint after an erasure did not complete, and none has completed since.
    var pending = false
    /// Why, for the receipt and the status.
    var reason = ""
    /// When the last bounded wait ran out: a second step of the same erasure (the snapshot
    /// deletion) does not wait again for the same reader.
    var lastBlocked: ContinuousClock.Instant?
}

extension SQLiteStore: ErasureResidueScrubbing {
    /// The size of the store's `-wal` file in bytes, 0 when there is none.
    public var walBytes: Int {
        (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0
    }

    /// What this store knows, without waiting, of copies its files may still hold of keys it
    /// erased in this process. A pending residue whose WAL has since been truncated to zero bytes
    /// (by ``scrubErasureResidue(timeout:)``, `esctl scrub`, or the last connection closing) is
    /// reported as done.
    public func erasureResidue() async -> ErasureResidueStatus {
        let state = scrubState.withLock { $0 }
        if state.pending, walBytes == 0 {
            scrubState.withLock { $0.pending = false }
            return ErasureResidueStatus(pending: false, description: Self.cleanDescription(path))
        }
        guard state.pending else {
            return ErasureResidueStatus(pending: false, description: "no erased key is waiting for a checkpoint in \(path)")
        }
        return ErasureResidueStatus(pending: true, description: state.reason)
    }

    /// Completes the WAL checkpoint that removes the old database pages holding erased keys:
    /// copies the WAL into the database file and truncates the WAL to zero bytes. Waits at most
    /// `timeout` for read transactions (or writes, in any process) that hold it up, trying again every 100
    /// ms or less, and lets queued writes through between attempts.
    ///
    /// When it completes, no copy of a key erased by a shred is left in the database file, its
    /// `-wal` or its `-shm` (SECURITY.md §7.1 says why, and what the filesystem may still keep).
    /// - Returns: `pending == false` when the checkpoint completed; otherwise what is pending.
    /// - Throws: `EventSourcingError` `.databaseUnavailable` for a closed or
    ///   read-only store; the SQLite error of a checkpoint that failed (an I/O error).
    public func scrubErasureResidue(timeout: Duration) async throws -> ErasureResidueStatus {
        let completed = try await checkpointTruncate(within: timeout)
        return record(completed: completed, waited: timeout)
    }

    /// Copies the WAL into the database file and truncates it to zero bytes, so no earlier page
    /// image stays in the WAL; waits at most ``Configuration/scrubTimeout`` for readers.
    /// - Returns: whether it completed (false: a reader held it up, or it failed; logged).
    @discardableResult
    public func checkpointTruncate() async -> Bool {
        do {
            if try await checkpointTruncate(within: configuration.scrubTimeout) { return true }
            logger.warning("WAL checkpoint did not complete: a read transaction (or a write) held it up; it will on a later checkpoint",
                           metadata: ["path": "\(path)", "waited": "\(Self.seconds(configuration.scrubTimeout))"])
        } catch {
            logger.warning("WAL checkpoint failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
        return false
    }

    /// After an erasure (a shred, the deletion of snapshots): the bounded checkpoint, and the
    /// account of what it left pending. Never throws: the erasure itself has committed.
    func scrubAfterErasure() async {
        let now = ContinuousClock.now
        let limit = configuration.scrubTimeout
        // The same reader that held up the shred's checkpoint a moment ago holds up this one:
        // one attempt, no second wait.
        let again = scrubState.withLock { s -> Bool in
            guard let last = s.lastBlocked else { return false }
            return now - last < Self.bounded(limit) * 2 + .milliseconds(100)
        }
        do {
            let completed = try await checkpointTruncate(within: again ? .zero : limit)
            let status = record(completed: completed, waited: limit)
            // Said once per reader: a second step that did not wait again has nothing new to say.
            if status.pending, !again {
                logger.warning("erased key pages still in the database file or its WAL: \(status.description)",
                               metadata: ["path": "\(path)"])
            }
        } catch {
            let reason = "the WAL checkpoint after the erasure failed (\(error)); copies of the erased key may remain in "
                + "\(path) or its -wal until a checkpoint completes: run SQLiteStore.scrubErasureResidue(timeout:) or `esctl scrub`"
            scrubState.withLock {
                $0.pending = true
                $0.reason = reason
                $0.lastBlocked = ContinuousClock.now
            }
            logger.warning("WAL checkpoint after an erasure failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// Records the outcome of a bounded checkpoint and returns it as a status.
    private func record(completed: Bool, waited: Duration) -> ErasureResidueStatus {
        if completed {
            scrubState.withLock {
                $0.pending = false
                $0.reason = ""
                $0.lastBlocked = nil
            }
            return ErasureResidueStatus(pending: false, description: Self.cleanDescription(path))
        }
        let reason = "the database file \(path) and its -wal (\(walBytes) bytes) may still hold the old pages with an erased key: "
            + "a read transaction (or a write) in this or another process kept the WAL checkpoint from completing within "
            + "\(Self.seconds(waited)); once it has ended, run SQLiteStore.scrubErasureResidue(timeout:) or `esctl scrub` "
            + "(closing the last connection to the store also completes it)"
        scrubState.withLock {
            $0.pending = true
            $0.reason = reason
            $0.lastBlocked = ContinuousClock.now
        }
        return ErasureResidueStatus(pending: true, description: reason)
    }

    static func cleanDescription(_ path: String) -> String {
        "checkpoint complete: \(path)-wal is empty, and no copy of an erased key is left in \(path), its -wal or its -shm "
            + "(filesystem and storage remnants aside: SECURITY.md §7.1)"
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`, tried until it completes or `timeout` has passed. Each
    /// attempt waits for readers at most 100 ms (SQLite's busy handler, set for the attempt
    /// only) and runs on the writer thread outside any transaction; between attempts the writer
    /// takes the writes queued meanwhile, so saves are not held up for the whole wait.
    func checkpointTruncate(within timeout: Duration) async throws -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + Self.bounded(timeout)
        let normal = Self.milliseconds(configuration.busyTimeout)
        while true {
            let slice = min(max(deadline - clock.now, .zero), .milliseconds(100))
            let millis = Self.milliseconds(slice)
            let completed = try await writeOutsideTransaction { conn -> Bool in
                try conn.execute("PRAGMA busy_timeout = \(millis)")
                defer { try? conn.execute("PRAGMA busy_timeout = \(normal)") }
                let s = try conn.statement("PRAGMA wal_checkpoint(TRUNCATE)")
                defer { s.reset() }
                // Row: busy, log frames, checkpointed frames. busy = 0 means it completed.
                return try s.step() && s.int(0) == 0
            }
            if completed { return true }
            if clock.now >= deadline { return false }
            try? await Task.sleep(for: min(.milliseconds(5), max(deadline - clock.now, .zero)))
        }
    }

    /// `d` clamped to zero…one year: a caller's or a configuration's duration never overflows
    /// the clock arithmetic.
    static func bounded(_ d: Duration) -> Duration {
        min(max(d, .zero), .seconds(365 * 86_400))
    }

    /// `d` in whole milliseconds, clamped to 0…Int32.max (SQLite's busy timeout).
    static func milliseconds(_ d: Duration) -> Int32 {
        let c = bounded(d).components
        return Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000)
    }

    static func seconds(_ d: Duration) -> String {
        let ms = Int(milliseconds(d))
        return ms % 1000 == 0 ? "\(ms / 1000) s" : String(format: "%.3g s", Double(ms) / 1000)
    }
}
