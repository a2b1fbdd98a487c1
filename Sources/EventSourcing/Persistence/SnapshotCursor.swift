import Foundation

/// A position in the snapshots' `(originatorID, originatorVersion)` order, for paging through
/// every snapshot of a store: the next page starts after it.
public struct SnapshotCursor: Sendable, Hashable {
    /// The aggregate id of the last snapshot read.
    public var originatorID: UUID
    /// Its version.
    public var originatorVersion: Int

    /// Creates a cursor at `(originatorID, originatorVersion)`.
    public init(originatorID: UUID, originatorVersion: Int) {
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
    }

    /// The cursor after `snapshot`, the last of a page.
    public init(after snapshot: StoredEvent) {
        self.init(originatorID: snapshot.originatorID, originatorVersion: snapshot.originatorVersion)
    }
}
