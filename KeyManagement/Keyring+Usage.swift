import Foundation
import Logging
import Synchronization

/// Counting encryptions: each data-key version seals at most ``encryptionLimit`` records, then
/// the scope is rotated automatically (SECURITY.md §10).
///
/// The key ring reserves encryptions from its store's ``KeyUsageCounter`` in blocks of
/// ``encryptionBlock`` before it uses them, so the stored count is always at least the number
/// made, by every process together. A version this key ring created (minted for a write, or
/// rotated to) comes with its first block reserved implicitly (``KeyUsage/firstBlock(limit:)``).
/// When a block would pass the limit, the scope is rotated and the records go under the new
/// version. With a store that counts nothing, the count is this process's own, from zero.
extension Keyring {
    // MARK: Encryption counting

    /// The most encryptions one data-key version may seal: at least 1, at most 2^32
    /// (``KeyUsage/maxLimit``); values outside are clamped. Default 2^30 (``KeyUsage/defaultLimit``).
    public var encryptionLimit: UInt64 {
        get { state.withLock { $0.encryptionLimit } }
        set {
            let limit = min(max(newValue, 1), KeyUsage.maxLimit)
            state.withLock { s in
                s.encryptionLimit = limit
                s.budget.removeAll()   // reserved under the old limit: reserve afresh
            }
        }
    }

    /// Encryptions reserved from the store at a time (at least 1; default 4,096). A larger block
    /// means fewer store writes and more encryptions left unused (but counted) when a process stops.
    public var encryptionBlock: UInt64 {
        get { state.withLock { $0.encryptionBlock } }
        set { state.withLock { $0.encryptionBlock = max(newValue, 1) } }
    }

    /// The current key of `scope` with `encryptions` encryptions reserved under it: rotates the
    /// scope first when its current version has no room left.
    /// - Throws: what ``writeKey(for:likelyNew:)`` and ``rotate(scope:)`` throw;
    ///   ``KeyManagementError/Code/limitExceeded`` when `encryptions` is above the limit (one
    ///   save of more records than one key may seal), or when the scope's new key's first
    ///   reservation is still refused after rotating.
    package func writeKey(for scope: String, likelyNew: Bool = false, encryptions: Int) async throws -> WriteKey {
        guard encryptions > 0 else { return try await writeKey(for: scope, likelyNew: likelyNew) }
        let n = UInt64(encryptions)
        let limit = state.withLock { $0.encryptionLimit }
        guard n <= limit else {
            throw KeyManagementError(.limitExceeded,
                "\(n) records sealed at once under one data key pass its encryption limit of \(limit)", scope: scope)
        }
        var rotations = 0
        while true {
            let w = try await writeKey(for: scope, likelyNew: likelyNew && rotations == 0)
            if try await reserve(n, for: w) { return w }
            // Full. A key minted for this write has its first block: only a limit below the
            // batch refuses it, which the check above excludes.
            guard w.pending == nil, rotations < 3 else {
                throw KeyManagementError(.limitExceeded,
                    "data key v\(w.key.version) has no room for \(n) more encryptions under the limit of \(limit), even after rotating",
                    scope: scope, keyVersion: w.key.version)
            }
            rotations += 1
            try await rotateFull(scope: scope, version: w.key.version, limit: limit)
        }
    }

