import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// Every command's happy path, run as the built binary.
@Suite("esctl commands", .tags(.multiProcess))
struct CommandTests {
    /// An initialised, seeded workspace.
    static func seeded(_ name: String = #function) async throws -> (Workspace, Seeded, MasterKey) {
        let ws = try Workspace(name)
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let s = try await Stores.seed(ws.storePath, key: key)
        return (ws, s, key)
    }

    @Test("init creates the store and a 0600 key file holding a 32-byte key; messages go to stderr")
    func initCreatesStoreAndKey() async throws {
        let ws = try Workspace()
        let r = try await ws.initStore()
        #expect(r.stdout.isEmpty, "init prints no data on stdout")
        #expect(FileManager.default.fileExists(atPath: ws.storePath))
        let attrs = try FileManager.default.attributesOfItem(atPath: ws.keyPath)
        let mode = (attrs[.posixPermissions] as? NSNumber)?.intValue ?? -1
        let octal = String(mode, radix: 8)
        #expect(mode & 0o777 == 0o600, "key file mode is \(octal)")
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        #expect(key.material.count == 32)
        #expect(r.stderr.contains(key.id), "init names the new master key's id")
        #expect(r.stderr.contains("master.key"))

        // The store opens with that key and has its check record.
        let (store, keyring, _) = try await Stores.open(ws.storePath, keys: [key])
        #expect(keyring.primaryMasterKeyID == key.id)
        #expect(try await store.masterKeyChecks().map(\.kekID) == [key.id])
        await store.close()

        // A second init refuses and leaves the key file alone.
        let before = ws.bytes(ws.keyPath)
        let again = try await ws.esctl(["--store", ws.storeURL, "init"])
        #expect(again.status != 0, "init of an initialised store: \(again.summary)")
        #expect(again.stderrLines.count == 1, "\(again.summary)")
        #expect(ws.bytes(ws.keyPath) == before)
    }

    @Test("keys list prints every scope in text and documented JSON")
    func keysList() async throws {
        let (ws, s, key) = try await Self.seeded()
        let text = try await ws.esctl(ws.with() + ["keys", "list"])
        #expect(text.status == 0, "\(text.summary)")
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2, "one line per scope: \(text.stdout)")
        #expect(lines.contains { $0.hasPrefix(s.subject + " ") && $0.contains("v1") && $0.contains(key.id) })
        #expect(lines.contains { $0.hasPrefix(s.bobScope + " ") })
        #expect(text.stderr.contains("2 scopes"), "summary goes to stderr: \(text.summary)")

        let r = try await ws.esctl(ws.with() + ["keys", "list", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let json = try parseJSONObject(r)
        #expect(json["master_key_id"] as? String == key.id)
        let scopes = try #require(json["scopes"] as? [[String: Any]])
        #expect(scopes.map { $0["scope"] as? String } == [s.bobScope, s.subject].sorted())
        for scope in scopes {
            #expect(scope["status"] as? String == "active")
            #expect(scope["current_version"] as? Int == 1)
            #expect(scope["kek_ids"] as? [String] == [key.id])
            #expect(isISODate(scope["created_at"]))
            #expect(scope["rotated_at"] is NSNull)
            #expect(scope["shredded_at"] is NSNull)
            let versions = try #require(scope["versions"] as? [[String: Any]])
            #expect(versions.count == 1)
            #expect(versions.first?["version"] as? Int == 1)
            #expect(versions.first?["kek_id"] as? String == key.id)
            #expect(isISODate(versions.first?["created_at"]))
        }
    }

    @Test("keys show prints one scope with its event count, in text and JSON")
    func keysShow() async throws {
        let (ws, s, key) = try await Self.seeded()
        let text = try await ws.esctl(ws.with() + ["keys", "show", s.subject])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.contains(s.subject))
        #expect(text.stdout.contains("events: \(s.subjectEvents)"))

        let r = try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["scope"] as? String == s.subject)
        #expect(j["status"] as? String == "active")
        #expect(j["events"] as? Int == s.subjectEvents)
        #expect(j["current_version"] as? Int == 1)
        #expect(j["kek_ids"] as? [String] == [key.id])
        #expect((j["versions"] as? [Any])?.count == 1)
        #expect(isISODate(j["created_at"]))
        #expect(j["shredded_at"] is NSNull)

