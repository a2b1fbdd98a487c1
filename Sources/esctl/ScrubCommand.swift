import ArgumentParser
import EventSourcing
import EventSourcingSQLite
import Foundation
import Logging

/// `esctl scrub`: finishes the erasure of shredded keys in a SQLite store's files.
struct Scrub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Finish a shred in a SQLite store's files: remove the old pages that held shredded keys.",
        discussion: """
            A shred erases the key rows at once, but until a WAL checkpoint completes, the database \
            file and its -wal can still hold the old pages with the erased key. A read transaction \
            that started before the shred (a long report, a backup, a sqlite3 shell) holds that \
            checkpoint up, and a shred waits for it only about a second: its receipt and a warning \
            then say the residue is pending. This command completes the checkpoint and truncates \
            the -wal, waiting up to --wait seconds for such readers to end, and says when no copy \
            of a shredded key is left in the database, its -wal or its -shm.

            Needs no master key. Exit 0: nothing is pending. Exit 70: a read transaction (or a \
            write) in another process still held the checkpoint when --wait ran out (find it with `fuser`, end it, run scrub \
            again). SQLite stores only: PostgreSQL keeps deleted rows until VACUUM (see \
            Docs/Operations.md).
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Option(help: ArgumentHelp("Seconds to wait for read transactions that hold up the checkpoint (0 to 86400).", valueName: "seconds"))
    var wait: Double = 60
    @Flag(help: "Print the result as JSON.") var json = false

    struct Report: Encodable {
        var store: String
        var residuePending: Bool
        var walBytes: Int
        var waitedSeconds: Double
        var status: String
        enum CodingKeys: String, CodingKey {
            case store, status
            case residuePending = "residue_pending", walBytes = "wal_bytes", waitedSeconds = "waited_seconds"
        }
    }

    func validate() throws {
        guard wait.isFinite, wait >= 0, wait <= 86_400 else {
            throw ValidationError("--wait takes a number of seconds from 0 to 86400")
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            let access = StoreAccess(options: global)
            guard let path = try access.sqlitePath() else {
                throw CLIError(exitCode: Exit.usage, message: "scrub works on SQLite stores; PostgreSQL keeps deleted key rows in "
                    + "dead tuples until VACUUM, and in its WAL, archives and backups (Docs/Operations.md §6.3)")
            }
            guard !path.isEmpty else { throw CLIError(exitCode: Exit.usage, message: "empty store path") }
            guard FileManager.default.fileExists(atPath: path) else {
                throw CLIError(exitCode: Exit.storeUnavailable, message: "no store at \(path) (create one with 'esctl init')")
            }
            // Opened for writing, like the application: a checkpoint writes the database file. A
            // store written by an older version is migrated first (schema 3), which itself leaves
            // no stale copy of any key.
            let store = try SQLiteStore(path: path, logger: Logger(label: "esctl.sqlite"))
            let report: Report
            do { report = try await scrub(store) } catch {
                await store.close()
                throw error
            }
            await store.close()
            if json {
                try JSONOut.print(report)
            } else {
                print(report.residuePending ? "residue pending: \(report.status)" : "no residue: \(report.status)")
            }
            if report.residuePending {
                throw CLIError(exitCode: Exit.storeLocked,
                               message: "a read transaction (or a write) in another process still holds the WAL checkpoint after \(Self.seconds(wait)): "
                                   + "end it (fuser \(path) names the processes that have the store open) and run 'esctl scrub' again")
            }
        }
    }

    /// Tries the checkpoint in steps of at most a second until it completes or `wait` runs out,
    /// showing how long it has waited (on a terminal) or saying once that it waits.
    private func scrub(_ store: SQLiteStore) async throws -> Report {
        let clock = ContinuousClock()
        let start = clock.now
        let limit = Duration.milliseconds(Int64((wait * 1000).rounded()))
        let bar = Progress("waiting for read transactions to end (seconds)", total: max(1, Int(wait.rounded(.up))))
        var said = false
        while true {
            let remaining = max(limit - (clock.now - start), .zero)
            let status = try await store.scrubErasureResidue(timeout: min(remaining, .seconds(1)))
            let waited = clock.now - start
            let seconds = Double(waited.components.seconds) + Double(waited.components.attoseconds) / 1e18
            if !status.pending || waited >= limit {
                if said { bar.finish(Int(seconds.rounded(.down))) }
                let wal = store.walBytes
                let text = !status.pending ? status.description
                    : "the database file \(store.path) and its -wal (\(wal) bytes) may still hold old pages with shredded keys: "
                        + "a read transaction (or a write) in another process kept the WAL checkpoint from completing for \(Self.seconds(wait))"
                return Report(store: "sqlite:" + store.path, residuePending: status.pending, walBytes: wal,
                              waitedSeconds: (seconds * 1000).rounded() / 1000, status: text)
            }
            if !said {
                said = true
                Terminal.info("a read transaction (or a write) in another process holds the WAL checkpoint; waiting up to \(Self.seconds(wait)) for it to end "
                    + "(-wal: \(Stats.size(store.walBytes)))")
            }
            bar.update(Int(seconds.rounded(.down)))
        }
    }

    static func seconds(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : String(format: "%.1f s", s)
    }
}