    /// Takes `n` encryptions of `w`'s version from this key ring's budget, reserving a block
    /// when it runs short. False when the store refuses the block (the version is full).
    private func reserve(_ n: UInt64, for w: WriteKey) async throws -> Bool {
        let ck = CacheKey(scope: ExactScope(w.key.scope), version: w.key.version)
        let (taken, limit, block) = state.withLock { s -> (Bool, UInt64, UInt64) in
            if s.budget[ck] == nil, w.pending != nil {
                // Minted here: its first block is ours (KeyUsage.firstBlock).
                s.trimBudget()
                s.budget[ck] = KeyUsage.firstBlock(limit: s.encryptionLimit)
            }
            if let b = s.budget[ck], b >= n {
                s.budget[ck] = b - n
                return (true, s.encryptionLimit, s.encryptionBlock)
            }
            return (false, s.encryptionLimit, s.encryptionBlock)
        }
        if taken { return true }
        while true {
            let have = state.withLock { $0.budget[ck] ?? 0 }
            let amount = min(max(block, n > have ? n - have : 0), limit)
            let granted: Bool
            if let counter = usageCounter {
                granted = try await counter.reserveEncryptions(scope: w.key.scope, version: w.key.version,
                                                               count: amount, limit: limit) != nil
            } else {
                granted = state.withLock { s in
                    // No counter in the store: this process's own count (from its first block).
                    let total = s.processTotals[ck] ?? KeyUsage.firstBlock(limit: limit)
                    guard total <= limit, amount <= limit - total else { return false }
                    // Bounded: past 4 × the cache capacity the counts start again (SECURITY.md §10).
                    if s.processTotals.count > max(64, s.capacity * 4) { s.processTotals.removeAll() }
                    s.processTotals[ck] = total + amount
                    return true
                }
            }
            guard granted else { return false }
            let done = state.withLock { s -> Bool in
                let b = (s.budget[ck] ?? 0) + amount
                if s.budget[ck] == nil { s.trimBudget() }   // bounded; dropped blocks stay counted
                guard b >= n else { s.budget[ck] = b; return false }
                s.budget[ck] = b - n
                return true
            }
            if done { return true }
        }
    }

    /// Counts `n` encryptions already made under `version` of `scope` by a pass that seals
    /// records under a key it chose itself (re-encryption), so the
    /// stored count stays at least the number made. The pass is not stopped: a version it takes
    /// past ``encryptionLimit`` (by at most one page) is full, and the next write rotates the
    /// scope. Never past ``KeyUsage/maxLimit`` (2^32): that is refused with
    /// ``KeyManagementError/Code/limitExceeded``.
    package func countEncryptions(_ n: Int, scope: String, version: UInt32) async throws {
        guard n > 0 else { return }
        let count = UInt64(n)
        let ck = CacheKey(scope: ExactScope(scope), version: version)
        let covered = state.withLock { s -> Bool in
            guard let b = s.budget[ck], b >= count else { return false }
            s.budget[ck] = b - count
            return true
        }
        if covered { return }
        let granted: Bool
        if let counter = usageCounter {
            granted = try await counter.reserveEncryptions(scope: scope, version: version, count: count,
                                                           limit: KeyUsage.maxLimit) != nil
        } else {
            granted = state.withLock { s in
                let total = s.processTotals[ck] ?? KeyUsage.firstBlock(limit: s.encryptionLimit)
                guard total <= KeyUsage.maxLimit, count <= KeyUsage.maxLimit - total else { return false }
                if s.processTotals.count > max(64, s.capacity * 4) { s.processTotals.removeAll() }
                s.processTotals[ck] = total + count
                return true
            }
        }
        guard granted else {
            throw KeyManagementError(.limitExceeded,
                "data key v\(version) has sealed 2^32 records, the bound for random 96-bit nonces: rotate the scope and run the pass again",
                scope: scope, keyVersion: version)
        }
    }

    /// Moves `scope` past its full `version`: rotates, unless another key ring already did.
    private func rotateFull(scope: String, version: UInt32, limit: UInt64) async throws {
        let exact = ExactScope(scope)
        let newest = try Keyring.only(scope, try await store.dataKeys(scope: scope)).last?.version ?? 0
        if newest > version {
            state.withLock { _ = $0.current.removeValue(forKey: exact) }
            return
        }
        do {
            let v = try await rotate(scope: scope)
            logger.info("rotated data key: the encryption limit was reached",
                        metadata: ["scope": "\(scope)", "version": "\(v)", "limit": "\(limit)"])
        } catch let e as KeyManagementError where e.code == .keyExists {
            state.withLock { _ = $0.current.removeValue(forKey: exact) }   // another process rotated first
        }
    }

    /// The encryptions counted per version of `scope`: the store's counts (a version without
    /// one has at most its first block reserved, and is left out), or this process's own when
    /// the store counts nothing.
    public func encryptionCounts(scope: String) async throws -> [UInt32: UInt64] {
        if let counter = usageCounter { return try await counter.reservedEncryptions(scope: scope) }
        let exact = ExactScope(scope)
        return state.withLock { s in
            var out: [UInt32: UInt64] = [:]
            for (ck, n) in s.processTotals where ck.scope == exact { out[ck.version] = n }
            return out
        }
    }
}
