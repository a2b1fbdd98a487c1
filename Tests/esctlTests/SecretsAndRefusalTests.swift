import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// The ways one key can be written out on a command line.
enum KeyForm: String, CaseIterable, Sendable {
    case base64, base64URLUnpadded, hex, hexUpper

    func text(_ key: MasterKey) -> String {
        let b64 = key.base64EncodedKey()
        let raw = Data(base64Encoded: b64) ?? Data()
        switch self {
        case .base64: return b64
        case .base64URLUnpadded:
            return b64.replacingOccurrences(of: "=", with: "").replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        case .hex: return raw.map { String(format: "%02x", $0) }.joined()
        case .hexUpper: return raw.map { String(format: "%02X", $0) }.joined()
        }
    }
}

/// A: a key given on the command line by mistake is never written back, `--master-key` gets
/// a useful answer, and `init` refuses weak passphrases and leaves nothing behind.
@Suite("esctl keeps keys off the terminal", .tags(.multiProcess))
struct SecretTests {
    @Test("A key given where a key file's path belongs is refused (64), called a key, and never echoed",
          arguments: KeyForm.allCases)
    func keyInsteadOfPath(_ form: KeyForm) async throws {
        let (ws, _, key) = try await CommandTests.seeded("keyInsteadOfPath")
        let text = form.text(key)
        let before = StoreFiles(ws)
        let runs: [[String]] = [
            ["--store", ws.storeURL, "--master-key-file", text, "keys", "list"],   // esctl --master-key-file "$(cat master.key)"
            ["--store", ws.storeURL, "--master-key-file=" + text, "verify"],
            ["--store", ws.storeURL, "keys", "list", "--master-key-file", text],
            ws.with() + ["keys", "rotate-master", "--new-master-key-file", text],
            ["--store", text, "--master-key-file", ws.keyPath, "stats"],
        ]
        for args in runs {
            let r = try await ws.esctl(args)
            FailureTests.expectOneLine(r, CLI.Code.usage)
            #expect(r.stderr.contains("looks like a key"), "\(r.summary)")
        }
        #expect(StoreFiles(ws).unchanged(comparedTo: before))
    }

    @Test("A key given as any other argument is never echoed, whatever the error", arguments: KeyForm.allCases)
    func keyAsArgument(_ form: KeyForm) async throws {
        let (ws, _, key) = try await CommandTests.seeded("keyAsArgument")
        let text = form.text(key)
        // A URL-safe base64 key begins with "-" one time in 64: the dashed variant below makes
        // that case deterministic (the parser would otherwise read it as short options, -h among them).
        let dashed = text.hasPrefix("-")
        var texts = [text]
        if form == .base64URLUnpadded, !dashed { texts.append("-" + text.dropFirst()) }
        for t in texts {
            let unexpected = try await ws.esctl(ws.with() + ["keys", "list", t])
            #expect(unexpected.status == CLI.Code.usage, "\(unexpected.summary)")
            #expect(!unexpected.stderr.contains(t) && !unexpected.stdout.contains(t))
            let unknownCommand = try await ws.esctl(ws.with() + [t])
            #expect(unknownCommand.status == CLI.Code.usage, "\(unknownCommand.summary)")
            #expect(!unknownCommand.stderr.contains(t) && !unknownCommand.stdout.contains(t))
            if t.hasPrefix("-") {
                let export = try await ws.esctl(ws.with() + ["export", t])
                FailureTests.expectOneLine(export, CLI.Code.usage)
                #expect(export.stderr.contains("looks like a key") && !export.stderr.contains(t), "\(export.summary)")
            }
        }
        // As a scope: it may be one (a SHA-256 hex id, say), but it is not echoed on stderr. A
        // scope that begins with "-" is given after "--", as with any POSIX command.
        let scope = dashed ? ["--", text] : [text]
        for command in [["keys", "show"] + scope, ["export"] + scope, ["keys", "rotate"] + scope, ["keys", "shred", "--yes"] + scope] {
            let r = try await ws.esctl(ws.with() + command)
            FailureTests.expectOneLine(r, CLI.Code.scopeNotFound)
            #expect(!r.stderr.contains(text))
        }
    }

