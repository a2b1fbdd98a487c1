import Foundation
import Logging
import Synchronization

/// Creates, caches, rotates and shreds data keys under one or more master keys.
///
/// Data keys are stored only wrapped by a master key (see ``WrappedDataKey``). Unwrapped
/// keys sit in a bounded LRU cache; an evicted or shredded key is dropped from it and its
/// bytes are zeroized as soon as the last user lets go of it.
public final class Keyring: Sendable {
    /// Where wrapped keys, checks and tombstones live.
    public let store: any KeyStore
    private let logger: Logger
    private let state: Mutex<State>

    /// Scopes are told apart by their exact UTF-8 bytes, as the stores do (see ``ExactScope``).
    private struct CacheKey: Hashable { var scope: ExactScope; var version: UInt32 }

    /// Every map of scopes is keyed by ``ExactScope``, never by `String`: canonically equivalent
    /// spellings of a scope are different scopes with different keys.
    private struct State {
        var masterKeys: [String: MasterKey]
        var primaryID: String
        var capacity: Int
        var tick: UInt64 = 0
        var cache: [CacheKey: (key: DataKey, used: UInt64)] = [:]
        /// Highest known version per scope, for writes.
        var current: [ExactScope: UInt32] = [:]
        var shredded: [ExactScope: Date] = [:]
        /// Keys minted for writes but not persisted yet: every write to the scope reuses the
        /// same one until it is persisted or invalidated, so one save of several aggregates of a
        /// new subject mints one key, not several.
        var minted: [ExactScope: (key: DataKey, wrapped: WrappedDataKey)] = [:]

        mutating func put(_ key: DataKey) {
            tick &+= 1
            let ck = CacheKey(scope: ExactScope(key.scope), version: key.version)
            if cache[ck] == nil, cache.count >= capacity { evictOldest() }
            cache[ck] = (key, tick)
        }

        /// Drops the least recently used eighth of the cache at once, so eviction costs
        /// O(log n) per insert amortised instead of a full scan each time.
        private mutating func evictOldest() {
            let drop = max(1, capacity / 8)
            var ticks = cache.values.map(\.used)
            ticks.sort()
            let threshold = ticks[min(drop, ticks.count) - 1]
            for (ck, entry) in cache where entry.used <= threshold {
                cache.removeValue(forKey: ck)
                if current[ck.scope] == ck.version { current.removeValue(forKey: ck.scope) }
            }
        }

        mutating func get(_ scope: ExactScope, _ version: UInt32) -> DataKey? {
            let ck = CacheKey(scope: scope, version: version)
            guard let hit = cache[ck] else { return nil }
            tick &+= 1
            cache[ck] = (hit.key, tick)
            return hit.key
        }

        mutating func evict(_ scope: ExactScope) {
            for ck in cache.keys where ck.scope == scope { cache.removeValue(forKey: ck) }
            current.removeValue(forKey: scope)
            minted.removeValue(forKey: scope)
        }
    }

    /// A data key to encrypt with, and the wrapped record to persist if it was just created.
    public struct WriteKey: Sendable {
        /// The key to encrypt with.
        public let key: DataKey
        /// Set when the key was minted for this write and is not stored yet. Persist it in the
        /// same transaction as the events (or before them), then call `didPersist(_:material:)`.
        public let pending: WrappedDataKey?
    }

    private init(store: any KeyStore, masterKeys: [MasterKey], primaryID: String, cacheCapacity: Int, logger: Logger) {
        self.store = store
        self.logger = logger
        var byID: [String: MasterKey] = [:]
        for k in masterKeys { byID[k.id] = k }
        state = Mutex(State(masterKeys: byID, primaryID: primaryID, capacity: max(1, cacheCapacity)))
    }

    /// Opens a key store with the given master keys, the first of which wraps new data keys.
    ///
    /// An empty store is initialised with a check record for the first master key. Otherwise
    /// every given key must match a check record in the store.
    /// - Throws: ``KeyManagementError/Code/wrongMasterKey`` if a key does not open this store,
    ///   before anything is written; ``KeyManagementError/Code/invalidKeyMaterial`` for no keys.
    public static func open(store: any KeyStore, masterKeys: [MasterKey], cacheCapacity: Int = 4096,
                            logger: Logger = Logger(label: "eventsourcing.keyring")) async throws -> Keyring {
        guard let primary = masterKeys.first else {
            throw KeyManagementError(.invalidKeyMaterial, "at least one master key is needed")
        }
        let checks = try await store.masterKeyChecks()
        if checks.isEmpty {
            try await store.insertMasterKeyCheck(makeCheck(for: primary))
            logger.debug("initialised key store", metadata: ["kek": "\(primary.id)"])
        } else {
            for key in masterKeys {
                guard let check = checks.first(where: { $0.kekID == key.id }), verify(check, with: key) else {
                    throw KeyManagementError(.wrongMasterKey,
                        "master key \(key.id) does not open this key store (it knows \(checks.map(\.kekID).joined(separator: ", ")))")
                }
            }
        }
        return Keyring(store: store, masterKeys: masterKeys, primaryID: primary.id,
                       cacheCapacity: cacheCapacity, logger: logger)
    }

