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
    /// The store as a ``KeyChangeFeed``, if it is one (cast once, not on every key use).
    let changeFeed: (any KeyChangeFeed)?
    /// The store as a ``KeyUsageCounter``, if it is one.
    let usageCounter: (any KeyUsageCounter)?
    let logger: Logger
    let state: Mutex<State>
    /// Metrics and tracer, bound at creation (see ``Observability``).
    let instruments = KeyringInstruments()

    /// Scopes are told apart by their exact UTF-8 bytes, as the stores do (see ``ExactScope``).
    struct CacheKey: Hashable { var scope: ExactScope; var version: UInt32 }

    /// Every map of scopes is keyed by ``ExactScope``, never by `String`: canonically equivalent
    /// spellings of a scope are different scopes with different keys.
    struct State {
        var masterKeys: [String: any KeyEncryptionKey]
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
        /// Counts the shreds and invalidations seen (``Keyring/shredGeneration``).
        var erasures: UInt64 = 0
        /// The key-change feed's position this keyring has applied (nil: not read yet), when it
        /// is due to be checked next, and how often (Keyring+Changes.swift).
        var feedMark: Int64?
        var nextFeedCheck: ContinuousClock.Instant?
        var refreshInterval: Duration = Keyring.defaultKeyChangeRefreshInterval
        /// Encryptions this key ring has reserved and not used yet, per version (Keyring+Usage.swift).
        var budget: [CacheKey: UInt64] = [:]
        var encryptionLimit: UInt64 = KeyUsage.defaultLimit
        var encryptionBlock: UInt64 = KeyUsage.defaultBlock
        /// Encryptions counted per version when the store counts nothing (this process only).
        var processTotals: [CacheKey: UInt64] = [:]

        /// The most budget entries kept before ``trimBudget()`` drops them.
        var budgetBound: Int { max(64, capacity * 2) }

        /// Keeps ``budget`` bounded: past ``budgetBound`` entries, drops every entry but those of
        /// keys minted and not persisted yet. Those hold their version's implicit first block
        /// (`KeyUsage.firstBlock`): dropped, it would be granted again, and more records sealed
        /// than the store counts. Every other dropped block stays counted in the store, so a
        /// drop costs only a new reservation. Without this, a process that minted keys for a
        /// million new subjects kept an entry for each (the seed of `esctl-scale.sh`: 42 MB at
        /// 10^4 subjects, 217 MB at 10^6).
        mutating func trimBudget() {
            guard budget.count >= budgetBound else { return }
            budget = budget.filter { ck, _ in minted[ck.scope]?.key.version == ck.version }
        }

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
            for ck in budget.keys where ck.scope == scope { budget.removeValue(forKey: ck) }
        }
    }

    /// A data key to encrypt with, and the wrapped record to persist if it was just created.
    /// (The write path's handshake inside the package; applications see `SealingKey`.)
    package struct WriteKey: Sendable {
        /// The key to encrypt with.
        package let key: DataKey
        /// Set when the key was minted for this write and is not stored yet. Persist it in the
        /// same transaction as the events (or before them), then call `didPersist(_:material:)`.
        package let pending: WrappedDataKey?

        package init(key: DataKey, pending: WrappedDataKey?) {
            self.key = key
            self.pending = pending
        }
    }

    private init(store: any KeyStore, masterKeys: [any KeyEncryptionKey], primaryID: String, cacheCapacity: Int, logger: Logger) {
        self.store = store
        self.changeFeed = store as? any KeyChangeFeed
        self.usageCounter = store as? any KeyUsageCounter
        self.logger = logger
        var byID: [String: any KeyEncryptionKey] = [:]
        for k in masterKeys { byID[k.id] = k }
        state = Mutex(State(masterKeys: byID, primaryID: primaryID, capacity: max(1, cacheCapacity)))
    }

    /// Opens a key store with the given master keys, the first of which wraps new data keys.
    ///
    /// The keys may be of any kind (``MasterKey``, ``PKCS11MasterKey``, ``CommandMasterKey``,
    /// or your own ``KeyEncryptionKey``); an array of ``MasterKey`` is passed as it is.
    /// An empty store is initialised with a check record for the first master key. Otherwise
    /// every given key must match a check record in the store.
    /// - Throws: ``KeyManagementError/Code/wrongMasterKey`` if a key does not open this store,
    ///   before anything is written; ``KeyManagementError/Code/invalidKeyMaterial`` for no keys;
    ///   what a key throws when it cannot be reached (a token, a helper), before anything is written.
    public static func open(store: any KeyStore, masterKeys: [any KeyEncryptionKey], cacheCapacity: Int = 4096,
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
                guard let check = checks.first(where: { $0.kekID == key.id }), try verify(check, with: key) else {
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
}
