import ArgumentParser
import EventSourcing
import Foundation

/// The outcome of decrypting every event and snapshot.
struct VerificationReport {
    struct Failure: Encodable {
        var kind: String
        var notificationID: Int64?
        var originatorID: UUID?
        var originatorVersion: Int?
        var topic: String?
        var keyScope: String?
        /// The personal field that fails (its stored coding path), when the record itself opens.
        var field: [String]? = nil
        var code: String
        var message: String

        enum CodingKeys: String, CodingKey {
            case kind, topic, message, field
            case notificationID = "notification_id", originatorID = "originator_id", originatorVersion = "originator_version"
            case keyScope = "key_scope", code = "error"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(kind, forKey: .kind)
            try c.encode(notificationID, forKey: .notificationID)
            try c.encode(originatorID?.uuidString.lowercased(), forKey: .originatorID)
            try c.encode(originatorVersion, forKey: .originatorVersion)
            try c.encode(topic, forKey: .topic)
            try c.encode(keyScope, forKey: .keyScope)
            try c.encode(field, forKey: .field)
            try c.encode(code, forKey: .code)
            try c.encode(message, forKey: .message)
        }

        /// The text line: the record, its key scope and the error.
        var line: String {
            var parts: [String] = []
            if let notificationID { parts.append("notification \(notificationID)") }
            if let originatorID { parts.append("aggregate \(originatorID.uuidString.lowercased())") }
            if let originatorVersion { parts.append("version \(originatorVersion)") }
            if let topic { parts.append("topic \(topic)") }
            parts.append("scope " + (keyScope ?? "-"))
            if let field { parts.append("field " + field.joined(separator: ".")) }
            return "FAIL \(kind) " + parts.joined(separator: ", ") + ": \(code): \(message)"
        }
    }

    struct Counts: Encodable {
        var ok = 0
        var shredded = 0
        /// Readable, but not encrypted: no shred can erase them.
        var plaintext = 0
        var failing = 0
        /// Shreds' erasure records (plaintext by design: a key scope and a time, no personal data).
        var erased = 0

        var line: String {
            "\(ok) ok, \(shredded) shredded, \(plaintext) plaintext, \(failing) failing"
                + (erased > 0 ? ", \(erased) erasure record\(erased == 1 ? "" : "s")" : "")
        }

        mutating func count(_ outcome: Outcome) {
            switch outcome {
            case .ok: ok += 1
            case .shredded: shredded += 1
            case .plaintext: plaintext += 1
            case .erased: erased += 1
            }
        }
    }

    /// Personal fields (SECURITY.md §5.16) of the records that open.
    struct FieldCounts: Encodable {
        var ok = 0
        /// Their subject was shredded (or they were written redacted): erased on purpose.
        var redacted = 0
        var failing = 0

        var total: Int { ok + redacted + failing }
        var line: String { "\(ok) ok, \(redacted) redacted, \(failing) failing" }
    }

    /// A personal field whose subject was shredded: where it is, and whose it was.
    struct RedactedField: Encodable {
        var kind: String
        var notificationID: Int64?
        var originatorID: UUID
        var originatorVersion: Int
        var topic: String
        var field: [String]
        var subject: String
        var shreddedAt: Date?

        enum CodingKeys: String, CodingKey {
            case kind, topic, field, subject
            case notificationID = "notification_id", originatorID = "originator_id", originatorVersion = "originator_version"
            case shreddedAt = "shredded_at"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(kind, forKey: .kind)
            try c.encode(notificationID, forKey: .notificationID)
            try c.encode(originatorID.uuidString.lowercased(), forKey: .originatorID)
            try c.encode(originatorVersion, forKey: .originatorVersion)
            try c.encode(topic, forKey: .topic)
            try c.encode(field, forKey: .field)
            try c.encode(subject, forKey: .subject)
            try c.encode(shreddedAt.map(JSONOut.date), forKey: .shreddedAt)
        }

