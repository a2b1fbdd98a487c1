import ESTestTags
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What the runbook (the Operations article, Sources/EventSourcing/EventSourcing.docc/Operations.md) documents: the exit-code table (§11) and every error example of
/// §13 (code-block lines starting `esctl: ` and the first column of its tables).
enum Runbook {
    struct ExitRow: Sendable {
        var code: Int32
        var meaning: String
    }

    struct Example: Sendable, CustomTestStringConvertible {
        var section: String
        var message: String
        var exit: Int32?
        var testDescription: String { "§\(section) [\(exit.map(String.init) ?? "?")] \(message.prefix(70))" }
    }

    static var path: URL { CLI.packageRoot.appendingPathComponent("Sources/EventSourcing/EventSourcing.docc/Operations.md") }
    static var text: String { (try? String(contentsOf: path, encoding: .utf8)) ?? "" }

    /// The lines of the part of the runbook from the heading that starts with `heading` to the next heading of the same level.
    static func section(_ heading: String, in text: String = Runbook.text) -> [Substring] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0.hasPrefix(heading) }) else { return [] }
        let level = lines[start].prefix { $0 == "#" }.count
        let end = lines[(start + 1)...].firstIndex { $0.hasPrefix(String(repeating: "#", count: level) + " ") } ?? lines.endIndex
        return Array(lines[(start + 1)..<end])
    }

    /// The cells of a Markdown table row.
    static func cells(_ line: Substring) -> [String] {
        var t = line.trimmingCharacters(in: .whitespaces)
        guard t.hasPrefix("|") else { return [] }
        t.removeFirst()
        if t.hasSuffix("|") { t.removeLast() }
        return t.components(separatedBy: " | ").map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// §11's table.
    static var exitTable: [ExitRow] {
        section("## 11. Exit codes").compactMap { line in
            let c = cells(line)
            guard c.count >= 2, let code = Int32(c[0]) else { return nil }
            return ExitRow(code: code, meaning: c[1])
        }
    }

    /// Every error example of §13.
    static var examples: [Example] {
        var out: [Example] = []
        let lines = section("## 13. Troubleshooting")
        var subsection = "13"
        var headingExit: Int32?
        var inCode = false
        var exitColumn: Int?
        for line in lines {
            if line.hasPrefix("### ") {
                subsection = String(line.dropFirst(4).prefix { $0 != " " })
                // "### 13.3 Exit 66: …" gives every example below it exit 66.
                let words = line.split(separator: " ")
                headingExit = words.firstIndex(of: "Exit").flatMap { i in i + 1 < words.count ? Int32(words[i + 1].filter(\.isNumber)) : nil }
                exitColumn = nil
                continue
            }
            if line.hasPrefix("```") { inCode.toggle(); continue }
            if inCode {
                if line.hasPrefix("esctl: ") { out.append(Example(section: subsection, message: String(line.dropFirst(7)), exit: headingExit)) }
                continue
            }
            let c = cells(line)
            guard !c.isEmpty else { continue }
            if c.contains("Exit") || c.first == "Message" || c.first == "Error" {
                exitColumn = c.firstIndex(of: "Exit")
                continue
            }
            guard c[0].hasPrefix("`"), c[0].hasSuffix("`"), c[0].count > 2 else { continue }
            let message = String(c[0].dropFirst().dropLast())
            let exit = exitColumn.flatMap { $0 < c.count ? Int32(c[$0]) : nil } ?? headingExit
            out.append(Example(section: subsection, message: message, exit: exit))
        }
        return out
    }

    /// The literal parts of a documented message, between its placeholders (`…`, `PATH`, `N`, …).
    static func fragments(_ documented: String) -> [String] {
        let placeholders: Set<String> = ["PATH", "HOST", "PORT", "NEW", "OLD", "N", "M", "X", "S", "T", "R", "A", "V"]
        var out: [String] = []
        var literal = ""
        var word = ""
        func flushWord(next: Character?) {
            // A placeholder is a whole word, or N right after "v" (`vN`, a key version).
            // So is a master-key id (16 hex digits), an example of one.
            let isKeyID = word.count == 16 && word.allSatisfy(\.isHexDigit) && word.contains(where: \.isNumber)
            let isPlaceholder = placeholders.contains(word) || isKeyID
                || (word.hasPrefix("v") && word.count == 2 && word.last == "N")
            if isPlaceholder {
                if word.hasPrefix("v") && word.count == 2 { literal += "v" }
                out.append(literal)
                literal = ""
            } else {
                literal += word
            }
            word = ""
        }
        for ch in documented {
            if ch == "…" {
                flushWord(next: ch)
                out.append(literal)
                literal = ""
            } else if ch.isLetter || ch.isNumber || ch == "_" {
                word.append(ch)
            } else {
                flushWord(next: ch)
                literal.append(ch)
            }
        }
        flushWord(next: nil)
        out.append(literal)
        return out.map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.count >= 3 }
    }

    /// Whether `actual` holds every literal part of `documented`, in order.
    static func matches(_ documented: String, _ actual: String) -> Bool {
        var rest = actual[...]
        for f in fragments(documented) {
            guard let r = rest.range(of: f) else { return false }
            rest = rest[r.upperBound...]
        }
        return true
    }
}