    /// The scrypt parameters stored for a passphrase-derived master key, if any.
    ///
    /// They come from the store, so they are checked here, before anyone types a passphrase.
    /// - Throws: what ``KDFParameters/validate()`` throws (``KeyManagementError/Code/limitExceeded``
    ///   for parameters that would make deriving the key run for hours or allocate gigabytes),
    ///   naming the master key whose check record holds them.
    public static func storedKDFParameters(in store: any KeyStore) async throws -> KDFParameters? {
        guard let check = try await store.masterKeyChecks().last(where: { $0.kdf != nil }), let kdf = check.kdf else {
            return nil
        }
        do { try kdf.validate() } catch {
            throw KeyManagementError(error.code,
                "the scrypt parameters stored with master key \(check.kekID)'s check record are refused: \(error.message)")
        }
        return kdf
    }

    /// Id of the master key that wraps new data keys.
    public var primaryMasterKeyID: String { state.withLock { $0.primaryID } }

    // MARK: Writing

    /// The current data key for `scope`, minting version 1 if the scope never had one.
    /// - Throws: ``KeyManagementError/Code/shredded`` if the scope was shredded (never mints a
    ///   new key for it); ``KeyManagementError/Code/invalidScope``; ``KeyManagementError/Code/keyUnavailable``
    ///   if the current version is wrapped by a master key that is not loaded.
    ///
    /// With `likelyNew` (a scope that was only just created, such as a new aggregate's own id),
    /// version 1 is minted without reading the store first. That is safe because persisting
    /// a key is atomic with the checks: a store refuses it with ``KeyManagementError/Code/keyExists``
    /// if the scope already has a key (then ``invalidate(scope:)`` and ask again without the hint)
    /// and with ``KeyManagementError/Code/shredded`` if the scope was shredded.
    public func writeKey(for scope: String, likelyNew: Bool = false) async throws -> WriteKey {
        let exact = ExactScope(scope)
        if let hit = cachedCurrent(exact) { return WriteKey(key: hit, pending: nil) }
        if let m = state.withLock({ $0.minted[exact] }) { return WriteKey(key: m.key, pending: m.wrapped) }
        try KeyScope.validate(scope)
        if likelyNew {
            if let when = state.withLock({ $0.shredded[exact] }) {
                throw KeyManagementError(.shredded, "cannot write to a shredded scope", scope: scope, shreddedAt: when)
            }
            return try mintFirst(scope: scope)
        }
        let stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        if let latest = stored.last {
            let key = try unwrap(latest)
            state.withLock { s in
                s.put(key)
                s.current[exact] = max(s.current[exact] ?? 0, key.version)
            }
            return WriteKey(key: key, pending: nil)
        }
        if let t = try await store.tombstone(scope: scope) {
            state.withLock { $0.shredded[exact] = t.shreddedAt }
            throw KeyManagementError(.shredded, "cannot write to a shredded scope", scope: scope, shreddedAt: t.shreddedAt)
        }
        return try mintFirst(scope: scope)
    }

    /// Mints version 1 of `scope`'s key, pending until a store persists it.
    private func mintFirst(scope: String) throws -> WriteKey {
        let (key, wrapped) = try mint(scope: scope, version: 1)
        let exact = ExactScope(scope)
        let chosen = state.withLock { s -> (key: DataKey, wrapped: WrappedDataKey) in
            if let earlier = s.minted[exact] { return earlier }   // another task minted meanwhile
            s.minted[exact] = (key, wrapped)
            return (key, wrapped)
        }
        return WriteKey(key: chosen.key, pending: chosen.wrapped)
    }

