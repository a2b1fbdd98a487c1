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
    static let sql = PostgresSchema.readAggregatesQuery(
        requests: "SELECT $1::uuid AS id, $2::bigint AS gt, $3::bigint AS lte, 1::bigint AS n", prefix: "")
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
