import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Synchronization
import Testing

/// `SQLiteStore.rewrapDataKeys`: one write transaction per batch. (That a failed batch changes no
/// row is `StoreTwinTests`, over both stores.)
@Suite("SQLite batch rewrap")
struct SQLiteBatchRewrapTests {
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
