import Foundation
import KeyManagement

/// The one place that knows the bytes of a stored record's `state`: a ``StateHeader``, then the
/// payload (plain or `ciphertext || tag` under the header's data key), authenticated with the
/// record's associated data (``StateHeader/associatedData(header:snapshot:originatorID:originatorVersion:topic:)``).
/// The layout is specified in SECURITY.md ("Record format"); the mapper calls this and nothing else.
package enum RecordFormat {
    /// Where a record sits: what its associated data binds the ciphertext to.
    package struct Coordinates: Sendable {
        package var snapshot: Bool
        package var originatorID: UUID
        package var originatorVersion: Int
        package var topic: String

        package init(snapshot: Bool, originatorID: UUID, originatorVersion: Int, topic: String) {
            self.snapshot = snapshot
            self.originatorID = originatorID
            self.originatorVersion = originatorVersion
            self.topic = topic
        }
    }

    /// An unencrypted record: header (no scope) || payload.
    package static func plain(_ payload: [UInt8], flags: StateHeader.Flags) -> [UInt8] {
        var f = flags
        f.remove(.encrypted)
        return StateHeader(flags: f, keyScope: nil, keyVersion: 0, nonce: []).bytes + payload
    }

    /// An encrypted record: header (scope, key version, fresh nonce) || ciphertext || tag, in one buffer.
    /// - Throws: `KeyManagementError` if the RNG or the cipher fails.
    package static func seal(_ payload: [UInt8], flags: StateHeader.Flags, key: DataKey,
                             at record: Coordinates) throws(KeyManagementError) -> [UInt8] {
        var f = flags
        f.insert(.encrypted)
        let header = StateHeader(flags: f, keyScope: key.scope, keyVersion: key.version,
                                 nonce: try AES256GCM.randomNonce()).bytes
        let aad = StateHeader.associatedData(header: header, snapshot: record.snapshot, originatorID: record.originatorID,
                                             originatorVersion: record.originatorVersion, topic: record.topic)
        return try AES256GCM.seal(payload, key: key.material, nonce: Array(header.suffix(AES256GCM.nonceLength)),
                                  aadParts: [aad], prefix: header)
    }

    /// The payload of an encrypted record whose header was parsed as `header`, ending at `bodyOffset`.
    /// - Returns: nil when the tag does not verify (tampered, corrupt, or moved to other coordinates).
    /// - Throws: `KeyManagementError` if the cipher fails.
    package static func open(_ state: [UInt8], header: StateHeader, bodyOffset: Int, key: DataKey,
                             at record: Coordinates) throws(KeyManagementError) -> [UInt8]? {
        let aad = StateHeader.associatedData(header: Array(state[0..<bodyOffset]), snapshot: record.snapshot,
                                             originatorID: record.originatorID,
                                             originatorVersion: record.originatorVersion, topic: record.topic)
        return try AES256GCM.open(state, from: bodyOffset, key: key.material, nonce: header.nonce, aadParts: [aad])
    }

    /// The key scope a record's header names, without decrypting; nil for an unencrypted or
    /// unparseable record. For tools and messages: a recorder uses ``StoredEvent/keyScope``.
    package static func keyScope(of state: [UInt8]) -> String? {
        if case .success(let (h, _)) = StateHeader.parse(state) { return h.keyScope }
        return nil
    }
}