        let bob = try await ws.esctl(ws.with() + ["keys", "show", s.bobScope, "--json"])
        #expect(try parseJSONObject(bob)["events"] as? Int == 2)
    }

    @Test("keys rotate adds a version; old records still read and new ones use it")
    func keysRotate() async throws {
        let (ws, s, key) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["keys", "rotate", s.subject])
        #expect(r.status == 0, "\(r.summary)")
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(s.subject) v2")

        let show = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"]))
        #expect(show["current_version"] as? Int == 2)
        #expect((show["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [1, 2])
        #expect(isISODate(show["rotated_at"]))

        // A new event goes under v2; everything still verifies and exports.
        let (store, _, app) = try await Stores.open(ws.storePath, keys: [key])
        var a = try await app.repository.get(Account.self, id: s.aliceAccounts[0])
        try a.record(.renamed(name: "Augusta Ada"))
        try await app.save(&a)
        let latest = try await store.selectEvents(originatorID: a.id, order: .descending, limit: 1)
        if case .success(let (header, _)) = StateHeader.parse(try #require(latest.first).state) {
            #expect(header.keyVersion == 2)
        } else {
            Issue.record("unparseable header")
        }
        await store.close()

        let verify = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(verify.status == 0, "\(verify.summary)")
        let export = try await ws.esctl(ws.with() + ["export", s.subject])
        #expect(export.status == 0, "\(export.summary)")
        #expect(export.stdout.split(separator: "\n").count == s.subjectEvents + 1)
        #expect(export.stdout.contains("Augusta Ada"))
    }

    @Test("keys shred --yes prints the receipt; the scope then reads as shredded everywhere")
    func keysShred() async throws {
        let (ws, s, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"])
        #expect(r.status == 0, "\(r.summary)")
        #expect(r.stdout.contains("erasure receipt"))
        #expect(r.stdout.contains("scope:                  \(s.subject)"))
        #expect(r.stdout.contains("events affected:        \(s.subjectEvents)"))
        #expect(r.stdout.contains("key versions destroyed: 1"))

        let show = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"]))
        #expect(show["status"] as? String == "shredded")
        #expect(isISODate(show["shredded_at"]))
        #expect(show["destroyed_versions"] as? [Int] == [1])
        #expect(show["events"] as? Int == s.subjectEvents)

        let list = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "list", "--json"]))
        let scopes = try #require(list["scopes"] as? [[String: Any]])
        #expect(scopes.first { $0["scope"] as? String == s.subject }?["status"] as? String == "shredded")
        #expect(scopes.first { $0["scope"] as? String == s.bobScope }?["status"] as? String == "active")

        // The key rows are gone from the database.
        let left = try await Py.run(Py.query, [ws.storePath, "SELECT count(*) FROM data_keys WHERE scope = '\(s.subject)'"], in: ws)
        #expect(left == "0")

        // Verify counts the scope's events as shredded, not failing, and the shred's erasure
        // record as an erasure (not plaintext, which would fail the run).
        let verify = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(verify.status == 0, "\(verify.summary)")
        let v = try parseJSONObject(verify)
        let events = try #require(v["events"] as? [String: Any])
        #expect(events["shredded"] as? Int == s.subjectEvents)
        #expect(events["ok"] as? Int == s.totalEvents - s.subjectEvents)
        #expect(events["failing"] as? Int == 0)
        #expect(events["plaintext"] as? Int == 0)
        #expect(events["erased"] as? Int == 1)
        let text = try await ws.esctl(ws.with() + ["verify"])
        #expect(text.stdout.contains("\(s.subjectEvents) shredded, 0 plaintext, 0 failing, 1 erasure record"), "\(text.stdout)")
    }

    @Test("keys shred --json gives the documented receipt and deletes the scope's snapshots")
    func keysShredJSON() async throws {
        let (ws, s, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["keys", "shred", s.bobScope, "--yes", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["scope"] as? String == s.bobScope)
        #expect(isISODate(j["shredded_at"]))
        #expect(j["destroyed_key_versions"] as? [Int] == [1])
        #expect(j["events_affected"] as? Int == 2)
        #expect(j["snapshots_deleted"] as? Int == 1)
        #expect(j["residue_pending"] as? Bool == false, "no reader held the checkpoint")
        let stats = try parseJSONObject(try await ws.esctl(["--store", ws.storeURL, "stats", "--json"]))
        #expect(stats["snapshots"] as? Int == 0)
        #expect(stats["shredded_scopes"] as? Int == 1)
    }

    @Test("Shredding a shredded scope exits 69, and so does exporting it")
    func shreddedScopeExit69() async throws {
        let (ws, s, _) = try await Self.seeded()
        #expect(try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"]).status == 0)
        let before = ws.bytes(ws.storePath)

        let export = try await ws.esctl(ws.with() + ["export", s.subject])
        #expect(export.status == CLI.Code.scopeShredded, "\(export.summary)")
        #expect(export.stdout.isEmpty)
        #expect(export.stderrLines.count == 1, "\(export.summary)")
        #expect(export.stderr.contains("shredded"))

        let exportJSON = try await ws.esctl(ws.with() + ["export", s.subject, "--format", "json"])
        #expect(exportJSON.status == CLI.Code.scopeShredded, "\(exportJSON.summary)")

        let again = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes"])
        #expect(again.status == CLI.Code.scopeShredded, "\(again.summary)")
        #expect(again.stderrLines.count == 1, "\(again.summary)")
        #expect(again.stderr.contains("shredded"))
        #expect(again.stdout.isEmpty)

        let rotate = try await ws.esctl(ws.with() + ["keys", "rotate", s.subject])
        #expect(rotate.status == CLI.Code.scopeShredded, "\(rotate.summary)")
        #expect(ws.bytes(ws.storePath) == before, "failed commands leave the store unchanged")
    }

    @Test("verify decrypts every event and snapshot and reports counts in text and JSON")
    func verifyClean() async throws {
        let (ws, s, _) = try await Self.seeded()
        let text = try await ws.esctl(ws.with() + ["verify"])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.contains("events:    \(s.totalEvents) ok, 0 shredded, 0 plaintext, 0 failing"), "\(text.stdout)")
        #expect(text.stdout.contains("snapshots: \(s.snapshots) ok, 0 shredded, 0 plaintext, 0 failing"), "\(text.stdout)")
        #expect(!text.stdout.contains("FAIL"))

        let r = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        let events = try #require(j["events"] as? [String: Any])
        let snaps = try #require(j["snapshots"] as? [String: Any])
        #expect(events["ok"] as? Int == s.totalEvents)
        #expect(events["shredded"] as? Int == 0)
        #expect(events["failing"] as? Int == 0)
        #expect(snaps["ok"] as? Int == s.snapshots)
        #expect(snaps["failing"] as? Int == 0)
        #expect((j["failures"] as? [Any])?.isEmpty == true)
    }

    @Test("export writes one JSON line per event of the scope, decrypted, with the documented fields")
    func exportJSONL() async throws {
        let (ws, s, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["export", s.subject])
        #expect(r.status == 0, "\(r.summary)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == s.subjectEvents)
        var ids: [Int] = []
        var names: [String] = []
        for line in lines {
            let rec = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let nid = try #require(rec["notification_id"] as? Int)
            ids.append(nid)
            let (agg, version) = try #require(s.notifications[Int64(nid)])
            #expect(rec["originator_id"] as? String == agg.uuidString.lowercased())
            #expect(rec["originator_version"] as? Int == version)
            #expect(s.aliceAccounts.contains(agg), "only the subject's aggregates are exported")
            #expect((rec["topic"] as? String).map { ["Account.opened", "Account.renamed"].contains($0) } == true)
            #expect(rec["schema_version"] as? Int == 1)
            #expect(isISODate(rec["recorded_at"]))
            let event = try #require(rec["event"] as? [String: Any])
            if let opened = event["opened"] as? [String: Any] { names.append(opened["name"] as? String ?? "") }
            if let renamed = event["renamed"] as? [String: Any] { names.append(renamed["name"] as? String ?? "") }
        }
        #expect(ids == ids.sorted())
        #expect(Set(names) == ["Ada Lovelace", "Ada King", "Ada, Countess of Lovelace", "Ada's savings", "Ada's pension"])
        #expect(!r.stdout.contains("Bob"), "another subject's data is not exported")
    }

    @Test("export --format json writes one document with scope, time and every event")
    func exportJSON() async throws {
        let (ws, s, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["export", s.subject, "--format", "json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["scope"] as? String == s.subject)
        #expect(isISODate(j["exported_at"]))
        let events = try #require(j["events"] as? [[String: Any]])
        #expect(events.count == s.subjectEvents)
        for e in events {
            for field in ["notification_id", "originator_id", "originator_version", "topic", "schema_version", "event", "recorded_at"] {
                #expect(e[field] != nil, "field \(field)")
            }
        }
        let bob = try parseJSONObject(try await ws.esctl(ws.with() + ["export", s.bobScope, "--format", "json"]))
        #expect((bob["events"] as? [Any])?.count == 2)
    }

    @Test("stats needs no master key and prints the documented counts in text and JSON")
    func stats() async throws {
        let (ws, s, _) = try await Self.seeded()
        let r = try await ws.esctl(["--store", ws.storeURL, "stats", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["store"] as? String == ws.storeURL)
        #expect(j["events"] as? Int == s.totalEvents)
        #expect(j["aggregates"] as? Int == 3)
        #expect(j["snapshots"] as? Int == s.snapshots)
        #expect(j["key_scopes"] as? Int == 2)
        #expect(j["data_keys"] as? Int == 2)
        #expect(j["shredded_scopes"] as? Int == 0)
        #expect((j["bytes_on_disk"] as? Int ?? 0) > 0)

        let text = try await ws.esctl(["--store", ws.storeURL, "stats"])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.contains("events:"))
        #expect(text.stdout.contains("\(s.totalEvents)"))
        #expect(text.stdout.contains("shredded scopes:"))

        // ESCTL_STORE names the store too.
        let env = try await ws.esctl(["stats", "--json"], env: ["ESCTL_STORE": ws.storeURL])
        #expect(env.status == 0, "\(env.summary)")
        #expect(try parseJSONObject(env)["events"] as? Int == s.totalEvents)
    }

    @Test("demo --dir runs the tour, exits 0 and shows the shredded person")
    func demo() async throws {
        let ws = try Workspace()
        let dir = ws.path("demo")
        let r = try await ws.esctl(["demo", "--dir", dir])
        #expect(r.status == 0, "\(r.summary)")
        #expect(r.stdout.contains("shredded"))
        #expect(!r.stdout.contains("unexpected"), "the tour hit an unexpected outcome")
        #expect(!r.stdout.contains("FOUND"), "plaintext found in the database file")
        #expect(r.stdout.contains("0 failing"))
        #expect(FileManager.default.fileExists(atPath: dir + "/demo.sqlite"))
        ws.learnKey(base64: String(decoding: ws.bytes(dir + "/master.key") ?? Data(), as: UTF8.self))
        ws.learnKey(base64: String(decoding: ws.bytes(dir + "/master-2.key") ?? Data(), as: UTF8.self))

        // The demo store opens with the rotated key and verifies.
        let verify = try await ws.esctl(["--store", "sqlite:" + dir + "/demo.sqlite", "--master-key-file", dir + "/master-2.key", "verify"])
        #expect(verify.status == 0, "\(verify.summary)")

        // It refuses a directory that already holds a demo.
        let again = try await ws.esctl(["demo", "--dir", dir])
        #expect(again.status == CLI.Code.usage, "\(again.summary)")
    }
}
