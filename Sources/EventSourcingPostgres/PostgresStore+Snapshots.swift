import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

extension PostgresStore {
    public func insertSnapshot(_ snapshot: StoredEvent) async throws {
        if snapshot.keyScope == nil { try await refusePlaintext(snapshot, snapshot: true) }
        let s = schema
        let scope = snapshot.keyScope ?? ""
        let state = snapshot.state.byteBuffer
        let inserted: Int = try await run { client in
            // Not written for a shredded scope, even by a process with a stale cached key.
            var n = 0
            for try await _ in try await client.query("""
                INSERT INTO \(unescaped: s).snapshots (originator_id, originator_version, topic, state, key_scope)
                SELECT \(snapshot.originatorID), \(Int64(snapshot.originatorVersion)), \(snapshot.topic), \(state), NULLIF(\(scope), '')
                WHERE NOT EXISTS (SELECT 1 FROM \(unescaped: s).tombstones WHERE scope = \(scope))
                ON CONFLICT (originator_id, originator_version)
                DO UPDATE SET topic = EXCLUDED.topic, state = EXCLUDED.state, key_scope = EXCLUDED.key_scope
                RETURNING 1
                """, logger: self.logger).decode(Int32.self) { n += 1 }
            return n
        }
        if inserted == 0 {
            throw KeyManagementError(.shredded, "the scope was shredded", scope: scope)
        }
    }

    public func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        let s = schema
        let upper = Int64(lte ?? Int.max)
        return try await run { client in
            var out: StoredEvent?
            for try await (v, t, st) in try await client.query("""
                SELECT originator_version, topic, state FROM \(unescaped: s).snapshots
                WHERE originator_id = \(originatorID) AND originator_version <= \(upper)
                ORDER BY originator_version DESC LIMIT 1
                """, logger: self.logger).decode((Int64, String, ByteBuffer).self) {
                out = StoredEvent(originatorID: originatorID, originatorVersion: Int(v), topic: t, state: st.bytes)
            }
            return out
        }
    }

    public func deleteSnapshots(keyScope: String) async throws -> Int {
        let s = schema
        return try await run { client in
            var n = 0
            for try await _ in try await client.query(
                "DELETE FROM \(unescaped: s).snapshots WHERE key_scope = \(keyScope) RETURNING 1",
                logger: self.logger).decode(Int32.self) { n += 1 }
            return n
        }
    }

    /// A page of snapshots in `(originatorID, version)` order after `cursor`.
    public func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent] {
        guard limit > 0 else { return [] }   // PostgreSQL refuses a negative LIMIT
        let s = schema
        let lim = Int64(limit)
        return try await run { client in
            var out: [StoredEvent] = []
            // The first page has no lower bound: a stand-in cursor (the nil UUID, version -1)
            // would skip a snapshot stored below it.
            let rows: PostgresRowSequence
            if let c = cursor {
                rows = try await client.query("""
                    SELECT originator_id, originator_version, topic, state FROM \(unescaped: s).snapshots
                    WHERE (originator_id, originator_version) > (\(c.originatorID), \(Int64(c.originatorVersion)))
                    ORDER BY originator_id, originator_version LIMIT \(lim)
                    """, logger: self.logger)
            } else {
                rows = try await client.query("""
                    SELECT originator_id, originator_version, topic, state FROM \(unescaped: s).snapshots
                    ORDER BY originator_id, originator_version LIMIT \(lim)
                    """, logger: self.logger)
            }
            for try await (oid, ov, t, st) in rows.decode((UUID, Int64, String, ByteBuffer).self) {
                out.append(StoredEvent(originatorID: oid, originatorVersion: Int(ov), topic: t, state: st.bytes))
            }
            return out
        }
    }
}