/// How each documented message (or exit code) is produced. A scenario is found by a phrase of
/// the documented message, so a message documented without a scenario fails the test.
enum Scenario {
    enum Needs: Sendable { case nothing, postgresServer, notReproducible(String) }
    typealias Run = @Sendable (Workspace) async throws -> CLI.Result

    struct Entry: Sendable {
        var phrase: String
        var needs: Needs
        var run: Run
    }

    static func seeded(_ ws: Workspace) async throws -> Seeded {
        try await ws.initStore()
        return try await Stores.seed(ws.storePath, key: try MasterKey(contentsOfFile: ws.keyPath))
    }

    static func corrupt(_ ws: Workspace, _ s: Seeded, fromEnd: Int) async throws -> Int64 {
        let (nid, _) = try #require(s.notifications.sorted { $0.key < $1.key }.first { $0.value.0 == s.aliceAccounts[0] })
        _ = try await Py.run(Py.corrupt, [ws.storePath, "\(nid)", "\(fromEnd)"], in: ws)
        return nid
    }

    /// The first event of the subject gets an originator id of 5 bytes.
    static func unreadableRow(_ ws: Workspace, _ s: Seeded) async throws {
        let (nid, _) = try #require(s.notifications.sorted { $0.key < $1.key }.first { $0.value.0 == s.aliceAccounts[0] })
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET originator_id = X'0102030405' WHERE notification_id = \(nid)"], in: ws)
    }

    static func wrongKey(_ ws: Workspace) throws -> String {
        let wrong = try MasterKey.generate()
        try wrong.writeKeyFile(to: ws.path("wrong.key"))
        ws.learnKeyFiles()
        return ws.path("wrong.key")
    }

