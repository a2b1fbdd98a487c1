import Foundation
import Logging
import Synchronization

/// Wrapping and unwrapping data keys under master keys, master-key checks, and the checks on what a store answers.
extension Keyring {
    // MARK: Internals

    /// `records`, after checking that each is a key of `scope` byte for byte.
    /// - Throws: ``KeyManagementError/Code/storeFailure`` naming `scope` if the store answered a
    ///   look-up of `scope` with another scope's key (a store that compares scopes as `String`s
    ///   mixes up canonically equivalent spellings): using it would seal one subject's records
    ///   under another subject's key.
    static func only(_ scope: String, _ records: [WrappedDataKey]) throws(KeyManagementError) -> [WrappedDataKey] {
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

    func cachedCurrent(_ scope: ExactScope) -> DataKey? {
        state.withLock { s in
            guard let v = s.current[scope] else { return nil }
            return s.get(scope, v)
        }
    }

    func mint(scope: String, version: UInt32) throws -> (DataKey, WrappedDataKey) {
        let primary = try state.withLock { (s) throws(KeyManagementError) -> any KeyEncryptionKey in
            guard let k = s.masterKeys[s.primaryID] else {
                throw KeyManagementError(.keyUnavailable, "the primary master key is not loaded")
            }
            return k
        }
        let key = DataKey(scope: scope, version: version, material: try KeyMaterial(randomCount: 32))
        return (key, try Keyring.wrap(key, with: primary, createdAt: Date()))
    }

    func unwrap(_ record: WrappedDataKey) throws -> DataKey {
        guard let kek = state.withLock({ $0.masterKeys[record.kekID] }) else {
            throw KeyManagementError(.keyUnavailable,
                "the data key is wrapped by master key \(record.kekID), which is not loaded",
                scope: record.scope, keyVersion: record.version)
        }
        let w = record.wrapped
        // A local key's wrapped data key is exactly nonce | key | tag; other kinds' are the
        // token's or the helper's bytes, of their own length.
        if kek is MasterKey, w.count != AES256GCM.nonceLength + 32 + AES256GCM.tagLength {
            throw KeyManagementError(.authenticationFailed, "wrapped data key has the wrong length",
                                     scope: record.scope, keyVersion: record.version)
        }
        let aad = KeyScope.wrappingAAD(scope: record.scope, version: record.version, kekID: record.kekID)
        let opened: [UInt8]?
        do throws(KeyManagementError) {
            opened = try kek.unwrap(w, aad: aad)
        } catch {
            throw KeyManagementError(error.code, error.message, scope: record.scope, keyVersion: record.version)
        }
        guard var raw = opened else {
            throw KeyManagementError(.authenticationFailed, "wrapped data key failed its integrity check",
                                     scope: record.scope, keyVersion: record.version)
        }
        guard raw.count == 32 else {
            LibCrypto.cleanse(&raw)
            throw KeyManagementError(.authenticationFailed, "wrapped data key has the wrong length",
                                     scope: record.scope, keyVersion: record.version)
        }
        return DataKey(scope: record.scope, version: record.version, material: KeyMaterial(consuming: &raw))
    }

    static func wrap(_ key: DataKey, with kek: any KeyEncryptionKey, createdAt: Date) throws(KeyManagementError) -> WrappedDataKey {
        let aad = KeyScope.wrappingAAD(scope: key.scope, version: key.version, kekID: kek.id)
        let sealed = try key.material.withUnsafeBytes { (raw) throws(KeyManagementError) -> [UInt8] in
            var plain = Array(raw)
            defer { LibCrypto.cleanse(&plain) }
            do throws(KeyManagementError) {
                return try kek.wrap(plain, aad: aad)
            } catch {
                throw KeyManagementError(error.code, error.message, scope: key.scope, keyVersion: key.version)
            }
        }
        return WrappedDataKey(scope: key.scope, version: key.version, kekID: kek.id, wrapped: sealed, createdAt: createdAt)
    }

    static let checkPlaintext = Array("eventsourcing master key check v1".utf8)

    static func checkAAD(_ kekID: String) -> [UInt8] { Array("ESKCV1".utf8) + Array(kekID.utf8) }

    static func makeCheck(for key: any KeyEncryptionKey) throws(KeyManagementError) -> MasterKeyCheck {
        let sealed = try key.wrap(checkPlaintext, aad: checkAAD(key.id))
        return MasterKeyCheck(kekID: key.id, sealed: sealed, kdf: key.kdf, createdAt: Date())
    }

    /// Whether `check` opens with `key`: false for a wrong key or tampered bytes.
    /// - Throws: ``KeyManagementError`` only when the key cannot be reached (a token, a helper).
    static func verify(_ check: MasterKeyCheck, with key: any KeyEncryptionKey) throws(KeyManagementError) -> Bool {
        let s = check.sealed
        if key is MasterKey, s.count <= AES256GCM.nonceLength + AES256GCM.tagLength { return false }
        let opened: [UInt8]?
        do {
            opened = try key.unwrap(s, aad: checkAAD(key.id))
        } catch {
            // A local key cannot be unreachable: whatever fails opening its check is a mismatch.
            if key is MasterKey { return false }
            throw error
        }
        guard var plain = opened else { return false }
        defer { LibCrypto.cleanse(&plain) }
        return plain == checkPlaintext
    }
}
