import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `esctl keys reencrypt` and `esctl keys retire` (Operations.md §15).
@Suite("esctl keys reencrypt and keys retire")
struct ReencryptCommandTests {
    /// Every event of the store with its header's scope and key version.
    static func headers(_ path: String, key: MasterKey) async throws -> [(scope: String?, version: UInt32, state: [UInt8])] {
        let (store, _, _) = try await Stores.open(path, keys: [key])
        let events: [StoredNotification]
        do { events = try await store.selectNotifications(start: 1, limit: 1_000_000, stop: nil, topics: []) } catch {
            await store.close()
            throw error
        }
        await store.close()
        return events.map { n in
            guard case .success(let (h, _)) = StateHeader.parse(n.state) else { return (nil, 0, n.state) }
            return (h.keyScope, h.keyVersion, n.state)
        }
    }

    /// The store's files, byte for byte.
    static func files(_ ws: Workspace) -> [Data?] {
        [ws.bytes(ws.storePath), ws.bytes(ws.storePath + "-wal"), ws.bytes(ws.storePath + "-shm")]
    }

    struct ReencryptJSON: Decodable {
        var scope: String?
        var all: Bool
        var target_version: Int?
        var events_examined, events_rewritten, snapshots_examined, snapshots_rewritten: Int
        var personal_fields_rewritten, already_current, skipped_shredded, conflicts_retried, conflicts_left: Int
    }

    struct RetireJSON: Decodable {
        var scope: String
        var below: Int
        var retired_versions: [Int]
        var minimum_version: Int?
    }

