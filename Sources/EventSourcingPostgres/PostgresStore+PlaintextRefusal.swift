import EventSourcing
import Foundation
import PostgresNIO
import Synchronization

/// The refusal of unencrypted records after a store was encrypted (`PlaintextRefusing`): a row
/// of `es_meta` (no schema change). A store with a master key refuses unencrypted records anyway
/// (`refusePlaintext(_:snapshot:)`); the row matters to stores opened with
/// `allowsPlaintextWrites` for a migration, which read it before
/// a save that holds an unencrypted record until they have seen it set (it is never unset).
extension PostgresStore: PlaintextRefusing {
    /// The `es_meta` key whose value 1 makes the store refuse unencrypted records for good.
    static let plaintextRefusedKey = "plaintext_refused"

    /// Counts the unencrypted events (erasure records not counted) and snapshots and, when there
    /// are none, sets the refusal, in one statement.
    ///
    /// A save of an unencrypted record by a process opened with `allowsPlaintextWrites` that read
    /// the row just before it was set can still commit after it: verify the store afterwards
    /// (`esctl verify`), as SECURITY.md §7.8 says.
    public func refusePlaintextWrites() async throws -> Int {
        let s = schema
        let left: Int64 = try await run { client in
            var n: Int64 = 0
            for try await v in try await client.query("""
                WITH counted AS (
                    SELECT (SELECT count(*) FROM \(unescaped: s).events WHERE key_scope IS NULL AND topic <> \(ErasureRecord.topic))
                         + (SELECT count(*) FROM \(unescaped: s).snapshots WHERE key_scope IS NULL) AS n
                ), refused AS (
                    INSERT INTO \(unescaped: s).es_meta (key, value)
                    SELECT \(PostgresStore.plaintextRefusedKey), 1 FROM counted WHERE counted.n = 0
                    ON CONFLICT (key) DO UPDATE SET value = 1
                    RETURNING 1
                )
                SELECT n::bigint FROM counted
                """, logger: self.logger).decode(Int64.self) { n = v }
            return n
        }
        if left == 0 { plaintextRefused.store(true, ordering: .relaxed) }
        return Int(left)
    }

    public func refusesPlaintextWrites() async throws -> Bool {
        let s = schema
        return try await run { client in
            var found = false
            for try await v in try await client.query(
                "SELECT EXISTS (SELECT 1 FROM \(unescaped: s).es_meta WHERE key = \(PostgresStore.plaintextRefusedKey) AND value = 1)",
                logger: self.logger).decode(Bool.self) { found = v }
            return found
        }
    }

    /// Throws `.plaintextRejected` naming `record` if the store refuses unencrypted records for
    /// good; a positive answer is cached (the row is never unset).
    func refuseIfPlaintextRefused(_ record: StoredEvent, snapshot: Bool) async throws {
        if !plaintextRefused.load(ordering: .relaxed) {
            guard try await refusesPlaintextWrites() else { return }
            plaintextRefused.store(true, ordering: .relaxed)
        }
        throw EventSourcingError(.plaintextRejected,
            "unencrypted \(snapshot ? "snapshot" : "event") refused: this store was encrypted and refuses unencrypted records "
            + "for good, also with allowsPlaintextWrites (give the application's Mapper a Keyring)",
            originatorID: record.originatorID, originatorVersion: record.originatorVersion, topic: record.topic)
    }
}
