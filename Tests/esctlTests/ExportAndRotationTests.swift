import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// C: a subject-access export is never silently partial; verify names an unreadable row and
/// checks the rest.
@Suite("esctl export is complete or fails", .tags(.multiProcess))
struct ExportCompletenessTests {
    /// A seeded store in which one event of the subject has an originator id of 5 bytes.
    static func withUnreadableRow(_ name: String = #function) async throws -> (Workspace, Seeded, Int64) {
        let (ws, s, _) = try await CommandTests.seeded(name)
        let (nid, _) = try #require(s.notifications.first { $0.value.0 == s.aliceAccounts[0] && $0.value.1 == 2 })
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET originator_id = X'0102030405' WHERE notification_id = \(nid)"], in: ws)
        return (ws, s, nid)
    }

    @Test("export of a scope with a row whose originator id is not 16 bytes exits 67 and says the export is incomplete")
    func exportUnreadableRow() async throws {
        let (ws, s, nid) = try await Self.withUnreadableRow()
        for extra in [[], ["--format", "json"], ["--json"]] {
            let r = try await ws.esctl(ws.with() + ["export", s.subject] + extra)
            #expect(r.status == CLI.Code.verificationFailed, "export \(extra) of a scope with an unreadable row: \(r.summary)")
            #expect(r.stderrLines.count == 1, "\(r.summary)")
            #expect(r.stderr.contains("incomplete") && r.stderr.contains(s.subject), "\(r.summary)")
            // A store that reports the row names it; one that skips it is caught by the count.
            #expect(r.stderr.contains("notification \(nid)") || r.stderr.contains("only \(s.subjectEvents - 1)"), "\(r.summary)")
        }
        // With --output, no file at all.
        let out = ws.path("sar.jsonl")
        let file = try await ws.esctl(ws.with() + ["export", s.subject, "--output", out])
        #expect(file.status == CLI.Code.verificationFailed, "\(file.summary)")
        #expect(!FileManager.default.fileExists(atPath: out), "a partial export file was left behind")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: ws.dir.path).filter { $0.contains("partial") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        // Another scope is unaffected.
        let bob = try await ws.esctl(ws.with() + ["export", s.bobScope])
        #expect(bob.status == 0, "\(bob.summary)")
    }

    @Test("verify names a row whose originator id is not 16 bytes (exit 67) and checks every other record")
    func verifyUnreadableRow() async throws {
        let (ws, s, nid) = try await Self.withUnreadableRow()
        let r = try await ws.esctl(ws.with() + ["verify"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        #expect(r.stdout.contains("events:    \(s.totalEvents - 1) ok, 0 shredded, 0 plaintext, 1 failing"), "\(r.stdout)")
        #expect(r.stdout.contains("snapshots: \(s.snapshots) ok"), "\(r.stdout)")
        let fail = r.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(fail.count == 1 && fail.first?.contains("notification \(nid)") == true, "\(r.stdout)")

        let j = try parseJSONObject(try await ws.esctl(ws.with() + ["verify", "--json"]))
        let failures = try #require(j["failures"] as? [[String: Any]])
        #expect(failures.map { $0["notification_id"] as? Int } == [Int(nid)])
        #expect((j["events"] as? [String: Any])?["ok"] as? Int == s.totalEvents - 1)
    }
}

/// Values a row written outside the library can hold: no command traps on them.
@Suite("esctl survives extreme values in the store", .tags(.multiProcess))
struct ExtremeValueTests {
    @Test("verify and export with an event at the largest notification id (and an unreadable one) finish without a trap")
    func largestNotificationID() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let last = try #require(s.notifications.keys.max())
        let (agg, _) = try #require(s.notifications[last])
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET notification_id = 9223372036854775807 WHERE notification_id = \(last)"], in: ws)
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(!verify.signalled && verify.status == 0, "\(verify.summary)")
        #expect(verify.stdout.contains("events:    \(s.totalEvents) ok"), "\(verify.stdout)")
        let scope = s.aliceAccounts.contains(agg) ? s.subject : s.bobScope
        let export = try await ws.esctl(ws.with() + ["export", scope])
        #expect(!export.signalled && export.status == 0, "\(export.summary)")
        #expect(export.stdout.contains("9223372036854775807"))

        // The same row unreadable: named, and the run ends after it.
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET originator_id = X'01' WHERE notification_id = 9223372036854775807"], in: ws)
        let bad = try await ws.esctl(ws.with() + ["verify"])
        #expect(!bad.signalled && bad.status == CLI.Code.verificationFailed, "\(bad.summary)")
        #expect(bad.stdout.contains("notification 9223372036854775807"), "\(bad.stdout)")
    }

    @Test("keys list and keys show print a key's impossible creation time instead of trapping")
    func impossibleTimes() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE data_keys SET created_at = 1e300 WHERE scope = '\(s.subject)'"], in: ws)
        for args in [["keys", "list"], ["keys", "list", "--json"], ["keys", "show", s.subject, "--json"]] {
            let r = try await ws.esctl(ws.with() + args)
            #expect(!r.signalled && r.status == 0, "\(args): \(r.summary)")
            #expect(r.stdout.contains("invalid time"), "\(args): \(r.stdout.prefix(300))")
        }
    }
}

