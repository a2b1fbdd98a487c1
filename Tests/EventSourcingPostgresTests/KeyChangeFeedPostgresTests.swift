import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension PostgresTests {
    @Suite("PostgreSQL key-change feed and encryption counts", .tags(.multiProcess))
    struct KeyChangeFeedPostgresTests {
        /// The documented bound (SECURITY.md §8): the default refresh interval (0.5 s) plus a check.
        static let bound: Double = 1.0

        /// The next line of `child`, or nil if none came within `timeout` (the child is killed then).
        static func readLine(_ child: ChildProcess, within timeout: Duration) async -> String? {
            let pid = child.pid
            let killer = Task {
                try await Task.sleep(for: timeout)
                _ = kill(pid, SIGKILL)
            }
            defer { killer.cancel() }
            return await child.readLine()
        }

        @Test("A process reading an aggregate from its caches sees .shredded within 1 s of a shred made by another process",
              .timeLimit(.minutes(2)))
        func shredReachesAnotherProcess() async throws {
            let agent = try TestEnvironment.agentPath()
            let url = try PostgresTestServer.urlWithoutTLS()
            let config = try freshConfiguration()
            let dir = try TempDir("pg-keyfeed")
            let keyFile = dir.path("master.key")
            let masterKey = try MasterKey.generate()
            try masterKey.writeKeyFile(to: keyFile)
            try await withStore(config) { store in
                let e = try await EncryptedApp.open(store, masterKey: masterKey)
                let id = UUID()
                var root = try ledgerSave(nil, id: id, save: 1, count: 3)
                try await e.app.save(&root)
                let child = try ChildProcess(agent, ["shred-watch", "postgres", url, config.schema, keyFile, id.uuidString],
                                             stderrPath: dir.path("watch.stderr"))
                try #require(await child.readLine() == "READY", "shred-watch did not start: \(child.stderr)")
                try await Task.sleep(for: .milliseconds(800))
                _ = try await e.app.shred(aggregateID: id)
                let shredded = Date().timeIntervalSince1970
                let line = await Self.readLine(child, within: .seconds(5))
                let status = await child.waitForExit()
                try #require(status == .exited(0), "shred-watch \(status): \(child.stderr)")
                let parts = try #require(line?.split(separator: " "), "shred-watch never saw the shred within 5 s")
                try #require(parts.count == 2 && parts[0] == "SHREDDED", "unexpected output: \(line ?? "")")
                let latency = try #require(Double(String(parts[1]))) / 1000 - shredded
                #expect(latency <= Self.bound, "the other process saw the shred after \(latency) s")
            }
        }

        @Test("Shreds, rotations and retirements are recorded in key_changes in commit order; a shred deletes the scope's counts")
        func feedRowsAndCounts() async throws {
            try await withStore(try freshConfiguration()) { store in
                let e = try await EncryptedApp.open(store, masterKey: try MasterKey.generate())
                let base = try await store.keyChangeMark()
                var a = try ledgerSave(nil, save: 1, count: 1)
                var b = try ledgerSave(nil, save: 1, count: 1)
                try await e.app.save(&a, &b)
                #expect(try await store.keyChangeMark() == base, "a new scope's first key is no change")
                #expect(try await e.keyring.rotate(scope: a.keyScope) == 2)
                #expect(try await e.keyring.retire(scope: a.keyScope, below: 2) == [1])
                let first = KeyUsage.firstBlock(limit: 10_000)
                #expect(try await store.reserveEncryptions(scope: b.keyScope, version: 1, count: 1, limit: 10_000) == first + 1)
                _ = try await e.app.shred(aggregateID: b.id)
                #expect(try await store.reservedEncryptions(scope: b.keyScope).isEmpty)
                let page = try await store.keyChanges(after: base, limit: 10)
                #expect(!page.gap)
                #expect(page.changes.map(\.kind) == [.rotate, .retire, .shred])
                #expect(page.changes.map(\.scope) == [a.keyScope, a.keyScope, b.keyScope])
                #expect(page.changes.map(\.seq) == [base + 1, base + 2, base + 3])
                // Counts: a version without a row starts from its implicit first block.
                #expect(try await store.reserveEncryptions(scope: a.keyScope, version: 2, count: 100, limit: 10_000) == first + 100)
                #expect(try await store.reserveEncryptions(scope: a.keyScope, version: 2, count: 10_000, limit: 10_000) == nil)
                #expect(try await store.reservedEncryptions(scope: a.keyScope) == [2: first + 100])
            }
        }

        @Test("The limit on PostgreSQL: two key rings saving one scope alternately, with a limit of 5, never seal more than 5 records under one version")
        func limitAcrossKeyrings() async throws {
            try await withStore(try freshConfiguration()) { store in
                let master = try MasterKey.generate()
                let one = try await EncryptedApp.open(store, masterKey: master)
                let two = try await EncryptedApp.open(store, masterKey: master)
                for k in [one.keyring, two.keyring] {
                    k.encryptionLimit = 5
                    k.encryptionBlock = 1
                }
                let id = UUID()
                var root = try ledgerSave(nil, id: id, save: 1, count: 1)
                try await one.app.save(&root)
                for save in 2...20 {
                    let app = save % 2 == 0 ? two.app : one.app
                    var r = try await app.repository.get(Ledger.self, id: id)
                    try r.record(.entry(save: save, item: 1, of: 1))
                    try await app.save(&r)
                }
                var perVersion: [UInt32: Int] = [:]
                for e in try await store.selectEvents(originatorID: id) {
                    guard case .success(let (header, _)) = StateHeader.parse(e.state) else { Issue.record("no header"); continue }
                    perVersion[header.keyVersion, default: 0] += 1
                }
                #expect(perVersion.values.reduce(0, +) == 20)
                #expect(perVersion.values.allSatisfy { $0 <= 5 }, "\(perVersion)")
                #expect(try await one.app.repository.get(Ledger.self, id: id).state.entries == 20)
            }
        }

        @Test("A schema at version 1 (no feed, no counts) migrates to version 2 on open and keeps its events")
        func schemaOneMigrates() async throws {
            let config = try freshConfiguration()
            let master = try MasterKey.generate()
            let id = UUID()
            try await withStore(config) { store in
                let e = try await EncryptedApp.open(store, masterKey: master)
                var r = try ledgerSave(nil, id: id, save: 1, count: 2)
                try await e.app.save(&r)
                // Back to what version 1 left.
                try await withRawClient(config) { client in
                    let s = config.schema
                    for sql in ["DROP TABLE \(s).key_changes", "DROP TABLE \(s).key_usage",
                                "DROP TRIGGER tombstones_key_change ON \(s).tombstones",
                                "DROP TRIGGER data_keys_key_change ON \(s).data_keys",
                                "UPDATE \(s).es_meta SET value = 1 WHERE key = 'schema_version'"] {
                        try await client.query(PostgresQuery(unsafeSQL: sql))
                    }
                }
                let again = try await PostgresStore(configuration: config)
                let e2 = try await EncryptedApp.open(again, masterKey: master)
                #expect(try await e2.app.repository.get(Ledger.self, id: id).state.entries == 2)
                #expect(try await again.keyChangeMark() == 0)
                #expect(try await e2.keyring.rotate(scope: r.keyScope) == 2)
                #expect(try await again.keyChanges(after: 0, limit: 5).changes.map(\.kind) == [.rotate])
                await again.close()
            }
        }
    }
}