    @Test("--master-key does not exist: the answer points to --master-key-file and --master-key-stdin, and echoes nothing")
    func masterKeyOption() async throws {
        let (ws, _, key) = try await CommandTests.seeded()
        let notAKey = "hunter2-is-my-passphrase"
        for args in [["--master-key", key.base64EncodedKey(), "keys", "list"],
                     ["--master-key=" + key.base64EncodedKey(), "verify"],
                     ["keys", "list", "--master-key", KeyForm.hex.text(key)],
                     ["--master-key", notAKey, "keys", "list"],
                     ["--passphrase=" + notAKey, "keys", "list"]] {
            let r = try await ws.esctl(["--store", ws.storeURL] + args)
            FailureTests.expectOneLine(r, CLI.Code.usage)
            #expect(!r.stderr.contains(notAKey), "the value is not echoed")
            #expect(!r.stderr.lowercased().contains("unknown option"), "\(r.summary)")
            if args.first?.hasPrefix("--passphrase") == false {
                #expect(r.stderr.contains("--master-key-file") && r.stderr.contains("--master-key-stdin"), "\(r.summary)")
            }
        }
    }

    @Test("A value of --master-key-file that is not evidently a path (a passphrase, say) is never written back")
    func passphraseAsKeyFile() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let secret = "my secret passphrase"
        for args in [["--master-key-file", secret, "keys", "list"], ["--master-key-file=hunter2", "verify"],
                     ["--master-key-file", ws.keyPath, "keys", "rotate-master", "--new-master-key-file", "hunter2"]] {
            let r = try await ws.esctl(["--store", ws.storeURL] + args)
            FailureTests.expectOneLine(r, CLI.Code.usage)
            #expect(!r.stderr.contains(secret) && !r.stderr.contains("hunter2"), "\(r.summary)")
        }
        // A path is still named.
        let path = try await ws.esctl(["--store", ws.storeURL, "--master-key-file", ws.path("absent.key"), "keys", "list"])
        #expect(path.stderr.contains(ws.path("absent.key")), "\(path.summary)")
    }

    @Test("init --passphrase refuses a weak passphrase (64) unless --allow-weak-passphrase, and creates nothing when it refuses",
          arguments: ["short", "aaaaaaaaaaaaaaaaaaaaaaaa", "abcdefghijklmnopqrstuvwxyz", "12345678901234567890", "abababababababababab"])
    func weakPassphrase(_ passphrase: String) async throws {
        let ws = try Workspace("weakPassphrase")
        let r = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init"], stdin: Data((passphrase + "\n").utf8))
        FailureTests.expectOneLine(r, CLI.Code.usage)
        #expect(r.stderr.contains("too weak"), "\(r.summary)")
        #expect(!r.stderr.contains(passphrase), "the passphrase is not echoed")
        #expect(!FileManager.default.fileExists(atPath: ws.storePath), "a refused init left a store behind")
        #expect(!FileManager.default.fileExists(atPath: ws.keyPath))

        let allowed = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init", "--allow-weak-passphrase"],
                                         stdin: Data((passphrase + "\n").utf8))
        #expect(allowed.status == 0, "\(allowed.summary)")
        let opens = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "keys", "list"], stdin: Data((passphrase + "\n").utf8))
        #expect(opens.status == 0, "\(opens.summary)")
    }

    @Test("init --passphrase accepts a strong passphrase")
    func strongPassphrase() async throws {
        let ws = try Workspace()
        let passphrase = "correct horse battery staple 42"
        let r = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init"], stdin: Data((passphrase + "\n").utf8))
        #expect(r.status == 0, "\(r.summary)")
        #expect(!r.stderr.contains(passphrase))
        let list = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "keys", "list"], stdin: Data((passphrase + "\n").utf8))
        #expect(list.status == 0, "\(list.summary)")
    }

    @Test("A failed passphrase prompt leaves no store behind")
    func passphrasePromptFails() async throws {
        let ws = try Workspace()
        let r = try await ws.esctl(["--store", ws.storeURL, "--passphrase", "init"])  // stdin is /dev/null
        FailureTests.expectOneLine(r, CLI.Code.usage)
        #expect(!FileManager.default.fileExists(atPath: ws.storePath), "an empty store was left behind")
        for suffix in ["-wal", "-shm", "-journal"] {
            #expect(!FileManager.default.fileExists(atPath: ws.storePath + suffix))
        }
    }
}

