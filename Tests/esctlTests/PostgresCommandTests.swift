import ESTestTags
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

/// The server scripts/test.sh starts. With CI=true a missing server fails the test; otherwise
/// the suite is left out with one loud line.
enum PostgresServer {
    static let url = ProcessInfo.processInfo.environment["ES_POSTGRES_URL"]
    static let enabled: Bool = {
        if url != nil || ProcessInfo.processInfo.environment["CI"] == "true" { return true }
        FileHandle.standardError.write(Data("!!! ES_POSTGRES_URL is not set: esctl-on-PostgreSQL tests are SKIPPED !!!\n".utf8))
        return false
    }()
}

@Suite("esctl on PostgreSQL", .enabled(if: PostgresServer.enabled), .tags(.postgres, .multiProcess))
struct PostgresCommandTests {
    @Test("Every esctl command works against a postgres:// store, with the password kept out of argv")
    func everyCommand() async throws {
        let base = try #require(PostgresServer.url, "CI=true but ES_POSTGRES_URL is not set")
        let schema = "esctl_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        var config = try PostgresStore.Configuration(url: base)
        config.tls = .disable
        config.schema = schema
        let password = try #require(config.password)
        // The URL esctl gets has no password: it comes from PGPASSWORD, never from argv.
        let storeURL = "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)?sslmode=disable&schema=\(schema)"
        let ws = try Workspace()
        let env = ["PGPASSWORD": password]
        let opts = ["--store", storeURL, "--master-key-file", ws.keyPath]

        let initResult = try await ws.esctl(["--store", storeURL, "init", "--new-master-key-file", ws.keyPath], env: env)
        try #require(initResult.status == 0, "\(initResult.summary)")
        ws.learnKeyFiles()
        #expect(!initResult.stderr.contains(password))
        let key = try MasterKey(contentsOfFile: ws.keyPath)

        // Seed through the library: a subject with two aggregates, and one aggregate on its own.
        let store = try await PostgresStore(configuration: config)
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        var a1 = try AggregateRoot<Account>(.opened(owner: "subject-pg", name: "Ada Lovelace"))
        try a1.record(.renamed(name: "Ada King"))
        var a2 = try AggregateRoot<Account>(.opened(owner: "subject-pg", name: "Ada's savings"))
        var bob = try AggregateRoot<Account>(.opened(owner: "", name: "Bob Builder"))
        try await app.save(&a1, &a2, &bob)
        try await app.takeSnapshot(Account.self, id: bob.id)
        await store.close()

        let list = try await ws.esctl(opts + ["keys", "list", "--json"], env: env)
        #expect(list.status == 0, "\(list.summary)")
        let scopes = (try parseJSONObject(list)["scopes"] as? [[String: Any]])?.compactMap { $0["scope"] as? String } ?? []
        #expect(Set(scopes) == ["subject-pg", bob.id.uuidString.lowercased()])

        let show = try await ws.esctl(opts + ["keys", "show", "subject-pg", "--json"], env: env)
        #expect(show.status == 0, "\(show.summary)")
        #expect(try parseJSONObject(show)["events"] as? Int == 3)

        let rotate = try await ws.esctl(opts + ["keys", "rotate", "subject-pg"], env: env)
        #expect(rotate.status == 0, "\(rotate.summary)")
        #expect(rotate.stdout.contains("v2"))

        let export = try await ws.esctl(opts + ["export", "subject-pg"], env: env)
        #expect(export.status == 0, "\(export.summary)")
        #expect(export.stdout.split(separator: "\n").count == 3)
        #expect(export.stdout.contains("Ada King"))

        let stats = try await ws.esctl(opts + ["stats", "--json"], env: env)
        #expect(stats.status == 0, "\(stats.summary)")
        let s = try parseJSONObject(stats)
        #expect(s["events"] as? Int == 4)
        #expect(s["snapshots"] as? Int == 1)
        #expect((s["store"] as? String)?.contains(password) == false)

        let verify = try await ws.esctl(opts + ["verify", "--json"], env: env)
        #expect(verify.status == 0, "\(verify.summary)")
        #expect((try parseJSONObject(verify)["events"] as? [String: Any])?["ok"] as? Int == 4)

        let shred = try await ws.esctl(opts + ["keys", "shred", bob.id.uuidString.lowercased(), "--yes", "--json"], env: env)
        #expect(shred.status == 0, "\(shred.summary)")
        let receipt = try parseJSONObject(shred)
        #expect(receipt["events_affected"] as? Int == 1)
        #expect(receipt["snapshots_deleted"] as? Int == 1)
        let afterShred = try await ws.esctl(opts + ["export", bob.id.uuidString.lowercased()], env: env)
        #expect(afterShred.status == CLI.Code.scopeShredded, "\(afterShred.summary)")

        let newKeyPath = ws.path("master-2.key")
        let rotateMaster = try await ws.esctl(opts + ["keys", "rotate-master", "--new-master-key-file", newKeyPath, "--create"], env: env)
        #expect(rotateMaster.status == 0, "\(rotateMaster.summary)")
        ws.learnKeyFiles()
        let oldKey = try await ws.esctl(opts + ["verify"], env: env)
        #expect(oldKey.status == CLI.Code.wrongMasterKey, "\(oldKey.summary)")
        let newKey = try await ws.esctl(["--store", storeURL, "--master-key-file", newKeyPath, "verify", "--json"], env: env)
        #expect(newKey.status == 0, "\(newKey.summary)")
        let counts = try parseJSONObject(newKey)["events"] as? [String: Any]
        #expect(counts?["ok"] as? Int == 3)
        #expect(counts?["shredded"] as? Int == 1)

        for r in [list, show, rotate, export, stats, verify, shred, afterShred, rotateMaster, oldKey, newKey] {
            #expect(!r.stdout.contains(password) && !r.stderr.contains(password), "the database password never appears")
        }
        let cleanup = try await PostgresStore(configuration: config)
        try await cleanup.destroy()
    }
}