/// D: rotate-master creates a key file only when told to, refuses to start a second rotation
/// while one is unfinished, and says how to resume when interrupted; its progress bar behaves.
@Suite("esctl rotate-master is safe to rerun and to interrupt", .tags(.multiProcess))
struct RotateMasterSafetyTests {
    /// A store halfway through a rotation from `old` to `new`: the new key's check record is
    /// there, the subject's data key is wrapped by the new key, Bob's still by the old one.
    static func midway(_ name: String = #function) async throws -> (Workspace, Seeded, MasterKey, MasterKey) {
        let (ws, s, old) = try await CommandTests.seeded(name)
        try FileManager.default.createDirectory(atPath: ws.path("done"), withIntermediateDirectories: true)
        let done = ws.path("done/store.sqlite")
        try #require(ws.bytes(ws.storePath + "-wal").map { $0.isEmpty } ?? true)
        try #require(ws.bytes(ws.storePath)).write(to: URL(fileURLWithPath: done))
        try MasterKey.generate().writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()
        let full = try await ws.esctl(["--store", "sqlite:" + done, "--master-key-file", ws.keyPath,
                                       "keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        try #require(full.status == 0, "\(full.summary)")
        ws.learnKeyFiles()
        let new = try MasterKey(contentsOfFile: ws.path("new.key"))
        _ = try await Py.run(Py.execute, [ws.storePath, """
            ATTACH '\(done)' AS done;
            INSERT INTO master_key_checks SELECT * FROM done.master_key_checks;
            UPDATE data_keys SET
              kek_id = (SELECT d.kek_id FROM done.data_keys d WHERE d.scope = data_keys.scope AND d.version = data_keys.version),
              wrapped = (SELECT d.wrapped FROM done.data_keys d WHERE d.scope = data_keys.scope AND d.version = data_keys.version)
            WHERE scope = '\(s.subject)';
            """], in: ws)
        let seen = try await MasterKeyTests.inspect(ws.storePath, old: old, new: new)
        try #require(seen.underOld == 1 && seen.underNew == 1 && seen.unreadable == 0 && seen.checks.count == 2,
                     "not a midway state: old \(seen.underOld), new \(seen.underNew), checks \(seen.checks.count)")
        return (ws, s, old, new)
    }

    @Test("While a rotation is unfinished, rotate-master to another key is refused (64) naming the pending key; no key file is written, the store is unchanged; the right rerun finishes")
    func unfinishedRotationIsNamed() async throws {
        let (ws, _, old, new) = try await Self.midway()
        let other = try MasterKey.generate()
        try other.writeKeyFile(to: ws.path("other.key"))
        ws.learnKeyFiles()
        let before = StoreSnapshot(ws.storePath)
        for (path, create) in [(ws.path("mistyped.key"), true), (ws.path("mistyped.key"), false), (ws.path("other.key"), false)] {
            let r = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", path] + (create ? ["--create"] : []))
            FailureTests.expectOneLine(r, CLI.Code.usage)
            #expect(r.stderr.contains(new.id), "the message names the pending key: \(r.summary)")
            #expect(!FileManager.default.fileExists(atPath: ws.path("mistyped.key")), "a third master key was created")
            #expect(StoreSnapshot(ws.storePath) == before, "\(StoreSnapshot(ws.storePath).difference(from: before))")
        }
        let finish = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        #expect(finish.status == 0, "\(finish.summary)")
        let done = try await MasterKeyTests.inspect(ws.storePath, old: old, new: new)
        #expect(done.checks == [new.id] && done.underNew == 2 && done.unreadable == 0)
    }

    @Test("rotate-master without --create refuses a new-key path that does not exist (64) and creates nothing")
    func noImplicitKeyFile() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let before = StoreSnapshot(ws.storePath)
        let r = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        FailureTests.expectOneLine(r, CLI.Code.usage)
        #expect(r.stderr.contains("--create"), "\(r.summary)")
        #expect(!FileManager.default.fileExists(atPath: ws.path("new.key")))
        #expect(StoreSnapshot(ws.storePath) == before)
    }

