import CSQLite
import EventSourcing
import Foundation
import KeyManagement

/// Reading the store's rows with every column checked: SQLite keeps whatever a writer put in a
/// column (TEXT in an INTEGER column, NULL, a 5-byte id), and a value read as the wrong storage
/// class would silently become 0 or "". A row written outside the library that does not hold
/// what the library writes is refused with a typed error naming the row: `.databaseCorrupt`
/// for events and snapshots, ``KeyManagementError/Code/storeFailure`` for key-store rows.
extension Statement {
    /// A stored record of `table` (`events` or `snapshots`) from the columns given.
    /// - Parameters:
    ///   - notificationID: the notification id's column (events only).
    ///   - originatorID: the originator id's column, or nil when the query selected by `knownID`.
    ///   - rowID: a column that names the row when its version cannot (events: `notification_id`).
    /// - Throws: `.databaseCorrupt` naming the row (notification id, originator id and version
    ///   as far as they could be read) and the column.
    func storedRecord(table: String, notificationID: Int32? = nil, originatorID: Int32? = nil, knownID: UUID? = nil,
                      version: Int32, topic: Int32, state: Int32,
                      rowID: Int32? = nil) throws(EventSourcingError) -> (notificationID: Int64?, event: StoredEvent) {
        var nid: Int64?
        if let c = notificationID ?? rowID {
            guard let n = integer(c) else {
                throw EventSourcingError(.databaseCorrupt, "\(table) row has a notification_id that is \(describeColumn(c)), not an integer")
            }
            nid = n
        }
        let id: UUID
        if let c = originatorID {
            guard let u = uuidValue(c) else {
                var e = EventSourcingError(.databaseCorrupt, "\(table) row"
                    + (nid.map { " at notification \($0)" } ?? " with originator_id \(hexColumn(c))")
                    + " has an originator_id that is \(describeColumn(c)), not a 16-byte id", notificationID: nid)
                if nid == nil, let v = integer(version) { e.originatorVersion = Int(exactly: v) }
                throw e
            }
            id = u
        } else {
            id = knownID ?? UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        }
        guard let v = integer(version), let v = Int(exactly: v) else {
            throw EventSourcingError(.databaseCorrupt,
                                     "\(table) row has an originator_version that is \(describeColumn(version)), not an integer",
                                     originatorID: id, notificationID: nid)
        }
        guard let t = textValue(topic) else {
            throw EventSourcingError(.databaseCorrupt, "\(table) row has a topic that is \(describeColumn(topic)), not UTF-8 text",
                                     originatorID: id, originatorVersion: v, notificationID: nid)
        }
        guard let st = blobValue(state) else {
            throw EventSourcingError(.databaseCorrupt, "\(table) row has a state that is \(describeColumn(state)), not a BLOB",
                                     originatorID: id, originatorVersion: v, topic: t, notificationID: nid)
        }
        return (notificationID == nil ? nil : nid, StoredEvent(originatorID: id, originatorVersion: v, topic: t, state: st))
    }

    /// A notification: columns notification_id, originator_id, originator_version, topic, state from `first`.
    func storedNotification(from first: Int32 = 0) throws(EventSourcingError) -> StoredNotification {
        let (nid, e) = try storedRecord(table: "events", notificationID: first, originatorID: first + 1,
                                        version: first + 2, topic: first + 3, state: first + 4)
        return StoredNotification(id: nid ?? 0, originatorID: e.originatorID, originatorVersion: e.originatorVersion,
                                  topic: e.topic, state: e.state)
    }

    /// The bytes of a TEXT or BLOB column in hex (at most 32 bytes shown), to name a row whose
    /// key is not what it should be. Used only for originator ids, which hold no personal data.
    func hexColumn(_ c: Int32) -> String {
        let t = sqlite3_column_type(handle, c)
        guard t == SQLITE_TEXT || t == SQLITE_BLOB else { return describeColumn(c) }
        let bytes = blob(c)
        let shown = bytes.prefix(32).map { String(format: "%02x", $0) }.joined()
        return "X'" + shown + (bytes.count > 32 ? "…" : "") + "'"
    }
}

// MARK: Key-store rows

extension Statement {
    /// A data-key row: columns scope, version, kek_id, wrapped, created_at.
    /// - Parameter scope: the scope asked for, to name the row when its own scope is unreadable.
    /// - Throws: ``KeyManagementError/Code/storeFailure`` naming the scope; a version outside
    ///   0…2³²−1 is refused, never truncated (a truncated version would make every page of a
    ///   `(scope, version)` cursor start again at the same row).
    func wrappedDataKey(asked scope: String? = nil) throws(KeyManagementError) -> WrappedDataKey {
        guard let rowScope = textValue(0) else {
            throw KeyManagementError(.storeFailure, "a data_keys row has a scope that is \(describeColumn(0)), not text", scope: scope)
        }
        guard let v = integer(1), let version = UInt32(exactly: v) else {
            throw KeyManagementError(.storeFailure,
                                     "a data_keys row has a version that is \(describeColumn(1)), not a key version (0…4294967295); it is refused, not truncated",
                                     scope: rowScope)
        }
        guard let kek = textValue(2) else {
            throw KeyManagementError(.storeFailure, "a data_keys row has a kek_id that is \(describeColumn(2)), not text",
                                     scope: rowScope, keyVersion: version)
        }
        guard let wrapped = blobValue(3) else {
            throw KeyManagementError(.storeFailure, "a data_keys row has a wrapped key that is \(describeColumn(3)), not a BLOB",
                                     scope: rowScope, keyVersion: version)
        }
        guard let created = real(4) else {
            throw KeyManagementError(.storeFailure, "a data_keys row has a created_at that is \(describeColumn(4)), not a number",
                                     scope: rowScope, keyVersion: version)
        }
        return WrappedDataKey(scope: rowScope, version: version, kekID: kek, wrapped: wrapped,
                              createdAt: Date(timeIntervalSince1970: created))
    }

    /// A tombstone row: columns scope, shredded_at, destroyed_versions.
    func tombstoneRow(asked scope: String? = nil) throws(KeyManagementError) -> Tombstone {
        guard let rowScope = textValue(0) else {
            throw KeyManagementError(.storeFailure, "a tombstones row has a scope that is \(describeColumn(0)), not text", scope: scope)
        }
        guard let at = real(1) else {
            throw KeyManagementError(.storeFailure, "the tombstone has a shredded_at that is \(describeColumn(1)), not a number",
                                     scope: rowScope)
        }
        guard let list = textValue(2) else {
            throw KeyManagementError(.storeFailure, "the tombstone has destroyed_versions that are \(describeColumn(2)), not text",
                                     scope: rowScope)
        }
        var versions: [UInt32] = []
        for item in list.split(separator: ",", omittingEmptySubsequences: false) where !list.isEmpty {
            guard let v = UInt32(item) else {
                throw KeyManagementError(.storeFailure, "the tombstone's destroyed_versions is not a list of key versions",
                                         scope: rowScope)
            }
            versions.append(v)
        }
        return Tombstone(scope: rowScope, shreddedAt: Date(timeIntervalSince1970: at), destroyedVersions: versions)
    }
}
