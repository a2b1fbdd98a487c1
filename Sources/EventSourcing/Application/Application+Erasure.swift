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

    /// Creates a receipt.
    public init(keyScope: String, shreddedAt: Date, destroyedKeyVersions: [UInt32], eventsAffected: Int,
                snapshotsDeleted: Int, plaintextEventsInStore: Int? = nil) {
        self.keyScope = keyScope
        self.shreddedAt = shreddedAt
        self.destroyedKeyVersions = destroyedKeyVersions
        self.eventsAffected = eventsAffected
        self.snapshotsDeleted = snapshotsDeleted
        self.plaintextEventsInStore = plaintextEventsInStore
    }
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
    /// of its data key, leaves a tombstone, deletes its snapshots and drops it from caches.
    /// Reads of its records then throw `.shredded`; saves to it throw `.shredded`.
    ///
    /// A UUID-shaped scope is looked up in the spelling it is stored under, so
    /// `shred(keyScope: id.uuidString)` (uppercase) erases the lowercase scope the aggregate
    /// writes under.
    /// - Parameter ifAbsent: what to do when the scope has never had a key: refuse (the default)
    ///   or tombstone it ahead of time.
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
        let tombstone: Tombstone
        do { tombstone = try await keyring.shred(scope: target) } catch {
            // Already shredded: finish a shred that was interrupted before its snapshots went.
            if let k = error as? KeyManagementError, k.code == .shredded {
                _ = try? await snapshotRecorder?.deleteSnapshots(keyScope: target)
            }
            throw Mapper.translate(error, stored: nil, scope: target)
        }
        let snapshots = try await snapshotRecorder?.deleteSnapshots(keyScope: target) ?? 0
        let affected = try await countEvents(keyScope: target)
        let plaintext = try await (recorder as? any KeyScopeCounting)?.countPlaintextEvents()
        if let plaintext, plaintext > 0 {
            logger.warning("the store holds unencrypted events, which no shred can erase",
                           metadata: ["plaintext_events": "\(plaintext)"])
        }
        logger.notice("shredded key scope", metadata: ["scope": "\(target)", "events": "\(affected)"])
        return ErasureReceipt(keyScope: target, shreddedAt: tombstone.shreddedAt,
                              destroyedKeyVersions: tombstone.destroyedVersions,
                              eventsAffected: affected, snapshotsDeleted: snapshots,
                              plaintextEventsInStore: plaintext)
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
        guard let latest = try await recorder.selectEvents(originatorID: id, gt: nil, lte: nil, desc: true, limit: 1).first else {
            throw EventSourcingError(.aggregateNotFound, "no such aggregate", originatorID: id)
        }
        guard let scope = latest.keyScope else {
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
            count += page.reduce(0) { $0 + (StateHeader.peekKeyScope($1.state).map { ExactScope.same($0, keyScope) } == true ? 1 : 0) }
            start = try NotificationLog.next(after: last.id, from: start)
            if start == Int64.max { break }
        }
        return count
    }
}