        var line: String {
            var parts: [String] = []
            if let notificationID { parts.append("notification \(notificationID)") }
            parts.append("aggregate \(originatorID.uuidString.lowercased())")
            parts.append("version \(originatorVersion)")
            parts.append("topic \(topic)")
            parts.append("field " + field.joined(separator: "."))
            let when = shreddedAt.map { " shredded at " + JSONOut.date($0) } ?? " shredded"
            return "REDACTED \(kind) " + parts.joined(separator: ", ") + ": subject \(subject)\(when)"
        }
    }

    /// How many redacted fields are named one by one; the count covers them all.
    static let redactedListed = 1_000

    var events = Counts()
    var snapshots = Counts()
    var fields = FieldCounts()
    var failures: [Failure] = []
    /// The first ``redactedListed`` redacted fields, in the order read.
    var redacted: [RedactedField] = []

    var eventsOK: Int { events.ok }
    var eventsShredded: Int { events.shredded }
    /// Unencrypted records, events and snapshots.
    var plaintext: Int { events.plaintext + snapshots.plaintext }

    struct JSON: Encodable {
        var events: Counts
        var snapshots: Counts
        var fields: FieldCounts
        var failures: [Failure]
        var redactedFields: [RedactedField]
        /// Whether the store refuses unencrypted records for good (it was encrypted: `esctl encrypt`).
        var plaintextWritesRefused: Bool?

        enum CodingKeys: String, CodingKey {
            case events, snapshots, fields, failures
            case redactedFields = "redacted_fields", plaintextWritesRefused = "plaintext_writes_refused"
        }
    }

    var json: JSON { JSON(events: events, snapshots: snapshots, fields: fields, failures: failures, redactedFields: redacted) }

    /// Counts a record that opened, with its personal fields: a field that fails makes the
    /// record fail, named with the field; a redacted one is counted and named as such.
    private mutating func tally(_ checked: Reader.Checked, kind: String, _ s: StoredEvent, _ id: Int64?,
                                counts: WritableKeyPath<VerificationReport, Counts>) {
        var failed = false
        for f in checked.fields {
            switch f.outcome {
            case .value:
                fields.ok += 1
            case .redacted(let r):
                fields.redacted += 1
                if redacted.count < Self.redactedListed {
                    redacted.append(RedactedField(kind: kind, notificationID: id, originatorID: s.originatorID,
                                                  originatorVersion: s.originatorVersion, topic: s.topic, field: f.path,
                                                  subject: r.subject, shreddedAt: r.shreddedAt))
                }
            case .failed(let e):
                fields.failing += 1
                failed = true
                failures.append(Failure(kind: kind, notificationID: id, originatorID: s.originatorID,
                                        originatorVersion: s.originatorVersion, topic: s.topic,
                                        keyScope: e.keyScope ?? f.subject, field: f.path, code: e.code.description,
                                        message: e.message))
            }
        }
        if failed { self[keyPath: counts].failing += 1 } else { self[keyPath: counts].count(checked.outcome) }
    }

