import Foundation
import Synchronization

/// A ``KeyStore`` in process memory: for tests, demos and applications that keep their
/// events in memory too. Nothing survives the process.
public final class InMemoryKeyStore: KeyStore {
    private struct State {
        var checks: [MasterKeyCheck] = []
        var keys: [String: [WrappedDataKey]] = [:]
        var tombstones: [String: Tombstone] = [:]
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
        state.withLock { $0.keys[scope] ?? [] }
    }

    public func insertDataKey(_ key: WrappedDataKey) async throws {
        try state.withLock { (s) throws(KeyManagementError) in
            if let t = s.tombstones[key.scope] {
                throw KeyManagementError(.shredded, "the scope was shredded", scope: key.scope, shreddedAt: t.shreddedAt)
            }
            if s.keys[key.scope, default: []].contains(where: { $0.version == key.version }) {
                throw KeyManagementError(.keyExists, "data key exists", scope: key.scope, keyVersion: key.version)
            }
            s.keys[key.scope, default: []].append(key)
            s.keys[key.scope]?.sort { $0.version < $1.version }
        }
    }

    public func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
        state.withLock { s in
            guard let i = s.keys[key.scope]?.firstIndex(where: { $0.version == key.version }),
                  s.keys[key.scope]?[i].kekID == previousKEKID else { return false }
            s.keys[key.scope]?[i] = key
            return true
        }
    }

    public func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
        guard limit > 0 else { return [] }
        return state.withLock { s in
            var out: [WrappedDataKey] = []
            for scope in s.keys.keys.sorted() {
                if let c = cursor, scope < c.scope { continue }
                for k in s.keys[scope] ?? [] {
                    if let c = cursor, scope == c.scope, k.version <= c.version { continue }
                    out.append(k)
                    if out.count >= limit { return out }
                }
            }
            return out
        }
    }

    public func tombstone(scope: String) async throws -> Tombstone? {
        state.withLock { $0.tombstones[scope] }
    }

    public func tombstones() async throws -> [Tombstone] {
        state.withLock { $0.tombstones.values.sorted { $0.shreddedAt < $1.shreddedAt } }
    }

    public func shred(scope: String, at time: Date) async throws -> Tombstone {
        try state.withLock { (s) throws(KeyManagementError) in
            if let t = s.tombstones[scope] {
                throw KeyManagementError(.shredded, "the scope was already shredded", scope: scope, shreddedAt: t.shreddedAt)
            }
            let versions = (s.keys.removeValue(forKey: scope) ?? []).map(\.version)
            let t = Tombstone(scope: scope, shreddedAt: time, destroyedVersions: versions)
            s.tombstones[scope] = t
            return t
        }
    }
}
