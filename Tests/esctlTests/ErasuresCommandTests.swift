import ESTestTags
import EventSourcing
import EventSourcingSQLite
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

/// The bytes of the store's database, -wal and -shm files (nil for a file that does not exist).
private func storeFiles(_ ws: Workspace) -> [Data?] {
    ["", "-wal", "-shm"].map { ws.bytes(ws.storePath + $0) }
}

/// Copies the store's files (those that exist) to `prefix` + suffix, or back, replacing.
private func copyStore(from source: String, to target: String) throws {
    for suffix in ["", "-wal", "-shm"] {
        try? FileManager.default.removeItem(atPath: target + suffix)
        if FileManager.default.fileExists(atPath: source + suffix) {
            try FileManager.default.copyItem(atPath: source + suffix, toPath: target + suffix)
        }
    }
}

@Suite("esctl erasures export / apply: re-apply erasures to a restored backup", .tags(.multiProcess))
struct ErasuresCommandTests {
    @Test("Back up, shred, restore, apply: the subject's records read as shredded, the others intact, verify passes; a second apply changes no byte",
          .timeLimit(.minutes(5)))
    func backupShredRestoreApply() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        let backup = ws.path("backup.sqlite")
        try copyStore(from: ws.storePath, to: backup)  // the store is closed

        let shred = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"])
        try #require(shred.status == 0, "\(shred.summary)")
        let listPath = ws.path("erasures.json")
        let export = try await ws.esctl(ws.with() + ["erasures", "export", "--output", listPath])
        try #require(export.status == 0, "\(export.summary)")
        #expect(export.stdout.isEmpty, "with --output nothing goes to stdout")
        #expect(export.stderr.contains("exported 1 erasures"), "\(export.summary)")
        let listData = try #require(ws.bytes(listPath))
        let list = try #require(try JSONSerialization.jsonObject(with: listData) as? [String: Any])
        #expect(list["format"] as? String == "eventsourcing-erasures")
        #expect(list["version"] as? Int == 1)
        #expect(isISODate(list["exported_at"]))
        let entries = try #require(list["erasures"] as? [[String: Any]])
        #expect(entries.map { $0["scope"] as? String } == [s.subject])
        #expect(isISODate(entries.first?["shredded_at"]))
        #expect(Set(entries.first?.keys.map { $0 } ?? []) == ["scope", "shredded_at"], "scope and time only")
        #expect(listData.range(of: Data(s.subjectName.utf8)) == nil, "no personal data in the list")
        #expect(!ws.leaks(in: listData), "no key in the list")
        let mode = (try FileManager.default.attributesOfItem(atPath: listPath)[.posixPermissions] as? NSNumber)?.intValue ?? -1
        #expect(mode & 0o777 == 0o600)
        // To standard output: the same list.
        let toStdout = try await ws.esctl(ws.with() + ["erasures", "export"])
        #expect(toStdout.status == 0)
        let again = try #require(try parseJSON(toStdout) as? [String: Any])
        #expect((again["erasures"] as? [[String: Any]])?.map { $0["scope"] as? String } == [s.subject])

        // Restore the backup: the subject is back.
        try copyStore(from: backup, to: ws.storePath)
        let show = try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"])
        #expect(try parseJSONObject(show)["status"] as? String == "active", "the restored backup has the subject's key")

        // A dry run says what it would do and changes no byte.
        let restored = storeFiles(ws)
        let dry = try await ws.esctl(ws.with() + ["erasures", "apply", listPath, "--dry-run"])
        #expect(dry.status == 0, "\(dry.summary)")
        #expect(dry.stdout.contains("would shred") && dry.stdout.contains(s.subject), "\(dry.stdout)")
        #expect(dry.stderr.contains("nothing changed"))
        #expect(storeFiles(ws) == restored, "a dry run changed the store")

        let apply = try await ws.esctl(ws.with() + ["erasures", "apply", listPath, "--json"])
        try #require(apply.status == 0, "\(apply.summary)")
        let report = try parseJSONObject(apply)
        #expect(report["dry_run"] as? Bool == false)
        #expect(report["shredded"] as? Int == 1 && report["already_shredded"] as? Int == 0 && report["tombstoned_ahead"] as? Int == 0)
        let item = try #require((report["erasures"] as? [[String: Any]])?.first)
        #expect(item["scope"] as? String == s.subject)
        #expect(item["action"] as? String == "shredded")
        #expect(item["events_affected"] as? Int == s.subjectEvents)
        #expect(item["listed_shredded_at"] as? String == entries.first?["shredded_at"] as? String)
        #expect(isISODate(item["shredded_at"]))

