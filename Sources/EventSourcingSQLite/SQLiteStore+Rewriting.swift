import EventSourcing
import Foundation
import KeyManagement

/// Replacing stored records in place (re-encryption, encrypting a plaintext store): see
/// ``RecordRewriting``. Each batch is one write through the writer (one savepoint of a group
/// commit, so all of it or none of it). `secure_delete` is on: the bytes a replacement frees are
/// zeroed in the page. A replacement of the same length (a re-encryption: same header size, same
/// payload) is written over the old value in its cell.
extension SQLiteStore: RecordRewriting {
    public func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await rewrite(rewrites, table: "events")
    }

    public func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await rewrite(rewrites, table: "snapshots")
    }

    private func rewrite(_ rewrites: [RecordRewrite], table: String) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites, what: table)
        guard !rewrites.isEmpty else { return 0 }
        let migrating = configuration.allowsPlaintextWrites
        let sql = "UPDATE \(table) SET state = ?, key_scope = ? WHERE originator_id = ? AND originator_version = ? AND state = ?"
        return try await write { conn in
            var checked = Set<ExactScope>()
            for r in rewrites {
                if let scope = r.keyScope {
                    // A scope shredded meanwhile (by another process) never gets records back.
                    if checked.insert(ExactScope(scope)).inserted, let t = try SQLiteStore.tombstone(scope, conn) {
                        throw KeyManagementError(.shredded, "the scope was shredded; nothing of the batch was rewritten",
                                                 scope: scope, shreddedAt: t.shreddedAt)
                    }
                } else {
                    // Also with allowsPlaintextWrites: a store that refuses unencrypted records
                    // for good gets none back through a rewrite either.
                    try SQLiteStore.refusePlaintext(
                        StoredEvent(originatorID: r.originatorID, originatorVersion: r.originatorVersion, topic: "", state: []),
                        snapshot: table == "snapshots", migrating: migrating, conn)
                }
            }
            var replaced = 0
            for r in rewrites {
                let s = try conn.statement(sql)
                s.bind(1, r.state)
                s.bind(2, r.keyScope)
                s.bind(3, r.originatorID)
                s.bind(4, r.originatorVersion)
                s.bind(5, r.expected)
                do { try s.run() } catch let error as EventSourcingError {
                    var e = error
                    e.originatorID = r.originatorID
                    e.originatorVersion = r.originatorVersion
                    throw e
                }
                replaced += conn.changes
            }
            return replaced
        }
    }
}
