/// Counts of what a store holds, the same for every backend (`esctl stats` prints them).
public struct StoreStatistics: Sendable, Hashable, Codable {
    /// Stored events: the notification log's length, shreds' erasure records included.
    public var events: Int
    /// Distinct aggregates (an erasure record's originator id is not an aggregate).
    public var aggregates: Int
    /// Stored snapshots.
    public var snapshots: Int
    /// Key scopes with a data key.
    public var keyScopes: Int
    /// Data-key versions stored.
    public var dataKeys: Int
    /// Shredded scopes.
    public var shreddedScopes: Int
    /// Bytes the store occupies: the database file plus its WAL (SQLite), or the events and
    /// snapshots tables with their indexes and TOAST (PostgreSQL's `pg_total_relation_size`).
    public var bytesOnDisk: Int

    /// Creates statistics.
    public init(events: Int, aggregates: Int, snapshots: Int, keyScopes: Int, dataKeys: Int, shreddedScopes: Int,
                bytesOnDisk: Int) {
        self.events = events
        self.aggregates = aggregates
        self.snapshots = snapshots
        self.keyScopes = keyScopes
        self.dataKeys = dataKeys
        self.shreddedScopes = shreddedScopes
        self.bytesOnDisk = bytesOnDisk
    }
}
