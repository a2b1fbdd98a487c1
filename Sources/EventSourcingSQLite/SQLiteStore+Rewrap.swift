import EventSourcing
import Foundation
import KeyManagement

extension SQLiteStore {
    /// Rewraps a batch of data keys in one write transaction: one prepared conditional
    /// `UPDATE … WHERE scope = ? AND version = ? AND kek_id = <previous>` per key, one commit for
    /// all. An error rolls the whole batch back (the write's savepoint), so either every
    /// replacement its conditions allow is kept or none is.
    public func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        guard !rewraps.isEmpty else { return 0 }
        try DataKeyRewrap.checkBatch(rewraps)
        return try await write { conn in
            // The same statement text as rewrapDataKey(_:previousKEKID:): one cached preparation.
            let s = try conn.statement("UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE scope = ? AND version = ? AND kek_id = ?")
            var replaced = 0
            for r in rewraps {
                s.bind(1, r.key.kekID)
                s.bind(2, r.key.wrapped)
                s.bind(3, r.key.scope)
                s.bind(4, Int64(r.key.version))
                s.bind(5, r.previousKEKID)
                try s.run()
                replaced += conn.changes
            }
            return replaced
        }
    }
}
