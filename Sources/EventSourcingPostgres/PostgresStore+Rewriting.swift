import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Synchronization

/// Replacing stored records in place (re-encryption, encrypting a plaintext store): see
/// ``RecordRewriting``. Each batch is one SQL statement (an `UPDATE … FROM unnest(…)`), so one
/// transaction: all of it or none of it. A batch stamped with a shredded scope changes nothing
/// (the tombstone is checked in the same statement).
extension PostgresStore: RecordRewriting {
    public func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await rewrite(rewrites, table: "events")
    }

    public func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await rewrite(rewrites, table: "snapshots")
    }

    private func rewrite(_ rewrites: [RecordRewrite], table: String) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites, what: table)
        guard !rewrites.isEmpty else { return 0 }
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the PostgreSQL store is closed")
        }
        if let r = rewrites.first(where: { $0.keyScope == nil }) {
            try await refusePlaintext(StoredEvent(originatorID: r.originatorID, originatorVersion: r.originatorVersion,
                                                  topic: "", state: []), snapshot: table == "snapshots")
        }
        var ids: [UUID] = [], versions: [Int64] = [], expected: [ByteBuffer] = [], states: [ByteBuffer] = [], scopes: [String] = []
        ids.reserveCapacity(rewrites.count)
        versions.reserveCapacity(rewrites.count)
        expected.reserveCapacity(rewrites.count)
        states.reserveCapacity(rewrites.count)
        scopes.reserveCapacity(rewrites.count)
        for r in rewrites {
            ids.append(r.originatorID)
            versions.append(Int64(r.originatorVersion))
            expected.append(r.expected.byteBuffer)
            states.append(r.state.byteBuffer)
            scopes.append(r.keyScope ?? "")
        }
        let s = schema
        let (i, v, x, st, sc) = (ids, versions, expected, states, scopes)
        let (replaced, shredded): (Int64, String?) = try await run { client in
            var out: (Int64, String?) = (0, nil)
            for try await row in try await client.query("""
                WITH u AS (
                    SELECT * FROM unnest(\(i)::uuid[], \(v)::bigint[], \(x)::bytea[], \(st)::bytea[], \(sc)::text[])
                        AS u(id, v, expected, st, sc)
                ), dead AS (
                    SELECT t.scope FROM \(unescaped: s).tombstones t WHERE t.scope IN (SELECT u.sc FROM u WHERE u.sc <> '') LIMIT 1
                ), upd AS (
                    UPDATE \(unescaped: s).\(unescaped: table) AS e SET state = u.st, key_scope = NULLIF(u.sc, '')
                    FROM u
                    WHERE NOT EXISTS (SELECT 1 FROM dead)
                      AND e.originator_id = u.id AND e.originator_version = u.v AND e.state = u.expected
                    RETURNING 1
                )
                SELECT (SELECT count(*) FROM upd)::bigint, (SELECT scope FROM dead)
                """, logger: self.logger).decode((Int64, String?).self) {
                out = row
            }
            return out
        }
        if let shredded {
            throw KeyManagementError(.shredded, "the scope was shredded; nothing of the batch was rewritten", scope: shredded)
        }
        return Int(replaced)
    }
}
