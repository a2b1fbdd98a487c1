import Foundation
import KeyManagement

/// How the mapper names records and translates key-management errors into read outcomes.
extension Mapper {
    func record(_ code: EventSourcingError.Code, _ message: String, _ stored: StoredEvent,
                _ notificationID: Int64?) -> EventSourcingError {
        EventSourcingError(code, message, originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                           topic: stored.topic, notificationID: notificationID, keyScope: RecordFormat.keyScope(of: stored.state))
    }

    /// Maps key-management errors onto the read outcomes listed in Docs/Concepts.md.
    static func translate(_ error: any Error, stored: StoredEvent?, scope: String) -> EventSourcingError {
        if var e = error as? EventSourcingError {
            // A store error raised while fetching the key (a corrupt database, say) still names the record.
            if let stored, e.originatorID == nil {
                e.originatorID = stored.originatorID
                e.originatorVersion = stored.originatorVersion
                e.topic = stored.topic
            }
            if e.keyScope == nil { e.keyScope = scope }
            return e
        }
        guard let k = error as? KeyManagementError else {
            return EventSourcingError(.recorderFailure, "key store failed: \(error)", originatorID: stored?.originatorID,
                                      originatorVersion: stored?.originatorVersion, topic: stored?.topic, keyScope: scope)
        }
        let code: EventSourcingError.Code
        var message = k.message
        switch k.code {
        case .shredded:
            code = .shredded
            message = "the key scope was crypto-shredded; its records cannot be read or written"
        case .wrongMasterKey: code = .wrongMasterKey
        case .authenticationFailed: code = .integrityFailure
        case .keyUnavailable: code = .keyUnavailable
        case .keyNotFound where stored != nil:
            // A record naming a key that never existed (and was not shredded) has a forged or
            // corrupt header; the tag cannot even be checked.
            code = .integrityFailure
            message = "the record names data key v\(k.keyVersion ?? 0) of its scope, which does not exist: header tampered or corrupt, or keys lost"
        case .keyNotFound: code = .keyUnavailable
        case .keyRetired:
            code = .keyRetired
            message = "the record names data key v\(k.keyVersion ?? 0) of its scope, which was retired after re-encryption "
                + "(below the scope's minimum decryption version)"
        case .invalidScope where stored != nil: code = .integrityFailure
        case .invalidScope: code = .invalidArgument
        // More records in one save than one data key may seal (Keyring.encryptionLimit).
        case .limitExceeded: code = .invalidArgument
        // The token or helper holding the master key failed: not the store's fault.
        case .keySourceFailed, .keySourceUnavailable: code = .keySourceFailed
        default: code = .recorderFailure
        }
        return EventSourcingError(code, message, originatorID: stored?.originatorID,
                                  originatorVersion: stored?.originatorVersion, topic: stored?.topic,
                                  keyScope: scope, shreddedAt: k.shreddedAt)
    }

    /// A decoding error's coding path, without the payload values.
    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let ctx):
            return "missing key '\(key.stringValue)' at \(path(ctx.codingPath))"
        case DecodingError.typeMismatch(let type, let ctx):
            return "expected \(type) at \(path(ctx.codingPath))"
        case DecodingError.valueNotFound(let type, let ctx):
            return "missing \(type) at \(path(ctx.codingPath))"
        case DecodingError.dataCorrupted(let ctx):
            return "malformed data at \(path(ctx.codingPath))"
        case EncodingError.invalidValue(_, let ctx):
            return "value cannot be encoded at \(path(ctx.codingPath))"
        default:
            return "\(type(of: error))"
        }
    }

    /// The coding path, with every dictionary key left out: a dictionary's keys are data (an
    /// index keyed by e-mail address), where property and case names are the schema's. Swift's
    /// `Dictionary` codes its keys with the standard library's own key type.
    private static func path(_ p: [any CodingKey]) -> String {
        p.isEmpty ? "top level" : p.map { isDictionaryKey($0) ? "[key]" : $0.stringValue }.joined(separator: ".")
    }

    static func isDictionaryKey(_ key: any CodingKey) -> Bool {
        String(reflecting: type(of: key)).contains("DictionaryCodingKey")
    }
}
