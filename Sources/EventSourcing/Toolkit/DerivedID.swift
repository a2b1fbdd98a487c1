import Foundation
import KeyManagement

/// Deterministic ids: the same namespace and name give the same UUID in every process, on every
/// run. A command a process application or saga sends to another application creates its
/// aggregate under a derived id (`DerivedID.uuid(namespace: "payment", name: orderID)`), so a
/// repeat after a crash finds the aggregate already there instead of creating a second one
/// (see ``Application/saveIfNew(_:)``).
///
/// The id is a version-8 UUID made of the first 16 bytes of
/// SHA-256(`"eventsourcing.derived/1\0"` || namespace || `"\0"` || name), with the RFC 9562
/// version and variant bits set. Random aggregate ids are version 4, so a derived id never
/// equals one by chance. The id is stored in plaintext (it is an originator id), and a hash of
/// a guessable name can be recomputed by anyone: derive ids from opaque ids (an order's UUID),
/// never from personal data such as an e-mail address.
public enum DerivedID {
    /// The longest namespace or name, in bytes of UTF-8.
    public static let maxPartBytes = 1024

    /// The id derived from `namespace` and `name`.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for an empty part, one longer than
    ///   ``maxPartBytes`` bytes of UTF-8, or one holding NUL (described by its length, never quoted).
    public static func uuid(namespace: String, name: String) throws(EventSourcingError) -> UUID {
        try check(namespace, "namespace")
        try check(name, "name")
        return try v8(Array("eventsourcing.derived/1\0".utf8) + Array(namespace.utf8) + [0] + Array(name.utf8))
    }

    /// The id derived from `namespace` and the lowercase text of `id`.
    public static func uuid(namespace: String, id: UUID) throws(EventSourcingError) -> UUID {
        try uuid(namespace: namespace, name: id.uuidString.lowercased())
    }

    private static func check(_ part: String, _ what: String) throws(EventSourcingError) {
        let n = part.utf8.count
        guard n >= 1 else { throw EventSourcingError(.invalidArgument, "a derived id's \(what) must not be empty") }
        guard n <= maxPartBytes else {
            throw EventSourcingError(.invalidArgument, "a derived id's \(what) is at most \(maxPartBytes) bytes of UTF-8; this one has \(n)")
        }
        guard !part.utf8.contains(0) else {
            throw EventSourcingError(.invalidArgument, "a derived id's \(what) must not contain NUL (this one of \(n) bytes does)")
        }
    }

    /// A version-8 UUID of the first 16 bytes of SHA-256(`bytes`).
    static func v8(_ bytes: [UInt8]) throws(EventSourcingError) -> UUID {
        let d = Digest.sha256(bytes)
        guard d.count >= 16 else { throw EventSourcingError(.recorderFailure, "SHA-256 failed computing a derived id") }
        let b6 = d[6] & 0x0F | 0x80   // version 8
        let b8 = d[8] & 0x3F | 0x80   // RFC 9562 variant
        return UUID(uuid: (d[0], d[1], d[2], d[3], d[4], d[5], b6, d[7], b8, d[9], d[10], d[11], d[12], d[13], d[14], d[15]))
    }
}

extension Application {
    /// Saves a new aggregate unless one with its id exists already: the idempotent "create" of a
    /// command that may be repeated (a process application's call to another application, run
    /// again after a crash or a conflict). Give the aggregate a ``DerivedID`` so the repeat
    /// names the same id.
    /// - Returns: true when `root` was saved (its events are marked saved), false when an
    ///   aggregate with its id was there already (nothing written; `root` unchanged). Only the
    ///   id is compared: the existing aggregate is not read.
    /// - Throws: `.invalidArgument` for a root that is not new (its first pending event is not
    ///   version 1); as `save(_:)`.
    @discardableResult
    public func saveIfNew<A: Aggregate>(_ root: inout AggregateRoot<A>) async throws -> Bool {
        guard root.pendingEvents.first?.originatorVersion == 1 else {
            throw EventSourcingError(.invalidArgument, "saveIfNew saves a new aggregate: its pending events must start at version 1",
                                     originatorID: root.id)
        }
        if try await repository.contains(root.id) { return false }
        do {
            try await save(&root)
            return true
        } catch let e as EventSourcingError where e.isConcurrencyConflict && (e.originatorID == nil || e.originatorID == root.id) {
            // Created by another writer between the check and the save.
            guard try await repository.contains(root.id) else { throw e }
            return false
        }
    }
}
