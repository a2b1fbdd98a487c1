import Foundation
import PostgresNIO

/// Named prepared statements: parsed once per connection, then only bound and run (PostgreSQL
/// plans the first few runs for their values, then usually keeps a generic plan).
///
/// postgres-nio takes their SQL as a compile-time constant, so it cannot name the configured
/// schema; the store's connections set `search_path` to that schema instead, and these
/// statements name tables without it.

/// One aggregate's events with `gt < version <= lte`, in version order, and the data keys of the
/// scopes they are sealed with: the row shape of `read_aggregates` (PostgresSchema), for a group of one.
struct ReadAggregateStatement: PostgresPreparedStatement {
    static let sql = """
        WITH ev AS (SELECT originator_version, topic, state, key_scope FROM events
                    WHERE originator_id = $1 AND originator_version > $2 AND originator_version <= $3)
        SELECT 1::bigint, ev.originator_version, ev.topic, ev.state, NULL::text, NULL::double precision FROM ev
        UNION ALL
        SELECT 0::bigint, k.version, k.kek_id, k.wrapped, k.scope, k.created_at FROM data_keys k
        WHERE k.scope = ANY (ARRAY(SELECT DISTINCT ev.key_scope FROM ev WHERE ev.key_scope IS NOT NULL))
        ORDER BY 1, 2
        """
    /// (1 for an event, 0 for a key; version; topic or KEK id; state or wrapped key; key scope; created at)
    typealias Row = (Int64, Int64, String, ByteBuffer, String?, Double?)

    var id: UUID
    var gt: Int64
    var lte: Int64

    func makeBindings() throws -> PostgresBindings {
        var b = PostgresBindings(capacity: 3)
        b.append(id)
        b.append(gt)
        b.append(lte)
        return b
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
