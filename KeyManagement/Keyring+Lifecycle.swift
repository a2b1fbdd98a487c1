import Foundation
import Logging
import Synchronization

/// Lifecycle: rotating data keys and the master key, and shredding scopes.
extension Keyring {
    // MARK: Lifecycle

    /// Creates a new version of `scope`'s data key; new records use it, old versions still decrypt.
    /// - Returns: the new version.
    /// - Throws: ``KeyManagementError/Code/shredded``, ``KeyManagementError/Code/keyNotFound``
    ///   if the scope has no key yet, ``KeyManagementError/Code/keyExists`` on a concurrent rotation,
    ///   ``KeyManagementError/Code/limitExceeded`` if the scope is at version 2^32 − 1, the last there is.
    public func rotate(scope: String) async throws -> UInt32 {
        try await instruments.run(Observability.SpanName.rotate, counting: instruments.dataKeyRotations) {
            try await rotateDataKey(scope: scope)
        }
    }

    private func rotateDataKey(scope: String) async throws -> UInt32 {
        try KeyScope.validate(scope)
        let stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        guard let latest = stored.last else {
            if let t = try await store.tombstone(scope: scope) {
                throw KeyManagementError(.shredded, "cannot rotate a shredded scope", scope: scope, shreddedAt: t.shreddedAt)
            }
            throw KeyManagementError(.keyNotFound, "the scope has no data key to rotate", scope: scope)
        }
        guard latest.version < UInt32.max else {
            throw KeyManagementError(.limitExceeded,
                "the scope's data key is at version \(latest.version), the last there is: it cannot be rotated again",
                scope: scope, keyVersion: latest.version)
        }
        let (key, wrapped) = try mint(scope: scope, version: latest.version + 1)
        try await store.insertDataKey(wrapped)
        state.withLock { s in
            s.put(key)
            s.current[ExactScope(scope)] = key.version
            // Created here: its first block of encryptions is this key ring's (KeyUsage.firstBlock).
            s.trimBudget()
            s.budget[CacheKey(scope: ExactScope(scope), version: key.version)] = KeyUsage.firstBlock(limit: s.encryptionLimit)
        }
        logger.debug("rotated data key", metadata: ["scope": "\(scope)", "version": "\(key.version)"])
        return key.version
    }

    /// Progress of a master-key rotation.
    public struct RotationProgress: Sendable {
        /// Keys rewrapped so far.
        public var rewrapped: Int
        /// Keys already under the new master key (skipped).
        public var alreadyCurrent: Int
    }

    /// Rewraps every data key under `newKey` (no event is rewritten), then retires the other
    /// master keys' check records so they no longer open the store.
    ///
    /// Pages through the keys `pageSize` at a time and rewraps each page with one
    /// ``KeyStore/rewrapDataKeys(_:)`` call: one transaction per page in the library's stores.
    ///
    /// Safe to interrupt: a page is rewrapped atomically (with a store that keeps the default
    /// ``KeyStore/rewrapDataKeys(_:)``, each key is), so every key stays wrapped by the old or by
    /// the new master key, and rerunning with the old and the new key loaded finishes the job.
    /// Safe while this process writes: new keys are wrapped by `newKey` from the start. Every
    /// master key that wraps a remaining key must be loaded.
    /// - Throws: ``KeyManagementError/Code/keyUnavailable`` if a key is wrapped by a master key
    ///   that is not loaded (nothing is retired then, and nothing of that page is rewrapped);
    ///   ``KeyManagementError/Code/invalidArgument`` for a page size below 1 (nothing is changed
    ///   then); ``KeyManagementError/Code/storeFailure``, naming the scope, if the store pages
    ///   without making progress, reports more rewraps than it was given, or still returns keys
    ///   under an old master key after ``maxRotationPasses`` passes (nothing is retired then).
    @discardableResult
    public func rotateMasterKey(to newKey: any KeyEncryptionKey, pageSize: Int = 500,
                                progress: (@Sendable (RotationProgress) -> Void)? = nil) async throws -> RotationProgress {
        try await instruments.run(Observability.SpanName.rotateMasterKey, counting: instruments.masterKeyRotations) {
            try await rewrapAll(under: newKey, pageSize: pageSize, progress: progress)
        }
    }