        // verify: the subject's events read as shredded, every other record opens.
        let verify = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(verify.status == 0, "\(verify.summary)")
        let v = try parseJSONObject(verify)
        let events = try #require(v["events"] as? [String: Any])
        #expect(events["shredded"] as? Int == s.subjectEvents)
        #expect(events["ok"] as? Int == s.totalEvents - s.subjectEvents)
        #expect(events["erased"] as? Int == 1, "the apply wrote the erasure record")
        #expect((v["failures"] as? [Any])?.isEmpty == true)

        // Through the library: the subject's accounts are shredded, bob's intact.
        let (store, _, app) = try await Stores.open(ws.storePath, keys: [key])
        do {
            for id in s.aliceAccounts {
                let e = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Account.self, id: id) }
                #expect(e?.code == .shredded)
            }
            #expect(try await app.repository.get(Account.self, id: s.bob).state.name == "Robert Builder")
        } catch {
            await store.close()
            throw error
        }
        await store.close()

        // A second apply: everything already shredded, and no byte of the store changes.
        let applied = storeFiles(ws)
        let second = try await ws.esctl(ws.with() + ["erasures", "apply", listPath])
        #expect(second.status == 0, "\(second.summary)")
        #expect(second.stdout.hasPrefix("already shredded") && second.stdout.contains(s.subject), "\(second.stdout)")
        #expect(second.stderr.contains("shredded 0, tombstoned 0 ahead, 1 already shredded"), "\(second.summary)")
        #expect(storeFiles(ws) == applied, "a second apply changed the store")
    }

    @Test("A scope the backup never had is tombstoned ahead: no record can be written under it")
    func tombstonedAhead() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        let listPath = ws.path("list.json")
        try Data("""
            {"format": "eventsourcing-erasures", "version": 1, "exported_at": "2026-11-30T06:40:00.000Z",
             "erasures": [{"scope": "subject-later", "shredded_at": "2026-11-30T06:39:00Z"},
                          {"scope": "\(s.bobScope)", "shredded_at": "2026-11-30T06:39:30Z"}]}
            """.utf8).write(to: URL(fileURLWithPath: listPath))
        let r = try await ws.esctl(ws.with() + ["erasures", "apply", listPath])
        try #require(r.status == 0, "\(r.summary)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("tombstoned ahead") == true && lines.first?.contains("subject-later") == true, "\(r.stdout)")
        #expect(lines.last?.hasPrefix("shredded") == true && lines.last?.contains(s.bobScope) == true, "\(r.stdout)")
        let (store, _, app) = try await Stores.open(ws.storePath, keys: [key])
        do {
            var later = try AggregateRoot<Account>(.opened(owner: "subject-later", name: "Late Comer"))
            let e = await #expect(throws: EventSourcingError.self) { try await app.save(&later) }
            #expect(e?.code == .shredded)
            #expect(try await store.statistics().snapshots == 0, "bob's snapshot went with his key")
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    @Test("A bad list or a wrong master key is refused with its exit code, and no byte of the store changes",
          .timeLimit(.minutes(5)))
    func badInputChangesNothing() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let header = #""format": "eventsourcing-erasures", "exported_at": "2026-11-30T06:40:00.000Z""#
        func entry(_ scope: String) -> String { #"{"scope": "\#(scope)", "shredded_at": "2026-11-30T06:39:00Z"}"# }
        let valid = "{\(header), \"version\": 1, \"erasures\": [\(entry(s.subject))]}"
        let cases: [(String, String?, Int32, String)] = [
            ("not JSON", "this is not json", CLI.Code.usage, "not an erasure list"),
            ("another JSON document", #"{"events": [1, 2, 3]}"#, CLI.Code.usage, "not an erasure list"),
            ("a newer format version", "{\(header), \"version\": 2, \"erasures\": []}", CLI.Code.usage, "newer version"),
            ("an invalid scope", "{\(header), \"version\": 1, \"erasures\": [\(entry(s.subject)), \(entry("bad\\u0007scope"))]}",
             CLI.Code.usage, "erasure 2 of the list does not name a valid key scope"),
            ("a scope of 256 bytes", "{\(header), \"version\": 1, \"erasures\": [\(entry(s.subject)), \(entry(String(repeating: "x", count: 256)))]}",
             CLI.Code.usage, "erasure 2 of the list does not name a valid key scope"),
            ("a repeated scope", "{\(header), \"version\": 1, \"erasures\": [\(entry(s.subject)), \(entry(s.bobScope)), \(entry(s.subject))]}",
             CLI.Code.usage, "erasures 1 and 3 of the list name the same key scope, \(s.subject)"),
            ("a missing file", nil, CLI.Code.usage, "cannot read the erasure list"),
        ]
        let before = storeFiles(ws)
        for (name, content, code, message) in cases {
            let path = ws.path("list-\(name.filter { $0.isLetter }).json")
            if let content { try Data(content.utf8).write(to: URL(fileURLWithPath: path)) }
            let r = try await ws.esctl(ws.with() + ["erasures", "apply", path])
            #expect(r.status == code, "\(name): \(r.summary)")
            #expect(r.stderr.contains(message), "\(name): \(r.summary)")
            #expect(r.stdout.isEmpty, "\(name)")
            #expect(storeFiles(ws) == before, "\(name): the store changed")
        }

        // A huge file (sparse): refused by its size, without reading it all.
        let huge = ws.path("huge.json")
        #expect(FileManager.default.createFile(atPath: huge, contents: Data(valid.utf8)))
        let handle = try #require(FileHandle(forWritingAtPath: huge))
        try handle.truncate(atOffset: 1 << 30)
        try handle.close()
        let big = try await ws.esctl(ws.with() + ["erasures", "apply", huge])
        #expect(big.status == CLI.Code.usage, "\(big.summary)")
        #expect(big.stderr.contains("larger than the 67108864 bytes"), "\(big.summary)")
        #expect(storeFiles(ws) == before, "huge file: the store changed")

        // A valid list with a wrong master key: 65, nothing changed.
        let listPath = ws.path("valid.json")
        try Data(valid.utf8).write(to: URL(fileURLWithPath: listPath))
        let other = ws.path("other.key")
        try MasterKey.generate().writeKeyFile(to: other)
        ws.learnKeyFiles()
        let wrong = try await ws.esctl(ws.with(key: other) + ["erasures", "apply", listPath])
        #expect(wrong.status == CLI.Code.wrongMasterKey, "\(wrong.summary)")
        #expect(storeFiles(ws) == before, "wrong master key: the store changed")
        let wrongExport = try await ws.esctl(ws.with(key: other) + ["erasures", "export"])
        #expect(wrongExport.status == CLI.Code.wrongMasterKey, "\(wrongExport.summary)")
        #expect(wrongExport.stdout.isEmpty)

        // The valid list with the right key does apply (the refusals above were about the input).
        let ok = try await ws.esctl(ws.with() + ["erasures", "apply", listPath])
        #expect(ok.status == 0, "\(ok.summary)")
        #expect(storeFiles(ws) != before)
    }

    @Test("export --output refuses an existing file without --overwrite; --overwrite without --output is a usage error")
    func exportOutputRules() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let path = ws.path("exists.json")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: path))
        let r = try await ws.esctl(ws.with() + ["erasures", "export", "--output", path])
        #expect(r.status == CLI.Code.usage, "\(r.summary)")
        #expect(ws.bytes(path) == Data("keep".utf8))
        let o = try await ws.esctl(ws.with() + ["erasures", "export", "--output", path, "--overwrite"])
        #expect(o.status == 0, "\(o.summary)")
        #expect(try ErasureList(contentsOfFile: path).erasures.isEmpty)
        let u = try await ws.esctl(ws.with() + ["erasures", "export", "--overwrite"])
        #expect(u.status == CLI.Code.usage, "\(u.summary)")
    }
}

