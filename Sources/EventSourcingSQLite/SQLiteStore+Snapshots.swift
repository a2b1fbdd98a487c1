import EventSourcing
import Foundation
import KeyManagement

extension SQLiteStore {
    public func insertSnapshot(_ snapshot: StoredEvent) async throws {
        let refusePlaintext = !configuration.allowsPlaintextWrites
        try await write { conn in
            if snapshot.keyScope == nil {
                try SQLiteStore.refusePlaintext(snapshot, snapshot: true, migrating: !refusePlaintext, conn)
            }
            // A process with a stale cached key must not leave a snapshot of a shredded scope.
            if let scope = snapshot.keyScope, let t = try SQLiteStore.tombstone(scope, conn) {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let s = try conn.statement(
                "INSERT OR REPLACE INTO snapshots (originator_id, originator_version, topic, state, key_scope) VALUES (?, ?, ?, ?, ?)")
            s.bind(1, snapshot.originatorID)
            s.bind(2, snapshot.originatorVersion)
            s.bind(3, snapshot.topic)
            s.bind(4, snapshot.state)
            s.bind(5, snapshot.keyScope)
            try s.run()
        }
    }

    public func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        let sql = "SELECT originator_version, topic, state FROM snapshots WHERE originator_id = ?"
            + (lte == nil ? "" : " AND originator_version <= ?") + " ORDER BY originator_version DESC LIMIT 1"
        return try await read { conn in
            let s = try conn.statement(sql)
            defer { s.reset() }
            s.bind(1, originatorID)
            if let lte { s.bind(2, lte) }
            guard try s.step() else { return nil }
            return try s.storedRecord(table: "snapshots", knownID: originatorID, version: 0, topic: 1, state: 2).event
        }
    }

    public func deleteSnapshots(keyScope: String) async throws -> Int {
        let n = try await write { conn in
            let s = try conn.statement("DELETE FROM snapshots WHERE key_scope = ?")
            s.bind(1, keyScope)
            try s.run()
            return conn.changes
        }
        // Deleted rows are zeroed (secure_delete); the checkpoint removes their old pages from the
        // WAL, waiting at most configuration.scrubTimeout (SQLiteStore+Scrub.swift).
        if n > 0 { await scrubAfterErasure() }
        return n
    }
}