    /// A store locked by another process while `keys rotate` waits for it (about 5 s).
    static func locked(_ ws: Workspace) async throws -> CLI.Result {
        let s = try await seeded(ws)
        // Held far longer than esctl waits (5 s), however loaded the machine; ended as soon as esctl returns.
        let holder = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-u", "-c", Py.holdLock, ws.storePath, "120"],
                                   env: CLI.cleanEnvironment(home: ws.dir.path), cwd: ws.dir, scratch: ws.dir)
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, holder.process.isRunning,
              (try? String(contentsOf: holder.outURL, encoding: .utf8))?.contains("locked") != true {
            try await Task.sleep(for: .milliseconds(20))
        }
        let r = try await ws.esctl(ws.with() + ["keys", "rotate", s.subject])
        holder.kill9()
        _ = await holder.wait()
        return r
    }

    /// Ctrl-C during a rotation of many keys, once some of them are rewrapped.
    static func interrupted(_ ws: Workspace) async throws -> CLI.Result {
        try await ws.initStore()
        try await Stores.seedMany(ws.storePath, key: try MasterKey(contentsOfFile: ws.keyPath), count: 5000)
        let new = try MasterKey.generate()
        try new.writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()
        let (r, watcher) = try await ws.runSignalledMidway(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")],
                                                          store: ws.storePath, newKeyID: new.id, total: 5000, signal: SIGINT)
        #expect(watcher.hasPrefix("signalled"), "the rotation was not interrupted mid-way: \(watcher)")
        return r
    }

    /// PostgreSQL: a URL for the test server with `change` applied (credentials, database, TLS).
    static func postgres(_ ws: Workspace, _ change: (inout PostgresStore.Configuration) -> Void, env: [String: String] = [:]) async throws -> CLI.Result {
        let base = try #require(PostgresServer.url, "ES_POSTGRES_URL is not set")
        var config = try PostgresStore.Configuration(url: base)
        config.tls = .disable
        change(&config)
        let password = config.password.map { ":" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "") } ?? ""
        let ssl = config.tls == .disable ? "disable" : "require"
        let url = "postgres://\(config.username)\(password)@\(config.host):\(config.port)/\(config.database)?sslmode=\(ssl)&connect_timeout=5"
        if let p = config.password { ws.learnKey(base64: p) }
        return try await ws.esctl(["--store", url, "stats"], env: env)
    }

    static let all: [Entry] = [
        // §13.1, 13.2
        Entry(phrase: "does not open this key store", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with(key: try wrongKey(ws)) + ["keys", "list"])
        },
        Entry(phrase: "SQLite: database is locked", needs: .nothing) { ws in try await locked(ws) },
        Entry(phrase: "canceling statement due to lock timeout",
              needs: .notReproducible("needs a PostgreSQL session holding the events table's lock for 10 seconds")) { _ in throw ScenarioUnavailable() },
        // §13.3
        Entry(phrase: "no store at", needs: .nothing) { ws in
            try await ws.esctl(["--store", ws.storeURL, "--master-key-file", try wrongKey(ws), "keys", "list"])
        },
        Entry(phrase: "is not a SQLite database", needs: .nothing) { ws in
            _ = FileManager.default.createFile(atPath: ws.storePath, contents: Data(String(repeating: "not a database\n", count: 20).utf8))
            return try await ws.esctl(["--store", ws.storeURL, "stats"])
        },
        Entry(phrase: "is truncated", needs: .nothing) { ws in
            _ = try await seeded(ws)
            let full = try #require(ws.bytes(ws.storePath))
            try full.prefix(full.count - 1000).write(to: URL(fileURLWithPath: ws.storePath))
            return try await ws.esctl(["--store", ws.storeURL, "stats"])
        },
        Entry(phrase: "but not an event store", needs: .nothing) { ws in
            _ = try await Py.run(Py.execute, [ws.storePath, "CREATE TABLE people (name TEXT)"], in: ws)
            return try await ws.esctl(["--store", ws.storeURL, "stats"])
        },
        Entry(phrase: "has schema version", needs: .nothing) { ws in
            _ = try await seeded(ws)
            _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE es_meta SET value = 99 WHERE key = 'schema_version'"], in: ws)
            return try await ws.esctl(ws.with() + ["keys", "list"])
        },
        Entry(phrase: "has no master key yet", needs: .nothing) { ws in
            _ = FileManager.default.createFile(atPath: ws.storePath, contents: Data())
            return try await ws.esctl(["--store", ws.storeURL, "--master-key-file", try wrongKey(ws), "keys", "list"])
        },
        Entry(phrase: "password authentication failed", needs: .postgresServer) { ws in
            try await postgres(ws) { $0.password = "not-the-password" }
        },
        Entry(phrase: "authMechanismRequiresPassword", needs: .postgresServer) { ws in
            try await postgres(ws) { $0.password = nil }
        },
        Entry(phrase: "does not exist (3D000)", needs: .postgresServer) { ws in
            try await postgres(ws) { $0.database = "no_such_database" }
        },
        Entry(phrase: "sslUnsupported", needs: .postgresServer) { ws in
            try await postgres(ws) { $0.tls = .require }
        },
        Entry(phrase: "cannot connect", needs: .nothing) { ws in
            // Port 1 on the loopback interface: nothing listens there.
            try await ws.esctl(["--store", "postgres://nobody@127.0.0.1:1/db?sslmode=disable&connect_timeout=5", "stats"])
        },
        Entry(phrase: "did not answer within",
              needs: .notReproducible("needs a PostgreSQL server that stops answering for 30 seconds")) { _ in throw ScenarioUnavailable() },
        // §13.4
        Entry(phrase: "authentication tag does not match", needs: .nothing) { ws in
            let s = try await seeded(ws)
            _ = try await corrupt(ws, s, fromEnd: 1)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        Entry(phrase: "has an invalid header", needs: .nothing) { ws in
            let s = try await seeded(ws)
            let (nid, _) = try #require(s.notifications.first { $0.value.0 == s.bob })
            _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET state = CAST(X'00' || substr(state, 2) AS BLOB) WHERE notification_id = \(nid)"], in: ws)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        Entry(phrase: "which does not exist", needs: .nothing) { ws in
            let s = try await seeded(ws)
            _ = try await Py.run(Py.execute, [ws.storePath, "DELETE FROM data_keys WHERE scope = '\(s.bobScope)'"], in: ws)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        Entry(phrase: "which is not loaded", needs: .nothing) { ws in
            // Halfway through a rotation, opened with the old key only.
            let (mid, _, _, _) = try await RotateMasterSafetyTests.midway("runbookMidway")
            let r = try await mid.esctl(mid.with() + ["verify"])
            ws.learnKey(base64: try mid.keyText(mid.path("new.key")))
            return r
        },
        Entry(phrase: "has an originator_id that is", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await unreadableRow(ws, s)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        Entry(phrase: "fails:", needs: .nothing) { ws in
            let s = try await seeded(ws)
            _ = try await corrupt(ws, s, fromEnd: 1)
            return try await ws.esctl(ws.with() + ["export", s.subject])
        },
        Entry(phrase: "cannot be read:", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await unreadableRow(ws, s)
            return try await ws.esctl(ws.with() + ["export", s.subject])
        },
        Entry(phrase: "which no shred can erase", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await Stores.seedPlaintext(ws.storePath, seeded: s)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        Entry(phrase: "does not open: its tag does not match", needs: .nothing) { ws in
            let (d, key) = try await PersonalFieldStore.seeded(ws)
            let sealed = try await PersonalFieldStore.sealedField(ws.storePath, key: key, aggregate: d.adaFirst, version: 1,
                                                                  case: "placed", field: "courier")
            _ = try await PersonalFieldStore.appendCopy(ws.storePath, key: key, aggregate: d.eveOrder, field: sealed)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        // §13.6
        Entry(phrase: "this export is not all of the subject's data", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await Stores.seedPlaintext(ws.storePath, seeded: s)
            return try await ws.esctl(ws.with() + ["export", s.subject])
        },
        Entry(phrase: "which are under no scope and in no export", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await Stores.seedPlaintext(ws.storePath, seeded: s)
            return try await ws.esctl(ws.with() + ["export", s.bobScope])
        },
        Entry(phrase: "may not hold all of the subject's personal fields", needs: .nothing) { ws in
            let (d, _) = try await PersonalFieldStore.seeded(ws)
            for nid in [d.id(d.adaFirst, 2), d.id(d.adaSecond, 1)] {
                _ = try await Py.run(Py.corrupt, [ws.storePath, "\(nid)", "3"], in: ws)
            }
            return try await ws.esctl(ws.with() + ["export", Deliveries.bob])
        },
        Entry(phrase: "this receipt does not cover", needs: .nothing) { ws in
            let s = try await seeded(ws)
            try await Stores.seedPlaintext(ws.storePath, seeded: s)
            return try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"])
        },
        Entry(phrase: "no master key: pass", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "keys", "list"])
        },
        Entry(phrase: "give one master key source", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["--master-key-stdin", "keys", "list"], stdin: Data())
        },
        Entry(phrase: "cannot read master key file", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with(key: ws.path("absent.key")) + ["keys", "list"])
        },
        Entry(phrase: "is neither 32 raw bytes nor base64", needs: .nothing) { ws in
            _ = try await seeded(ws)
            _ = FileManager.default.createFile(atPath: ws.path("not-a-key.txt"), contents: Data("not a key\n".utf8))
            return try await ws.esctl(ws.with(key: ws.path("not-a-key.txt")) + ["keys", "list"])
        },
        Entry(phrase: "must hold 32 bytes", needs: .nothing) { ws in
            _ = try await seeded(ws)
            _ = FileManager.default.createFile(atPath: ws.path("five-bytes.txt"), contents: Data("c2hvcnQ=\n".utf8))
            return try await ws.esctl(ws.with(key: ws.path("five-bytes.txt")) + ["keys", "list"])
        },
        Entry(phrase: "looks like a key, not a path", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "--master-key-file", try ws.keyText(), "keys", "list"])
        },
        Entry(phrase: "there is no --master-key option", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "--master-key", try ws.keyText(), "keys", "list"])
        },
        Entry(phrase: "is not passphrase-derived", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "--passphrase", "keys", "list"], stdin: Data("some passphrase\n".utf8))
        },
        Entry(phrase: "the passphrase is too weak", needs: .nothing) { ws in
            try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init"], stdin: Data("short\n".utf8))
        },
        Entry(phrase: "no passphrase given", needs: .nothing) { ws in
            try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init"])
        },
        Entry(phrase: "no master key file at", needs: .nothing) { ws in
            try await ws.esctl(["--store", ws.storeURL, "--master-key-file", ws.path("typo.key"), "init"])
        },
        Entry(phrase: "init writes a new key only to a new file", needs: .nothing) { ws in
            try MasterKey.generate().writeKeyFile(to: ws.keyPath)
            ws.learnKeyFiles()
            return try await ws.esctl(["--store", ws.storeURL, "init", "--new-master-key-file", ws.keyPath])
        },
        Entry(phrase: "is already initialised", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "init", "--new-master-key-file", ws.path("another.key")])
        },
        Entry(phrase: "the new master key is the current one", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.keyPath])
        },
        Entry(phrase: "no key file at", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        },
        Entry(phrase: "is unfinished: finish it first", needs: .nothing) { ws in
            let (mid, _, _, _) = try await RotateMasterSafetyTests.midway("runbookUnfinished")
            let r = try await mid.esctl(mid.with() + ["keys", "rotate-master", "--new-master-key-file", mid.path("typo.key"), "--create"])
            ws.learnKey(base64: try mid.keyText(mid.path("new.key")))
            return r
        },
        Entry(phrase: "interrupted: the rotation", needs: .nothing) { ws in try await interrupted(ws) },
        Entry(phrase: "refusing to shred without confirmation", needs: .nothing) { ws in
            let s = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["keys", "shred", s.subject])
        },
        Entry(phrase: "no key scope", needs: .nothing) { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["keys", "show", "no-such-scope"])
        },
        Entry(phrase: "or add --overwrite", needs: .nothing) { ws in
            let s = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["export", s.subject, "--output", ws.keyPath])
        },
        Entry(phrase: "unknown command 'key'", needs: .nothing) { ws in
            try await ws.esctl(["key", "list"])
        },
        Entry(phrase: "is not a store URL", needs: .nothing) { ws in
            try await ws.esctl(["--store", "nope.sqlite", "stats"])
        },
        Entry(phrase: "unknown store URL scheme", needs: .nothing) { ws in
            try await ws.esctl(["--store", "mysql://someone@db.example/shop", "stats"])
        },
        Entry(phrase: "unknown PostgreSQL URL parameter", needs: .nothing) { ws in
            try await ws.esctl(["--store", "postgres://someone@127.0.0.1:1/db?x=1", "stats"])
        },
        Entry(phrase: "has no user name", needs: .nothing) { ws in
            try await ws.esctl(["--store", "postgres://127.0.0.1:1/db", "stats"])
        },
        Entry(phrase: "schema name must be", needs: .nothing) { ws in
            try await ws.esctl(["--store", "postgres://someone@127.0.0.1:1/db?schema=1bad", "stats"])
        },
    ]

    /// One scenario per exit code of §11.
    static let exitCodes: [Int32: Run] = [
        0: { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "stats"])
        },
        1: { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(["--store", ws.storeURL, "init", "--new-master-key-file", ws.path("another.key")])
        },
        64: { ws in try await ws.esctl(["keys", "list", "--no-such-option"]) },
        65: { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with(key: try wrongKey(ws)) + ["verify"])
        },
        66: { ws in try await ws.esctl(["--store", ws.storeURL, "stats"]) },
        67: { ws in
            let s = try await seeded(ws)
            _ = try await corrupt(ws, s, fromEnd: 1)
            return try await ws.esctl(ws.with() + ["verify"])
        },
        68: { ws in
            _ = try await seeded(ws)
            return try await ws.esctl(ws.with() + ["export", "no-such-scope"])
        },
        69: { ws in
            let s = try await seeded(ws)
            _ = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"])
            return try await ws.esctl(ws.with() + ["export", s.subject])
        },
        70: { ws in try await locked(ws) },
        71: { ws in
            // A helper command that exits before answering (no PKCS#11 token needed).
            _ = try await seeded(ws)
            let helper = ws.path("failing-helper.sh")
            try Data("#!/bin/sh\nexit 3\n".utf8).write(to: URL(fileURLWithPath: helper))
            chmod(helper, 0o755)
            return try await ws.esctl(["--store", ws.storeURL, "--master-key-command", helper, "keys", "list"])
        },
        72: { ws in
            // Retiring v1 while the subject's records still use it (rotated, not re-encrypted).
            let s = try await seeded(ws)
            _ = try await ws.esctl(ws.with() + ["keys", "rotate", s.subject])
            return try await ws.esctl(ws.with() + ["keys", "retire", s.subject, "--below", "2", "--yes"])
        },
        130: { ws in try await interrupted(ws) },
    ]

    /// The scenario for a documented message: exactly one whose phrase it contains.
    static func entry(for example: Runbook.Example) -> Entry? {
        let found = all.filter { example.message.contains($0.phrase) }
        return found.count == 1 ? found[0] : nil
    }

    static func check(_ example: Runbook.Example, _ entry: Entry, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let ws = try Workspace("runbook")
        let r = try await entry.run(ws)
        #expect(r.status == example.exit, "documented exit \(example.exit.map(String.init) ?? "none"), got \(r.summary)",
                sourceLocation: sourceLocation)
        let output = r.stderr + "\n" + r.stdout
        #expect(Runbook.matches(example.message, output),
                "documented: \(example.message)\nprinted: \(output.prefix(800))", sourceLocation: sourceLocation)
    }
}

