import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Synchronization
import Testing

/// `SQLiteStore.rewrapDataKeys`: one write transaction per batch.
@Suite("SQLite batch rewrap")
struct SQLiteBatchRewrapTests {
    private static func wrapped(_ scope: String, _ version: UInt32, _ kek: String, _ byte: UInt8) -> WrappedDataKey {
        WrappedDataKey(scope: scope, version: version, kekID: kek, wrapped: Array(repeating: byte, count: 60),
                       createdAt: Date(timeIntervalSince1970: 1_700_000_000))
    }

    /// Runs `sql` on the database at `path` through a connection of the test's own.
    private static func execute(_ path: String, _ sql: String) throws {
        let c = try SQLiteConnection(path: path, create: false, busyTimeoutMillis: 5_000)
        defer { c.close() }
        try c.execute(sql)
    }

    @Test("A batch that fails part-way changes no row: the rows before the failure are rolled back with it")
    func failedBatchChangesNothing() async throws {
        let dir = try TempDir("rewrap")
        defer { withExtendedLifetime(dir) {} }
        let path = dir.path("events.sqlite")
        let store = try SQLiteStore(path: path)
        let scopes = (0..<6).map { "s\($0)" }
        for scope in scopes { try await store.insertDataKey(Self.wrapped(scope, 1, "old", 1)) }
        // A failure the store cannot see coming, at the fourth row of the batch.
        try Self.execute(path, """
            CREATE TRIGGER refuse_s3 BEFORE UPDATE ON data_keys WHEN NEW.scope = 's3'
            BEGIN SELECT RAISE(ABORT, 'refused by the test'); END
            """)
        let before = try await store.dataKeys(after: nil, limit: 100)
        await #expect(throws: (any Error).self) {
            try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") })
        }
        #expect(try await store.dataKeys(after: nil, limit: 100) == before)

        // Without the failure the same batch replaces every row, and the store keeps working.
        try Self.execute(path, "DROP TRIGGER refuse_s3")
        #expect(try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") }) == 6)
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == "new" && $0.wrapped == Array(repeating: 2, count: 60) })
        await store.close()
    }

    @Test("A master-key rotation of a SQLite store commits once per page, not once per key")
    func oneCommitPerPage() async throws {
        let dir = try TempDir("rewrap")
        defer { withExtendedLifetime(dir) {} }
        let path = dir.path("events.sqlite")
        let store = try SQLiteStore(path: path)
        let old = try MasterKey.generate(), new = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        for i in 0..<40 { try await keyring.persist([keyring.writeKey(for: "scope-\(i)")]) }
        let commits = Mutex(0)
        store.faultInjection.withLock {
            $0 = { sql in
                if sql == "COMMIT" { commits.withLock { $0 += 1 } }
                return nil
            }
        }
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: 10)
        #expect(progress.rewrapped == 40)
        // The new check record, four pages of ten, the old check's deletion: 6 transactions,
        // not one per key (42).
        #expect(commits.withLock { $0 } == 6)
        #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == new.id })
        await store.close()
    }
}
