import Foundation

/// What happened to a key scope's data keys, as recorded in a store's key-change feed.
///
/// The raw values are what the stores keep in `key_changes.kind` (SECURITY.md §5.18): they are
/// part of the stored format.
public enum KeyChangeKind: String, Sendable, Hashable, CaseIterable {
    /// The scope was shredded: every process must refuse its records.
    case shred
    /// A new version of the scope's key was stored: writers should seal under it.
    case rotate
    /// Old versions of the scope's key were retired (deleted after re-encryption): readers
    /// must drop what they cached of them.
    case retire
}

/// One entry of a key-change feed.
public struct KeyChange: Sendable, Hashable {
    /// Position in the feed: increasing in commit order, never reused.
    public var seq: Int64
    /// The key scope (no other data: a tombstone holds the same id already).
    public var scope: String
    /// What happened.
    public var kind: KeyChangeKind
    /// When (for a shred, the tombstone's time).
    public var at: Date

    /// Creates an entry.
    public init(seq: Int64, scope: String, kind: KeyChangeKind, at: Date) {
        self.seq = seq
        self.scope = scope
        self.kind = kind
        self.at = at
    }
}

/// A page of a key-change feed (``KeyChangeFeed/keyChanges(after:limit:)``).
public struct KeyChangePage: Sendable, Hashable {
    /// The changes after the position asked for, oldest first.
    public var changes: [KeyChange]
    /// Set when entries after the position asked for were pruned (the store keeps only the
    /// newest ``KeyChange/retained``): the reader cannot know which scopes changed
    /// and must drop everything it cached.
    public var gap: Bool

    /// Creates a page.
    public init(changes: [KeyChange], gap: Bool) {
        self.changes = changes
        self.gap = gap
    }
}

/// A key store that records every shred, rotation and retirement of a data key in a feed,
/// **in the same transaction** as the change itself, so other processes using the store learn
/// of it (a ``Keyring`` checks the feed at most once per ``Keyring/keyChangeRefreshInterval``
/// before it uses a cached key; see SECURITY.md §8).
///
/// `SQLiteStore` (schema 5) and `PostgresStore` (schema 2) write the feed with triggers on
/// `tombstones` (kind `shred`) and `data_keys` (kind `rotate`, an insert of a version above 1),
/// so every path that shreds or rotates records it; ``InMemoryKeyStore`` records it in
/// ``KeyStore/shred(scope:at:)`` and ``KeyStore/insertDataKey(_:)``. An operation that retires
/// old versions records kind `retire` for the scope in its own transaction (the stores offer a
/// helper for it; see `SQLiteStore.recordKeyChange` and `PostgresStore.recordKeyChangeSQL`).
///
/// A store without the feed still works: each process then sees another process's shred only
/// when the key leaves its cache (eviction or restart) — the weaker guarantee of SECURITY.md §8.
public protocol KeyChangeFeed: KeyStore {
    /// The position of the newest change (0 when there is none). Called at most once per
    /// refresh interval per keyring, so it should cost one cheap query at most.
    func keyChangeMark() async throws -> Int64

    /// The changes after `seq`, oldest first, at most `limit` (at least 1) of them.
    /// `gap` is set when an entry after `seq` was pruned.
    func keyChanges(after seq: Int64, limit: Int) async throws -> KeyChangePage
}

extension KeyChange {
    /// How many entries the library's stores keep: inserting one prunes those `retained` or
    /// more positions behind it. A process that did not look at the feed while more than that
    /// many shreds and rotations were recorded finds a ``KeyChangePage/gap`` and drops its whole
    /// key cache.
    public static let retained: Int64 = 10_000
}
