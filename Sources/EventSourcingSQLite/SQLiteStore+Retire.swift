import EventSourcing
import Foundation
import KeyManagement

/// Retiring old data-key versions after re-encryption (``KeyStore/retireDataKeys(scope:below:)``).
extension SQLiteStore {
    /// Erases the rows of `scope`'s versions below `version` in one transaction, the way a shred
    /// erases a scope's rows (`eraseDataKeys`): each wrapped key is overwritten with zeros in its
    /// cell, then the row becomes an empty erased row, so no copy of the key stays in the file;
    /// the old pages then leave the WAL with a checkpoint (as after a shred).
    public func retireDataKeys(scope: String, below version: UInt32) async throws -> [UInt32] {
        guard !scope.isEmpty else {
            throw KeyManagementError(.invalidScope, "an empty key scope has no data keys; nothing was retired")
        }
        let retired = try await write { conn -> [UInt32] in
            if let t = try SQLiteStore.tombstone(scope, conn) {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let stored = try SQLiteStore.dataKeys(scope, conn).map(\.version)
            let retired = try SQLiteStore.versionsToRetire(stored, scope: scope, below: version)
            guard !retired.isEmpty else { return [] }
            let zero = try conn.statement(
                "UPDATE data_keys SET wrapped = zeroblob(length(wrapped)) WHERE scope = ? AND version < ? AND typeof(wrapped) = 'blob'")
            zero.bind(1, scope)
            zero.bind(2, Int64(version))
            try zero.run()
            let sql = "UPDATE data_keys SET scope = '', version = -rowid, kek_id = '', wrapped = X'', created_at = 0 WHERE scope = ? AND version < ?"
            let erase: Statement
            do {
                erase = try conn.statement(sql)
            } catch let error as EventSourcingError where error.message.contains("no such column: rowid") {
                // The key table is in its schema-2 layout again (see eraseDataKeys): convert it.
                try conn.execute(SQLiteStore.rowidDataKeys)
                try conn.execute(SQLiteStore.rotationTrigger)   // dropped with the old table
                erase = try conn.statement(sql)
            }
            erase.bind(1, scope)
            erase.bind(2, Int64(version))
            try erase.run()
            // The retired versions seal nothing more: their encryption counts go with them.
            let usage = try conn.statement("DELETE FROM key_usage WHERE scope = ? AND version < ?")
            usage.bind(1, scope)
            usage.bind(2, Int64(version))
            try usage.run()
            // Other processes drop their cached copies (the key-change feed, SECURITY.md §5.18).
            try SQLiteStore.recordKeyChange(scope: scope, kind: .retire, at: Date(), conn)
            return retired
        }
        if !retired.isEmpty {
            prefetchedKeys.forget([scope])
            await scrubAfterErasure()
        }
        return retired
    }
}
