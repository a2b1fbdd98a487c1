import EventSourcing
import Foundation

/// The refusal of unencrypted records after a store was encrypted (`PlaintextRefusing`): a row
/// of `es_meta` (no schema change), read by each save that holds an unencrypted record, in its
/// own transaction (`refusePlaintext(_:snapshot:migrating:_:)`).
extension SQLiteStore: PlaintextRefusing {
    /// The `es_meta` key whose value 1 makes the store refuse unencrypted records for good.
    static let plaintextRefusedKey = "plaintext_refused"

    /// Counts the unencrypted events (erasure records not counted) and snapshots and, when there
    /// are none, sets the refusal, in one write transaction: no save can come in between.
    public func refusePlaintextWrites() async throws -> Int {
        try await write { conn in
            let count = try conn.statement("""
                SELECT (SELECT count(*) FROM events WHERE key_scope IS NULL AND topic <> ?)
                     + (SELECT count(*) FROM snapshots WHERE key_scope IS NULL)
                """)
            defer { count.reset() }
            count.bind(1, ErasureRecord.topic)
            let left = try count.step() ? count.int(0) : 0
            guard left == 0 else { return left }
            try conn.execute("INSERT OR REPLACE INTO es_meta (key, value) VALUES ('\(SQLiteStore.plaintextRefusedKey)', 1)")
            return 0
        }
    }

    public func refusesPlaintextWrites() async throws -> Bool {
        guard hasSchema else { return false }
        return try await read { conn in
            let s = try conn.statement("SELECT EXISTS (SELECT 1 FROM es_meta WHERE key = '\(SQLiteStore.plaintextRefusedKey)' AND value = 1)")
            defer { s.reset() }
            return try s.step() && s.int(0) == 1
        }
    }
}
