import ArgumentParser
import Dispatch
import EventSourcing
import Foundation
import KeyManagement

/// `esctl keys reencrypt`: rewrite a scope's records (or every scope's) under its newest
/// data-key version (Operations.md §15).
struct KeysReencrypt: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reencrypt",
        abstract: "Re-encrypt a scope's records (or every scope's, --all) under its newest data-key version.",
        discussion: """
            Rewrites each event and snapshot of the scope, and every personal field sealed under
            it inside other records, under the scope's newest data-key version (rotate it first
            with 'esctl keys rotate'). Coordinates, topics and notification ids do not change.
            Online: applications may keep writing. Safe to interrupt (Ctrl-C, a crash): each page
            is rewritten in one transaction; run the same command again to finish. A second run
            rewrites nothing. Then 'esctl keys retire SCOPE --below N' destroys the old versions.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope (or --all).") var scope: String?
    @Flag(help: "Re-encrypt every scope.") var all = false
    @Option(help: ArgumentHelp("Records read and rewritten per transaction (1…1000).", valueName: "n")) var pageSize = 500
    @Flag(help: "Print the final report as JSON.") var json = false

    struct JSON: Encodable {
        var scope: String?
        var all: Bool
        var targetVersion: Int?
        var eventsExamined, eventsRewritten, snapshotsExamined, snapshotsRewritten: Int
        var personalFieldsRewritten, alreadyCurrent, skippedShredded, conflictsRetried, conflictsLeft: Int
        enum CodingKeys: String, CodingKey {
            case scope, all, targetVersion = "target_version", eventsExamined = "events_examined"
            case eventsRewritten = "events_rewritten", snapshotsExamined = "snapshots_examined"
            case snapshotsRewritten = "snapshots_rewritten", personalFieldsRewritten = "personal_fields_rewritten"
            case alreadyCurrent = "already_current", skippedShredded = "skipped_shredded"
            case conflictsRetried = "conflicts_retried", conflictsLeft = "conflicts_left"
        }
    }

    private func check() throws {
        guard all != (scope != nil) else {
            throw CLIError(exitCode: Exit.usage, message: "give one key scope, or --all (not both)")
        }
        guard (1...Application.maxReencryptionPageSize).contains(pageSize) else {
            throw CLIError(exitCode: Exit.usage, message: "--page-size must be 1…\(Application.maxReencryptionPageSize), got \(pageSize)")
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            try check()
            try await StoreAccess(options: global).withSession(.readWrite, beforeWriting: { session, _, _ in
                guard let scope else { return }
                try KeysRetire.validScope(scope)
                try await KeysRetire.refuseMissing(scope, session.store)
            }) { session in
                let last = try await session.store.maxNotificationID() ?? 0
                let progress = Progress("re-encrypting", total: Int(clamping: last))
                let target = scope.map { "key scope \($0)" } ?? "every key scope"
                let again = "esctl keys reencrypt " + (scope ?? "--all")
                let interrupt = await Interrupt.install(progress: progress, message: """
                    interrupted: the re-encryption of \(target) is unfinished; every record is under its old or its new \
                    key version, and nothing is lost. Run the same command again to finish it (\(again))
                    """)
                defer { interrupt.remove() }
                Terminal.info("re-encrypting \(target) (\(last) notifications, then snapshots); Ctrl-C is safe: run the same command again to finish")
                let report: Reencryption.Report
                do {
                    let update: @Sendable (Reencryption.Progress) -> Void = { p in progress.update(Int(clamping: p.notificationID)) }
                    if let scope {
                        report = try await session.app.reencrypt(keyScope: scope, pageSize: pageSize, progress: update)
                    } else {
                        report = try await session.app.reencryptAll(pageSize: pageSize, progress: update)
                    }
                } catch {
                    progress.abandon()
                    throw error
                }
                progress.finish(Int(clamping: last))
                if json {
                    try JSONOut.print(JSON(scope: scope, all: all, targetVersion: report.targetVersion.map(Int.init),
                                           eventsExamined: report.eventsExamined, eventsRewritten: report.eventsRewritten,
                                           snapshotsExamined: report.snapshotsExamined, snapshotsRewritten: report.snapshotsRewritten,
                                           personalFieldsRewritten: report.personalFieldsRewritten, alreadyCurrent: report.alreadyCurrent,
                                           skippedShredded: report.skippedShredded, conflictsRetried: report.conflictsRetried,
                                           conflictsLeft: report.conflictsLeft))
                } else {
                    let version = report.targetVersion.map { " v\($0)" } ?? ""
                    print("re-encrypted \(target)\(version): rewrote \(report.eventsRewritten) of \(report.eventsExamined) events, "
                          + "\(report.snapshotsRewritten) of \(report.snapshotsExamined) snapshots, "
                          + "\(report.personalFieldsRewritten) personal fields; already current \(report.alreadyCurrent), "
                          + "skipped (shredded) \(report.skippedShredded)")
                }
                if report.conflictsLeft > 0 {
                    Terminal.error("warning: \(report.conflictsLeft) record(s) kept changing while being rewritten and were left; run the same command again")
                }
            }
        }
    }
}

/// `esctl keys retire`: destroy a scope's data-key versions below a minimum, once no record
/// needs them.
struct KeysRetire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "retire",
        abstract: "Destroy a scope's data-key versions below --below N, once no record uses them.",
        discussion: """
            Checks every event, snapshot and personal field of the store first, and refuses (exit
            72, naming the scope and the lowest version still needed) while any uses a version
            below N: run 'esctl keys reencrypt SCOPE' first. The newest version is never retired.
            Asks for confirmation on a terminal unless --yes; without a terminal, --yes is required.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope.") var scope: String
    @Option(help: ArgumentHelp("The new minimum decryption version: versions below it are destroyed.", valueName: "n"))
    var below: UInt32
    @Flag(help: "Do not ask for confirmation.") var yes = false
    @Flag(help: "Print JSON.") var json = false

    struct JSON: Encodable {
        var scope: String
        var below: Int
        var retiredVersions: [Int]
        var minimumVersion: Int?
        enum CodingKeys: String, CodingKey {
            case scope, below, retiredVersions = "retired_versions", minimumVersion = "minimum_version"
        }
    }

    /// Exit 64 for what is not a key scope (empty, over 255 bytes, a control character).
    static func validScope(_ scope: String) throws {
        do { try KeyScope.validate(scope) } catch {
            throw CLIError(exitCode: Exit.usage, message: "not a key scope: \(error.message); nothing was changed")
        }
    }

    /// Exit 69 for a shredded scope, 68 for one that never had a key.
    static func refuseMissing(_ scope: String, _ store: any AdminStore) async throws {
        let s = try await ScopeSummary.load(scope, from: store)
        if let t = s.tombstone {
            throw CLIError(exitCode: Exit.scopeShredded, message: "key scope \(scope) was shredded at \(JSONOut.date(t.shreddedAt)); nothing was changed")
        }
        guard !s.versions.isEmpty else {
            throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'; nothing was changed")
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            guard below >= 1 else { throw CLIError(exitCode: Exit.usage, message: "--below must be 1 or more") }
            // Every refusal (unknown, shredded, a version still in use, not confirmed) is made on
            // the read-only session, before the store is opened for writing.
            try await StoreAccess(options: global).withSession(.readWrite, beforeWriting: { session, _, _ in
                try KeysRetire.validScope(scope)
                try await Self.refuseMissing(scope, session.store)
                let versions = try await session.keyring.storedVersions(scope: scope)
                if let newest = versions.last, below > newest {
                    throw CLIError(exitCode: Exit.usage,
                        message: "key scope \(scope): --below \(below) is above its newest version v\(newest), which is never retired; nothing was changed")
                }
                guard versions.contains(where: { $0 < below }) else { return }
                if !yes, !Terminal.stdinIsTTY {
                    throw CLIError(exitCode: Exit.usage, message: "refusing to retire key versions without confirmation: pass --yes")
                }
                Terminal.info("checking every record of the store for versions of \(scope) below v\(below)")
                if let lowest = try await session.app.lowestKeyVersionInUse(keyScope: scope), lowest < below {
                    throw CLIError(exitCode: Exit.keyVersionInUse, message:
                        "key scope \(scope) still needs data key v\(lowest): re-encrypt it first (esctl keys reencrypt \(scope)); nothing was retired")
                }
                if !yes {
                    Terminal.info("This destroys the versions of \(scope)'s data key below v\(below) for good (backups made before keep them).")
                    let answer = Terminal.readLine(prompt: "Type the scope to confirm: ", silent: false).map { String(decoding: $0, as: UTF8.self) }
                    guard answer == scope else { throw CLIError(exitCode: Exit.usage, message: "not confirmed; nothing was changed") }
                }
            }) { session in
                let retired = try await session.app.retireKeyVersions(keyScope: scope, below: below)
                let minimum = try await session.keyring.storedVersions(scope: scope).first
                if json {
                    try JSONOut.print(JSON(scope: scope, below: Int(below), retiredVersions: retired.map(Int.init),
                                           minimumVersion: minimum.map(Int.init)))
                } else if retired.isEmpty {
                    print("\(scope): no version below v\(below) to retire" + (minimum.map { " (minimum version v\($0))" } ?? ""))
                } else {
                    print("\(scope): retired " + retired.map { "v\($0)" }.joined(separator: ", ")
                          + (minimum.map { "; minimum version now v\($0)" } ?? ""))
                }
            }
        }
    }
}

/// Ctrl-C (SIGINT) while a long pass runs (`keys rotate-master`, `keys reencrypt`, `encrypt`):
/// ends the progress line, says how to resume, exits 130. Each of those passes commits page by
/// page (or key by key), so stopping at any point leaves every record and key whole.
struct Interrupt {
    private let source: any DispatchSourceSignal

    /// Returns once the handler is registered: a Ctrl-C from then on is caught, not lost.
    static func install(progress: Progress, message: String) async -> Interrupt {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: DispatchQueue(label: "esctl.sigint"))
        source.setEventHandler {
            progress.abandon()
            Terminal.error(message)
            _exit(Exit.interrupted)
        }
        await withCheckedContinuation { (registered: CheckedContinuation<Void, Never>) in
            source.setRegistrationHandler { registered.resume() }
            source.resume()
        }
        return Interrupt(source: source)
    }

    func remove() {
        source.cancel()
        signal(SIGINT, SIG_DFL)
    }
}