@Suite("esctl erasures on PostgreSQL: pg_dump, shred, pg_restore, apply", .enabled(if: PostgresServer.enabled),
       .tags(.postgres, .multiProcess))
struct ErasuresPostgresCommandTests {
    /// The directory of the server's client programs (pg_dump, pg_restore): beside the pg_ctl
    /// scripts/test.sh names, else the newest installed PostgreSQL.
    static func clientBin() throws -> URL {
        if let ctl = ProcessInfo.processInfo.environment["ES_POSTGRES_CTL"], !ctl.isEmpty {
            return URL(fileURLWithPath: ctl).deletingLastPathComponent()
        }
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        let newest = try #require(versions.compactMap(Int.init).max(), "no PostgreSQL client programs in /usr/lib/postgresql")
        return URL(fileURLWithPath: "/usr/lib/postgresql/\(newest)/bin")
    }

    @Test("Back up the schema, shred, restore it, apply the exported list: the subject reads as shredded, verify passes; a second apply changes nothing",
          .timeLimit(.minutes(5)))
    func dumpShredRestoreApply() async throws {
        let base = try #require(PostgresServer.url, "CI=true but ES_POSTGRES_URL is not set")
        let schema = "erasures_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        var config = try PostgresStore.Configuration(url: base)
        config.tls = .disable
        config.schema = schema
        let password = try #require(config.password)
        let storeURL = "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)?sslmode=disable&schema=\(schema)"
        let database = "postgresql://\(config.username)@\(config.host):\(config.port)/\(config.database)"
        let ws = try Workspace()
        let env = ["PGPASSWORD": password]
        let opts = ["--store", storeURL, "--master-key-file", ws.keyPath]
        let bin = try Self.clientBin()
        func tool(_ name: String, _ args: [String]) async throws -> CLI.Result {
            let r = try CLI.start(bin.appendingPathComponent(name), args, env: CLI.cleanEnvironment(home: ws.dir.path, extra: env),
                                  cwd: ws.dir, scratch: ws.dir)
            return await r.wait()
        }

        let initResult = try await ws.esctl(["--store", storeURL, "init", "--new-master-key-file", ws.keyPath], env: env)
        try #require(initResult.status == 0, "\(initResult.summary)")
        ws.learnKeyFiles()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let store = try await PostgresStore(configuration: config)
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        var a1 = try AggregateRoot<Account>(.opened(owner: "subject-pg", name: "Ada Lovelace"))
        try a1.record(.renamed(name: "Ada King"))
        var bob = try AggregateRoot<Account>(.opened(owner: "", name: "Bob Builder"))
        try await app.save(&a1, &bob)
        await store.close()

        let dump = ws.path("backup.dump")
        let backup = try await tool("pg_dump", ["--dbname=\(database)", "--schema=\(schema)", "--format=custom", "--file=\(dump)"])
        try #require(backup.status == 0, "pg_dump: \(backup.summary)")
        let shred = try await ws.esctl(opts + ["keys", "shred", "subject-pg", "--yes"], env: env)
        try #require(shred.status == 0, "\(shred.summary)")
        let listPath = ws.path("erasures.json")
        let export = try await ws.esctl(opts + ["erasures", "export", "--output", listPath], env: env)
        try #require(export.status == 0, "\(export.summary)")
        let restore = try await tool("pg_restore", ["--dbname=\(database)", "--clean", "--if-exists", dump])
        try #require(restore.status == 0, "pg_restore: \(restore.summary)")
        let show = try await ws.esctl(opts + ["keys", "show", "subject-pg", "--json"], env: env)
        #expect(try parseJSONObject(show)["status"] as? String == "active", "the restored schema has the subject's key")

        let apply = try await ws.esctl(opts + ["erasures", "apply", listPath, "--json"], env: env)
        try #require(apply.status == 0, "\(apply.summary)")
        let report = try parseJSONObject(apply)
        #expect(report["shredded"] as? Int == 1)
        #expect((report["erasures"] as? [[String: Any]])?.first?["events_affected"] as? Int == 2)
        let verify = try await ws.esctl(opts + ["verify", "--json"], env: env)
        #expect(verify.status == 0, "\(verify.summary)")
        let events = try #require(try parseJSONObject(verify)["events"] as? [String: Any])
        #expect(events["shredded"] as? Int == 2 && events["ok"] as? Int == 1 && events["erased"] as? Int == 1, "\(events)")

        let before = try await ws.esctl(opts + ["keys", "list", "--json"], env: env)
        let statsBefore = try await ws.esctl(opts + ["stats", "--json"], env: env)
        let second = try await ws.esctl(opts + ["erasures", "apply", listPath], env: env)
        #expect(second.status == 0, "\(second.summary)")
        #expect(second.stdout.hasPrefix("already shredded"), "\(second.stdout)")
        #expect(try await ws.esctl(opts + ["keys", "list", "--json"], env: env).stdout == before.stdout)
        #expect(try await ws.esctl(opts + ["stats", "--json"], env: env).stdout == statsBefore.stdout)

        let cleanup = try await PostgresStore(configuration: config)
        try await cleanup.destroy()
    }
}
