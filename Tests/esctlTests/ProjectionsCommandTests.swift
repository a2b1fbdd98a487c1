import ESTestTags
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// `esctl projections`: tracking positions and their lag behind the log.
@Suite("esctl projections")
struct ProjectionsCommandTests {
    /// Records `positions` in the SQLite store at `path` (as runners would).
    static func record(_ positions: [Tracking], at path: String) async throws {
        let store = try SQLiteStore(path: path, logger: Stores.quiet)
        do {
            for t in positions { try await store.insertTracking(t) }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    static func rows(_ j: [String: Any]) -> [[String: Any]] { j["projections"] as? [[String: Any]] ?? [] }

    @Test("Lists each tracking name with its position and lag, in name order; --json the same; no master key needed; no byte changes")
    func listsPositionsAndLag() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let last = Int64(s.totalEvents)
        try await Self.record([Tracking(name: "search-index", notificationID: last),
                               Tracking(name: "customer-directory", notificationID: 2),
                               Tracking(name: "other-log-follower", notificationID: last + 100)], at: ws.storePath)
        let before = ws.bytes(ws.storePath)

        let text = try await ws.esctl(["--store", ws.storeURL, "projections"])
        #expect(text.status == 0, "\(text.summary)")
        let lines = text.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines == [["projection", "position", "lag"],
                          ["customer-directory", "2", "\(last - 2)"],
                          ["other-log-follower", "\(last + 100)", "-"],
                          ["search-index", "\(last)", "0"]], "\(text.stdout)")
        #expect(text.stderr.contains("3 tracking positions") && text.stderr.contains("last notification id is \(last)"), "\(text.summary)")

        let json = try await ws.esctl(["--store", ws.storeURL, "projections", "--json"])
        #expect(json.status == 0, "\(json.summary)")
        let j = try parseJSONObject(json)
        #expect(j["max_notification_id"] as? Int == Int(last))
        #expect(j["store"] as? String == ws.storeURL)
        let rows = Self.rows(j)
        #expect(rows.map { $0["name"] as? String } == ["customer-directory", "other-log-follower", "search-index"])
        #expect(rows.map { $0["position"] as? Int } == [2, Int(last) + 100, Int(last)])
        #expect(rows[0]["lag"] as? Int == Int(last) - 2)
        #expect(rows[1].keys.contains("lag") && rows[1]["lag"] is NSNull, "a position past the log's end has lag null: \(rows[1])")
        #expect(rows[2]["lag"] as? Int == 0)
        #expect(ws.bytes(ws.storePath) == before, "projections changed the store file")
    }