    /// Decrypts, decompresses and parses every record of the session's store.
    ///
    /// A record that fails is named and the run carries on. A row the store cannot even read
    /// (an originator id that is not 16 bytes, say) is named by its notification id when the
    /// store reports it, and the run carries on after it.
    static func run(_ session: Session, progress: Progress?) async throws -> VerificationReport {
        var report = VerificationReport()
        let reader = Reader(session)
        var start: Int64 = 1
        var seen = 0
        while true {
            let page: [StoredNotification]
            do {
                page = try await session.store.selectNotifications(start: start, limit: 500, stop: nil, topics: [])
            } catch let e as EventSourcingError where e.code == .databaseCorrupt && (e.notificationID ?? 0) >= start {
                // The store refused a row of this page: verify the rows before it, name it, go on after it.
                let bad = e.notificationID ?? start
                let before = bad > start
                    ? try await session.store.selectNotifications(start: start, limit: Int(clamping: bad - start), stop: bad - 1, topics: [])
                    : []
                await report.check(before, reader)
                report.failures.append(Failure(kind: "event", notificationID: bad, originatorID: e.originatorID,
                                               originatorVersion: e.originatorVersion, topic: e.topic, keyScope: e.keyScope,
                                               code: e.code.description, message: e.message))
                report.events.failing += 1
                seen += before.count + 1
                progress?.update(seen)
                guard bad < Int64.max else { break }
                start = bad + 1
                continue
            }
            guard let last = page.last else { break }
            await report.check(page, reader)
            seen += page.count
            progress?.update(seen)
            guard last.id < Int64.max else { break }
            start = last.id + 1
        }
        var cursor: SnapshotCursor?
        while true {
            let page: [StoredEvent]
            do {
                page = try await session.store.selectSnapshots(after: cursor, limit: 500)
            } catch let e as EventSourcingError where e.code == .databaseCorrupt {
                // A snapshot row the store cannot read: name it; the snapshots after it in key
                // order cannot be paged past it, so the snapshot pass ends here.
                report.failures.append(Failure(kind: "snapshot", notificationID: nil, originatorID: e.originatorID,
                                               originatorVersion: e.originatorVersion, topic: e.topic, keyScope: e.keyScope,
                                               code: e.code.description, message: e.message + " (snapshots after it were not checked)"))
                report.snapshots.failing += 1
                break
            }
            guard let last = page.last else { break }
            for s in page {
                do {
                    report.tally(try await reader.check(s, snapshot: true, notificationID: nil), kind: "snapshot", s, nil,
                                 counts: \.snapshots)
                } catch {
                    report.failures.append(failure("snapshot", s, nil, error))
                    report.snapshots.failing += 1
                }
            }
            cursor = SnapshotCursor(after: last)
        }
        progress?.finish(seen)
        return report
    }

    private mutating func check(_ page: [StoredNotification], _ reader: Reader) async {
        // The page's data keys in one read of the store (PostgreSQL: one query instead of one
        // round trip per subject), for the key ring's misses that follow.
        await reader.mapper.prefetchKeys(for: page.lazy.map(\.storedEvent))
        for n in page {
            do {
                tally(try await reader.check(n.storedEvent, snapshot: false, notificationID: n.id), kind: "event", n.storedEvent,
                      n.id, counts: \.events)
            } catch {
                failures.append(Self.failure("event", n.storedEvent, n.id, error))
                events.failing += 1
            }
        }
    }

    /// What a readable record is.
    enum Outcome { case ok, shredded, plaintext, erased }

    /// Opens records: encrypted ones with the session's mapper, which refuses unencrypted ones;
    /// those are opened by a mapper that reads them, so a readable plaintext record is counted
    /// as plaintext, and one that does not open is a failure like any other.
    struct Reader {
        let mapper: Mapper
        let plaintextMapper: Mapper

        init(_ session: Session) {
            mapper = session.app.mapper
            // The session's settings (its preset compression dictionaries too), reading plaintext.
            var configuration = session.app.mapper.configuration
            configuration.plaintextReads = .allowed
            plaintextMapper = Mapper(keyring: session.keyring, configuration: configuration)
        }

        /// A readable record, and its personal fields each opened (or redacted, or failing).
        struct Checked {
            var outcome: Outcome
            var fields: [PersonalFieldReading] = []
        }

