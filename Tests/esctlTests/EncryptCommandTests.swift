import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// `esctl encrypt` on a store an application wrote without a keyring.
@Suite("esctl encrypt", .tags(.multiProcess))
struct EncryptCommandTests {
    /// A plaintext SQLite store (uncompressed, so the names stand in the file): accounts of two
    /// owners and ownerless ones, with a snapshot. Returns the ids by owner ("" for none) and the names.
    static func writePlaintext(_ ws: Workspace) async throws -> (owners: [UUID: String], names: [String]) {
        let store = try SQLiteStore(path: ws.storePath)
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(configuration: .init(compressor: nil)))
        var owners: [UUID: String] = [:]
        var names: [String] = []
        for i in 0..<12 {
            let owner = i < 4 ? "owner-ada" : i < 6 ? "owner-bob" : ""
            let name = "Plain Person \(i) \(UUID().uuidString.prefix(8))"
            var a = try AggregateRoot<Account>(.opened(owner: owner, name: name))
            let renamed = "Renamed Person \(i) \(UUID().uuidString.prefix(8))"
            try a.record(.renamed(name: renamed))
            try await app.save(&a)
            if i % 5 == 0 { try await app.takeSnapshot(Account.self, id: a.id) }
            owners[a.id] = owner
            names += [name, renamed]
        }
        await store.close()
        return (owners, names)
    }

    static func found(_ ws: Workspace, _ names: [String]) -> [String] {
        var out: [String] = []
        for suffix in ["", "-wal", "-shm"] {
            let bytes = ws.bytes(ws.storePath + suffix) ?? Data()
            out += names.filter { bytes.range(of: Data($0.utf8)) != nil }.map { "\(suffix.isEmpty ? "db" : suffix): \($0)" }
        }
        return out
    }

    @Test("init, encrypt --subjects, verify: every record sealed under its owner or its own id, no name left in the files, plaintext refused, a second run seals nothing")
    func encryptThenVerify() async throws {
        let ws = try Workspace()
        let (owners, names) = try await Self.writePlaintext(ws)
        #expect(!Self.found(ws, names).isEmpty, "the names stand in the plaintext file")
        try await ws.initStore()

        let before = try await ws.esctl(ws.with() + ["verify"])
        #expect(before.status == 67, "\(before.summary)")
        #expect(before.stdout.contains("plaintext: 27 records are not encrypted\n"), "\(before.stdout)")

        let csv = "# aggregate id,scope\n" + owners.filter { !$0.value.isEmpty }.map { "\($0.key.uuidString),\($0.value)" }.joined(separator: "\n") + "\n"
        try Data(csv.utf8).write(to: URL(fileURLWithPath: ws.path("subjects.csv")))
        let r = try await ws.esctl(ws.with() + ["encrypt", "--subjects", ws.path("subjects.csv"), "--page-size", "5", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let json = try #require(try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any], "\(r.stdout)")
        let events = try #require(json["events"] as? [String: Any])
        let snapshots = try #require(json["snapshots"] as? [String: Any])
        #expect(events["encrypted"] as? Int == 24 && events["already_encrypted"] as? Int == 0)
        #expect(snapshots["encrypted"] as? Int == 3)
        #expect(json["plaintext_left"] as? Int == 0 && json["plaintext_refused"] as? Bool == true)
        #expect(json["residue_pending"] as? Bool == false && json["failed"] as? Int == 0)
        #expect((json["scopes"] as? [String: Int])?["owner-ada"] == 4 * 2 + 1)
        #expect(json["keys_created"] as? Int == 2 + 6)
        #expect(Self.found(ws, names).isEmpty, "names left in the files: \(Self.found(ws, names))")

        let after = try await ws.esctl(ws.with() + ["verify"])
        #expect(after.status == 0, "\(after.summary)")
        #expect(after.stdout.contains("plaintext: none, every event and snapshot is encrypted; the store refuses plaintext writes for good"), "\(after.stdout)")

        let again = try await ws.esctl(ws.with() + ["encrypt"])
        #expect(again.status == 0, "\(again.summary)")
        #expect(again.stdout.contains("events:    0 encrypted, 24 already encrypted"), "\(again.stdout)")

        // Each account's records are under its owner, or its own id; plaintext is refused.
        let store = try SQLiteStore(path: ws.storePath, configuration: .init(allowsPlaintextWrites: true))
        for (id, owner) in owners {
            for e in try await store.selectEvents(originatorID: id) {
                #expect(StateHeader.peekKeyScope(e.state) == (owner.isEmpty ? id.uuidString.lowercased() : owner))
            }
        }
        var late = try AggregateRoot<Account>(.opened(owner: "", name: "late"))
        await #expect(throws: EventSourcingError.self) { try await Application(recorder: store).save(&late) }
        await store.close()
    }

    /// A plaintext store of 4,000 events (2,000 ownerless accounts), initialised: a pass long
    /// enough to stop mid-way.
    static func bigPlaintextStore() async throws -> Workspace {
        let ws = try Workspace()
        let store = try SQLiteStore(path: ws.storePath)
        let app = Application(recorder: store, snapshots: store)
        do {
            for batch in 0..<4 {
                var roots = try (0..<500).map { i in
                    var a = try AggregateRoot<Account>(.opened(owner: "", name: "account \(batch * 500 + i)"))
                    try a.record(.renamed(name: "renamed \(batch * 500 + i)"))
                    return a
                }
                try await app.save(&roots)
            }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        try await ws.initStore()
        return ws
    }

    /// Starts `args` and sends `signal` once the first page is sealed (seen by another connection).
    static func signalledMidway(_ ws: Workspace, _ args: [String], signal: Int32) async throws -> (CLI.Result, Bool) {
        let running = try ws.start(args)
        let watcher = try SQLiteStore(path: ws.storePath)
        var midway = false
        for _ in 0..<5_000 {
            if try await watcher.countPlaintextEvents() < 4_000 {
                if signal == SIGKILL { running.kill9() } else { _ = kill(running.pid, signal) }
                midway = true
                break
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        await watcher.close()
        return (await ws.finish(running, args: args), midway)
    }

    @Test("Ctrl-C (SIGINT) mid-way exits 130 and says how to resume; a kill (SIGKILL) leaves whole records; the rerun finishes",
          arguments: [SIGINT, SIGKILL])
    func interruptedThenRerun(_ signal: Int32) async throws {
        let ws = try await Self.bigPlaintextStore()
        let args = ws.with() + ["encrypt", "--page-size", "5"]
        let (r, midway) = try await Self.signalledMidway(ws, args, signal: signal)
        try #require(midway, "not stopped mid-way: \(r.summary)")
        if signal == SIGINT {
            #expect(r.status == 130 && !r.signalled, "\(r.summary)")
            let last = r.stderrLines.last ?? ""
            #expect(last.contains("interrupted: the pages done so far are encrypted") && last.contains("Run the same command again"),
                    "\(r.summary)")
        } else {
            #expect(r.signalled, "\(r.summary)")
        }
        let watcher = try SQLiteStore(path: ws.storePath)
        let left = try await watcher.countPlaintextEvents()
        #expect(try await watcher.refusesPlaintextWrites() == false)
        await watcher.close()
        #expect(left > 0 && left < 4_000, "\(left) of 4000 events left plaintext")
        let rerun = try await ws.esctl(args + ["--json"])
        #expect(rerun.status == 0, "\(rerun.summary)")
        let json = try #require(try JSONSerialization.jsonObject(with: rerun.stdoutData) as? [String: Any])
        let events = try #require(json["events"] as? [String: Any])
        #expect(events["encrypted"] as? Int == left && events["already_encrypted"] as? Int == 4_000 - left)
        #expect(json["plaintext_refused"] as? Bool == true)
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
    }

    @Test("A bad --subjects file is refused (64) naming the line, before the store changes")
    func badSubjects() async throws {
        let ws = try Workspace()
        _ = try await Self.writePlaintext(ws)
        try await ws.initStore()
        let id = UUID().uuidString
        let cases: [(String, String)] = [
            ("not-a-uuid,owner\n", "line 1: the aggregate id is not a UUID"),
            ("\(id),owner\n\(id.lowercased()),other\n", "line 2: aggregate \(id.lowercased()) is listed twice"),
            ("\(id)\n", "line 1 is not AGGREGATE-ID,SCOPE"),
            ("\(id),\n", "line 1: the scope is empty"),
            ("{\"\(id)\": 3}", "is not a string"),
            ("{\"\(id)\": \"\(String(repeating: "s", count: 256))\"}", "longer than 255 bytes"),
            ("# a comment\n\(id), owner\n", "line 2: the scope begins or ends with white space"),
            ("# CRLF\r\n\(id),owner\u{A0}\r\n", "line 2: the scope begins or ends with white space"),
            ("{\"\(id)\": \" owner\"}", "entry 1: the scope begins or ends with white space"),
        ]
        let before = ws.bytes(ws.storePath)
        for (i, (content, message)) in cases.enumerated() {
            let path = ws.path("subjects-\(i)")
            try Data(content.utf8).write(to: URL(fileURLWithPath: path))
            let r = try await ws.esctl(ws.with() + ["encrypt", "--subjects", path])
            #expect(r.status == 64, "\(r.summary)")
            #expect(r.stderr.contains(message), "\(r.summary)")
        }
        #expect(ws.bytes(ws.storePath) == before)
        let missing = try await ws.esctl(ws.with() + ["encrypt", "--page-size", "0"])
        #expect(missing.status == 64, "\(missing.summary)")
    }

    @Test("A helper that fails once the store is open (it cannot wrap a new scope's key): encrypt exits 71 at once, naming the helper, not a FAIL per record; nothing is sealed; a rerun with a working helper finishes")
    func helperFailsMidway() async throws {
        let ws = try Workspace()
        _ = try await Self.writePlaintext(ws)
        try await ws.initStore()
        let helper = try ExternalKeys.helperScript(ws, name: "helper.sh")
        let moved = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-command", helper])
        #expect(moved.status == 0, "\(moved.summary)")
        // The same key and id, but it exits on the first wrap: opening the store (id, unwrap) works.
        let inner = CLI.packageRoot.appendingPathComponent("Tests/Helpers/kek-helper.py").path
        let proxy = ws.path("wrap-fails.py")
        try Data("""
            import json, subprocess, sys
            inner = subprocess.Popen([sys.executable, \(String(reflecting: inner)), "--key", \(String(reflecting: ws.path("helper-kek.b64"))),
                                      "--id", "cli-helper-key"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for line in sys.stdin:
                if json.loads(line)["op"] == "wrap":
                    sys.stderr.write("proxy: wrap refused, token s.SECRET\\n")
                    sys.exit(1)
                inner.stdin.write(line); inner.stdin.flush()
                sys.stdout.write(inner.stdout.readline()); sys.stdout.flush()
            """.utf8).write(to: URL(fileURLWithPath: proxy))
        let failing = ws.path("wrap-fails.sh")
        try Data("#!/bin/sh\nexec python3 '\(proxy)'\n".utf8).write(to: URL(fileURLWithPath: failing))
        chmod(failing, 0o755)

        let r = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", failing, "encrypt"])
        #expect(r.status == 71, "\(r.summary)")
        #expect(r.stderr.contains("master key source failed") && r.stderr.contains("wrap-fails.sh"), "\(r.summary)")
        #expect(!r.stderr.contains("FAIL") && !r.stdout.contains("FAIL") && !r.stderr.contains("SECRET"), "\(r.summary)")
        let left = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", helper, "verify"])
        #expect(left.status == 67 && left.stdout.contains("plaintext: 27 records are not encrypted\n"), "\(left.summary)")

        let rerun = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", helper, "encrypt"])
        #expect(rerun.status == 0, "\(rerun.summary)")
        let verify = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", helper, "verify"])
        #expect(verify.status == 0, "\(verify.summary)")
    }
}
