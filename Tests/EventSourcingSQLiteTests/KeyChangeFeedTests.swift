import ESTestSupport
import ESTestTags
import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("SQLite key-change feed: a shred reaches another process", .tags(.multiProcess))
struct KeyChangeFeedSQLiteTests {
    /// The documented bound (SECURITY.md §8): the default refresh interval (0.5 s) plus a check.
    static let bound: Double = 1.0

    @Test("A process reading an aggregate from its caches sees .shredded within 1 s of a shred made by another process")
    func shredReachesAnotherProcess() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("keyfeed")
        let (db, keyFile) = try await createStoreAndKeyFile(in: dir)
        let s = try await EncryptedStore.open(db, masterKeyFile: keyFile)
        let id = UUID()
        var root = try ledgerSave(nil, id: id, save: 1, count: 3)
        try await s.app.save(&root)

        let child = try ChildProcess(agent, ["shred-watch", "sqlite", db, keyFile, id.uuidString],
                                     stderrPath: dir.path("watch.stderr"))
        try #require(await child.readLine() == "READY", "shred-watch did not start: \(child.stderr)")
        // Long enough that the child has checked the feed and serves the aggregate from its caches.
        try await Task.sleep(for: .milliseconds(800))
        _ = try await s.app.shred(aggregateID: id)
        let shredded = Date().timeIntervalSince1970
        let line = await readLine(child, within: .seconds(5))
        let status = await child.waitForExit()
        try #require(status == .exited(0), "shred-watch \(status): \(child.stderr)")
        let parts = try #require(line?.split(separator: " "), "shred-watch never saw the shred within 5 s")
        try #require(parts.count == 2 && parts[0] == "SHREDDED", "unexpected output: \(line ?? "")")
        let seen = try #require(Double(String(parts[1]))) / 1000
        let latency = seen - shredded
        #expect(latency <= Self.bound, "the other process saw the shred after \(latency) s")
        await s.store.close()
    }

    @Test("A store opened at schema 5 records shreds and rotations and retirements in key_changes, in order, and nothing else")
    func feedRecordsShredsAndRotations() async throws {
        let dir = try TempDir("keyfeed-rows")
        let s = try await EncryptedStore.open(dir.path("e.sqlite"), masterKey: MasterKey.generate())
        let base = try await s.store.keyChangeMark()
        var a = try ledgerSave(nil, save: 1, count: 1)
        var b = try ledgerSave(nil, save: 1, count: 1)
        try await s.app.save(&a, &b)
        #expect(try await s.store.keyChangeMark() == base, "a new scope's first key is no change")
        _ = try await s.keyring.rotate(scope: a.keyScope)
        #expect(try await s.keyring.retire(scope: a.keyScope, below: 2) == [1])
        _ = try await s.app.shred(aggregateID: b.id)
        let page = try await s.store.keyChanges(after: base, limit: 10)
        #expect(!page.gap)
        #expect(page.changes.map(\.kind) == [.rotate, .retire, .shred])
        #expect(page.changes.map(\.scope) == [a.keyScope, a.keyScope, b.keyScope])
        #expect(page.changes.map(\.seq) == [base + 1, base + 2, base + 3])
        await s.store.close()
    }
}

/// The next line of `child`, or nil if none came within `timeout` (the child is killed then).
func readLine(_ child: ChildProcess, within timeout: Duration) async -> String? {
    let pid = child.pid
    let killer = Task {
        try await Task.sleep(for: timeout)
        _ = kill(pid, SIGKILL)
    }
    defer { killer.cancel() }
    return await child.readLine()
}

@Suite("SQLite key-change feed: rows written outside the library")
struct KeyChangeFeedHostileRowTests {
    @Test("A key_changes row whose scope is not text fails the look-up with storeFailure naming the row (no key used unchecked); an unknown kind evicts the scope")
    func hostileRows() async throws {
        let dir = try TempDir("keyfeed-hostile")
        let path = dir.path("e.sqlite")
        let s = try await EncryptedStore.open(path, masterKey: MasterKey.generate())
        s.keyring.keyChangeRefreshInterval = .zero
        var r = try ledgerSave(nil, save: 1, count: 1)
        try await s.app.save(&r)
        _ = try await s.keyring.readKey(scope: r.keyScope, version: 1)   // cached, feed position read

        // An unknown kind (a newer library's): the scope's keys are evicted, nothing fails.
        try tamper(path, "INSERT INTO key_changes (scope, kind, at) VALUES ('\(r.keyScope)', 'compacted', 0)")
        let generation = s.keyring.shredGeneration
        #expect(try await s.keyring.readKey(scope: r.keyScope, version: 1).version == 1)
        #expect(s.keyring.shredGeneration > generation)

        // A scope that is a BLOB: refused, typed, naming the row.
        try tamper(path, "INSERT INTO key_changes (scope, kind, at) VALUES (X'00ff', 'shred', 0)")
        let e = await #expect(throws: KeyManagementError.self) { try await s.keyring.readKey(scope: r.keyScope, version: 1) }
        #expect(e?.code == .storeFailure && e?.message.contains("key_changes row") == true, "\(String(describing: e))")
        // Through the application: a typed EventSourcingError.
        let a = await #expect(throws: EventSourcingError.self) { try await s.app.repository.get(Ledger.self, id: r.id) }
        #expect(a != nil)
        await s.store.close()
    }
}
