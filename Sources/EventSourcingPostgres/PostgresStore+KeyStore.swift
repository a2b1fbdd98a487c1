import EventSourcing
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO

extension PostgresStore {
    public func masterKeyChecks() async throws -> [MasterKeyCheck] {
        let s = schema
        return try await run { client in
            var out: [MasterKeyCheck] = []
            for try await (id, sealed, kdf, at) in try await client.query(
                "SELECT kek_id, sealed, kdf, created_at FROM \(unescaped: s).master_key_checks ORDER BY created_at, kek_id",
                logger: self.logger).decode((String, ByteBuffer, String?, Double).self) {
                var params: KDFParameters?
                if let kdf {
                    // Not read as "no KDF" (which would make a passphrase-derived store look key-file based).
                    guard let p = try? JSONDecoder().decode(KDFParameters.self, from: Data(kdf.utf8)) else {
                        throw KeyManagementError(.storeFailure, "the master_key_checks row of master key \(id) has kdf parameters that do not decode")
                    }
                    params = p
                }
                out.append(MasterKeyCheck(kekID: id, sealed: sealed.bytes, kdf: params, createdAt: Date(timeIntervalSince1970: at)))
            }
            return out
        }
    }

    public func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws {
        let s = schema
        let kdf = try check.kdf.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        let sealed = check.sealed.byteBuffer
        _ = try await run { client in
            try await client.query("""
                INSERT INTO \(unescaped: s).master_key_checks (kek_id, sealed, kdf, created_at)
                VALUES (\(check.kekID), \(sealed), \(kdf), \(check.createdAt.timeIntervalSince1970)) ON CONFLICT (kek_id) DO NOTHING
                """, logger: self.logger)
            return 0
        }
    }

    public func deleteMasterKeyCheck(kekID: String) async throws {
        let s = schema
        _ = try await run { client in
            try await client.query("DELETE FROM \(unescaped: s).master_key_checks WHERE kek_id = \(kekID)", logger: self.logger)
            return 0
        }
    }

