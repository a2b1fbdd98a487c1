import Foundation
import KeyManagement
import Logging

/// Proof of a crypto-shred, for the erasure request's file. Holds no personal data.
public struct ErasureReceipt: Sendable, Hashable, Codable {
    /// The shredded key scope.
    public var keyScope: String
    /// When it was shredded.
    public var shreddedAt: Date
    /// The data-key versions destroyed.
    public var destroyedKeyVersions: [UInt32]
    /// Events now unreadable (stored under the scope).
    public var eventsAffected: Int
    /// Snapshots deleted.
    public var snapshotsDeleted: Int
    /// Unencrypted events anywhere in the store when the scope was shredded (written by an
    /// application without a keyring, or before encryption was turned on): no shred can erase
    /// them. Nil when the recorder cannot count them cheaply.
    public var plaintextEventsInStore: Int?
    /// Whether the store's own files may still hold a copy of the destroyed keys when the
    /// receipt was made: a SQLite store whose write-ahead-log checkpoint was kept from completing
    /// (by a long read transaction) within its bound. The keys are gone from every table; what
    /// is pending is the removal of the old database pages that held them.
    /// ``pendingResidue`` says what and how to finish it. False for stores that cannot tell
    /// (PostgreSQL: see SECURITY.md §7.2).
    public var residuePending: Bool
    /// What is still pending when ``residuePending`` (no personal data, no key bytes): where
    /// the copies may be and how to remove them (`SQLiteStore.scrubErasureResidue(timeout:)`,
    /// `esctl scrub`). Nil otherwise.
    public var pendingResidue: String?

    /// Creates a receipt.
    public init(keyScope: String, shreddedAt: Date, destroyedKeyVersions: [UInt32], eventsAffected: Int,
                snapshotsDeleted: Int, plaintextEventsInStore: Int? = nil,
                residuePending: Bool = false, pendingResidue: String? = nil) {
        self.keyScope = keyScope
        self.shreddedAt = shreddedAt
        self.destroyedKeyVersions = destroyedKeyVersions
        self.eventsAffected = eventsAffected
        self.snapshotsDeleted = snapshotsDeleted
        self.plaintextEventsInStore = plaintextEventsInStore
        self.residuePending = residuePending
        self.pendingResidue = pendingResidue
    }

    private enum CodingKeys: String, CodingKey {
        case keyScope, shreddedAt, destroyedKeyVersions, eventsAffected, snapshotsDeleted, plaintextEventsInStore
        case residuePending, pendingResidue
    }

    /// Decodes a receipt; one written before ``residuePending`` existed reads as not pending.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keyScope = try c.decode(String.self, forKey: .keyScope)
        shreddedAt = try c.decode(Date.self, forKey: .shreddedAt)
        destroyedKeyVersions = try c.decode([UInt32].self, forKey: .destroyedKeyVersions)
        eventsAffected = try c.decode(Int.self, forKey: .eventsAffected)
        snapshotsDeleted = try c.decode(Int.self, forKey: .snapshotsDeleted)
        plaintextEventsInStore = try c.decodeIfPresent(Int.self, forKey: .plaintextEventsInStore)
        residuePending = try c.decodeIfPresent(Bool.self, forKey: .residuePending) ?? false
        pendingResidue = try c.decodeIfPresent(String.self, forKey: .pendingResidue)
    }
}

/// What a store's own files may still hold of erased data keys, after a shred.
public struct ErasureResidueStatus: Sendable, Hashable, Codable {
    /// Whether the files may still hold a copy of an erased key.
    public var pending: Bool
    /// What is pending and how to finish it, or what was checked (no personal data, no key bytes).
    public var description: String

    /// Creates a status.
    public init(pending: Bool, description: String) {
        self.pending = pending
        self.description = description
    }
}

/// A store whose files can keep copies of erased data keys for a while after a shred, until a
/// later step completes (SQLite: the write-ahead-log checkpoint that a reader can hold up).
public protocol ErasureResidueScrubbing: Sendable {
    /// What this store knows, without waiting, about the copies its files may still hold of
    /// keys it erased (in this process).
    func erasureResidue() async -> ErasureResidueStatus
    /// Removes those copies, waiting at most `timeout` for whatever holds them up, and says
    /// what, if anything, is still pending. A blocked scrub is not an error.
    /// - Throws: only when the store cannot be used (closed, unavailable).
    func scrubErasureResidue(timeout: Duration) async throws -> ErasureResidueStatus
}

/// A recorder that can count a key scope's events without reading the whole log.
public protocol KeyScopeCounting: Sendable {
    /// The number of stored events whose header names `keyScope`.
    func countEvents(keyScope: String) async throws -> Int
    /// The number of unencrypted events in the store.
    func countPlaintextEvents() async throws -> Int
}

