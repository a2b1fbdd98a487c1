import ArgumentParser
import EventSourcing
import Foundation

/// The outcome of decrypting every event and snapshot.
struct VerificationReport {
    struct Failure {
        var kind: String
        var notificationID: Int64?
        var originatorID: UUID
        var originatorVersion: Int
        var topic: String
        var code: String
        var message: String

        var json: [String: Any] {
            ["kind": kind, "notification_id": notificationID.map { Int($0) as Any } ?? NSNull(),
             "originator_id": originatorID.uuidString.lowercased(), "originator_version": originatorVersion,
             "topic": topic, "error": code, "message": message]
        }
    }

    var eventsOK = 0
    var eventsShredded = 0
    var snapshotsOK = 0
    var snapshotsShredded = 0
    var failures: [Failure] = []

    var json: [String: Any] {
        ["events": ["ok": eventsOK, "shredded": eventsShredded, "failing": failures.filter { $0.kind == "event" }.count],
         "snapshots": ["ok": snapshotsOK, "shredded": snapshotsShredded, "failing": failures.filter { $0.kind == "snapshot" }.count],
         "failures": failures.map(\.json)]
    }

    /// Decrypts, decompresses and parses every record of the session's store.
    static func run(_ session: Session, progress: Progress?) async throws -> VerificationReport {
        var report = VerificationReport()
        var start: Int64 = 1
        var seen = 0
        while true {
            let page = try await session.store.selectNotifications(start: start, limit: 500, stop: nil, topics: [])
            guard let last = page.last else { break }
            for n in page {
                do {
                    let json = try await session.app.mapper.open(n.storedEvent, snapshot: false, notificationID: n.id)
                    try checkJSON(json)
                    report.eventsOK += 1
                } catch let e as EventSourcingError where e.code == .shredded {
                    report.eventsShredded += 1
                } catch {
                    report.failures.append(failure("event", n.storedEvent, n.id, error))
                }
            }
            seen += page.count
            progress?.update(seen)
            start = last.id + 1
        }
        var cursor: (UUID, Int)?
        while true {
            let page = try await session.store.selectSnapshots(after: cursor, limit: 500)
            guard let last = page.last else { break }
            for s in page {
                do {
                    try checkJSON(try await session.app.mapper.open(s, snapshot: true))
                    report.snapshotsOK += 1
                } catch let e as EventSourcingError where e.code == .shredded {
                    report.snapshotsShredded += 1
                } catch {
                    report.failures.append(failure("snapshot", s, nil, error))
                }
            }
            cursor = (last.originatorID, last.originatorVersion)
        }
        progress?.finish(seen)
        return report
    }

    private static func checkJSON(_ bytes: [UInt8]) throws {
        guard (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any] else {
            throw EventSourcingError(.decodingFailed, "payload is not a JSON object")
        }
    }

    private static func failure(_ kind: String, _ s: StoredEvent, _ id: Int64?, _ error: any Error) -> Failure {
        let code = (error as? EventSourcingError)?.code.description ?? "error"
        let message = (error as? EventSourcingError)?.message ?? "\(error)"
        return Failure(kind: kind, notificationID: id, originatorID: s.originatorID, originatorVersion: s.originatorVersion,
                       topic: s.topic, code: code, message: message)
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decrypt every event and snapshot; count ok / shredded / failing and name each failing record.",
        discussion: "Exits 67 if any record fails (tampered, corrupt, or its key is missing).")

    @ParentCommand var root: Esctl
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            var failed = false
            try await StoreAccess(options: root).withSession { session in
                let total = try await session.store.maxNotificationID() ?? 0
                let report = try await VerificationReport.run(session, progress: Progress("verifying", total: Int(total)))
                if json {
                    try JSONOut.print(report.json)
                } else {
                    print("events:    \(report.eventsOK) ok, \(report.eventsShredded) shredded, \(report.failures.filter { $0.kind == "event" }.count) failing")
                    print("snapshots: \(report.snapshotsOK) ok, \(report.snapshotsShredded) shredded, \(report.failures.filter { $0.kind == "snapshot" }.count) failing")
                    for f in report.failures {
                        let where_ = f.notificationID.map { "notification \($0), " } ?? ""
                        print("FAIL \(f.kind) \(where_)aggregate \(f.originatorID.uuidString.lowercased()) version \(f.originatorVersion) topic \(f.topic): \(f.code): \(f.message)")
                    }
                }
                failed = !report.failures.isEmpty
            }
            if failed { throw ExitCode(Exit.verificationFailed) }
        }
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Subject access export: every event of a key scope, decrypted, with id, version, topic and time.")

    enum Format: String, ExpressibleByArgument, CaseIterable { case jsonl, json }

    @ParentCommand var root: Esctl
    @Argument(help: "The key scope (data subject) to export.") var scope: String
    @Option(help: "jsonl (one event per line) or json (one document).") var format: Format = .jsonl

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: root).withSession { session in
                if let t = try await session.store.tombstone(scope: scope) {
                    throw CLIError(exitCode: Exit.scopeShredded,
                                   message: "key scope \(scope) was shredded at \(JSONOut.date(t.shreddedAt)): nothing can be exported")
                }
                guard !(try await session.store.dataKeys(scope: scope)).isEmpty else {
                    throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'")
                }
                let total = try await session.store.countEvents(keyScope: scope)
                let progress = Progress("exporting", total: total)
                var after: Int64 = 0
                var all: [[String: Any]] = []
                var done = 0
                while true {
                    let page = try await session.store.selectNotifications(keyScope: scope, after: after, limit: 500)
                    guard let last = page.last else { break }
                    for n in page {
                        let bytes = try await session.app.mapper.open(n.storedEvent, snapshot: false, notificationID: n.id)
                        guard let env = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                            throw EventSourcingError(.decodingFailed, "payload is not a JSON object", originatorID: n.originatorID,
                                                     originatorVersion: n.originatorVersion, notificationID: n.id)
                        }
                        var record: [String: Any] = [
                            "notification_id": Int(n.id), "originator_id": n.originatorID.uuidString.lowercased(),
                            "originator_version": n.originatorVersion, "topic": n.topic,
                            "schema_version": env["v"] ?? NSNull(), "event": env["e"] ?? NSNull(),
                        ]
                        if let t = env["t"] as? Double { record["recorded_at"] = JSONOut.date(Date(timeIntervalSince1970: t)) }
                        if format == .jsonl { try JSONOut.line(record) } else { all.append(record) }
                        done += 1
                    }
                    progress.update(done)
                    after = last.id
                }
                progress.finish(done)
                if format == .json {
                    try JSONOut.print(["scope": scope, "exported_at": JSONOut.date(Date()), "events": all])
                }
            }
        }
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Counts: events, aggregates, snapshots, key scopes, shredded scopes, size.",
                                                    discussion: "Needs no master key: it reads no ciphertext.")

    @ParentCommand var root: Esctl
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            let store = try await StoreAccess(options: root).openStore()
            let stats: [String: Any]
            do { stats = try await store.statisticsJSON() } catch {
                await store.close()
                throw error
            }
            await store.close()
            if json {
                try JSONOut.print(stats.merging(["store": store.location]) { a, _ in a })
            } else {
                print("store:           \(store.location)")
                for key in ["events", "aggregates", "snapshots", "key_scopes", "data_keys", "shredded_scopes", "bytes_on_disk"] {
                    print((key.replacingOccurrences(of: "_", with: " ") + ":").padding(toLength: 17, withPad: " ", startingAt: 0) + "\(stats[key] ?? 0)")
                }
            }
        }
    }
}