    public func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        let s = schema
        return try await run { client in
            try await PostgresStore.keys(try await client.query("""
                SELECT scope, version, kek_id, wrapped, created_at FROM \(unescaped: s).data_keys
                WHERE scope = \(scope) ORDER BY version
                """, logger: self.logger))
        }
    }

    /// Reads the keys of `scopes` in one query, for the key ring's misses on them that follow
    /// (a page of the log being decrypted: `verify`, re-encryption, projections). Without it a
    /// page of 500 records of different subjects cost 500 round trips. Kept like the keys a
    /// grouped read returns (``PostgresStore/dataKeys(scope:reading:)``): none if this process
    /// changed a key since the query started, each answers one miss within a second.
    public func prefetchDataKeys(scopes: [String]) async throws {
        let wanted = Array(scopes.lazy.filter { !$0.isEmpty }.prefix(Self.prefetchScopesPerCall))
        guard !wanted.isEmpty else { return }
        let s = schema
        let started = prefetchedKeys.start()
        let rows = try await run { client in
            try await PostgresStore.keys(try await client.query("""
                SELECT scope, version, kek_id, wrapped, created_at FROM \(unescaped: s).data_keys
                WHERE scope = ANY(\(wanted)) ORDER BY scope, version
                """, logger: self.logger))
        }
        var keys: [ExactScope: [WrappedDataKey]] = [:]
        for key in rows { keys[ExactScope(key.scope), default: []].append(key) }
        prefetchedKeys.keep(keys, startedAt: started)
    }

    /// The most scopes one ``prefetchDataKeys(scopes:)`` reads.
    static let prefetchScopesPerCall = 1_000

    public func insertDataKey(_ key: WrappedDataKey) async throws {
        // Through the save function: the same tombstone and existence checks, atomically.
        _ = try await insertEvents([], newKeys: [key])
    }

    public func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        let s = schema
        forgetPrefetchedKeys([key.scope])
        defer { forgetPrefetchedKeys([key.scope]) }
        let wrapped = key.wrapped.byteBuffer
        return try await run { client in
            var n = 0
            for try await _ in try await client.query("""
                UPDATE \(unescaped: s).data_keys SET kek_id = \(key.kekID), wrapped = \(wrapped)
                WHERE scope = \(key.scope) AND version = \(Int64(key.version)) AND kek_id = \(previousKEKID) RETURNING 1
                """, logger: self.logger).decode(Int32.self) { n += 1 }
            return n == 1
        }
    }

    public func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        let s = schema
        let lim = Int64(limit)
        return try await run { client in
            if let cursor {
                return try await PostgresStore.keys(try await client.query("""
                    SELECT scope, version, kek_id, wrapped, created_at FROM \(unescaped: s).data_keys
                    WHERE (scope, version) > (\(cursor.scope), \(Int64(cursor.version))) ORDER BY scope, version LIMIT \(lim)
                    """, logger: self.logger))
            }
            return try await PostgresStore.keys(try await client.query("""
                SELECT scope, version, kek_id, wrapped, created_at FROM \(unescaped: s).data_keys
                ORDER BY scope, version LIMIT \(lim)
                """, logger: self.logger))
        }
    }

    /// Data-key rows. A version outside 0…2³²−1 (the column is a bigint; only a row written
    /// outside the library can hold one) is refused with ``KeyManagementError/Code/storeFailure``
    /// naming the scope, never truncated: a truncated version would send a `(scope, version)`
    /// cursor back to a row it has passed, and master-key rotation and `keys list` would page forever.
    static func keys(_ rows: PostgresRowSequence) async throws -> [WrappedDataKey] {
        var out: [WrappedDataKey] = []
        for try await (scope, v, kek, w, at) in rows.decode((String, Int64, String, ByteBuffer, Double).self) {
            out.append(WrappedDataKey(scope: scope, version: try keyVersion(v, scope: scope), kekID: kek, wrapped: w.bytes,
                                      createdAt: Date(timeIntervalSince1970: at)))
        }
        return out
    }

    /// A stored data-key version as a key version, or ``KeyManagementError/Code/storeFailure``.
    static func keyVersion(_ stored: Int64, scope: String) throws(KeyManagementError) -> UInt32 {
        guard let v = UInt32(exactly: stored) else {
            throw KeyManagementError(.storeFailure,
                                     "a data_keys row has version \(stored), not a key version (0…4294967295); it is refused, not truncated",
                                     scope: scope)
        }
        return v
    }

    public func tombstone(scope: String) async throws -> Tombstone? {
        let s = schema
        return try await run { client in
            try await PostgresStore.tombstones(try await client.query(
                "SELECT scope, shredded_at, destroyed_versions FROM \(unescaped: s).tombstones WHERE scope = \(scope)",
                logger: self.logger)).first
        }
    }

    public func tombstones() async throws -> [Tombstone] {
        let s = schema
        return try await run { client in
            try await PostgresStore.tombstones(try await client.query(
                "SELECT scope, shredded_at, destroyed_versions FROM \(unescaped: s).tombstones ORDER BY shredded_at, scope",
                logger: self.logger))
        }
    }

    static func tombstones(_ rows: PostgresRowSequence) async throws -> [Tombstone] {
        var out: [Tombstone] = []
        for try await (scope, at, versions) in rows.decode((String, Double, String).self) {
            out.append(Tombstone(scope: scope, shreddedAt: Date(timeIntervalSince1970: at),
                                 destroyedVersions: try destroyedVersions(versions, scope: scope)))
        }
        return out
    }

    public func shred(scope: String, at time: Date) async throws -> Tombstone {
        let s = schema
        forgetPrefetchedKeys([scope])
        defer { forgetPrefetchedKeys([scope]) }
        let erasure = try ErasureRecord(keyScope: scope, shreddedAt: time).storedEvent()
        let rows: [(String, String)] = try await run { client in
            // The events-table lock serialises the shred with saves (which check tombstones and
            // insert keys under the same lock), so no key can be created for the scope after it.
            // The tombstone's primary key makes a second shred fail instead of succeeding twice.
            // The erasure record is inserted only with a new tombstone, in the same statement,
            // under the lock that orders notification ids (max + 1, as saves number theirs). A
            // row already at its coordinates (only a forged one) is left as it is.
            try await client.withTransaction(logger: self.logger) { conn in
            try await conn.query("LOCK TABLE \(unescaped: s).events IN EXCLUSIVE MODE", logger: self.logger)
            var out: [(String, String)] = []
            for try await r in try await conn.query("""
                WITH gone AS (DELETE FROM \(unescaped: s).data_keys WHERE scope = \(scope) RETURNING version),
                     t AS (INSERT INTO \(unescaped: s).tombstones (scope, shredded_at, destroyed_versions)
                           SELECT \(scope), \(time.timeIntervalSince1970),
                                  coalesce((SELECT string_agg(version::text, ',' ORDER BY version) FROM gone), '')
                           ON CONFLICT (scope) DO NOTHING RETURNING scope, destroyed_versions),
                     e AS (INSERT INTO \(unescaped: s).events (notification_id, originator_id, originator_version, topic, state, key_scope)
                           SELECT (SELECT coalesce(max(x.notification_id), 0) + 1 FROM \(unescaped: s).events x),
                                  \(erasure.originatorID), \(Int64(erasure.originatorVersion)), \(erasure.topic),
                                  \(erasure.state.byteBuffer), NULL
                           FROM t
                           ON CONFLICT (originator_id, originator_version) DO NOTHING)
                SELECT scope, destroyed_versions FROM t
                """, logger: self.logger).decode((String, String).self) { out.append(r) }
            return out
            }
        }
        guard let row = rows.first else {
            let existing = try await tombstone(scope: scope)
            throw KeyManagementError(.shredded, "the scope was already shredded", scope: scope, shreddedAt: existing?.shreddedAt)
        }
        return Tombstone(scope: scope, shreddedAt: time, destroyedVersions: try PostgresStore.destroyedVersions(row.1, scope: scope))
    }

    /// A tombstone's `destroyed_versions` list, or ``KeyManagementError/Code/storeFailure`` if an
    /// entry is not a key version (it is not skipped).
    static func destroyedVersions(_ list: String, scope: String) throws(KeyManagementError) -> [UInt32] {
        guard !list.isEmpty else { return [] }
        var out: [UInt32] = []
        for item in list.split(separator: ",", omittingEmptySubsequences: false) {
            guard let v = UInt32(item) else {
                throw KeyManagementError(.storeFailure, "the tombstone's destroyed_versions is not a list of key versions", scope: scope)
            }
            out.append(v)
        }
        return out
    }

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
