import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// Master-key sources, and rotating the master key (also when interrupted).
@Suite("esctl master keys", .tags(.multiProcess))
struct MasterKeyTests {
    @Test("The master key works from ESCTL_MASTER_KEY (base64), from --master-key-stdin and from a raw key file")
    func keySources() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        let text = try ws.keyText()

        let env = try await ws.esctl(["--store", ws.storeURL, "keys", "list", "--json"], env: ["ESCTL_MASTER_KEY": text])
        #expect(env.status == 0, "\(env.summary)")
        #expect(try parseJSONObject(env)["master_key_id"] as? String == key.id)

        let envStore = try await ws.esctl(["verify"], env: ["ESCTL_MASTER_KEY": text, "ESCTL_STORE": ws.storeURL])
        #expect(envStore.status == 0, "\(envStore.summary)")

        let stdin = try await ws.esctl(["--store", ws.storeURL, "--master-key-stdin", "keys", "show", s.subject, "--json"],
                                       stdin: Data((text + "\n").utf8))
        #expect(stdin.status == 0, "\(stdin.summary)")
        #expect(try parseJSONObject(stdin)["scope"] as? String == s.subject)

        let export = try await ws.esctl(["--store", ws.storeURL, "--master-key-stdin", "export", s.subject],
                                        stdin: Data(text.utf8))
        #expect(export.status == 0, "\(export.summary)")
        #expect(export.stdout.split(separator: "\n").count == s.subjectEvents)

        // A key file with the 32 raw bytes works like the base64 one.
        let raw = try #require(Data(base64Encoded: text))
        _ = FileManager.default.createFile(atPath: ws.path("raw.key"), contents: raw, attributes: [.posixPermissions: 0o600])
        let rawRun = try await ws.esctl(ws.with(key: ws.path("raw.key")) + ["verify"])
        #expect(rawRun.status == 0, "\(rawRun.summary)")

