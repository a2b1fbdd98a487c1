import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement

/// `esctl erasures export | apply`: carry a store's erasures to a restored backup.
struct Erasures: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a store's erasures, and re-apply them to a restored backup.",
        discussion: """
            A backup restored after some erasures brings their scopes back. 'erasures export' \
            writes the live store's erasures (every tombstone: key scope and shred time; no \
            personal data, no key material) as a versioned JSON list; 'erasures apply FILE' \
            shreds each of them in the restored store. See Docs/Operations.md §10.4.
            """,
        subcommands: [ErasuresExport.self, ErasuresApply.self]
    )
}

struct ErasuresExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export",
        abstract: "Write the store's erasures (key scope and shred time of every tombstone) as JSON.",
        discussion: """
            The list holds no personal data and no key material, only key scope ids and times \
            (format: Docs/Operations.md §12.9). It goes to standard output, or with --output to \
            a new file (mode 0600) that appears only when complete. Reads only: a SQLite store \
            keeps every byte. A store with more tombstones than a list may hold (500000) is \
            refused (exit 64).
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Option(help: ArgumentHelp("Write the list to this new file (mode 0600) instead of standard output.", valueName: "path"))
    var output: String?
    @Flag(help: "With --output, replace an existing file.") var overwrite = false

    func validate() throws {
        if overwrite, output == nil { throw ValidationError("--overwrite only applies with --output") }
    }

    func run() async throws {
        try await Esctl.guarded {
            if let output, !overwrite, FileManager.default.fileExists(atPath: output) {
                throw CLIError(exitCode: Exit.usage, message: "\(output) already exists: choose a new file, or add --overwrite to replace it")
            }
            try await StoreAccess(options: global).withSession(.readOnly) { session in
                let list = try await session.app.erasures()
                let data = try list.encoded()
                let sink = try ExportSink(output: output)
                do {
                    try sink.write(data)
                    try sink.commit(to: output, overwrite: overwrite)
                } catch {
                    sink.discard()
                    throw error
                }
                Terminal.info("exported \(list.erasures.count) erasures" + (output.map { " to \($0) (mode 0600)" } ?? ""))
            }
        }
    }
}

struct ErasuresApply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "apply",
        abstract: "Shred every key scope of an erasure list (from 'erasures export') in this store.",
        discussion: """
            For each scope of the list: a scope this store has a key for is shredded; one it \
            never had is tombstoned ahead of time (no record can ever be written under it); \
            one already shredded is left alone. Each shred writes its erasure record. Prints \
            one line per scope (or JSON with --json); --dry-run says what it would do and \
            changes nothing. Running it again changes nothing.

            The whole file is checked before anything is changed: a file that is not an \
            erasure list, a newer format version, an invalid or repeated key scope, or a file \
            over 64 MiB or 500000 entries is refused with exit 64, a wrong master key with 65, \
            and the store keeps every byte. A failure part-way (say, a lost connection) leaves \
            the scopes shredded so far shredded: apply the same file again to finish.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: ArgumentHelp("The erasure list (written by 'esctl erasures export').", valueName: "file")) var file: String
    @Flag(help: "Say what would be done; change nothing.") var dryRun = false
    @Flag(help: "Print JSON.") var json = false

    struct Report: Encodable {
        struct Item: Encodable {
            var scope: String
            var action: String
            var listedShreddedAt: String
            var shreddedAt: String?
            var eventsAffected: Int?
            var snapshotsDeleted: Int?
            enum CodingKeys: String, CodingKey {
                case scope, action
                case listedShreddedAt = "listed_shredded_at", shreddedAt = "shredded_at"
                case eventsAffected = "events_affected", snapshotsDeleted = "snapshots_deleted"
            }
            func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(scope, forKey: .scope)
                try c.encode(action, forKey: .action)
                try c.encode(listedShreddedAt, forKey: .listedShreddedAt)
                try c.encode(shreddedAt, forKey: .shreddedAt)
                try c.encode(eventsAffected, forKey: .eventsAffected)
                try c.encode(snapshotsDeleted, forKey: .snapshotsDeleted)
            }
        }
        var dryRun: Bool
        var shredded: Int
        var tombstonedAhead: Int
        var alreadyShredded: Int
        var erasures: [Item]
        enum CodingKeys: String, CodingKey {
            case erasures, shredded
            case dryRun = "dry_run", tombstonedAhead = "tombstoned_ahead", alreadyShredded = "already_shredded"
        }
    }

    /// Thrown from the read-only step when nothing needs writing (a dry run, or every scope
    /// already shredded): the store is then never opened for writing.
    private struct NothingToWrite: Error { var plan: [AppliedErasure] }

    func run() async throws {
        try await Esctl.guarded {
            // The file is read and checked whole before the store is opened.
            let list = try ErasureList(contentsOfFile: file)
            var outcomes: [AppliedErasure] = []
            do {
                try await StoreAccess(options: global).withSession(.readWrite, beforeWriting: { session, _, _ in
                    let plan = try await session.app.applyErasures(list, dryRun: true)
                    if dryRun || plan.allSatisfy({ $0.action == .alreadyShredded }) { throw NothingToWrite(plan: plan) }
                }) { session in
                    outcomes = try await session.app.applyErasures(list)
                }
            } catch let nothing as NothingToWrite {
                outcomes = nothing.plan
            }
            report(outcomes)
        }
    }

    private func report(_ outcomes: [AppliedErasure]) {
        let counts = Dictionary(grouping: outcomes, by: \.action).mapValues(\.count)
        let shredded = counts[.shredded] ?? 0, ahead = counts[.tombstonedAhead] ?? 0, already = counts[.alreadyShredded] ?? 0
        if json {
            let items = outcomes.map { o in
                Report.Item(scope: o.keyScope, action: o.action.rawValue, listedShreddedAt: Self.time(o.listedShreddedAt),
                            shreddedAt: o.shreddedAt.map(Self.time), eventsAffected: o.receipt?.eventsAffected,
                            snapshotsDeleted: o.receipt?.snapshotsDeleted)
            }
            try? JSONOut.print(Report(dryRun: dryRun, shredded: shredded, tombstonedAhead: ahead, alreadyShredded: already, erasures: items))
        } else {
            var out = ""
            for o in outcomes {
                let verb: String
                switch o.action {
                case .shredded: verb = dryRun ? "would shred" : "shredded"
                case .tombstonedAhead: verb = dryRun ? "would tombstone ahead" : "tombstoned ahead"
                case .alreadyShredded: verb = "already shredded"
                }
                out += verb.padding(toLength: 22, withPad: " ", startingAt: 0) + Self.printable(o.keyScope)
                if let r = o.receipt, o.action == .shredded { out += "  events \(r.eventsAffected)" }
                if o.action == .alreadyShredded, let at = o.shreddedAt { out += "  at \(Self.time(at))" }
                out += "\n"
            }
            FileHandle.standardOutput.write(Data(out.utf8))
        }
        let prefix = dryRun ? "dry run, nothing changed: would shred" : "shredded"
        Terminal.info("\(prefix) \(shredded), \(dryRun ? "would tombstone" : "tombstoned") \(ahead) ahead, \(already) already shredded, of \(outcomes.count) erasures")
        if outcomes.contains(where: { $0.receipt?.residuePending == true }) {
            Terminal.error("warning: the store's files may still hold copies of the erased keys: run 'esctl scrub'")
        }
        if let plaintext = outcomes.compactMap({ $0.receipt?.plaintextEventsInStore }).max(), plaintext > 0 {
            Terminal.error("warning: the store holds unencrypted (plaintext) events, which no shred erases: \(plaintext) (see 'esctl verify')")
        }
    }

    /// Times as the list writes them, so a listed time prints as it is in the file.
    private static func time(_ date: Date) -> String { ErasureList.timestamp(date) ?? JSONOut.date(date) }

    /// A scope on one line: control characters cannot occur (the list is checked), but a
    /// scope is printed as data, so keep it to one line regardless.
    private static func printable(_ scope: String) -> String {
        scope.unicodeScalars.map { $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0) }.joined()
    }
}