    @Test("Ctrl-C during rotate-master exits 130 and says how to resume; every key stays readable; the same command then finishes",
          .timeLimit(.minutes(10)))
    func interruptSaysHowToResume() async throws {
        let ws = try Workspace()
        try await ws.initStore()
        let old = try MasterKey(contentsOfFile: ws.keyPath)
        let scopes = 5000
        try await Stores.seedMany(ws.storePath, key: old, count: scopes)
        let new = try MasterKey.generate()
        try new.writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()
        let args = ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")]
        // Ctrl-C while the rotation is under way: some keys rewrapped, others not yet.
        let (r, watcher) = try await ws.runSignalledMidway(args, store: ws.storePath, newKeyID: new.id, total: scopes, signal: SIGINT)
        try #require(watcher.hasPrefix("signalled"), "the rotation was not interrupted mid-way: \(watcher); \(r.summary)")
        #expect(!r.signalled && r.status == 130, "Ctrl-C: \(r.summary)")
        let last = r.stderrLines.last ?? ""
        #expect(last.hasPrefix("esctl: interrupted") && last.lowercased().contains("run the same command again"), "\(r.summary)")
        #expect(last.contains(new.id))

        let seen = try await MasterKeyTests.inspect(ws.storePath, old: old, new: new)
        #expect(seen.total == scopes && seen.unreadable == 0 && seen.other == 0)
        let again = try await ws.esctl(args)
        #expect(again.status == 0, "\(again.summary)")
        let done = try await MasterKeyTests.inspect(ws.storePath, old: old, new: new)
        #expect(done.checks == [new.id] && done.underNew == scopes && done.unreadable == 0)
    }

    @Test("On a terminal the progress bar never exceeds its total, its ETA is never negative, and no log line lands on the bar's line",
          .timeLimit(.minutes(10)))
    func progressOnATerminal() async throws {
        let ws = try Workspace()
        try await ws.initStore()
        let old = try MasterKey(contentsOfFile: ws.keyPath)
        try await Stores.seedMany(ws.storePath, key: old, count: 1500)
        try MasterKey.generate().writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()
        let r = try await ws.esctlOnTerminal(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        #expect(r.status == 0, "\(r.summary)")
        let text = String(decoding: r.stderrData, as: UTF8.self)
        let bars = Self.bars(in: text)
        #expect(!bars.isEmpty, "no progress bar was drawn on the terminal: \(text.prefix(400))")
        for bar in bars {
            #expect(bar.done <= bar.total, "the bar shows \(bar.done)/\(bar.total)")
            #expect(bar.eta >= 0, "the bar shows an ETA of \(bar.eta) s")
        }
        // Every log line starts a line of its own: after a newline, or after the bar was cleared.
        let logs = Self.logLineStarts(in: text)
        #expect(!logs.isEmpty, "no log line seen: \(text.prefix(400))")
        for start in logs {
            let before = text.unicodeScalars[..<start].suffix(4).map(String.init).joined()
            #expect(start == text.unicodeScalars.startIndex || before.hasSuffix("\n") || before.hasSuffix("\r\u{1B}[K"),
                    "a log line landed on another line's end: \(before.debugDescription)")
        }
    }

    /// Every `done/total … ETA Ns` drawn.
    static func bars(in text: String) -> [(done: Int, total: Int, eta: Int)] {
        var out: [(Int, Int, Int)] = []
        for piece in text.components(separatedBy: "\r") {
            let words = piece.split(separator: " ")
            guard let slash = words.first(where: { $0.contains("/") && $0.split(separator: "/").count == 2 && $0.split(separator: "/").allSatisfy { Int($0) != nil } }),
                  let etaIndex = words.firstIndex(of: "ETA"), etaIndex + 1 < words.count else { continue }
            let parts = slash.split(separator: "/")
            let etaText = words[etaIndex + 1].prefix { $0 == "-" || $0.isNumber }
            guard let done = Int(parts[0]), let total = Int(parts[1]), let eta = Int(etaText) else { continue }
            out.append((done, total, eta))
        }
        return out
    }

    /// Where each swift-log line (`2026-11-22T15:26:07+0000 notice …`) begins.
    static func logLineStarts(in text: String) -> [String.UnicodeScalarView.Index] {
        let scalars = text.unicodeScalars
        var out: [String.UnicodeScalarView.Index] = []
        var i = scalars.startIndex
        let pattern = "dddd-dd-ddTdd:dd:dd"
        while i < scalars.endIndex {
            var j = i
            var matched = true
            for p in pattern.unicodeScalars {
                guard j < scalars.endIndex else { matched = false; break }
                let c = scalars[j]
                if p == "d" ? !(c.value >= 48 && c.value <= 57) : c != p { matched = false; break }
                j = scalars.index(after: j)
            }
            if matched {
                let rest = String(String.UnicodeScalarView(scalars[j...].prefix(24)))
                if rest.contains(" info ") || rest.contains(" notice ") || rest.contains(" warning ") { out.append(i) }
                i = j
            } else {
                i = scalars.index(after: i)
            }
        }
        return out
    }
}
