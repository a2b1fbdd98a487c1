import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

extension PostgresStore {
    /// Rewraps a batch of data keys with one statement: an `UPDATE … FROM unnest(…)` over arrays
    /// of the batch's scopes, versions, new KEK ids, new wrappings and previous KEK ids, each row
    /// replaced only if it is still wrapped by its previous KEK. One statement is one transaction:
    /// either every replacement its conditions allow is kept or none is. (A batch naming a version
    /// twice is refused before: the statement would apply one of the two in no defined order.)
    public func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        guard !rewraps.isEmpty else { return 0 }
        try DataKeyRewrap.checkBatch(rewraps)
        let s = schema
        var scopes: [String] = [], versions: [Int64] = [], kekIDs: [String] = [], wrapped: [ByteBuffer] = [], previous: [String] = []
        scopes.reserveCapacity(rewraps.count)
        versions.reserveCapacity(rewraps.count)
        kekIDs.reserveCapacity(rewraps.count)
        wrapped.reserveCapacity(rewraps.count)
        previous.reserveCapacity(rewraps.count)
        for r in rewraps {
            scopes.append(r.key.scope)
            versions.append(Int64(r.key.version))
            kekIDs.append(r.key.kekID)
            wrapped.append(r.key.wrapped.byteBuffer)
            previous.append(r.previousKEKID)
        }
        forgetPrefetchedKeys(scopes)
        defer { forgetPrefetchedKeys(scopes) }
        let (sc, ve, ke, wr, pr) = (scopes, versions, kekIDs, wrapped, previous)
        return try await run { client in
            var replaced = 0
            for try await _ in try await client.query("""
                UPDATE \(unescaped: s).data_keys AS d SET kek_id = u.kek_id, wrapped = u.wrapped
                FROM unnest(\(sc)::text[], \(ve)::bigint[], \(ke)::text[], \(wr)::bytea[], \(pr)::text[])
                    AS u(scope, version, kek_id, wrapped, previous_kek_id)
                WHERE d.scope = u.scope AND d.version = u.version AND d.kek_id = u.previous_kek_id
                RETURNING 1
                """, logger: self.logger).decode(Int32.self) { replaced += 1 }
            return replaced
        }
    }
}
