import Foundation
import Synchronization

/// A ``KeyStore`` in process memory: for tests, demos and applications that keep their
/// events in memory too. Nothing survives the process.
///
/// Scopes are told apart and ordered by their exact UTF-8 bytes (``ExactScope``), like
/// SQLite's BINARY collation: canonically equivalent spellings are different scopes.
public final class InMemoryKeyStore: KeyStore {
    private struct State {
        var checks: [MasterKeyCheck] = []
        var keys: [ExactScope: [WrappedDataKey]] = [:]
        var tombstones: [ExactScope: Tombstone] = [:]
        /// The key-change feed (``KeyChangeFeed``): the newest ``KeyChange/retained`` entries.
        var changes: [KeyChange] = []
        var lastSeq: Int64 = 0
        /// Encryptions reserved per key version (``KeyUsageCounter``).
        var reserved: [ExactScope: [UInt32: UInt64]] = [:]

        mutating func record(_ scope: String, _ kind: KeyChangeKind, at time: Date) {
            lastSeq += 1
            changes.append(KeyChange(seq: lastSeq, scope: scope, kind: kind, at: time))
            if changes.count > Int(KeyChange.retained) { changes.removeFirst(changes.count - Int(KeyChange.retained)) }
        }
    }

    private let state = Mutex(State())

    /// Creates an empty store.
    public init() {}

    public func masterKeyChecks() async throws -> [MasterKeyCheck] {
        state.withLock { $0.checks }
    }

    public func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws {
        state.withLock { s in
            if !s.checks.contains(where: { $0.kekID == check.kekID }) { s.checks.append(check) }
        }
    }

    public func deleteMasterKeyCheck(kekID: String) async throws {
        state.withLock { $0.checks.removeAll { $0.kekID == kekID } }
    }

    public func dataKeys(scope: String) async throws -> [WrappedDataKey] {
        state.withLock { $0.keys[ExactScope(scope)] ?? [] }
    }

    public func insertDataKey(_ key: WrappedDataKey) async throws {
        let scope = ExactScope(key.scope)
        try state.withLock { (s) throws(KeyManagementError) in
            if let t = s.tombstones[scope] {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: key.scope, shreddedAt: t.shreddedAt)
            }
            if s.keys[scope, default: []].contains(where: { $0.version == key.version }) {
                throw KeyManagementError(.keyExists, "data key exists", scope: key.scope, keyVersion: key.version)
            }
            s.keys[scope, default: []].append(key)
            s.keys[scope]?.sort { $0.version < $1.version }
            if key.version > 1 { s.record(key.scope, .rotate, at: key.createdAt) }
        }
    }

    public func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        state.withLock { InMemoryKeyStore.rewrap(key, previousKEKID: previousKEKID, in: &$0) }
    }

    /// All under one lock: no reader sees part of the batch.
    public func rewrapDataKeys(_ rewraps: [DataKeyRewrap]) async throws -> Int {
        try DataKeyRewrap.checkBatch(rewraps)
        return state.withLock { s in
            var replaced = 0
            for r in rewraps where InMemoryKeyStore.rewrap(r.key, previousKEKID: r.previousKEKID, in: &s) { replaced += 1 }
            return replaced
        }
    }

    private static func rewrap(_ key: WrappedDataKey, previousKEKID: String, in s: inout State) -> Bool {
        let scope = ExactScope(key.scope)
        guard let i = s.keys[scope]?.firstIndex(where: { $0.version == key.version }),
              s.keys[scope]?[i].kekID == previousKEKID else { return false }
        s.keys[scope]?[i] = key
        return true
    }

    public func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        guard limit > 0 else { return [] }
        let after = cursor.map { (scope: ExactScope($0.scope), version: $0.version) }
        return state.withLock { s in
            var out: [WrappedDataKey] = []
            for scope in s.keys.keys.sorted() {
                if let c = after, scope < c.scope { continue }
                for k in s.keys[scope] ?? [] {
                    if let c = after, scope == c.scope, k.version <= c.version { continue }
                    out.append(k)
                    if out.count >= limit { return out }
                }
            }
            return out
        }
    }

    public func tombstone(scope: String) async throws -> Tombstone? {
        state.withLock { $0.tombstones[ExactScope(scope)] }
    }

    public func tombstones() async throws -> [Tombstone] {
        state.withLock { $0.tombstones.values.sorted { $0.shreddedAt < $1.shreddedAt } }
    }

    public func shred(scope: String, at time: Date) async throws -> Tombstone {
        let exact = ExactScope(scope)
        return try state.withLock { (s) throws(KeyManagementError) in
            if let t = s.tombstones[exact] {
                throw KeyManagementError(.shredded, "the scope was already shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let versions = (s.keys.removeValue(forKey: exact) ?? []).map(\.version)
            let t = Tombstone(scope: scope, shreddedAt: time, destroyedVersions: versions)
            s.tombstones[exact] = t
            s.reserved.removeValue(forKey: exact)
            s.record(scope, .shred, at: time)
            return t
        }
    }

    public func retireDataKeys(scope: String, below version: UInt32) async throws -> [UInt32] {
        let exact = ExactScope(scope)
        return try state.withLock { (s) throws(KeyManagementError) -> [UInt32] in
            if let t = s.tombstones[exact] {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let retired = try Self.versionsToRetire((s.keys[exact] ?? []).map(\.version), scope: scope, below: version)
            guard !retired.isEmpty else { return [] }
            s.keys[exact]?.removeAll { $0.version < version }
            // The retired versions seal nothing more: their encryption counts go with them.
            if var counts = s.reserved[exact] {
                counts = counts.filter { $0.key >= version }
                s.reserved[exact] = counts.isEmpty ? nil : counts
            }
            s.record(scope, .retire, at: Date())   // the key-change feed
            return retired
        }
    }
}

extension InMemoryKeyStore: KeyChangeFeed {
    public func keyChangeMark() async throws -> Int64 {
        state.withLock { $0.lastSeq }
    }

    public func keyChanges(after seq: Int64, limit: Int) async throws -> KeyChangePage {
        state.withLock { s in
            let gap = seq < s.lastSeq && (s.changes.first.map { $0.seq > seq + 1 } ?? true)
            return KeyChangePage(changes: Array(s.changes.lazy.filter { $0.seq > seq }.prefix(max(1, limit))), gap: gap)
        }
    }

    /// Records a change made outside ``shred(scope:at:)`` and ``insertDataKey(_:)`` (retiring
    /// old versions), under the same lock as the change when called from within the store.
    public func recordKeyChange(scope: String, kind: KeyChangeKind, at time: Date = Date()) {
        state.withLock { $0.record(scope, kind, at: time) }
    }
}

extension InMemoryKeyStore: KeyUsageCounter {
    public func reserveEncryptions(scope: String, version: UInt32, count: UInt64, limit: UInt64) async throws -> UInt64? {
        state.withLock { s in
            let exact = ExactScope(scope)
            guard let now = s.reserved[exact]?[version] else {
                guard let total = KeyUsage.initialTotal(count: count, limit: limit) else { return nil }
                s.reserved[exact, default: [:]][version] = total
                return total
            }
            guard count <= limit, now <= limit - count else { return nil }
            s.reserved[exact, default: [:]][version] = now + count
            return now + count
        }
    }

    public func reservedEncryptions(scope: String) async throws -> [UInt32: UInt64] {
        state.withLock { $0.reserved[ExactScope(scope)] ?? [:] }
    }
}