/// Every file of a SQLite store (database, -wal, -shm) byte for byte, and the names in its directory.
struct StoreSnapshot: Equatable {
    var files: [String: Data]
    var names: [String]

    init(_ path: String) {
        var files: [String: Data] = [:]
        for suffix in ["", "-wal", "-shm", "-journal"] {
            if let d = FileManager.default.contents(atPath: path + suffix) { files[suffix] = d }
        }
        self.files = files
        let dir = (path as NSString).deletingLastPathComponent
        names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix(".out-") && !$0.hasPrefix(".err-") && !$0.hasPrefix(".in-") }.sorted()
    }

    /// What differs, for a failure message (sizes, never contents).
    func difference(from other: StoreSnapshot) -> String {
        var out: [String] = []
        for suffix in Set(files.keys).union(other.files.keys).sorted() where files[suffix] != other.files[suffix] {
            out.append("store\(suffix): \(other.files[suffix]?.count.description ?? "absent") -> \(files[suffix]?.count.description ?? "absent") bytes")
        }
        if names != other.names { out.append("directory: \(other.names) -> \(names)") }
        return out.joined(separator: "; ")
    }
}

/// B: a refused command (wrong, retired, malformed or missing master key) changes no byte of
/// the database, its -wal or its -shm, also when a WAL holds commits no checkpoint has copied.
@Suite("esctl: a refused command changes no byte", .tags(.multiProcess))
struct RefusedUnchangedTests {
    enum Variant: String, CaseIterable, Sendable {
        /// The three files copied while the store was open (a backup taken from a live store).
        case copiedWithShm
        /// The database and its -wal copied, no -shm (a backup of the two files).
        case copiedWithoutShm
        /// The original files while another process keeps its connection open.
        case writerOpen
    }

