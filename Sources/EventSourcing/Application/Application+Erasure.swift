import Foundation
import KeyManagement

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
}

/// A recorder that can count a key scope's events without reading the whole log.
public protocol KeyScopeCounting: Sendable {
    /// The number of stored events whose header names `keyScope`.
    func countEvents(keyScope: String) async throws -> Int
}

extension Application {
    /// Crypto-shreds a key scope (a data subject or an aggregate id): destroys every version
    /// of its data key, leaves a tombstone, deletes its snapshots and drops it from caches.
    /// Reads of its records then throw `.shredded`; saves to it throw `.shredded`.
    /// - Throws: ``EventSourcingError`` `.shredded` if already shredded, `.invalidArgument`
    ///   without a keyring (nothing is encrypted, so nothing can be shredded).
    public func shred(keyScope: String) async throws -> ErasureReceipt {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.invalidArgument, "the application has no keyring: records are not encrypted", keyScope: keyScope)
        }
        let tombstone: Tombstone
        do { tombstone = try await keyring.shred(scope: keyScope) } catch {
            // Already shredded: finish a shred that was interrupted before its snapshots went.
            if let k = error as? KeyManagementError, k.code == .shredded {
                _ = try? await snapshotRecorder?.deleteSnapshots(keyScope: keyScope)
            }
            throw Mapper.translate(error, stored: nil, scope: keyScope)
        }
        let snapshots = try await snapshotRecorder?.deleteSnapshots(keyScope: keyScope) ?? 0
        let affected = try await countEvents(keyScope: keyScope)
        logger.notice("shredded key scope", metadata: ["scope": "\(keyScope)", "events": "\(affected)"])
        return ErasureReceipt(keyScope: keyScope, shreddedAt: tombstone.shreddedAt,
                              destroyedKeyVersions: tombstone.destroyedVersions,
                              eventsAffected: affected, snapshotsDeleted: snapshots)
    }

    /// The number of events stored under `keyScope`, read from record headers (no decryption).
    public func countEvents(keyScope: String) async throws -> Int {
        if let counting = recorder as? any KeyScopeCounting { return try await counting.countEvents(keyScope: keyScope) }
        var count = 0
        var start: Int64 = 1
        while true {
            let page = try await recorder.selectNotifications(start: start, limit: 1000, stop: nil, topics: [])
            guard let last = page.last else { break }
            count += page.reduce(0) { $0 + (StateHeader.peekKeyScope($1.state) == keyScope ? 1 : 0) }
            start = last.id + 1
        }
        return count
    }
}