/// What ``Application/shred(keyScope:ifAbsent:)`` does with a scope that has no data key and
/// no tombstone.
public enum AbsentScopePolicy: Sendable, Hashable {
    /// Throw ``EventSourcingError/Code/keyScopeNotFound`` and change nothing (the default): a
    /// typo, or `id.uuidString` (uppercase) for a lowercase scope, must not look like an erasure.
    case refuse
    /// Tombstone the scope ahead of time, so no record can ever be written under it.
    case tombstone
}

extension Application {
    /// Crypto-shreds a key scope (a data subject or an aggregate id): destroys every version
    /// of its data key, leaves a tombstone, records the erasure in the notification log
    /// (``ErasureRecord``, read as ``LogItem/Outcome/erased(keyScope:at:)``), deletes its
    /// snapshots and drops it from caches (the keyring's and the aggregate cache: every cached
    /// aggregate of the scope at once).
    /// Reads of its records then throw `.shredded`; saves to it throw `.shredded`.
    ///
    /// A UUID-shaped scope is looked up in the spelling it is stored under, so
    /// `shred(keyScope: id.uuidString)` (uppercase) erases the lowercase scope the aggregate
    /// writes under.
    /// - Parameters:
    ///   - keyScope: the key scope to erase: a data subject's id, or an aggregate's id.
    ///   - ifAbsent: what to do when the scope has never had a key: refuse (the default)
    ///     or tombstone it ahead of time.
    /// SQLite and PostgreSQL stores commit the erasure record with the tombstone. With other
    /// key stores it is appended through the recorder right after the tombstone; if that append
    /// fails, the shred throws, and shredding the scope again appends it (and still throws
    /// `.shredded`).
    /// - Throws: ``EventSourcingError`` `.keyScopeNotFound` (nothing changed), `.shredded` if
    ///   already shredded, `.invalidArgument` without a keyring (nothing is encrypted, so nothing
    ///   can be shredded).
    public func shred(keyScope: String, ifAbsent: AbsentScopePolicy = .refuse) async throws -> ErasureReceipt {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.invalidArgument, "the application has no keyring: records are not encrypted", keyScope: keyScope)
        }
        let scope = try await storedSpelling(of: keyScope, in: keyring.store)
        if scope == nil, ifAbsent == .refuse {
            throw EventSourcingError(.keyScopeNotFound,
                "no such key scope: it has no data key and was never shredded; nothing was changed "
                + "(pass ifAbsent: .tombstone to tombstone it ahead of time)", keyScope: keyScope)
        }
        let target = scope ?? Application.canonicalScope(keyScope)
        // However the shred ends, no cached aggregate of the scope survives it.
        defer { aggregateCache?.remove(keyScope: target) }
        let tombstone: Tombstone
        do { tombstone = try await keyring.shred(scope: target) } catch {
            // Already shredded: finish a shred that was interrupted before its erasure record
            // was appended or its snapshots went.
            if let k = error as? KeyManagementError, k.code == .shredded {
                if let at = try? await keyring.store.tombstone(scope: target)?.shreddedAt ?? k.shreddedAt {
                    try? await recordErasure(scope: target, at: at)
                }
                _ = try? await snapshotRecorder?.deleteSnapshots(keyScope: target)
            }
            throw Mapper.translate(error, stored: nil, scope: target)
        }
        try await recordErasure(scope: target, at: tombstone.shreddedAt)
        let snapshots = try await snapshotRecorder?.deleteSnapshots(keyScope: target) ?? 0
        let affected = try await countEvents(keyScope: target)
        let plaintext = try await (recorder as? any KeyScopeCounting)?.countPlaintextEvents()
        if let plaintext, plaintext > 0 {
            logger.warning("the store holds unencrypted events, which no shred can erase",
                           metadata: ["plaintext_events": "\(plaintext)"])
        }
        logger.notice("shredded key scope", metadata: ["scope": "\(target)", "events": "\(affected)"])
        let residue = await erasureResidue(keyring.store)
        if residue != nil {
            logger.warning("the receipt says residue is pending: the store's files may still hold copies of the erased key until a later step (its pendingResidue says which)",
                           metadata: ["scope": "\(target)"])
        }
        return ErasureReceipt(keyScope: target, shreddedAt: tombstone.shreddedAt,
                              destroyedKeyVersions: tombstone.destroyedVersions,
                              eventsAffected: affected, snapshotsDeleted: snapshots,
                              plaintextEventsInStore: plaintext,
                              residuePending: residue != nil, pendingResidue: residue)
    }

    /// Makes sure the notification log holds `scope`'s erasure record (``ErasureRecord``). A
    /// store whose key store shares its transactions (SQLite, PostgreSQL) wrote it with the
    /// tombstone; any other recorder gets it here, right after the tombstone. Its coordinates are
    /// fixed by the scope, so it is never written twice: found, or refused as a conflict.
    private func recordErasure(scope: String, at: Date) async throws {
        let record = try ErasureRecord(keyScope: scope, shreddedAt: at).storedEvent()
        guard try await recorder.selectEvents(originatorID: record.originatorID, limit: 1).isEmpty else { return }
        do {
            _ = try await recorder.insertEvents([record])
        } catch let e as EventSourcingError where e.code == .concurrencyConflict {
            // Another shred of the same scope appended it first.
        }
        logger.debug("appended the erasure record", metadata: ["scope": "\(scope)"])
    }

    /// What the key store, and the snapshot store when it is another one, still hold of erased
    /// keys (their own account, made without waiting); nil when nothing is pending.
    private func erasureResidue(_ keyStore: any KeyStore) async -> String? {
        var pending: [String] = []
        // Usually one object (a SQLite store is key store and snapshot store): said once.
        for candidate in [keyStore as Any, snapshotRecorder as Any] {
            guard let scrubbing = candidate as? any ErasureResidueScrubbing else { continue }
            let status = await scrubbing.erasureResidue()
            if status.pending, !pending.contains(status.description) { pending.append(status.description) }
        }
        return pending.isEmpty ? nil : pending.joined(separator: "; ")
    }

    /// Crypto-shreds the key scope `root` is encrypted under (its data subject, else its id).
    /// - Throws: as ``shred(keyScope:ifAbsent:)``; `.keyScopeNotFound` if it was never saved.
    public func shred<A: Aggregate>(_ root: AggregateRoot<A>) async throws -> ErasureReceipt {
        try await shred(keyScope: root.keyScope)
    }

    /// Crypto-shreds the key scope that aggregate `id`'s latest event is encrypted under, read
    /// from its record header (nothing is decrypted).
    /// - Throws: `.aggregateNotFound`; `.invalidArgument` if its records are not encrypted; as
    ///   ``shred(keyScope:ifAbsent:)``.
    public func shred(aggregateID id: UUID) async throws -> ErasureReceipt {
        guard let latest = try await recorder.selectEvents(originatorID: id, order: .descending, limit: 1).first else {
            throw EventSourcingError(.aggregateNotFound, "no such aggregate", originatorID: id)
        }
        guard let scope = RecordFormat.keyScope(of: latest.state) else {
            throw EventSourcingError(.invalidArgument, "the aggregate's records are not encrypted: there is no key to shred",
                                     originatorID: id, originatorVersion: latest.originatorVersion)
        }
        return try await shred(keyScope: scope)
    }

    /// The spelling `scope` is stored under (it has a data key or a tombstone), trying the other
    /// case spellings of a UUID-shaped scope; nil when none exists.
    private func storedSpelling(of scope: String, in store: any KeyStore) async throws -> String? {
        var candidates = [scope]
        if let u = UUID(uuidString: scope) {
            for s in [u.uuidString.lowercased(), u.uuidString] where !candidates.contains(s) { candidates.append(s) }
        }
        for c in candidates where (try? KeyScope.validate(c)) != nil {
            if try await !store.dataKeys(scope: c).isEmpty { return c }
            if try await store.tombstone(scope: c) != nil { return c }
        }
        return nil
    }

    /// The lowercase form of a UUID-shaped scope (the form aggregate ids are stored under);
    /// any other scope unchanged.
    static func canonicalScope(_ scope: String) -> String {
        guard scope.utf8.count == 36, let u = UUID(uuidString: scope) else { return scope }
        return u.uuidString.lowercased()
    }

    /// The number of events stored under `keyScope`, read from record headers (no decryption).
    public func countEvents(keyScope: String) async throws -> Int {
        if let counting = recorder as? any KeyScopeCounting { return try await counting.countEvents(keyScope: keyScope) }
        var count = 0
        var start: Int64 = 1
        while true {
            let page = try await recorder.selectNotifications(start: start, limit: 1000, stop: nil, topics: [])
            guard let last = page.last else { break }
            count += page.reduce(0) { $0 + (RecordFormat.keyScope(of: $1.state).map { ExactScope.same($0, keyScope) } == true ? 1 : 0) }
            start = try NotificationLog.next(after: last.id, from: start)
            if start == Int64.max { break }
        }
        return count
    }
}