    @Test("rotate, reencrypt, retire: the documented JSON, every record of the scope under v2, verify passes, a rerun rewrites 0")
    func runbook() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        let before = try await Self.headers(ws.storePath, key: key)
        #expect(try await ws.esctl(ws.with() + ["keys", "rotate", s.subject]).status == 0)
        let r = try await ws.esctl(ws.with() + ["keys", "reencrypt", s.subject, "--json", "--page-size", "2"])
        try #require(r.status == 0, "\(r.summary)")
        let report = try JSONDecoder().decode(ReencryptJSON.self, from: r.stdoutData)
        #expect(report.scope == s.subject && !report.all && report.target_version == 2)
        #expect(report.events_rewritten == s.subjectEvents)
        #expect(report.events_examined == s.totalEvents)
        #expect(report.conflicts_left == 0)
        let after = try await Self.headers(ws.storePath, key: key)
        #expect(after.count == before.count)
        for (b, a) in zip(before, after) {
            #expect(a.scope == b.scope)
            if b.scope == s.subject { #expect(a.version == 2) } else { #expect(a.state == b.state) }
        }
        let again = try await ws.esctl(ws.with() + ["keys", "reencrypt", s.subject])
        #expect(again.status == 0 && again.stdout.contains("rewrote 0 of"), "\(again.summary)")

        let retire = try await ws.esctl(ws.with() + ["keys", "retire", s.subject, "--below", "2", "--yes", "--json"])
        try #require(retire.status == 0, "\(retire.summary)")
        let retired = try JSONDecoder().decode(RetireJSON.self, from: retire.stdoutData)
        #expect(retired.retired_versions == [1] && retired.minimum_version == 2 && retired.scope == s.subject && retired.below == 2)
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
        let show = try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"])
        let shown = try #require(try JSONSerialization.jsonObject(with: show.stdoutData) as? [String: Any], "\(show.summary)")
        #expect(shown["minimum_version"] as? Int == 2 && shown["current_version"] as? Int == 2)
        #expect((shown["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [2])
        let list = try await ws.esctl(ws.with() + ["keys", "list"])
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("\(s.subject)  v2 (min v2)  kek ") }, "\(list.stdout)")
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("\(s.bobScope)  v1  kek ") }, "\(list.stdout)")
        // --all finds nothing left to do.
        let all = try await ws.esctl(ws.with() + ["keys", "reencrypt", "--all", "--json"])
        #expect(try JSONDecoder().decode(ReencryptJSON.self, from: all.stdoutData).events_rewritten == 0, "\(all.summary)")
    }

    @Test("refusals change no byte of the store: in use (72), unknown (68), shredded (69), no --yes or bad arguments (64)")
    func refusals() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        #expect(try await ws.esctl(ws.with() + ["keys", "rotate", s.subject]).status == 0)
        _ = key
        let unchanged = Self.files(ws)
        func refused(_ args: [String], _ status: Int32, _ phrase: String) async throws {
            let r = try await ws.esctl(ws.with() + args)
            #expect(r.status == status, "\(args.joined(separator: " ")): \(r.summary)")
            #expect(r.stderrLines.last?.contains(phrase) == true, "\(args.joined(separator: " ")): \(r.summary)")
            #expect(Self.files(ws) == unchanged, "\(args.joined(separator: " ")) changed the store's files")
        }
        try await refused(["keys", "retire", s.subject, "--below", "2", "--yes"], 72,
                          "key scope \(s.subject) still needs data key v1: re-encrypt it first")
        try await refused(["keys", "retire", s.subject, "--below", "2"], 64, "pass --yes")
        try await refused(["keys", "retire", s.subject, "--below", "3", "--yes"], 64, "above its newest version v2")
        try await refused(["keys", "retire", "nobody", "--below", "2", "--yes"], 68, "no key scope 'nobody'")
        try await refused(["keys", "reencrypt", "nobody"], 68, "no key scope 'nobody'")
        try await refused(["keys", "reencrypt", ""], 64, "not a key scope: a key scope id must be 1–255 UTF-8 bytes, got 0")
        try await refused(["keys", "retire", "a\u{01}b", "--below", "2", "--yes"], 64, "not a key scope")
        try await refused(["keys", "retire", s.subject, "--below", "0", "--yes"], 64, "--below must be 1 or more")
        try await refused(["keys", "reencrypt"], 64, "give one key scope, or --all")
        try await refused(["keys", "reencrypt", s.subject, "--all"], 64, "give one key scope, or --all")
        try await refused(["keys", "reencrypt", s.subject, "--page-size", "0"], 64, "--page-size must be 1…1000")
        #expect(try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"]).status == 0)
        let shredded = Self.files(ws)
        for args in [["keys", "reencrypt", s.subject], ["keys", "retire", s.subject, "--below", "2", "--yes"]] {
            let r = try await ws.esctl(ws.with() + args)
            #expect(r.status == 69, "\(r.summary)")
            #expect(r.stderrLines.last?.contains("was shredded") == true, "\(r.summary)")
            #expect(Self.files(ws) == shredded)
        }
    }

    /// A store with 4,000 events of one subject whose key was rotated: long enough a pass to stop mid-way.
    static func bigRotatedStore() async throws -> (Workspace, MasterKey) {
        let ws = try Workspace()
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let (store, _, app) = try await Stores.open(ws.storePath, keys: [key], synchronous: .full)
        do {
            for batch in 0..<8 {
                var roots = try (0..<500).map { i in
                    try AggregateRoot<Account>(.opened(owner: "subject-big", name: "account \(batch * 500 + i)"))
                }
                try await app.save(&roots)
            }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        #expect(try await ws.esctl(ws.with() + ["keys", "rotate", "subject-big"]).status == 0)
        return (ws, key)
    }

    /// Starts `args`, and sends `signal` once the first page rewritten under v2 is committed.
    static func signalledMidway(_ ws: Workspace, _ args: [String], signal: Int32) async throws -> (CLI.Result, Bool) {
        let running = try ws.start(args)
        let watcher = try SQLiteStore(path: ws.storePath)
        var midway = false
        for _ in 0..<2_000 {
            let page = try await watcher.selectNotifications(start: 1, limit: 50, stop: nil, topics: [])
            if page.contains(where: { n in
                if case .success(let (h, _)) = StateHeader.parse(n.state) { return h.keyVersion == 2 }
                return false
            }) {
                if signal == SIGKILL { running.kill9() } else { _ = kill(running.pid, signal) }
                midway = true
                break
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        await watcher.close()
        return (await ws.finish(running, args: args), midway)
    }

    @Test("a reencrypt killed mid-way (SIGKILL) leaves v1 and v2 records; the same command run again finishes", .tags(.multiProcess))
    func killedThenRerun() async throws {
        let (ws, key) = try await Self.bigRotatedStore()
        let args = ws.with() + ["keys", "reencrypt", "subject-big", "--page-size", "5"]
        let (killed, midway) = try await Self.signalledMidway(ws, args, signal: SIGKILL)
        try #require(midway && killed.signalled, "the re-encryption was not killed mid-way: \(killed.summary)")
        let versions = try await Self.headers(ws.storePath, key: key).map(\.version)
        #expect(versions.contains(1) && versions.contains(2), "after the kill: \(versions.filter { $0 == 2 }.count) of \(versions.count) at v2")

        let rerun = try await ws.esctl(args + ["--json"])
        try #require(rerun.status == 0, "\(rerun.summary)")
        let report = try JSONDecoder().decode(ReencryptJSON.self, from: rerun.stdoutData)
        #expect(report.events_rewritten == versions.filter { $0 == 1 }.count)
        #expect(try await Self.headers(ws.storePath, key: key).allSatisfy { $0.version == 2 })
        let retire = try await ws.esctl(ws.with() + ["keys", "retire", "subject-big", "--below", "2", "--yes"])
        #expect(retire.status == 0 && retire.stdout.contains("retired v1"), "\(retire.summary)")
        #expect(try await ws.esctl(ws.with() + ["verify"]).status == 0)
    }

    @Test("Ctrl-C (SIGINT) mid-way exits 130 and says how to resume; the rerun finishes", .tags(.multiProcess))
    func interruptSaysHowToResume() async throws {
        let (ws, key) = try await Self.bigRotatedStore()
        let args = ws.with() + ["keys", "reencrypt", "subject-big", "--page-size", "5"]
        let (r, midway) = try await Self.signalledMidway(ws, args, signal: SIGINT)
        try #require(midway, "not interrupted mid-way: \(r.summary)")
        #expect(r.status == 130, "\(r.summary)")
        let last = r.stderrLines.last ?? ""
        #expect(last.contains("interrupted: the re-encryption of key scope subject-big is unfinished"), "\(r.summary)")
        #expect(last.contains("Run the same command again") && last.contains("esctl keys reencrypt subject-big"), "\(r.summary)")
        #expect(try await ws.esctl(args).status == 0)
        #expect(try await Self.headers(ws.storePath, key: key).allSatisfy { $0.version == 2 })
    }

    @Test("on a terminal a progress bar counts notifications up to the log's end; the report goes to stdout", .tags(.multiProcess),
          .timeLimit(.minutes(5)))
    func progressOnATerminal() async throws {
        let (ws, _) = try await Self.bigRotatedStore()
        let r = try await ws.esctlOnTerminal(ws.with() + ["keys", "reencrypt", "subject-big", "--page-size", "20"])
        #expect(r.status == 0, "\(r.summary)")
        let bars = RotateMasterSafetyTests.bars(in: String(decoding: r.stderrData, as: UTF8.self))
        #expect(!bars.isEmpty, "no progress bar was drawn: \(r.summary)")
        for bar in bars { #expect(bar.total == 4000 && bar.done <= bar.total, "the bar shows \(bar.done)/\(bar.total)") }
        #expect(r.stdout.contains("rewrote 4000 of 4000 events"), "\(r.stdout)")
    }
}
