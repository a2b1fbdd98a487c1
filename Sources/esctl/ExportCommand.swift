import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement
#if canImport(Glibc)
import Glibc
#endif

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Subject access export: every event of a key scope, decrypted, with id, version, topic and time.",
        discussion: """
            Personal fields: the subject's own are shown in its events (another subject's are
            withheld), and every other record of the store is scanned for the subject's personal
            fields in other subjects' aggregates, listed after the events.
            Exits 67, naming the record, if any event of the scope (or any record scanned for
            the subject's fields) cannot be read or decrypted: an export is never silently
            partial. With --output the file appears only when the export is complete (mode
            0600); on standard output the events before the failing one have been written, so
            check the exit code. Unencrypted (plaintext) events carry no key
            scope and are not exported: a warning says how many the store holds, and how many of
            them belong to the exported aggregates.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case jsonl, json }

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope (data subject) to export.") var scope: String
    @Option(help: "jsonl (one event per line) or json (one document).") var format: Format?
    @Flag(help: "Print one JSON document (the same as --format json).") var json = false
    @Option(help: ArgumentHelp("Write the export to this new file (mode 0600) instead of standard output.", valueName: "path"))
    var output: String?
    @Flag(help: "With --output, replace an existing file.") var overwrite = false

    /// One exported event (Docs/Operations.md §12.5).
    struct Record: Encodable {
        var notificationID: Int64
        var originatorID: String
        var originatorVersion: Int
        var topic: String
        var schemaVersion: JSONValue
        var event: JSONValue
        var recordedAt: String?

        enum CodingKeys: String, CodingKey {
            case kind, topic, event
            case notificationID = "notification_id", originatorID = "originator_id", originatorVersion = "originator_version"
            case schemaVersion = "schema_version", recordedAt = "recorded_at"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode("event", forKey: .kind)
            try c.encode(notificationID, forKey: .notificationID)
            try c.encode(originatorID, forKey: .originatorID)
            try c.encode(originatorVersion, forKey: .originatorVersion)
            try c.encode(topic, forKey: .topic)
            try c.encode(schemaVersion, forKey: .schemaVersion)
            try c.encode(event, forKey: .event)
            try c.encodeIfPresent(recordedAt, forKey: .recordedAt)
        }
    }

    func validate() throws {
        if json, format == .jsonl { throw ValidationError("--json and --format jsonl contradict each other") }
        if overwrite, output == nil { throw ValidationError("--overwrite only applies with --output") }
    }

    func run() async throws {
        let asDocument = json || format == .json
        try await Esctl.guarded {
            if let output, !overwrite, FileManager.default.fileExists(atPath: output) {
                throw CLIError(exitCode: Exit.usage, message: "\(output) already exists: choose a new file, or add --overwrite to replace it")
            }
            try await StoreAccess(options: global).withSession(.readOnly) { session in
                if let t = try await session.store.tombstone(scope: scope) {
                    throw CLIError(exitCode: Exit.scopeShredded,
                                   message: "key scope \(scope) was shredded at \(JSONOut.date(t.shreddedAt)): nothing can be exported")
                }
                guard !(try await session.store.dataKeys(scope: scope)).isEmpty else {
                    throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'")
                }
                let sink = try ExportSink(output: output)
                do {
                    let (done, scan, plaintext) = try await export(session, to: sink, asDocument: asDocument)
                    try sink.commit(to: output, overwrite: overwrite)
                    if let output {
                        let elsewhere = scan.fields > 0 ? " and \(scan.fields) of its personal fields in other subjects' records" : ""
                        Terminal.info("exported \(done) events of key scope \(scope)\(elsewhere) to \(output) (mode 0600)")
                    }
                    if let warning = plaintext.warning { Terminal.error("warning: " + warning) }
                    if let warning = scan.warning { Terminal.error("warning: " + warning) }
                } catch {
                    sink.discard()
                    throw error
                }
            }
        }
    }

    /// Unencrypted events, which no export by key scope can include.
    struct Plaintext {
        /// In the whole store.
        var inStore = 0
        /// Of the aggregates the export covers (and of the aggregate whose id is the scope).
        var ofExportedAggregates = 0

        var warning: String? {
            guard inStore > 0 else { return nil }
            guard ofExportedAggregates == 0 else {
                return "this export is not all of the subject's data: unencrypted (plaintext) events of the exported aggregates "
                    + "are not in it (they are under no scope): \(ofExportedAggregates) (\(inStore) in the whole store)"
            }
            return "the store holds unencrypted (plaintext) events, which are under no scope and in no export: \(inStore); "
                + "none belongs to an exported aggregate, but an aggregate of the subject that has only plaintext events cannot be found"
        }

        /// Counts them: the store's total (an indexed count), and, only when there are any,
        /// those among the events of `aggregates` (paged; proportional to their events).
        static func count(_ store: any AdminStore, aggregates: Set<UUID>) async throws -> Plaintext {
            var p = Plaintext(inStore: try await store.countPlaintextEvents())
            guard p.inStore > 0 else { return p }
            for id in aggregates.sorted(by: { $0.uuidString < $1.uuidString }) {
                var after: Int?
                while true {
                    let page = try await store.selectEvents(originatorID: id, after: after, limit: 500)
                    guard let last = page.last else { break }
                    p.ofExportedAggregates += page.reduce(0) { $0 + (StateHeader.peekKeyScope($1.state) == nil ? 1 : 0) }
                    guard last.originatorVersion > (after ?? Int.min) else { break }
                    after = last.originatorVersion
                }
            }
            return p
        }
    }

    private func export(_ session: Session, to sink: ExportSink, asDocument: Bool) async throws -> (Int, PersonalFieldExport.ScanResult, Plaintext) {
        let total = try await session.store.countEvents(keyScope: scope)
        let progress = Progress("exporting", total: total)
        let pretty = JSONEncoder()
        pretty.outputFormatting = asDocument ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        if asDocument { try sink.write("{\n  \"events\" : [") }
        var after: Int64 = 0
        var done = 0
        // The aggregates exported, and the one whose id is the scope (an aggregate's own scope).
        var aggregates = Set<UUID>()
        if let id = UUID(uuidString: scope) { aggregates.insert(id) }
        do {
            while true {
                let page: [StoredNotification]
                do {
                    page = try await session.store.selectNotifications(keyScope: scope, after: after, limit: 500)
                } catch let e as EventSourcingError where e.code == .databaseCorrupt {
                    guard let bad = e.notificationID else { throw e }
                    throw CLIError(exitCode: Exit.verificationFailed, message: """
                        export of key scope \(scope) is incomplete: notification \(bad) cannot be read: \
                        \(e.message) (run 'esctl verify' for the full list)
                        """)
                }
                guard let last = page.last else { break }
                for n in page {
                    aggregates.insert(n.originatorID)
                    let record = try await Self.record(n, session: session, scope: scope)
                    let data = try pretty.encode(record)
                    if asDocument {
                        let text = String(decoding: data, as: UTF8.self)
                        let indented = text.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n")
                        try sink.write((done == 0 ? "\n" : ",\n") + indented)
                    } else {
                        try sink.write(data + Data("\n".utf8))
                    }
                    done += 1
                }
                progress.update(done)
                after = last.id
            }
        } catch {
            progress.abandon()
            throw error
        }
        progress.finish(done)
        // The store skipped rows it could not read (older stores skip an originator id that is
        // not 16 bytes instead of failing): the export is not complete, and must not look it.
        if done < total {
            throw CLIError(exitCode: Exit.verificationFailed, message: """
                export of key scope \(scope) is incomplete: the store holds \(total) events under it, only \(done) could \
                be read (run 'esctl verify' to name the others)
                """)
        }
        // The subject's personal fields in other subjects' records (SECURITY.md §5.16).
        if asDocument { try sink.write("\n  ],\n  \"personal_fields\" : [") }
        var written = 0
        let scan = try await PersonalFieldExport.scan(session, scope: scope) { field in
            let data = try pretty.encode(field)
            if asDocument {
                let text = String(decoding: data, as: UTF8.self)
                let indented = text.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n")
                try sink.write((written == 0 ? "\n" : ",\n") + indented)
                written += 1
            } else {
                try sink.write(data + Data("\n".utf8))
            }
        }
        let plaintext = try await Plaintext.count(session.store, aggregates: aggregates)
        if asDocument {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.withoutEscapingSlashes]
            let scopeText = String(decoding: try encoder.encode(scope), as: UTF8.self)
            try sink.write("\n  ],\n  \"exported_at\" : \"\(JSONOut.date(Date()))\",\n"
                + "  \"plaintext_events_in_store\" : \(plaintext.inStore),\n"
                + "  \"plaintext_events_of_exported_aggregates\" : \(plaintext.ofExportedAggregates),\n"
                + "  \"records_not_searched\" : \(scan.unreadableCount),\n"
                + "  \"scope\" : \(scopeText)\n}\n")
        }
        return (done, scan, plaintext)
    }

    /// What to do about a record that does not read: a missing preset dictionary is given with
    /// an option; anything else is listed by verify.
    static func hint(_ error: any Error) -> String {
        (error as? EventSourcingError)?.code == .compressionDictionaryMissing
            ? "give esctl the dictionary with --compression-dictionary PATH" : "run 'esctl verify' for the full list"
    }

    /// One event decrypted into its export record; a failure names the record (exit 67).
    private static func record(_ n: StoredNotification, session: Session, scope: String) async throws -> Record {
        let envelope: JSONValue
        do {
            let bytes = try await session.app.mapper.open(n.storedEvent, snapshot: false, notificationID: n.id)
            var decoded = try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
            guard case .object = decoded else {
                throw EventSourcingError(.decodingFailed, "payload is not a JSON object")
            }
            if PersonalFieldExport.mayHoldFields(bytes) {
                decoded = try await PersonalFieldExport.resolve(decoded, n, mapper: session.app.mapper, scope: scope)
            }
            envelope = decoded
        } catch let e as CLIError {
            throw e
        } catch let e as EventSourcingError where e.code == .shredded {
            throw CLIError(exitCode: Exit.scopeShredded, message: "key scope \(scope) was shredded during the export; the export is incomplete")
        } catch {
            let code = (error as? EventSourcingError)?.code.description ?? "error"
            let message = (error as? EventSourcingError)?.message ?? "\(error)"
            throw CLIError(exitCode: Exit.verificationFailed, message: """
                export of key scope \(scope) is incomplete: notification \(n.id) (aggregate \(n.originatorID.uuidString.lowercased()) \
                version \(n.originatorVersion)) fails: \(code): \(message) (\(Self.hint(error)))
                """)
        }
        var recordedAt: String?
        switch envelope["t"] {
        case .double(let t)?: recordedAt = JSONOut.date(Date(timeIntervalSince1970: t))
        case .int(let t)?: recordedAt = JSONOut.date(Date(timeIntervalSince1970: Double(t)))
        default: break
        }
        return Record(notificationID: n.id, originatorID: n.originatorID.uuidString.lowercased(), originatorVersion: n.originatorVersion,
                      topic: n.topic, schemaVersion: envelope["v"] ?? .null, event: Self.readable(envelope["e"] ?? .null),
                      recordedAt: recordedAt)
    }

    /// Swift encodes an enum case's unlabeled associated values under the keys `_0`, `_1`, …:
    /// a single one becomes the value itself, several an array, so `renamed("Ada")` exports as
    /// `{"renamed": "Ada"}` rather than `{"renamed": {"_0": "Ada"}}`.
    static func readable(_ value: JSONValue) -> JSONValue {
        switch value {
        case .array(let a):
            return .array(a.map(readable))
        case .object(let o):
            let positional = !o.isEmpty && o.count <= 64 && (0..<o.count).allSatisfy { o["_\($0)"] != nil }
            if positional {
                let values = (0..<o.count).compactMap { o["_\($0)"] }.map(readable)
                return values.count == 1 ? values[0] : .array(values)
            }
            return .object(o.mapValues(readable))
        default:
            return value
        }
    }
}

/// Where an export goes: standard output, or a private temporary file beside the target that
/// becomes the target only once the export is complete.
final class ExportSink {
    private let fd: Int32
    private let temporary: String?

    init(output: String?) throws {
        guard let output else {
            fd = STDOUT_FILENO
            temporary = nil
            return
        }
        let url = URL(fileURLWithPath: output)
        var template = Array((url.deletingLastPathComponent().path + "/." + url.lastPathComponent + ".partial-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }  // mode 0600
        guard made >= 0 else {
            throw CLIError(exitCode: Exit.failure, message: "cannot create a file beside \(output): \(String(cString: strerror(errno)))")
        }
        fd = made
        temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func write(_ text: String) throws { try write(Data(text.utf8)) }

    func write(_ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                guard let base = raw.baseAddress else { return }
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n < 0, errno == EINTR { continue }
                guard n > 0 else {
                    throw CLIError(exitCode: Exit.failure, message: "cannot write the export: \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
    }

    /// Makes the temporary file the output: without `overwrite`, only if no file appeared there meanwhile.
    func commit(to output: String?, overwrite: Bool) throws {
        guard let temporary, let output else { return }
        guard fsync(fd) == 0 else {
            throw CLIError(exitCode: Exit.failure, message: "cannot write \(output): \(String(cString: strerror(errno)))")
        }
        close(fd)
        if overwrite {
            guard rename(temporary, output) == 0 else {
                throw CLIError(exitCode: Exit.failure, message: "cannot write \(output): \(String(cString: strerror(errno)))")
            }
        } else {
            guard link(temporary, output) == 0 else {
                let reason = errno == EEXIST ? "it was created meanwhile; nothing was replaced" : String(cString: strerror(errno))
                throw CLIError(exitCode: Exit.failure, message: "cannot write \(output): \(reason)")
            }
            unlink(temporary)
        }
    }

    /// Removes the temporary file (a failed export leaves no file behind).
    func discard() {
        guard let temporary else { return }
        close(fd)
        unlink(temporary)
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Counts: events, aggregates, snapshots, key scopes, shredded scopes, size.",
                                                    discussion: "Needs no master key: it reads no ciphertext.")

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            // Only reads: a SQLite store is opened read-only and keeps every byte.
            let store = try await StoreAccess(options: global).openStore(readOnly: true)
            let stats: StatsReport
            do { stats = try await store.statisticsJSON() } catch {
                await store.close()
                throw error
            }
            await store.close()
            if json {
                try JSONOut.print(stats)
            } else {
                func row(_ name: String, _ value: String) { print((name + ":").padding(toLength: 17, withPad: " ", startingAt: 0) + value) }
                row("store", stats.store)
                row("events", "\(stats.events)")
                row("aggregates", "\(stats.aggregates)")
                row("snapshots", "\(stats.snapshots)")
                row("key scopes", "\(stats.keyScopes)")
                row("data keys", "\(stats.dataKeys)")
                row("shredded scopes", "\(stats.shreddedScopes)")
                row("size on disk", Self.size(stats.bytesOnDisk))
            }
        }
    }

    /// A byte count a person can read: `40.0 KiB (40960 bytes)`.
    static func size(_ bytes: Int) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
        guard bytes >= 1024 else { return "\(bytes) bytes" }
        var value = Double(bytes) / 1024
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: "%.1f", value) + " " + units[unit] + " (\(bytes) bytes)"
    }
}