    /// The store of `ws` with a WAL that holds a commit (and `sql`, if given) no checkpoint has
    /// copied into the database: a copy of its files, or the store itself while a holder
    /// process keeps its connection open (returned, to be ended by the caller).
    static func liveWAL(_ ws: Workspace, _ variant: Variant, sql: String? = nil,
                        sourceLocation: SourceLocation = #_sourceLocation) async throws -> (target: String, holder: CLI.Running?) {
        var holder: CLI.Running?
        let target: String
        let extra = sql.map { [$0] } ?? []
        switch variant {
        case .copiedWithShm, .copiedWithoutShm:
            try FileManager.default.createDirectory(atPath: ws.path("copy"), withIntermediateDirectories: true)
            target = ws.path("copy/store.sqlite")
            let out = try await Py.run(Py.liveWAL, [ws.storePath, variant == .copiedWithShm ? "copy" : "copy-wal", target] + extra, in: ws)
            try #require(out == "copied", sourceLocation: sourceLocation)
        case .writerOpen:
            target = ws.storePath
            let h = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-u", "-c", Py.liveWAL, ws.storePath, "hold", "300"] + extra,
                                  env: CLI.cleanEnvironment(home: ws.dir.path), cwd: ws.dir, scratch: ws.dir)
            holder = h
            // A deadline only for a holder that never gets ready (it fails the test below).
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline, (try? String(contentsOf: h.outURL, encoding: .utf8))?.contains("ready") != true, h.process.isRunning {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        try #require((ws.bytes(target + "-wal")?.count ?? 0) > 0, "the WAL holds no commit", sourceLocation: sourceLocation)
        #expect(FileManager.default.fileExists(atPath: target + "-shm") == (variant != .copiedWithoutShm), sourceLocation: sourceLocation)
        return (target, holder)
    }

    @Test("Wrong, retired, malformed and missing master keys: every refused command leaves the database, -wal and -shm byte-identical",
          .timeLimit(.minutes(5)), arguments: Variant.allCases)
    func refusedCommandsChangeNothing(_ variant: Variant) async throws {
        let (ws, _, _) = try await CommandTests.seeded("refused" + variant.rawValue)
        // The store moves to a new master key: master.key is then retired.
        try MasterKey.generate().writeKeyFile(to: ws.path("current.key"))
        ws.learnKeyFiles()
        let rotated = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-file", ws.path("current.key")])
        try #require(rotated.status == 0, "\(rotated.summary)")
        let wrong = try MasterKey.generate()
        try wrong.writeKeyFile(to: ws.path("wrong.key"))
        try MasterKey.generate().writeKeyFile(to: ws.path("other-new.key"))
        _ = FileManager.default.createFile(atPath: ws.path("malformed.key"), contents: Data("this is not a master key\n".utf8),
                                           attributes: [.posixPermissions: 0o600])
        ws.learnKeyFiles()

        let (target, holder) = try await Self.liveWAL(ws, variant)
        defer { if let h = holder, h.process.isRunning { h.kill9() } }

        let before = StoreSnapshot(target)
        let keys: [(String, String, Int32)] = [
            ("wrong", ws.path("wrong.key"), CLI.Code.wrongMasterKey),
            ("retired", ws.keyPath, CLI.Code.wrongMasterKey),
            ("malformed", ws.path("malformed.key"), CLI.Code.usage),
            ("missing", ws.path("absent.key"), CLI.Code.usage),
        ]
        let commands: [[String]] = [
            ["keys", "list"], ["verify"], ["export", "subject-alice"], ["keys", "rotate", "subject-alice"],
            ["keys", "shred", "subject-alice", "--yes"], ["keys", "rotate-master", "--new-master-key-file", ws.path("other-new.key")],
        ]
        for (name, keyPath, code) in keys {
            for command in commands {
                let r = try await ws.esctl(["--store", "sqlite:" + target, "--master-key-file", keyPath] + command)
                FailureTests.expectOneLine(r, code)
                let after = StoreSnapshot(target)
                #expect(after == before, "\(name) key, \(command.prefix(2).joined(separator: " ")): \(after.difference(from: before))")
            }
        }
        // The same wrong key from standard input and from the environment.
        let stdin = try await ws.esctl(["--store", "sqlite:" + target, "--master-key-stdin", "verify"], stdin: Data(wrong.base64EncodedKey().utf8))
        FailureTests.expectOneLine(stdin, CLI.Code.wrongMasterKey)
        let env = try await ws.esctl(["--store", "sqlite:" + target, "keys", "list"], env: ["ESCTL_MASTER_KEY": wrong.base64EncodedKey()])
        FailureTests.expectOneLine(env, CLI.Code.wrongMasterKey)
        #expect(StoreSnapshot(target) == before, "stdin/env: \(StoreSnapshot(target).difference(from: before))")

        // The current key still opens it, and sees the commit that is only in the WAL.
        if let h = holder {
            h.kill9()
            _ = await h.wait()
        }
        let verify = try await ws.esctl(["--store", "sqlite:" + target, "--master-key-file", ws.path("current.key"), "verify", "--json"])
        #expect(verify.status == 0, "\(verify.summary)")
        let marker = try await Py.run(Py.query, [target, "SELECT count(*) FROM es_meta WHERE key = 'esctl_test_marker'"], in: ws)
        #expect(marker == "1", "the commit in the WAL was lost")
    }

    @Test("With the right key: read-only commands, and refusals made before writing (unknown or shredded scope, no --yes), leave the database, -wal and -shm byte-identical, and read the commits only in the WAL",
          .timeLimit(.minutes(5)), arguments: Variant.allCases)
    func readOnlyCommandsAndEarlyRefusalsChangeNothing(_ variant: Variant) async throws {
        let (ws, s, _) = try await CommandTests.seeded("readOnly" + variant.rawValue)
        let shredded = try await ws.esctl(ws.with() + ["keys", "shred", s.bobScope, "--yes"])
        try #require(shredded.status == 0, "\(shredded.summary)")
        // A tombstone that only the WAL holds: the reads below must see it.
        let (target, holder) = try await Self.liveWAL(ws, variant, sql: "INSERT INTO tombstones VALUES ('wal-only-scope', 1764000000, '1')")
        defer { if let h = holder, h.process.isRunning { h.kill9() } }

        let before = StoreSnapshot(target)
        let key = ["--store", "sqlite:" + target, "--master-key-file", ws.keyPath]
        let runs: [([String], Int32)] = [
            (["keys", "list"], CLI.Code.ok), (["keys", "list", "--json"], CLI.Code.ok),
            (["keys", "show", s.subject], CLI.Code.ok), (["keys", "show", s.subject, "--json"], CLI.Code.ok),
            (["verify"], CLI.Code.ok), (["verify", "--json"], CLI.Code.ok),
            (["export", s.subject], CLI.Code.ok), (["export", s.subject, "--json"], CLI.Code.ok),
            (["stats"], CLI.Code.ok), (["stats", "--json"], CLI.Code.ok),
            (["keys", "show", "no-such-scope"], CLI.Code.scopeNotFound), (["keys", "rotate", "no-such-scope"], CLI.Code.scopeNotFound),
            (["keys", "shred", "no-such-scope", "--yes"], CLI.Code.scopeNotFound), (["export", "no-such-scope"], CLI.Code.scopeNotFound),
            (["keys", "shred", s.subject], CLI.Code.usage),  // no --yes, and no terminal to ask on
            (["keys", "shred", s.bobScope, "--yes"], CLI.Code.scopeShredded), (["keys", "rotate", s.bobScope], CLI.Code.scopeShredded),
            (["export", s.bobScope], CLI.Code.scopeShredded),
            (["keys", "rotate-master", "--new-master-key-file", ws.keyPath], CLI.Code.usage),  // the current key
        ]
        var outputs: [String: CLI.Result] = [:]
        for (command, code) in runs {
            let r = try await ws.esctl((command.first == "stats" ? ["--store", "sqlite:" + target] : key) + command)
            #expect(r.status == code, "esctl \(command.joined(separator: " ")): \(r.summary)")
            let after = StoreSnapshot(target)
            #expect(after == before, "esctl \(command.joined(separator: " ")): \(after.difference(from: before))")
            outputs[command.joined(separator: " ")] = r
        }
        #expect(outputs["keys list"]?.stdout.contains("wal-only-scope  shredded") == true, "\(outputs["keys list"]?.stdout ?? "")")
        let stats = try parseJSONObject(try #require(outputs["stats --json"]))
        // The shred (not the tombstone written by hand) left its erasure record in the log.
        #expect(stats["shredded_scopes"] as? Int == 2 && stats["events"] as? Int == s.totalEvents + 1, "\(stats)")
        #expect(outputs["export \(s.subject)"]?.stdout.split(separator: "\n").count == s.subjectEvents)
        #expect(outputs["verify"]?.stdout.contains("events:    \(s.totalEvents - 2) ok, 2 shredded, 0 plaintext, 0 failing, 1 erasure record") == true,
                "\(outputs["verify"]?.stdout ?? "")")

        // A command that writes still works, and opening for writing is what checkpoints the WAL.
        if let h = holder {
            h.kill9()
            _ = await h.wait()
        }
        let rotate = try await ws.esctl(key + ["keys", "rotate", s.subject])
        #expect(rotate.status == 0, "\(rotate.summary)")
        let tombstone = try await Py.run(Py.query, [target, "SELECT count(*) FROM tombstones WHERE scope = 'wal-only-scope'"], in: ws)
        #expect(tombstone == "1", "the commit in the WAL was lost")
    }
}