        /// - Throws: why the record cannot be read (never `.shredded` or `.plaintextRejected`).
        func check(_ record: StoredEvent, snapshot: Bool, notificationID: Int64?) async throws -> Checked {
            if !snapshot, ErasureRecord.isErasure(topic: record.topic) {
                // Never decrypted: read by its strict decoder; a malformed one is a failure.
                _ = try ErasureRecord(decoding: record, notificationID: notificationID)
                return Checked(outcome: .erased)
            }
            do {
                let text = try await mapper.open(record, snapshot: snapshot, notificationID: notificationID)
                try VerificationReport.checkJSON(text)
                guard PersonalFieldExport.mayHoldFields(text) else { return Checked(outcome: .ok) }
                // Opened a second time, with every field: only records that hold one pay for it.
                return Checked(outcome: .ok,
                               fields: try await mapper.personalFields(of: record, snapshot: snapshot, notificationID: notificationID))
            } catch let e as EventSourcingError where e.code == .shredded {
                return Checked(outcome: .shredded)
            } catch let e as EventSourcingError where e.code == .plaintextRejected {
                try VerificationReport.checkJSON(try await plaintextMapper.open(record, snapshot: snapshot, notificationID: notificationID))
                return Checked(outcome: .plaintext)
            }
        }
    }

    static func checkJSON(_ bytes: [UInt8]) throws {
        guard (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any] else {
            throw EventSourcingError(.decodingFailed, "payload is not a JSON object")
        }
    }

    private static func failure(_ kind: String, _ s: StoredEvent, _ id: Int64?, _ error: any Error) -> Failure {
        let code = (error as? EventSourcingError)?.code.description ?? "error"
        let message = (error as? EventSourcingError)?.message ?? "\(error)"
        return Failure(kind: kind, notificationID: id, originatorID: s.originatorID, originatorVersion: s.originatorVersion,
                       topic: s.topic, keyScope: StateHeader.peekKeyScope(s.state), code: code, message: message)
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decrypt every event and snapshot; count ok / shredded / plaintext / failing and name each failing record.",
        discussion: """
            Exits 67 if any record fails (tampered, corrupt, unreadable, or its key is missing), or
            is not encrypted (plaintext: no shred can erase it; 'esctl encrypt' seals them). The
            'plaintext:' line says whether every record is encrypted and whether the store
            refuses plaintext writes. Personal fields are opened too:
            one whose subject was shredded is counted and named as redacted (REDACTED lines), not
            as a failure; one that does not open fails its record, naming the field. Changes
            nothing: a SQLite store is opened read-only.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            var failed = false
            try await StoreAccess(options: global).withSession(.readOnly) { session in
                let total = try await session.store.maxNotificationID() ?? 0
                let report = try await VerificationReport.run(session, progress: Progress("verifying", total: Int(total)))
                let refused = try await (session.store as? any PlaintextRefusing)?.refusesPlaintextWrites()
                if json {
                    var out = report.json
                    out.plaintextWritesRefused = refused
                    try JSONOut.print(out)
                } else {
                    print("events:    " + report.events.line)
                    print("snapshots: " + report.snapshots.line)
                    if report.fields.total > 0 { print("fields:    " + report.fields.line) }
                    for r in report.redacted { print(r.line) }
                    if report.fields.redacted > report.redacted.count {
                        print("(\(report.fields.redacted - report.redacted.count) more redacted fields are counted, not listed)")
                    }
                    for f in report.failures { print(f.line) }
                    print("plaintext: " + (report.plaintext == 0 ? "none, every event and snapshot is encrypted"
                                                                  : "\(report.plaintext) records are not encrypted")
                          + (refused == true ? "; the store refuses plaintext writes for good" : ""))
                }
                if report.plaintext > 0 {
                    Terminal.error("unencrypted (plaintext) records, which no shred can erase: \(report.plaintext) "
                                   + "(esctl encrypt seals them: Docs/Operations.md §16)")
                }
                let needDictionary = report.failures.filter { $0.code == EventSourcingError.Code.compressionDictionaryMissing.description }.count
                if needDictionary > 0 {
                    Terminal.error("records compressed with a preset dictionary esctl was not given: \(needDictionary) "
                                   + "(pass each dictionary the application writes or wrote with: --compression-dictionary PATH)")
                }
                failed = !report.failures.isEmpty || report.plaintext > 0
            }
            if failed { throw ExitCode(Exit.verificationFailed) }
        }
    }
}