    /// Records that minted keys were persisted, so later writes use them without a store read.
    public func didPersist(_ keys: [WrappedDataKey], material: [DataKey]) {
        state.withLock { s in
            for k in material where keys.contains(where: { ExactScope.same($0.scope, k.scope) && $0.version == k.version }) {
                let scope = ExactScope(k.scope)
                s.put(k)
                s.current[scope] = max(s.current[scope] ?? 0, k.version)
                if s.minted[scope]?.key.version == k.version { s.minted.removeValue(forKey: scope) }
            }
        }
    }

    /// Persists minted keys through the key store (for recorders that cannot store keys in
    /// the same transaction as events).
    /// - Throws: ``KeyManagementError/Code/keyExists`` if another writer created the scope's key first.
    public func persist(_ pending: [WriteKey]) async throws {
        for w in pending {
            guard let p = w.pending else { continue }
            try await store.insertDataKey(p)
        }
        didPersist(pending.compactMap(\.pending), material: pending.map(\.key))
    }

    /// Forgets everything cached for `scope` (after a conflict, or a change made by another process).
    public func invalidate(scope: String) {
        state.withLock { $0.evict(ExactScope(scope)) }
    }

    // MARK: Reading

    /// The data key `version` of `scope`.
    /// - Throws: ``KeyManagementError/Code/shredded`` (with the time) if the scope was shredded;
    ///   ``KeyManagementError/Code/keyNotFound`` if no such version exists;
    ///   ``KeyManagementError/Code/keyUnavailable`` if its master key is not loaded.
    public func readKey(scope: String, version: UInt32) async throws -> DataKey {
        let exact = ExactScope(scope)
        if let hit = state.withLock({ $0.get(exact, version) }) { return hit }
        try KeyScope.validate(scope)
        if let when = state.withLock({ $0.shredded[exact] }) {
            throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, keyVersion: version, shreddedAt: when)
        }
        var stored = try await store.dataKeys(scope: scope, reading: version)
        if stored.contains(where: { !ExactScope.same($0.scope, scope) }) {
            // An answer from keys read ahead that mixed up canonically equivalent spellings (a
            // cache keyed by `String`): ask the store's own look-up, which must be exact.
            stored = try Keyring.only(scope, try await store.dataKeys(scope: scope))
        }
        guard let record = stored.first(where: { $0.version == version }) else {
            if let t = try await store.tombstone(scope: scope) {
                state.withLock { $0.shredded[exact] = t.shreddedAt }
                throw KeyManagementError(.shredded, "the scope was shredded", scope: scope, keyVersion: version, shreddedAt: t.shreddedAt)
            }
            throw KeyManagementError(.keyNotFound, "no such data key", scope: scope, keyVersion: version)
        }
        let key = try unwrap(record)
        state.withLock { $0.put(key) }
        return key
    }

    // MARK: Lifecycle

    /// Creates a new version of `scope`'s data key; new records use it, old versions still decrypt.
    /// - Returns: the new version.
    /// - Throws: ``KeyManagementError/Code/shredded``, ``KeyManagementError/Code/keyNotFound``
    ///   if the scope has no key yet, ``KeyManagementError/Code/keyExists`` on a concurrent rotation,
    ///   ``KeyManagementError/Code/limitExceeded`` if the scope is at version 2^32 − 1, the last there is.
    public func rotate(scope: String) async throws -> UInt32 {
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
    public func rotateMasterKey(to newKey: MasterKey, pageSize: Int = 500,
                                progress: (@Sendable (RotationProgress) -> Void)? = nil) async throws -> RotationProgress {
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
        try KeyScope.validate(scope)
        let tombstone = try await store.shred(scope: scope, at: time)
        state.withLock { s in
            let exact = ExactScope(scope)
            s.evict(exact)
            s.shredded[exact] = tombstone.shreddedAt
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

    // MARK: Internals

    /// `records`, after checking that each is a key of `scope` byte for byte.
    /// - Throws: ``KeyManagementError/Code/storeFailure`` naming `scope` if the store answered a
    ///   look-up of `scope` with another scope's key (a store that compares scopes as `String`s
    ///   mixes up canonically equivalent spellings): using it would seal one subject's records
    ///   under another subject's key.
    private static func only(_ scope: String, _ records: [WrappedDataKey]) throws(KeyManagementError) -> [WrappedDataKey] {
        if let other = records.first(where: { !ExactScope.same($0.scope, scope) }) {
            throw KeyManagementError(.storeFailure,
                "the key store answered a look-up of scope \(visible(scope)) with data key v\(other.version) of scope "
                    + "\(visible(other.scope)), whose UTF-8 bytes differ; a key store must compare scope ids byte by byte",
                scope: scope, keyVersion: other.version)
        }
        return records
    }

    /// `scope` with every non-ASCII scalar written as `\u{…}`, so two spellings that look alike differ in a message.
    private static func visible(_ scope: String) -> String {
        var out = ""
        for u in scope.unicodeScalars {
            if u.isASCII { out.unicodeScalars.append(u) } else { out += "\\u{" + String(u.value, radix: 16, uppercase: true) + "}" }
        }
        return out
    }

    private func cachedCurrent(_ scope: ExactScope) -> DataKey? {
        state.withLock { s in
            guard let v = s.current[scope] else { return nil }
            return s.get(scope, v)
        }
    }

    private func mint(scope: String, version: UInt32) throws -> (DataKey, WrappedDataKey) {
        let primary = try state.withLock { (s) throws(KeyManagementError) -> MasterKey in
            guard let k = s.masterKeys[s.primaryID] else {
                throw KeyManagementError(.keyUnavailable, "the primary master key is not loaded")
            }
            return k
        }
        let key = DataKey(scope: scope, version: version, material: try KeyMaterial(randomCount: 32))
        return (key, try Keyring.wrap(key, with: primary, createdAt: Date()))
    }

    private func unwrap(_ record: WrappedDataKey) throws -> DataKey {
        guard let kek = state.withLock({ $0.masterKeys[record.kekID] }) else {
            throw KeyManagementError(.keyUnavailable,
                "the data key is wrapped by master key \(record.kekID), which is not loaded",
                scope: record.scope, keyVersion: record.version)
        }
        let w = record.wrapped
        guard w.count == AES256GCM.nonceLength + 32 + AES256GCM.tagLength else {
            throw KeyManagementError(.authenticationFailed, "wrapped data key has the wrong length",
                                     scope: record.scope, keyVersion: record.version)
        }
        let aad = KeyScope.wrappingAAD(scope: record.scope, version: record.version, kekID: record.kekID)
        guard var raw = try AES256GCM.open(w, from: AES256GCM.nonceLength, key: kek.material,
                                           nonce: Array(w[0..<AES256GCM.nonceLength]), aadParts: [aad]) else {
            throw KeyManagementError(.authenticationFailed, "wrapped data key failed its integrity check",
                                     scope: record.scope, keyVersion: record.version)
        }
        return DataKey(scope: record.scope, version: record.version, material: KeyMaterial(consuming: &raw))
    }

    static func wrap(_ key: DataKey, with kek: MasterKey, createdAt: Date) throws(KeyManagementError) -> WrappedDataKey {
        let nonce = try AES256GCM.randomNonce()
        let aad = KeyScope.wrappingAAD(scope: key.scope, version: key.version, kekID: kek.id)
        let sealed = try key.material.withUnsafeBytes { (raw) throws(KeyManagementError) -> [UInt8] in
            var plain = Array(raw)
            defer { LibCrypto.cleanse(&plain) }
            return try AES256GCM.seal(plain, key: kek.material, nonce: nonce, aadParts: [aad], prefix: nonce)
        }
        return WrappedDataKey(scope: key.scope, version: key.version, kekID: kek.id, wrapped: sealed, createdAt: createdAt)
    }

    static let checkPlaintext = Array("eventsourcing master key check v1".utf8)

    static func checkAAD(_ kekID: String) -> [UInt8] { Array("ESKCV1".utf8) + Array(kekID.utf8) }

    static func makeCheck(for key: MasterKey) throws(KeyManagementError) -> MasterKeyCheck {
        let nonce = try AES256GCM.randomNonce()
        let sealed = try AES256GCM.seal(checkPlaintext, key: key.material, nonce: nonce,
                                        aadParts: [checkAAD(key.id)], prefix: nonce)
        return MasterKeyCheck(kekID: key.id, sealed: sealed, kdf: key.kdf, createdAt: Date())
    }

    static func verify(_ check: MasterKeyCheck, with key: MasterKey) -> Bool {
        let s = check.sealed
        guard s.count > AES256GCM.nonceLength + AES256GCM.tagLength else { return false }
        let plain = try? AES256GCM.open(s, from: AES256GCM.nonceLength, key: key.material,
                                        nonce: Array(s[0..<AES256GCM.nonceLength]), aadParts: [checkAAD(key.id)])
        return plain.flatMap { $0 } == checkPlaintext
    }
}