        // An explicit --master-key-file wins over the environment variable.
        let wrong = try MasterKey.generate()
        ws.learnKey(base64: wrong.base64EncodedKey())
        let both = try await ws.esctl(ws.with() + ["keys", "list"], env: ["ESCTL_MASTER_KEY": wrong.base64EncodedKey()])
        #expect(both.status == 0, "\(both.summary)")
    }

    @Test("init takes its key from ESCTL_MASTER_KEY or standard input and writes no key file then")
    func initWithGivenKey() async throws {
        let ws = try Workspace()
        let key = try MasterKey.generate()
        ws.learnKey(base64: key.base64EncodedKey())
        let r = try await ws.esctl(["--store", ws.storeURL, "init"], env: ["ESCTL_MASTER_KEY": key.base64EncodedKey()])
        #expect(r.status == 0, "\(r.summary)")
        #expect(r.stderr.contains(key.id))
        #expect(!FileManager.default.fileExists(atPath: ws.keyPath), "no key file is written for a given key")
        let list = try await ws.esctl(["--store", ws.storeURL, "--master-key-stdin", "keys", "list"], stdin: Data(key.base64EncodedKey().utf8))
        #expect(list.status == 0, "\(list.summary)")

        let ws2 = try Workspace()
        ws2.learnKey(base64: key.base64EncodedKey())
        let r2 = try await ws2.esctl(["--store", ws2.storeURL, "--master-key-stdin", "init"], stdin: Data(key.base64EncodedKey().utf8))
        #expect(r2.status == 0, "\(r2.summary)")
        let verify = try await ws2.esctl(["--store", ws2.storeURL, "verify"], env: ["ESCTL_MASTER_KEY": key.base64EncodedKey()])
        #expect(verify.status == 0, "\(verify.summary)")
    }

    @Test("rotate-master --create writes a new 0600 key and rewraps every data key; the old key then exits 65, the new one verifies")
    func rotateMaster() async throws {
        let (ws, s, old) = try await CommandTests.seeded()
        #expect(try await ws.esctl(ws.with() + ["keys", "rotate", s.subject]).status == 0)
        let newPath = ws.path("new.key")
        let r = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", newPath, "--create"])
        #expect(r.status == 0, "\(r.summary)")
        let attrs = try FileManager.default.attributesOfItem(atPath: newPath)
        #expect(((attrs[.posixPermissions] as? NSNumber)?.intValue ?? 0) & 0o777 == 0o600)
        let new = try MasterKey(contentsOfFile: newPath)
        #expect(new.id != old.id)
        #expect(r.stdout.contains("master key \(old.id) -> \(new.id): rewrapped 3, already current 0"), "\(r.stdout)")

        let oldRun = try await ws.esctl(ws.with() + ["keys", "list"])
        FailureTests.expectOneLine(oldRun, CLI.Code.wrongMasterKey)
        let verify = try await ws.esctl(ws.with(key: newPath) + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
        let list = try parseJSONObject(try await ws.esctl(ws.with(key: newPath) + ["keys", "list", "--json"]))
        #expect(list["master_key_id"] as? String == new.id)
        for scope in (list["scopes"] as? [[String: Any]]) ?? [] {
            #expect(scope["kek_ids"] as? [String] == [new.id])
        }
        let export = try await ws.esctl(ws.with(key: newPath) + ["export", s.subject])
        #expect(export.status == 0, "\(export.summary)")
        #expect(export.stdout.split(separator: "\n").count == s.subjectEvents)

        let (store, _, _) = try await Stores.open(ws.storePath, keys: [new])
        #expect(try await store.masterKeyChecks().map(\.kekID) == [new.id])
        #expect(try await Stores.allDataKeys(store).allSatisfy { $0.kekID == new.id })
        await store.close()
    }

    @Test("rotate-master uses an existing new key file; rotating to the current key exits 64")
    func rotateMasterExistingFile() async throws {
        let (ws, _, old) = try await CommandTests.seeded()
        let new = try MasterKey.generate()
        try new.writeKeyFile(to: ws.path("new.key"))
        let before = ws.bytes(ws.path("new.key"))
        let r = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        #expect(r.status == 0, "\(r.summary)")
        #expect(ws.bytes(ws.path("new.key")) == before, "an existing key file is not overwritten")
        #expect(r.stdout.contains("\(old.id) -> \(new.id)"))

        let same = try await ws.esctl(ws.with(key: ws.path("new.key")) + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key")])
        FailureTests.expectOneLine(same, CLI.Code.usage)
    }

    @Test("rotate-master with a wrong key or a missing store fails with one line and writes no new key file")
    func rotateMasterFailsCleanly() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let wrong = try MasterKey.generate()
        try wrong.writeKeyFile(to: ws.path("wrong.key"))
        let before = StoreFiles(ws)
        let r = try await ws.esctl(ws.with(key: ws.path("wrong.key")) + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key"), "--create"])
        FailureTests.expectOneLine(r, CLI.Code.wrongMasterKey)
        #expect(!FileManager.default.fileExists(atPath: ws.path("new.key")), "a new key file was written for a store it cannot rotate")
        #expect(StoreFiles(ws).unchanged(comparedTo: before))

        let missing = try await ws.esctl(["--store", "sqlite:" + ws.path("absent.sqlite"), "--master-key-file", ws.keyPath,
                                          "keys", "rotate-master", "--new-master-key-file", ws.path("new.key"), "--create"])
        FailureTests.expectOneLine(missing, CLI.Code.storeUnavailable)
        #expect(!FileManager.default.fileExists(atPath: ws.path("new.key")))
        #expect(!FileManager.default.fileExists(atPath: ws.path("absent.sqlite")))
    }

    @Test("Rerunning a rotate-master that already finished exits 0 and leaves the store on the new key")
    func rotateMasterRerunAfterFinish() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let args = ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("new.key"), "--create"]
        let first = try await ws.esctl(args)
        #expect(first.status == 0, "\(first.summary)")
        // The same command again: an operator who is not sure the first run completed.
        let again = try await ws.esctl(args)
        #expect(again.status == 0, "rerunning the same rotate-master must finish (nothing left to do): \(again.summary)")
        #expect(again.stderrLines.count <= 2, "\(again.summary)")
        let verify = try await ws.esctl(ws.with(key: ws.path("new.key")) + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
        let old = try await ws.esctl(ws.with() + ["verify"])
        #expect(old.status == CLI.Code.wrongMasterKey, "\(old.summary)")
    }

    /// What a store holds right after an interrupted rotation.
    struct Inspection {
        var underOld = 0
        var underNew = 0
        var other = 0
        var unreadable = 0
        var total: Int { underOld + underNew + other }
        var checks: [String] = []
    }

    /// Opens the store with whichever of the two keys it has a check record for, and reads
    /// every data key through a keyring.
    static func inspect(_ path: String, old: MasterKey, new: MasterKey) async throws -> Inspection {
        let store = try SQLiteStore(path: path, logger: Stores.quiet)
        var result = Inspection()
        do {
            let checks = try await store.masterKeyChecks().map(\.kekID)
            result.checks = checks
            try #require(!checks.isEmpty, "no master-key check left in the store")
            let keys = [old, new].filter { checks.contains($0.id) }
            try #require(!keys.isEmpty, "neither the old nor the new key has a check record")
            let keyring = try await Keyring.open(store: store, masterKeys: keys, logger: Stores.quiet)
            for wrapped in try await Stores.allDataKeys(store) {
                if wrapped.kekID == old.id { result.underOld += 1 } else if wrapped.kekID == new.id { result.underNew += 1 } else { result.other += 1 }
                do {
                    let key = try await keyring.readKey(scope: wrapped.scope, version: wrapped.version)
                    if key.material.count != 32 { result.unreadable += 1 }
                } catch {
                    result.unreadable += 1
                }
            }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        return result
    }

    @Test("rotate-master killed at random moments: every data key stays readable with the old or new key; rerunning finishes",
          .timeLimit(.minutes(15)))
    func interruptedRotateMaster() async throws {
        let ws = try Workspace()
        try await ws.initStore()
        let old = try MasterKey(contentsOfFile: ws.keyPath)
        let scopes = 3000
        try await Stores.seedMany(ws.storePath, key: old, count: scopes)
        let pristine = try #require(ws.bytes(ws.storePath))
        #expect(!FileManager.default.fileExists(atPath: ws.storePath + "-wal") || (ws.bytes(ws.storePath + "-wal")?.isEmpty ?? true))
        let new = try MasterKey.generate()
        try new.writeKeyFile(to: ws.path("new.key"))
        ws.learnKeyFiles()

        func fresh(_ n: Int) throws -> String {
            let dir = ws.path("run\(n)")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let path = dir + "/store.sqlite"
            try pristine.write(to: URL(fileURLWithPath: path))
            return path
        }
        func command(_ path: String) -> [String] {
            ["--store", "sqlite:" + path, "--master-key-file", ws.keyPath, "keys", "rotate-master", "--new-master-key-file", ws.path("new.key")]
        }

        // Calibrate: one uninterrupted run on a copy.
        let calibration = try fresh(0)
        let full = try await ws.esctl(command(calibration))
        try #require(full.status == 0, "uninterrupted rotate-master failed: \(full.summary)")
        #expect(full.stdout.contains("rewrapped \(scopes), already current 0"), "\(full.stdout)")
        let duration = max(full.seconds, 0.05)

        var midway = 0
        var kills = 0
        var attempt = 0
        var log: [String] = []
        // Most runs are killed after a random delay over the first 60% of the calibration run
        // (later runs are often faster than the cold calibration run, so most are killed rather
        // than finishing first). A rotation commits a page of keys at a time, so the moments at
        // which some keys are under the old master key and some under the new one are a small
        // part of a run, which a delay lands in only by luck on a loaded machine: every fourth
        // run, starting with the first, is instead killed by a watcher the moment it sees the
        // store in that state.
        while attempt < 20 && (kills < 4 || midway < 1) {
            attempt += 1
            let path = try fresh(attempt)
            let watched = attempt % 4 == 1
            let delay = duration * Double.random(in: 0.02...0.6)
            var watcher = "-"
            let killed: CLI.Result
            if watched {
                (killed, watcher) = try await ws.runSignalledMidway(command(path), store: path, newKeyID: new.id, total: scopes,
                                                                     signal: SIGKILL)
            } else {
                let running = try ws.start(command(path))
                try await Task.sleep(for: .nanoseconds(Int(delay * 1_000_000_000)))
                running.kill9()
                killed = await ws.finish(running, args: ["keys", "rotate-master"])
            }
            if !killed.signalled {
                #expect(killed.status == 0, "rotate-master ended on its own but failed: \(killed.summary)")
            } else {
                kills += 1
            }

            // At this moment every data key opens with the old or the new key.
            let seen = try await Self.inspect(path, old: old, new: new)
            #expect(seen.total == scopes, "data keys lost: \(seen.total) of \(scopes) (attempt \(attempt))")
            #expect(seen.other == 0, "a data key under an unknown master key (attempt \(attempt))")
            #expect(seen.unreadable == 0, "\(seen.unreadable) data keys unreadable after a kill at \(delay) s (attempt \(attempt); old \(seen.underOld), new \(seen.underNew), checks \(seen.checks.count))")
            if seen.underOld > 0 {
                #expect(seen.checks.contains(old.id), "keys under the old master key but its check was retired")
            }
            if seen.underNew > 0 {
                #expect(seen.checks.contains(new.id), "keys under the new master key but it has no check")
            }
            if killed.signalled, seen.underOld > 0, seen.underNew > 0 { midway += 1 }
            if watched {
                #expect(watcher.hasPrefix("signalled") && killed.signalled && seen.underOld > 0 && seen.underNew > 0,
                        "the watcher did not kill the rotation mid-way: \(watcher) (attempt \(attempt))")
            }
            log.append(String(format: "#%d %@ %@ old=%d new=%d checks=%d", attempt,
                              watched ? "watched" : String(format: "%.3fs", delay),
                              killed.signalled ? "killed" : "finished", seen.underOld, seen.underNew, seen.checks.count))

            // Rerunning the same command finishes the job.
            let rerun = try await ws.esctl(command(path))
            #expect(rerun.status == 0, "rerun after a kill at \(delay) s (attempt \(attempt)): \(rerun.summary)")
            let done = try await Self.inspect(path, old: old, new: new)
            #expect(done.underNew == scopes && done.underOld == 0 && done.unreadable == 0,
                    "after the rerun: \(done.underNew) of \(scopes) under the new key (attempt \(attempt))")
            #expect(done.checks == [new.id], "only the new key opens the store after the rerun (attempt \(attempt))")
            if attempt <= 2 || midway == 1 && seen.underOld > 0 && seen.underNew > 0 {
                let verify = try await ws.esctl(["--store", "sqlite:" + path, "--master-key-file", ws.path("new.key"), "verify"])
                #expect(verify.status == 0, "verify with the new key (attempt \(attempt)): \(verify.summary)")
                let oldKey = try await ws.esctl(["--store", "sqlite:" + path, "--master-key-file", ws.keyPath, "verify"])
                #expect(oldKey.status == CLI.Code.wrongMasterKey, "old key after the rerun (attempt \(attempt)): \(oldKey.summary)")
            }
            try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent)
        }
        let summary = "uninterrupted run \(duration) s; " + log.joined(separator: "; ")
        #expect(kills >= 3, "rotate-master was killed only \(kills) times: \(summary)")
        #expect(midway >= 1, "no kill landed mid-way (some keys old, some new): \(summary)")
        if ProcessInfo.processInfo.environment["ESCTL_TESTS_VERBOSE"] != nil { print("interrupted rotate-master: \(summary)") }
    }
}
