import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

/// Retiring old data-key versions after re-encryption (``KeyStore/retireDataKeys(scope:below:)``).
extension PostgresStore {
    /// Deletes the rows of `scope`'s versions below `version` in one transaction, with the
    /// scope's key rows locked (`FOR UPDATE`) while the newest version and the tombstone are
    /// checked. PostgreSQL keeps a deleted row's bytes in its page until `VACUUM` reclaims it
    /// (as after a shred; SECURITY.md §7.7).
    public func retireDataKeys(scope: String, below version: UInt32) async throws -> [UInt32] {
        let s = schema
        forgetPrefetchedKeys([scope])
        defer { forgetPrefetchedKeys([scope]) }
        return try await run { client in
            try await client.withTransaction(logger: self.logger) { conn in
                var stored: [UInt32] = []
                for try await v in try await conn.query(
                    "SELECT version FROM \(unescaped: s).data_keys WHERE scope = \(scope) ORDER BY version FOR UPDATE",
                    logger: self.logger).decode(Int64.self) {
                    guard let v32 = UInt32(exactly: v) else {
                        throw KeyManagementError(.storeFailure, "a data_keys row of the scope has version \(v), not a key version", scope: scope)
                    }
                    stored.append(v32)
                }
                if stored.isEmpty {
                    for try await at in try await conn.query(
                        "SELECT shredded_at FROM \(unescaped: s).tombstones WHERE scope = \(scope)",
                        logger: self.logger).decode(Double.self) {
                        throw KeyManagementError(.shredded, "the scope was shredded", scope: scope,
                                                 shreddedAt: Date(timeIntervalSince1970: at))
                    }
                }
                let retired = try PostgresStore.versionsToRetire(stored, scope: scope, below: version)
                guard !retired.isEmpty else { return [] }
                try await conn.query(
                    "DELETE FROM \(unescaped: s).data_keys WHERE scope = \(scope) AND version < \(Int64(version))",
                    logger: self.logger)
                // The retired versions seal nothing more: their encryption counts go with them.
                try await conn.query(
                    "DELETE FROM \(unescaped: s).key_usage WHERE scope = \(scope) AND version < \(Int64(version))",
                    logger: self.logger)
                // Other processes drop their cached copies (the key-change feed, SECURITY.md §5.18).
                try await conn.query(PostgresStore.recordKeyChange(scope: scope, kind: .retire, at: Date(), schema: s),
                                     logger: self.logger)
                return retired
            }
        }
    }
}