/// Thrown by a scenario that cannot run in a test.
struct ScenarioUnavailable: Error {}

/// F: the runbook (the Operations article of the EventSourcing catalog) and the tool cannot drift apart: its exit-code table
/// and every error example of its troubleshooting section are run against the binary.
@Suite("Docs/Operations.md matches esctl", .tags(.multiProcess))
struct RunbookTests {
    @Test("The runbook's exit-code table lists the codes `esctl --help` lists, with the same meanings, and each has a scenario")
    func exitCodeTable() async throws {
        let table = Runbook.exitTable
        #expect(table.map(\.code) == [0, 1, 64, 65, 66, 67, 68, 69, 70, 71, 72, 130], "\(table.map(\.code))")
        let ws = try Workspace()
        let help = try await ws.esctl(["--help"])
        let helpCodes: [(Int32, String)] = help.stdout.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ", maxSplits: 1)
            guard line.hasPrefix("  "), words.count == 2, let code = Int32(words[0]) else { return nil }
            return (code, words[1].trimmingCharacters(in: .whitespaces))
        }
        #expect(helpCodes.map(\.0) == table.map(\.code), "esctl --help lists \(helpCodes.map(\.0))")
        for row in table {
            let documented = row.meaning.replacingOccurrences(of: "`", with: "")
            #expect(helpCodes.first { $0.0 == row.code }?.1 == documented, "exit \(row.code): runbook says '\(documented)'")
            #expect(Scenario.exitCodes[row.code] != nil, "no scenario for exit \(row.code)")
        }
    }

    @Test("Each exit code of the runbook's table is what esctl returns in a scenario for it", .timeLimit(.minutes(5)),
          arguments: Runbook.exitTable.map(\.code))
    func exitCode(_ code: Int32) async throws {
        let run = try #require(Scenario.exitCodes[code], "no scenario for exit \(code)")
        let ws = try Workspace("exitCode\(code)")
        let r = try await run(ws)
        #expect(r.status == code && !r.signalled, "exit \(code) documented: \(r.summary)")
    }

    @Test("Every error example of the runbook has exactly one scenario; the ones that cannot run are exactly those listed")
    func everyExampleHasAScenario() {
        let examples = Runbook.examples
        #expect(examples.count >= 40, "only \(examples.count) examples parsed from \(Runbook.path.path)")
        for e in examples {
            let found = Scenario.all.filter { e.message.contains($0.phrase) }
            #expect(found.count == 1, "§\(e.section) '\(e.message)': \(found.count) scenarios")
            #expect(e.exit != nil, "§\(e.section) '\(e.message)' has no documented exit code")
        }
        for entry in Scenario.all {
            #expect(examples.contains { $0.message.contains(entry.phrase) }, "scenario '\(entry.phrase)' matches no documented example")
        }
        let unreproducible = Scenario.all.compactMap { e -> String? in
            if case .notReproducible = e.needs { return e.phrase }
            return nil
        }
        #expect(unreproducible == ["canceling statement due to lock timeout", "did not answer within"])
    }

    @Test("Each documented error example (no server needed) is what esctl prints, with the documented exit code",
          .timeLimit(.minutes(5)),
          arguments: Runbook.examples.filter { Scenario.entry(for: $0).map { if case .nothing = $0.needs { true } else { false } } ?? false })
    func example(_ example: Runbook.Example) async throws {
        let entry = try #require(Scenario.entry(for: example))
        try await Scenario.check(example, entry)
    }

    @Test("The matcher: placeholders match anything, literal parts must appear in order")
    func matcher() {
        #expect(Runbook.matches("no store at PATH (create one with 'esctl init')", "esctl: no store at /x/y.sqlite (create one with 'esctl init')"))
        #expect(Runbook.matches("master key 0df13c6397bb7b6e does not open this key store (it knows 35ad8bdc71d8269c)",
                                "master key 81c1842c3a84add0 does not open this key store (it knows 993b90dea40bbc7d)"))
        #expect(!Runbook.matches("no store at PATH (create one with 'esctl init')", "esctl: no store at /x/y.sqlite"))
        #expect(Runbook.matches("the record names data key vN of its scope, which does not exist: …",
                                "the record names data key v12 of its scope, which does not exist: keys lost"))
        #expect(!Runbook.matches("a rotation to master key NEW is unfinished", "a rotation is unfinished to master key 1"))
    }
}

/// The runbook's PostgreSQL messages, against the server scripts/test.sh starts.
@Suite("Docs/Operations.md matches esctl on PostgreSQL", .enabled(if: PostgresServer.enabled), .tags(.postgres, .multiProcess))
struct RunbookPostgresTests {
    @Test("Each documented PostgreSQL error example is what esctl prints, with the documented exit code",
          arguments: Runbook.examples.filter { Scenario.entry(for: $0).map { if case .postgresServer = $0.needs { true } else { false } } ?? false })
    func example(_ example: Runbook.Example) async throws {
        let entry = try #require(Scenario.entry(for: example))
        try await Scenario.check(example, entry)
    }
}
