import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// The files that make up a SQLite store, byte for byte, to prove a failed command changed nothing.
struct StoreFiles: Equatable {
    var main: Data?
    var wal: Data?
    var walIsEmptyOrAbsent: Bool { wal == nil || wal?.isEmpty == true }

    init(_ ws: Workspace, path: String? = nil) {
        let p = path ?? ws.storePath
        main = ws.bytes(p)
        wal = ws.bytes(p + "-wal")
    }

    /// Equal for the main file; the WAL either byte-identical, or absent/empty before and after.
    func unchanged(comparedTo before: StoreFiles) -> Bool {
        guard main == before.main else { return false }
        if before.walIsEmptyOrAbsent { return walIsEmptyOrAbsent }
        return wal == before.wal
    }
}

/// Wrong keys, unknown scopes, missing, foreign, corrupt and locked stores: one line on
/// stderr, the documented exit code, and the store unchanged.
@Suite("esctl failures", .tags(.multiProcess))
struct FailureTests {
    static func expectOneLine(_ r: CLI.Result, _ code: Int32, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == code, "expected exit \(code): \(r.summary)", sourceLocation: sourceLocation)
        #expect(!r.signalled, sourceLocation: sourceLocation)
        #expect(r.stderrLines.count == 1, "one line on stderr: \(r.summary)", sourceLocation: sourceLocation)
        #expect(r.stderrLines.first?.hasPrefix("esctl: ") == true, "\(r.summary)", sourceLocation: sourceLocation)
        #expect(r.stdout.isEmpty, "no data on stdout on failure: \(r.stdout.prefix(300))", sourceLocation: sourceLocation)
    }

    @Test("shred without --yes and without a terminal is refused with 64 and changes nothing")
    func shredNeedsConfirmation() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let before = StoreFiles(ws)
        // Standard input is a file, not a TTY: no --yes means no shred, even if the answer is piped in.
        let r = try await ws.esctl(ws.with() + ["keys", "shred", s.subject], stdin: Data((s.subject + "\n").utf8))
        Self.expectOneLine(r, CLI.Code.usage)
        #expect(r.stderr.contains("--yes"))
        #expect(StoreFiles(ws).unchanged(comparedTo: before), "the store file changed")
        let noStdin = try await ws.esctl(ws.with() + ["keys", "shred", s.subject])
        Self.expectOneLine(noStdin, CLI.Code.usage)
        let show = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"]))
        #expect(show["status"] as? String == "active")
        let export = try await ws.esctl(ws.with() + ["export", s.subject])
        #expect(export.status == 0, "\(export.summary)")
    }

    @Test("An unknown scope exits 68 for show, rotate, shred and export, and changes nothing",
          arguments: [["keys", "show", "no-such-scope"], ["keys", "show", "no-such-scope", "--json"],
                      ["keys", "rotate", "no-such-scope"], ["keys", "shred", "no-such-scope", "--yes"],
                      ["keys", "shred", "no-such-scope"],
                      ["export", "no-such-scope"], ["export", "no-such-scope", "--format", "json"]])
    func unknownScope(_ command: [String]) async throws {
        let (ws, _, _) = try await CommandTests.seeded("unknownScope")
        let before = StoreFiles(ws)
        let r = try await ws.esctl(ws.with() + command)
        Self.expectOneLine(r, CLI.Code.scopeNotFound)
        #expect(r.stderr.contains("no-such-scope"), "the message names the scope: \(r.summary)")
        #expect(StoreFiles(ws).unchanged(comparedTo: before), "the store file changed")
        let stats = try parseJSONObject(try await ws.esctl(["--store", ws.storeURL, "stats", "--json"]))
        #expect(stats["data_keys"] as? Int == 2)
        #expect(stats["shredded_scopes"] as? Int == 0)
    }

    @Test("A wrong master key exits 65 with one line and leaves the store byte-identical",
          arguments: [["keys", "list"], ["keys", "list", "--json"], ["keys", "show", "subject-alice"],
                      ["keys", "rotate", "subject-alice"], ["keys", "shred", "subject-alice", "--yes"],
                      ["verify"], ["export", "subject-alice"], ["keys", "rotate-master", "--new-master-key-file", "NEW"]])
    func wrongMasterKey(_ command: [String]) async throws {
        let (ws, _, _) = try await CommandTests.seeded("wrongMasterKey")
        let wrong = try MasterKey.generate()
        try wrong.writeKeyFile(to: ws.path("wrong.key"))
        let newKey = try MasterKey.generate()
        try newKey.writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()
        let before = StoreFiles(ws)
        #expect(before.main != nil)
        let args = command.map { $0 == "NEW" ? ws.path("new.key") : $0 }
        let r = try await ws.esctl(ws.with(key: ws.path("wrong.key")) + args)
        Self.expectOneLine(r, CLI.Code.wrongMasterKey)
        #expect(r.stderr.contains("wrong master key"))
        let after = StoreFiles(ws)
        #expect(after.main == before.main, "the database file changed")
        #expect(after.unchanged(comparedTo: before), "the WAL changed")
        #expect(!FileManager.default.fileExists(atPath: ws.storePath + "-journal"))

        // The same wrong key by environment and by standard input.
        let env = try await ws.esctl(["--store", ws.storeURL] + args, env: ["ESCTL_MASTER_KEY": wrong.base64EncodedKey()])
        Self.expectOneLine(env, CLI.Code.wrongMasterKey)
        let stdin = try await ws.esctl(["--store", ws.storeURL, "--master-key-stdin"] + args, stdin: Data(wrong.base64EncodedKey().utf8))
        Self.expectOneLine(stdin, CLI.Code.wrongMasterKey)
        #expect(StoreFiles(ws).unchanged(comparedTo: before), "the store changed")

        // The right key still opens it and sees everything.
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
    }

    @Test("A store that does not exist exits 66 and is not created",
          arguments: [["keys", "list"], ["verify"], ["stats"], ["export", "x"], ["keys", "rotate-master", "--new-master-key-file", "NEW", "--create"]])
    func storeNotFound(_ command: [String]) async throws {
        let ws = try Workspace("storeNotFound")
        let key = try MasterKey.generate()
        try key.writeKeyFile(to: ws.keyPath)
        ws.learnKeyFiles()
        let args = command.map { $0 == "NEW" ? ws.path("new.key") : $0 }
        let r = try await ws.esctl(ws.with() + args)
        Self.expectOneLine(r, CLI.Code.storeUnavailable)
        #expect(r.stderr.contains(ws.storePath))
        #expect(!FileManager.default.fileExists(atPath: ws.storePath), "a missing store must not be created")
        #expect(!FileManager.default.fileExists(atPath: ws.storePath + "-wal"))
    }

    @Test("The default store ./eventstore.sqlite is looked for in the working directory")
    func defaultStore() async throws {
        let ws = try Workspace()
        let none = try await ws.esctl(["stats"])
        Self.expectOneLine(none, CLI.Code.storeUnavailable)
        #expect(none.stderr.contains("eventstore.sqlite"))
        let made = try await ws.esctl(["--store", "sqlite:" + ws.path("eventstore.sqlite"), "init"])
        #expect(made.status == 0, "\(made.summary)")
        ws.learnKeyFiles()
        let found = try await ws.esctl(["stats", "--json"])
        #expect(found.status == 0, "\(found.summary)")
    }

    @Test("A file that is not a SQLite database exits 66 and is left untouched",
          arguments: [["keys", "list"], ["verify"], ["stats"], ["keys", "rotate", "x"], ["init"]])
    func notADatabase(_ command: [String]) async throws {
        let ws = try Workspace("notADatabase")
        let key = try MasterKey.generate()
        try key.writeKeyFile(to: ws.path("other.key"))
        ws.learnKeyFiles()
        let junk = Data((0..<200).flatMap { _ in Array("this is not a database, just a text file\n".utf8) })
        _ = FileManager.default.createFile(atPath: ws.storePath, contents: junk)
        let args = ["--store", ws.storeURL, "--master-key-file", ws.path("other.key")] + command
        let r = try await ws.esctl(args)
        Self.expectOneLine(r, CLI.Code.storeUnavailable)
        #expect(ws.bytes(ws.storePath) == junk, "the file was changed")
        for suffix in ["-wal", "-shm", "-journal"] {
            #expect(!FileManager.default.fileExists(atPath: ws.storePath + suffix), "\(suffix) was created")
        }
    }

    @Test("A truncated store exits 66 and is left untouched")
    func truncatedStore() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let full = try #require(ws.bytes(ws.storePath))
        let cut = full.prefix(full.count - 1000)
        try cut.write(to: URL(fileURLWithPath: ws.storePath))
        let r = try await ws.esctl(ws.with() + ["verify"])
        Self.expectOneLine(r, CLI.Code.storeUnavailable)
        #expect(ws.bytes(ws.storePath) == cut)
    }

    @Test("A SQLite database that is not an event store exits 66 and is left untouched")
    func foreignDatabase() async throws {
        let ws = try Workspace()
        _ = try await Py.run("""
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1]); db.execute("CREATE TABLE people (name TEXT)")
            db.execute("INSERT INTO people VALUES ('someone')"); db.commit(); db.close(); print("ok")
            """, [ws.storePath], in: ws)
        let before = ws.bytes(ws.storePath)
        let key = try MasterKey.generate()
        try key.writeKeyFile(to: ws.keyPath)
        ws.learnKeyFiles()
        for command in [["keys", "list"], ["stats"], ["init"]] {
            let r = try await ws.esctl(ws.with() + command)
            Self.expectOneLine(r, CLI.Code.storeUnavailable)
        }
        #expect(ws.bytes(ws.storePath) == before)
    }

    @Test("No master key source exits 64 with one line naming the options")
    func noMasterKey() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let before = StoreFiles(ws)
        for command in [["keys", "list"], ["verify"], ["keys", "rotate", "subject-alice"], ["export", "subject-alice"]] {
            let r = try await ws.esctl(["--store", ws.storeURL] + command)
            Self.expectOneLine(r, CLI.Code.usage)
            #expect(r.stderr.contains("ESCTL_MASTER_KEY"))
        }
        #expect(StoreFiles(ws).unchanged(comparedTo: before))
    }

    @Test("Bad usage exits 64: two key sources, a bad key, an unknown option or scheme, a missing argument")
    func usageErrors() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let before = StoreFiles(ws)
        let key = try ws.keyText()

        let two = try await ws.esctl(ws.with() + ["--master-key-stdin", "keys", "list"], stdin: Data(key.utf8))
        Self.expectOneLine(two, CLI.Code.usage)

        let bad = try await ws.esctl(["--store", ws.storeURL, "keys", "list"], env: ["ESCTL_MASTER_KEY": "bm90IGEga2V5"])
        Self.expectOneLine(bad, CLI.Code.usage)
        #expect(!bad.stderr.contains("bm90IGEga2V5"), "the variable's value is not echoed")

        let short = try await ws.esctl(["--store", ws.storeURL, "--master-key-stdin", "keys", "list"], stdin: Data("c2hvcnQ=".utf8))
        Self.expectOneLine(short, CLI.Code.usage)

        let missingFile = try await ws.esctl(ws.with(key: ws.path("absent.key")) + ["keys", "list"])
        Self.expectOneLine(missingFile, CLI.Code.usage)

        let scheme = try await ws.esctl(["--store", "mysql://x", "--master-key-file", ws.keyPath, "keys", "list"])
        Self.expectOneLine(scheme, CLI.Code.usage)

        let option = try await ws.esctl(ws.with() + ["keys", "list", "--no-such-option"])
        #expect(option.status == CLI.Code.usage, "\(option.summary)")
        #expect(option.stdout.isEmpty)

        let missing = try await ws.esctl(ws.with() + ["keys", "show"])
        #expect(missing.status == CLI.Code.usage, "\(missing.summary)")

        let format = try await ws.esctl(ws.with() + ["export", "subject-alice", "--format", "xml"])
        #expect(format.status == CLI.Code.usage, "\(format.summary)")

        let noValue = try await ws.esctl(["--store", ws.storeURL, "--master-key-file"] + ["keys", "list"])
        #expect(noValue.status == CLI.Code.usage, "\(noValue.summary)")

        #expect(StoreFiles(ws).unchanged(comparedTo: before))
    }

    @Test("verify finds a record corrupted on disk: exit 67, names its notification, aggregate and version")
    func verifyFindsCorruption() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        // Corrupt the second event of Alice's first account: a byte of its GCM tag, then one mid-ciphertext.
        let (nid, (agg, version)) = try #require(s.notifications.sorted { $0.key < $1.key }.first { $0.value.0 == s.aliceAccounts[0] && $0.value.1 == 2 })
        #expect(try await Py.run(Py.corrupt, [ws.storePath, "\(nid)", "1"], in: ws) == "corrupted")

        let text = try await ws.esctl(ws.with() + ["verify"])
        #expect(text.status == CLI.Code.verificationFailed, "\(text.summary)")
        #expect(text.stdout.contains("events:    \(s.totalEvents - 1) ok, 0 shredded, 0 plaintext, 1 failing"), "\(text.stdout)")
        let fail = text.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(fail.count == 1, "\(text.stdout)")
        let line = String(fail.first ?? "")
        #expect(line.contains("notification \(nid)"), "\(line)")
        #expect(line.contains("aggregate \(agg.uuidString.lowercased())"), "\(line)")
        #expect(line.contains("version \(version)"), "\(line)")
        #expect(line.contains("Account.renamed"), "\(line)")
        #expect(line.contains("integrityFailure"), "\(line)")

        let r = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect((j["events"] as? [String: Any])?["failing"] as? Int == 1)
        #expect((j["events"] as? [String: Any])?["ok"] as? Int == s.totalEvents - 1)
        let failures = try #require(j["failures"] as? [[String: Any]])
        #expect(failures.count == 1)
        let f = try #require(failures.first)
        #expect(f["kind"] as? String == "event")
        #expect(f["notification_id"] as? Int == Int(nid))
        #expect(f["originator_id"] as? String == agg.uuidString.lowercased())
        #expect(f["originator_version"] as? Int == version)
        #expect(f["topic"] as? String == "Account.renamed")
        #expect(f["error"] as? String == "integrityFailure")
        #expect((f["message"] as? String)?.isEmpty == false)

        // A second record, corrupted in the middle of its ciphertext, is found too.
        let (nid2, _) = try #require(s.notifications.first { $0.value.0 == s.bob && $0.value.1 == 1 })
        _ = try await Py.run(Py.corrupt, [ws.storePath, "\(nid2)", "20"], in: ws)
        let two = try parseJSONObject(try await ws.esctl(ws.with() + ["verify", "--json"]))
        let ids = (two["failures"] as? [[String: Any]])?.compactMap { $0["notification_id"] as? Int }.sorted()
        #expect(ids == [Int(nid), Int(nid2)].sorted())
    }

    @Test("A store locked by another process: keys rotate exits 70 after the busy timeout, with one line, store unchanged")
    func lockedStore() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        // Held far past the 5-second busy timeout (and ended as soon as esctl returns), so that
        // however loaded the machine, esctl gives up while the lock is still held.
        let hold = 120.0
        let holder = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-u", "-c", Py.holdLock, ws.storePath, "\(hold)"],
                                   env: CLI.cleanEnvironment(home: ws.dir.path), cwd: ws.dir, scratch: ws.dir)
        // Wait until the holder says it has the lock (a deadline only for a holder that never does).
        let deadline = Date().addingTimeInterval(60)
        var locked = false
        while Date() < deadline {
            if let out = try? String(contentsOf: holder.outURL, encoding: .utf8), out.contains("locked") { locked = true; break }
            if !holder.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let lockedAt = Date()
        try #require(locked, "the python lock holder did not take the lock")

        let r = try await ws.esctl(ws.with() + ["keys", "rotate", s.subject])
        let heldFor = Date().timeIntervalSince(lockedAt)
        let stillHeld = holder.process.isRunning
        // The lock is released by ending the holder; its transaction rolls back.
        holder.kill9()
        _ = await holder.wait()
        Self.expectOneLine(r, CLI.Code.storeLocked)
        #expect(r.stderr.lowercased().contains("lock"), "\(r.summary)")
        // The timeout is the behaviour under test: esctl waits it out (a lower bound, which load
        // cannot break), and gives up by itself while the lock is still held.
        #expect(r.seconds >= 4.5, "esctl gave up after \(r.seconds) s, before the 5-second busy timeout")
        #expect(stillHeld && heldFor < hold, "esctl ended only after the lock was released (\(heldFor) s)")

        // Nothing changed: still one key version, and the store still verifies.
        let (store, _, _) = try await Stores.open(ws.storePath, keys: [key])
        #expect(try await store.dataKeys(scope: s.subject).map(\.version) == [1])
        await store.close()
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
    }
}
