import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement

/// `esctl encrypt`: seals every unencrypted event and snapshot of a store written before
/// encryption was turned on (Operations §16, SECURITY.md §7.8).
struct Encrypt: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Encrypt a store written without encryption: seal every plaintext event and snapshot in place.",
        discussion: """
            Run 'esctl init' on the plaintext store first (it adds the master key; from then on the \
            store refuses plaintext saves unless opened with allowsPlaintextWrites). Each record \
            is sealed under its aggregate's key scope: the aggregate's entry in --subjects, else \
            the scope of a record of it that is encrypted already, else its own id (lowercase). \
            An aggregate whose records belong to a data subject must be listed in --subjects \
            (a JSON object {"AGGREGATE-ID": "SCOPE", ...}, or CSV lines AGGREGATE-ID,SCOPE; \
            lines starting with # are skipped), or use the library's \
            encryptPlaintextRecords(aggregateTypes:), which reads the subject from the events.

            Online: applications keep saving meanwhile. Each page of records is one transaction, \
            so Ctrl-C (exit 130), a crash or a lost connection leaves every record whole, \
            plaintext or encrypted: run the same command again to finish. A second run seals \
            nothing. Once no plaintext record is left, the store refuses plaintext records for \
            good (also with allowsPlaintextWrites), unless --keep-accepting-plaintext. On \
            SQLite the WAL is then checkpointed and truncated, so no old plaintext page is left \
            in the database, its -wal or its -shm; PostgreSQL keeps the old row versions until \
            VACUUM (Operations §16).

            Exit 0: every record is encrypted. Exit 67: records could not be sealed (each \
            named on a FAIL line; they are left as they are). Exit 64: a bad --subjects file \
            (nothing is changed). Exit 70 (SQLite): the checkpoint was held up by a reader; \
            the records are encrypted, run 'esctl scrub'.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Option(help: ArgumentHelp("Aggregate id -> key scope map (JSON object or CSV).", valueName: "path"))
    var subjects: String?
    @Option(help: ArgumentHelp("Records per transaction (1 to \(RecordRewrite.maxBatchSize)).", valueName: "n"))
    var pageSize: Int = 500
    @Flag(help: "Do not make the store refuse plaintext records afterwards.") var keepAcceptingPlaintext = false
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard pageSize >= 1, pageSize <= RecordRewrite.maxBatchSize else {
            throw ValidationError("--page-size takes 1 to \(RecordRewrite.maxBatchSize)")
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            // The map is read and checked whole before the store is opened.
            let scopes = try subjects.map { try SubjectsFile.read($0) } ?? [:]
            var failed = false
            var pending = false
            try await StoreAccess(options: global).withSession(.readWrite) { session in
                let total = Int(try await session.store.maxNotificationID() ?? 0)
                let progress = Progress("encrypting events", total: total)
                let interrupt = await Interrupt.install(progress: progress, message: """
                    interrupted: the pages done so far are encrypted, every record is whole (plaintext or encrypted). \
                    Run the same command again to finish: esctl encrypt\(subjects.map { " --subjects \($0)" } ?? "")
                    """)
                defer { interrupt.remove() }
                Terminal.info("encrypting the plaintext records of \(session.store.location); Ctrl-C is safe: run the same command again to finish")
                let report: PlaintextEncryption.Report
                do {
                    report = try await session.app.encryptPlaintextRecords(
                        options: .init(pageSize: pageSize, scopes: scopes, refusePlaintextAfterwards: !keepAcceptingPlaintext,
                                       residueTimeout: .seconds(10))
                    ) { p in
                        if p.phase == .events { progress.update(p.examined) }
                    }
                } catch {
                    progress.abandon()
                    throw error
                }
                progress.finish(report.eventsExamined)
                // SQLite: the WAL checkpointed and truncated after the pass (nil for PostgreSQL).
                let residuePending = report.residue?.pending
                let out = Output(report, residuePending: residuePending)
                if json {
                    try JSONOut.print(out)
                } else {
                    for line in out.lines { print(line) }
                }
                failed = report.failed > 0
                pending = residuePending == true
            }
            if failed {
                throw CLIError(exitCode: Exit.verificationFailed,
                               message: "some records could not be encrypted (FAIL lines); they are left as they are")
            }
            if pending {
                throw CLIError(exitCode: Exit.storeLocked,
                               message: "a read transaction in another process held up the WAL checkpoint: old plaintext pages may "
                                   + "remain in the -wal; end it and run 'esctl scrub'")
            }
        }
    }

    /// What `encrypt` prints (`--json`: Operations §12.11).
    struct Output: Encodable {
        struct Counts: Encodable {
            var examined: Int
            var encrypted: Int
            var alreadyEncrypted: Int
            var erasureRecords: Int?
            enum CodingKeys: String, CodingKey {
                case examined, encrypted
                case alreadyEncrypted = "already_encrypted", erasureRecords = "erasure_records"
            }
        }
        struct Failure: Encodable {
            var originatorID: String?
            var originatorVersion: Int?
            var notificationID: Int64?
            var topic: String?
            var keyScope: String?
            var code: String
            var message: String
            enum CodingKeys: String, CodingKey {
                case topic, message
                case originatorID = "originator_id", originatorVersion = "originator_version"
                case notificationID = "notification_id", keyScope = "key_scope", code = "error"
            }
            func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(originatorID, forKey: .originatorID)
                try c.encode(originatorVersion, forKey: .originatorVersion)
                try c.encode(notificationID, forKey: .notificationID)
                try c.encode(topic, forKey: .topic)
                try c.encode(keyScope, forKey: .keyScope)
                try c.encode(code, forKey: .code)
                try c.encode(message, forKey: .message)
            }
            var line: String {
                var parts: [String] = []
                if let notificationID { parts.append("notification \(notificationID)") }
                if let originatorID { parts.append("aggregate \(originatorID)") }
                if let originatorVersion { parts.append("version \(originatorVersion)") }
                if let topic { parts.append("topic \(topic)") }
                parts.append("scope " + (keyScope ?? "-"))
                return "FAIL " + parts.joined(separator: ", ") + ": \(code): \(message)"
            }
        }

        var events: Counts
        var snapshots: Counts
        var keysCreated: Int
        var scopes: [String: Int]
        var recordsInUnlistedScopes: Int
        var pagesRetried: Int
        var failed: Int
        var failures: [Failure]
        var plaintextLeft: Int?
        var plaintextRefused: Bool
        var residuePending: Bool?

        enum CodingKeys: String, CodingKey {
            case events, snapshots, scopes, failed, failures
            case keysCreated = "keys_created", recordsInUnlistedScopes = "records_in_unlisted_scopes"
            case pagesRetried = "pages_retried", plaintextLeft = "plaintext_left", plaintextRefused = "plaintext_refused"
            case residuePending = "residue_pending"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(events, forKey: .events)
            try c.encode(snapshots, forKey: .snapshots)
            try c.encode(keysCreated, forKey: .keysCreated)
            try c.encode(scopes, forKey: .scopes)
            try c.encode(recordsInUnlistedScopes, forKey: .recordsInUnlistedScopes)
            try c.encode(pagesRetried, forKey: .pagesRetried)
            try c.encode(failed, forKey: .failed)
            try c.encode(failures, forKey: .failures)
            try c.encode(plaintextLeft, forKey: .plaintextLeft)
            try c.encode(plaintextRefused, forKey: .plaintextRefused)
            try c.encode(residuePending, forKey: .residuePending)
        }

        init(_ r: PlaintextEncryption.Report, residuePending: Bool?) {
            events = Counts(examined: r.eventsExamined, encrypted: r.eventsEncrypted, alreadyEncrypted: r.eventsAlreadyEncrypted,
                            erasureRecords: r.erasureRecords)
            snapshots = Counts(examined: r.snapshotsExamined, encrypted: r.snapshotsEncrypted,
                               alreadyEncrypted: r.snapshotsAlreadyEncrypted, erasureRecords: nil)
            keysCreated = r.keysCreated
            scopes = r.encryptedByScope
            recordsInUnlistedScopes = r.recordsInUnlistedScopes
            pagesRetried = r.pagesRetried
            failed = r.failed
            failures = r.failures.map {
                Failure(originatorID: $0.originatorID?.uuidString.lowercased(), originatorVersion: $0.originatorVersion,
                        notificationID: $0.notificationID, topic: $0.topic, keyScope: $0.keyScope, code: $0.code.description,
                        message: $0.message)
            }
            plaintextLeft = r.plaintextLeft
            plaintextRefused = r.plaintextRefused
            self.residuePending = residuePending
        }

        var lines: [String] {
            var out = [
                "events:    \(events.encrypted) encrypted, \(events.alreadyEncrypted) already encrypted, "
                    + "\(events.erasureRecords ?? 0) erasure records (plaintext by design), \(events.examined) examined",
                "snapshots: \(snapshots.encrypted) encrypted, \(snapshots.alreadyEncrypted) already encrypted, \(snapshots.examined) examined",
                "keys created: \(keysCreated); scopes written to: \(scopes.count)" + (recordsInUnlistedScopes > 0 ? " listed, more not listed" : ""),
            ]
            out += failures.map(\.line)
            if failed > failures.count { out.append("(\(failed - failures.count) more failures are counted, not listed)") }
            out.append("plaintext left: " + (plaintextLeft.map(String.init) ?? "unknown")
                       + "; plaintext writes: " + (plaintextRefused ? "refused" : "accepted"))
            if let residuePending { out.append(residuePending ? "residue: pending (run 'esctl scrub')" : "residue: none (WAL checkpointed and truncated)") }
            return out
        }
    }
}

/// The `--subjects` file: aggregate id → key scope, as a JSON object or CSV lines.
enum SubjectsFile {
    /// The largest file read (the map is held in memory).
    static let maxBytes = 64 << 20
    /// The most entries.
    static let maxEntries = 1_000_000

    /// - Throws: exit 64 naming the file and the line (or entry) that is wrong; never its content.
    static func read(_ path: String) throws -> [UUID: String] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CLIError(exitCode: Exit.usage, message: "--subjects: cannot read \(path)")
        }
        defer { try? handle.close() }
        let data = try handle.read(upToCount: maxBytes + 1) ?? Data()
        guard data.count <= maxBytes else {
            throw CLIError(exitCode: Exit.usage, message: "--subjects: \(path) is larger than \(maxBytes >> 20) MiB")
        }
        return try parse(Array(data), name: path)
    }

    static func parse(_ bytes: [UInt8], name: String) throws -> [UUID: String] {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) is not UTF-8 text")
        }
        let trimmed = text.drop(while: { $0.isWhitespace })
        var pairs: [(where: String, id: String, scope: String)] = []
        if trimmed.first == "{" {
            guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) is not a JSON object of aggregate ids to scopes")
            }
            for (k, v) in object {
                guard let scope = v as? String else {
                    throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name): the value for \(UUID(uuidString: k).map { $0.uuidString.lowercased() } ?? "an entry") is not a string")
                }
                pairs.append(("entry \(pairs.count + 1)", k, scope))
            }
        } else {
            // "\r\n" is one Character: split on it too, or a CRLF file is one line.
            let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
            for (i, raw) in lines.enumerated() {
                let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
                if line.trimmingCharacters(in: .whitespaces).isEmpty || line.hasPrefix("#") { continue }
                let fields = line.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
                guard fields.count == 2 else {
                    throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) line \(i + 1) is not AGGREGATE-ID,SCOPE")
                }
                pairs.append(("line \(i + 1)", fields[0].trimmingCharacters(in: .whitespaces), String(fields[1])))
            }
        }
        guard pairs.count <= maxEntries else {
            throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) has more than \(maxEntries) entries")
        }
        var map: [UUID: String] = [:]
        for p in pairs {
            guard let id = UUID(uuidString: p.id) else {
                throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) \(p.where): the aggregate id is not a UUID")
            }
            guard !p.scope.isEmpty, p.scope.utf8.count <= 255, !p.scope.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw CLIError(exitCode: Exit.usage,
                               message: "--subjects: \(name) \(p.where): the scope is empty, longer than 255 bytes or holds control characters")
            }
            // `id, alice` would seal under " alice", which a shred of "alice" never reaches.
            guard p.scope.first?.isWhitespace != true, p.scope.last?.isWhitespace != true else {
                throw CLIError(exitCode: Exit.usage,
                               message: "--subjects: \(name) \(p.where): the scope begins or ends with white space (write AGGREGATE-ID,SCOPE without spaces)")
            }
            guard map.updateValue(p.scope, forKey: id) == nil else {
                throw CLIError(exitCode: Exit.usage, message: "--subjects: \(name) \(p.where): aggregate \(id.uuidString.lowercased()) is listed twice")
            }
        }
        return map
    }
}