    @Test("An empty store: no rows, exit 0, a note on stderr; --json has an empty list and max_notification_id 0")
    func emptyStore() async throws {
        let ws = try Workspace()
        try await ws.initStore()
        let text = try await ws.esctl(["--store", ws.storeURL, "projections"])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.isEmpty, "\(text.stdout)")
        #expect(text.stderr.contains("no tracking positions"), "\(text.summary)")
        let j = try parseJSONObject(try await ws.esctl(["--store", ws.storeURL, "projections", "--json"]))
        #expect(j["max_notification_id"] as? Int == 0)
        #expect((j["projections"] as? [Any])?.isEmpty == true, "\(j)")
    }

    @Test("A bad store URL is a usage error (64); a missing SQLite store is 66 and is not created")
    func badStore() async throws {
        let ws = try Workspace()
        let bad = try await ws.esctl(["--store", "nope.sqlite", "projections"])
        FailureTests.expectOneLine(bad, CLI.Code.usage)
        #expect(bad.stderr.contains("sqlite:nope.sqlite"), "\(bad.summary)")
        let scheme = try await ws.esctl(["--store", "mysql://localhost/db", "projections", "--json"])
        FailureTests.expectOneLine(scheme, CLI.Code.usage)
        #expect(scheme.stdout.isEmpty)
        let missing = ws.path("missing.sqlite")
        let absent = try await ws.esctl(["--store", "sqlite:" + missing, "projections"])
        FailureTests.expectOneLine(absent, CLI.Code.storeUnavailable)
        #expect(!FileManager.default.fileExists(atPath: missing), "projections created a store")
    }

    @Test("A tracking row a write outside the library broke (text where the id belongs, a blob name) is exit 66 naming what it holds, not a trap; the file is not changed",
          arguments: ["UPDATE tracking SET notification_id = 'twelve' WHERE name = 'view'",
                      "UPDATE tracking SET name = X'00FF' WHERE name = 'view'"])
    func hostileRow(_ change: String) async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        try await Self.record([Tracking(name: "view", notificationID: 3)], at: ws.storePath)
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()\nc.execute('PRAGMA wal_checkpoint(TRUNCATE)')\nc.close()"
        let tampered = try await CLI.python(script, [ws.storePath, change], scratch: ws.dir)
        try #require(tampered.status == 0, "\(tampered.summary)")
        let before = ws.bytes(ws.storePath)
        for args in [["projections"], ["projections", "--json"]] {
            let r = try await ws.esctl(["--store", ws.storeURL] + args)
            FailureTests.expectOneLine(r, CLI.Code.storeUnavailable)
            #expect(r.stderr.contains("tracking row"), "\(r.summary)")
        }
        #expect(ws.bytes(ws.storePath) == before, "projections changed the store file")
    }

    @Test("A name holding control characters is shown escaped, never sent raw to the terminal")
    func controlCharactersEscaped() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        try await Self.record([Tracking(name: "evil\u{1B}[2Jname\u{7}", notificationID: 1)], at: ws.storePath)
        let text = try await ws.esctl(["--store", ws.storeURL, "projections"])
        #expect(text.status == 0, "\(text.summary)")
        #expect(!text.stdoutData.contains(0x1B) && !text.stdoutData.contains(0x07), "a control byte reached stdout")
        #expect(text.stdout.contains("evil\\u{1b}[2Jname\\u{7}"), "\(text.stdout)")
        let j = try parseJSONObject(try await ws.esctl(["--store", ws.storeURL, "projections", "--json"]))
        #expect(Self.rows(j).first?["name"] as? String == "evil\u{1B}[2Jname\u{7}", "JSON keeps the name exactly (escaped by JSON)")
    }
}

@Suite("esctl projections on PostgreSQL", .enabled(if: PostgresServer.enabled), .tags(.postgres, .multiProcess))
struct ProjectionsCommandPostgresTests {
    @Test("Lists positions and lag of a postgres:// store (names in byte order), and an empty list before any")
    func postgres() async throws {
        let base = try #require(PostgresServer.url, "CI=true but ES_POSTGRES_URL is not set")
        let schema = "esctl_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        var config = try PostgresStore.Configuration(url: base)
        config.tls = .disable
        config.schema = schema
        let password = try #require(config.password)
        let storeURL = "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)?sslmode=disable&schema=\(schema)"
        let ws = try Workspace()
        let env = ["PGPASSWORD": password]
        let made = try await ws.esctl(["--store", storeURL, "init", "--new-master-key-file", ws.keyPath], env: env)
        try #require(made.status == 0, "\(made.summary)")
        ws.learnKeyFiles()

        let empty = try parseJSONObject(try await ws.esctl(["--store", storeURL, "projections", "--json"], env: env))
        #expect((empty["projections"] as? [Any])?.isEmpty == true, "\(empty)")

        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let store = try await PostgresStore(configuration: config)
        do {
            let keyring = try await Keyring.open(store: store, masterKeys: [key])
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
            var a = try AggregateRoot<Account>(.opened(owner: "subject-pg", name: "Ada"))
            try a.record(.renamed(name: "Ada King"))
            var b = try AggregateRoot<Account>(.opened(owner: "", name: "Bob"))
            try await app.save(&a, &b)
            // "Zeta" before "alpha" in byte order (a locale's collation would put it last).
            try await store.insertTracking(Tracking(name: "alpha", notificationID: 1))
            try await store.insertTracking(Tracking(name: "Zeta", notificationID: 3))
        } catch {
            await store.close()
            throw error
        }
        await store.close()

        let r = try await ws.esctl(["--store", storeURL, "projections", "--json"], env: env)
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["max_notification_id"] as? Int == 3)
        let rows = ProjectionsCommandTests.rows(j)
        #expect(rows.map { $0["name"] as? String } == ["Zeta", "alpha"])
        #expect(rows.map { $0["lag"] as? Int } == [0, 2])
        #expect((j["store"] as? String)?.contains(password) == false)
        let text = try await ws.esctl(["--store", storeURL, "projections"], env: env)
        #expect(text.status == 0 && text.stdout.contains("alpha"), "\(text.summary)")
    }
}