    private func rewrapAll(under newKey: any KeyEncryptionKey, pageSize: Int,
                           progress: (@Sendable (RotationProgress) -> Void)?) async throws -> RotationProgress {
        guard pageSize >= 1 else {
            throw KeyManagementError(.invalidArgument, "the page size must be at least 1, got \(pageSize)")
        }
        // 1. The new key becomes known to the store and wraps every key minted from now on.
        try await store.insertMasterKeyCheck(Keyring.makeCheck(for: newKey))
        state.withLock { s in
            s.masterKeys[newKey.id] = newKey
            s.primaryID = newKey.id
        }
        // 2. Rewrap; repeat the scan until a whole pass finds nothing left under an old key
        //    (another process may have minted keys under the old master key meanwhile).
        var total = RotationProgress(rewrapped: 0, alreadyCurrent: 0)
        var seenCurrent = 0
        var passes = 0
        while true {
            var changed = 0
            seenCurrent = 0
            passes += 1
            var cursor: DataKeyCursor? = nil
            var pageEnds = PageEnds()
            var lastRewrapped: WrappedDataKey?
            while true {
                let page = try await store.dataKeys(after: cursor, limit: pageSize)
                guard let last = page.last else { break }
                let next = DataKeyCursor(scope: last.scope, version: last.version)
                try pageEnds.advance(from: cursor, to: next)
                cursor = next
                var batch: [DataKeyRewrap] = []
                batch.reserveCapacity(page.count)
                for record in page {
                    if record.kekID == newKey.id { seenCurrent += 1; continue }
                    let key = try unwrap(record)
                    batch.append(DataKeyRewrap(try Keyring.wrap(key, with: newKey, createdAt: record.createdAt),
                                               previousKEKID: record.kekID))
                }
                if let lastOfBatch = batch.last?.key {
                    let replaced = try await store.rewrapDataKeys(batch)
                    guard replaced >= 0, replaced <= batch.count else {
                        throw KeyManagementError(.storeFailure,
                            "the key store reports \(replaced) data keys rewrapped for a page of \(batch.count) ending at "
                                + "scope \(lastOfBatch.scope) v\(lastOfBatch.version) (no master key was retired)",
                            scope: lastOfBatch.scope, keyVersion: lastOfBatch.version)
                    }
                    changed += replaced
                    total.rewrapped += replaced
                    if replaced > 0 { lastRewrapped = lastOfBatch }
                }
                progress?(RotationProgress(rewrapped: total.rewrapped, alreadyCurrent: seenCurrent))
            }
            if changed == 0 { break }
            // Normally the second pass finds nothing left. A store that reports rewraps it does
            // not keep (or writers that keep minting under an old key) would loop forever.
            if passes >= Keyring.maxRotationPasses, let lastRewrapped {
                throw KeyManagementError(.storeFailure,
                    "after \(passes) passes the store still returns data keys under an old master key; stop other "
                        + "writers, check the store, and rerun (no master key was retired)",
                    scope: lastRewrapped.scope, keyVersion: lastRewrapped.version)
            }
        }
        // The final pass sees every key as current, including the ones rewrapped above.
        total.alreadyCurrent = max(0, seenCurrent - total.rewrapped)
        // 3. Retire every other master key's check: they no longer open the store.
        for check in try await store.masterKeyChecks() where check.kekID != newKey.id {
            try await store.deleteMasterKeyCheck(kekID: check.kekID)
        }
        state.withLock { s in s.masterKeys = [newKey.id: newKey] }
        logger.info("rotated master key", metadata: ["kek": "\(newKey.id)", "rewrapped": "\(total.rewrapped)"])
        return total
    }

    /// Crypto-shreds `scope`: deletes every version of its data key and writes a tombstone,
    /// atomically, and drops it from the cache. Records encrypted under it can never be read again.
    /// - Throws: ``KeyManagementError/Code/shredded`` if it was already shredded.
    public func shred(scope: String, at time: Date = Date()) async throws -> Tombstone {
        try await instruments.run(Observability.SpanName.shred, counting: instruments.shreds) {
            try await shredScope(scope, at: time)
        }
    }

    private func shredScope(_ scope: String, at time: Date) async throws -> Tombstone {
        try KeyScope.validate(scope)
        let tombstone = try await store.shred(scope: scope, at: time)
        state.withLock { s in
            let exact = ExactScope(scope)
            s.evict(exact)
            s.shredded[exact] = tombstone.shreddedAt
            s.erasures &+= 1
        }
        logger.debug("shredded key scope", metadata: ["scope": "\(scope)", "versions": "\(tombstone.destroyedVersions.count)"])
        return tombstone
    }

    /// The most full passes ``rotateMasterKey(to:pageSize:progress:)`` makes. A rotation with no
    /// other writer needs two: one that rewraps, one that finds nothing left.
    public static let maxRotationPasses = 16

    /// The page ends seen in one pass of a master-key rotation, to make sure the store's
    /// paging moves forward. Scopes are compared by their UTF-8 bytes, as the stores do; the
    /// order between scopes is the store's own (a PostgreSQL collation may differ from byte
    /// order), so what is checked is that a page never ends where an earlier one did, nor
    /// before the previous end within the same scope.
    private struct PageEnds {
        private struct Position: Hashable { var scope: [UInt8]; var version: UInt32 }
        private var seen: Set<Position> = []

        mutating func advance(from previous: DataKeyCursor?, to next: DataKeyCursor) throws(KeyManagementError) {
            let scope = Array(next.scope.utf8)
            if let previous, Array(previous.scope.utf8) == scope, next.version <= previous.version {
                throw stalled(next, previous)
            }
            guard seen.insert(Position(scope: scope, version: next.version)).inserted else {
                throw stalled(next, previous)
            }
        }

        private func stalled(_ next: DataKeyCursor, _ previous: DataKeyCursor?) -> KeyManagementError {
            KeyManagementError(.storeFailure,
                "the key store's page of data keys after \(previous.map { "scope \($0.scope) v\($0.version)" } ?? "the start") "
                    + "ends at scope \(next.scope) v\(next.version), which is not past it: its paging is corrupt "
                    + "(no master key was retired)",
                scope: next.scope, keyVersion: next.version)
        }
    }
}
