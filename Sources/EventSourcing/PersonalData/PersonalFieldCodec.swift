import Foundation
import KeyManagement

/// Raised by the sealer when it lacks a subject's key, or by the opener when a field names a
/// key the mapper did not fetch: the mapper fetches the keys (async) and runs the sync
/// encode or decode again. Never leaves the mapper.
struct PersonalFieldNeedsKeys: Error {
    var keys: [(scope: String, version: UInt32)]
}

/// Seals ``Personal`` fields while the mapper encodes records of one batch: one instance per
/// batch, its ``record`` set before each record. Not thread-safe: used by one encode at a time.
final class PersonalFieldSealer: @unchecked Sendable {
    var record: PersonalFieldFormat.Record
    /// The current data key of each subject, shared by the batch's records.
    var keys: [ExactScope: DataKey] = [:]
    /// Subjects met without a key in ``keys``; the encode that met them is discarded.
    var missing: [String] = []
    /// Without a cipher: every personal field is refused.
    let refuse: Bool
    /// How many fields were sealed or written redacted in the current record.
    var fields = 0
    /// JSON payloads: `JSONEncoder` reports coding paths without the keys of nested containers
    /// (an enum case's associated values lose the case name), so the paths come from a compact
    /// pass over the same value (``collecting``), in encoding order.
    var paths: [[String]]? = nil
    /// The compact pass that only collects the fields' paths (nothing is sealed).
    var collecting = false
    /// Set by a JSON pass that met a personal field before the paths were collected.
    var needsPaths = false
    var collected: [[String]] = []

    init(record: PersonalFieldFormat.Record, refuse: Bool) {
        self.record = record
        self.refuse = refuse
    }

    func error(_ code: EventSourcingError.Code, _ message: String, scope: String? = nil) -> EventSourcingError {
        EventSourcingError(code, message, originatorID: record.originatorID, originatorVersion: record.originatorVersion,
                           topic: record.topic, keyScope: scope)
    }

    func encode<V>(_ field: Personal<V>, to encoder: any Encoder) throws {
        var path = PersonalFieldFormat.path(encoder.codingPath)
        if collecting {
            collected.append(path)
            return
        }
        if record.encoding == .json {
            guard let paths else {
                needsPaths = true
                return
            }
            guard fields < paths.count, paths[fields].last == path.last, PersonalFieldFormat.isSubsequence(path, of: paths[fields]) else {
                throw error(.invalidArgument, "the value's personal fields are not encoded in the same order twice: encode(to:) must be deterministic")
            }
            path = paths[fields]
        }
        let where_ = "the personal field at \(path.joined(separator: "."))"
        guard !refuse else {
            throw error(.plaintextRejected, "\(where_) needs a cipher to be sealed: a mapper without a keyring never writes personal fields")
        }
        guard field.isRedacted || field.replacementValue != nil else {
            throw error(.invalidArgument, "\(where_) has no replacement: \(V.self) is not PersonalDataReplaceable, so declare one (Personal(_:subject:replacement:))")
        }
        fields += 1
        typealias K = PersonalFieldFormat.Key
        var c = encoder.container(keyedBy: K.self)
        try c.encode(PersonalFieldFormat.version, forKey: .marker)
        if let s = field.subject { try c.encode(s, forKey: .subject) }
        if let redaction = field.redaction {
            try c.encode(true, forKey: .redacted)
            if let at = redaction.shreddedAt { try c.encode(at.timeIntervalSince1970, forKey: .shreddedAt) }
            if let r = field.replacement { try c.encode(r, forKey: .replacement) }
            return
        }
        guard let subject = field.subject ?? record.scope else {
            throw error(.plaintextRejected, "\(where_) names no subject and its record has no key scope")
        }
        guard let key = keys[ExactScope(subject)] else {
            // Fetched by the mapper, which encodes the record again; nothing of this pass is kept.
            if !missing.contains(where: { ExactScope($0) == ExactScope(subject) }) { missing.append(subject) }
            return
        }
        let plaintext: [UInt8]
        do { plaintext = try PersonalFieldFormat.encodeValue(field.value, record.encoding) } catch {
            throw self.error(.invalidArgument, "\(where_) could not be encoded: \(Mapper.describe(error))")
        }
        let sealed: [UInt8]
        do {
            let nonce = try AES256GCM.randomNonce()
            let aad = PersonalFieldFormat.associatedData(record, subject: subject, keyVersion: key.version, path: path)
            sealed = nonce + (try AES256GCM.seal(plaintext, key: key.material, nonce: nonce, aad: aad))
        } catch {
            throw self.error(.recorderFailure, "\(where_) could not be encrypted (\(error.code))", scope: subject)
        }
        try c.encode(key.version, forKey: .keyVersion)
        try c.encode(path, forKey: .path)
        try c.encode(Data(sealed).base64EncodedString(), forKey: .ciphertext)
        if let r = field.replacement { try c.encode(r, forKey: .replacement) }
    }
}

/// Opens ``Personal`` fields while the mapper decodes one record, with the keys it fetched.
final class PersonalFieldOpener: @unchecked Sendable {
    let record: PersonalFieldFormat.Record
    let keys: PersonalFieldKeys
    /// Set for a record read through an upcaster: its stored paths are trusted (an upcaster may
    /// rename or move a field), not compared with where the field is decoded.
    var trustStoredPaths = false

    init(record: PersonalFieldFormat.Record, keys: PersonalFieldKeys) {
        self.record = record
        self.keys = keys
    }

    func error(_ code: EventSourcingError.Code, _ message: String, scope: String? = nil) -> EventSourcingError {
        EventSourcingError(code, message, originatorID: record.originatorID, originatorVersion: record.originatorVersion,
                           topic: record.topic, notificationID: record.notificationID, keyScope: scope)
    }

    func decode<V>(_ type: Personal<V>.Type, from decoder: any Decoder) throws -> Personal<V> {
        typealias K = PersonalFieldFormat.Key
        let here = PersonalFieldFormat.path(decoder.codingPath)
        let where_ = "the personal field at \(here.joined(separator: "."))"
        let c: KeyedDecodingContainer<K>
        let explicit: String?
        let replacement: V?
        do {
            c = try decoder.container(keyedBy: K.self)
            guard try c.decode(Int.self, forKey: .marker) == PersonalFieldFormat.version else {
                throw error(.decodingFailed, "\(where_) has an unknown format ($pf is not \(PersonalFieldFormat.version))")
            }
            explicit = try c.decodeIfPresent(String.self, forKey: .subject)
            replacement = try c.decodeIfPresent(V.self, forKey: .replacement)
        } catch let e as EventSourcingError { throw e } catch {
            throw self.error(.decodingFailed, "\(where_) is not a sealed personal field: \(Mapper.describe(error))")
        }
        guard let subject = explicit ?? record.scope else {
            throw error(.plaintextRejected, "\(where_) names no subject and its record has no key scope")
        }
        func redacted(_ at: Date?) throws -> Personal<V> {
            guard let value = replacement ?? Personal<V>.defaultReplacement else {
                throw error(.decodingFailed, "\(where_) is redacted but has no replacement and \(V.self) is not PersonalDataReplaceable")
            }
            return Personal(redacted: value, subject: explicit, replacement: replacement,
                            redaction: Redaction(subject: subject, shreddedAt: at))
        }
        let version: UInt32
        let storedPath: [String]
        let text: String
        do {
            if try c.decodeIfPresent(Bool.self, forKey: .redacted) == true {
                return try redacted(try c.decodeIfPresent(Double.self, forKey: .shreddedAt).map { Date(timeIntervalSince1970: $0) })
            }
            version = try c.decode(UInt32.self, forKey: .keyVersion)
            storedPath = try c.decode([String].self, forKey: .path)
            text = try c.decode(String.self, forKey: .ciphertext)
        } catch let e as EventSourcingError { throw e } catch {
            throw self.error(.decodingFailed, "\(where_) is not a sealed personal field: \(Mapper.describe(error))")
        }
        let path = trustStoredPaths ? storedPath : here
        guard trustStoredPaths || storedPath.elementsEqual(here, by: { ExactScope($0) == ExactScope($1) }) else {
            throw error(.integrityFailure, "\(where_) was sealed for another field (\(storedPath.joined(separator: "."))): moved or tampered",
                        scope: subject)
        }
        switch try open(subject: subject, version: version, path: path, text: text, where_) {
        case .shredded(let at):
            return try redacted(at)
        case .plaintext(let plaintext):
            let value: V
            do { value = try PersonalFieldFormat.decodeValue(V.self, plaintext, record.encoding) } catch {
                throw self.error(.decodingFailed, "\(where_) does not decode as \(V.self): \(Self.describeInValue(error))", scope: subject)
            }
            return Personal(value, subject: explicit, replacement: replacement)
        }
    }

    /// What went wrong decoding a field's plaintext, without the coding path inside it (a
    /// dictionary key there is part of the personal value) and without any key name.
    static func describeInValue(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound: return "a key is missing inside the value"
        case DecodingError.typeMismatch(let type, _): return "expected \(type) inside the value"
        case DecodingError.valueNotFound(let type, _): return "missing \(type) inside the value"
        case DecodingError.dataCorrupted: return "malformed data inside the value"
        default: return "\(type(of: error))"
        }
    }

    enum Opened {
        case plaintext([UInt8])
        case shredded(Date?)
    }

    /// The field's plaintext, or its subject's shred.
    /// - Throws: ``PersonalFieldNeedsKeys`` for a key not fetched; `.integrityFailure` when the
    ///   ciphertext is malformed or its tag does not match.
    func open(subject: String, version: UInt32, path: [String], text: String, _ where_: String) throws -> Opened {
        switch keys.entries[FieldKeyID(scope: ExactScope(subject), version: version)] {
        case nil:
            throw PersonalFieldNeedsKeys(keys: [(subject, version)])
        case .shredded(let at):
            return .shredded(at)
        case .key(let key):
            guard let blob = Data(base64Encoded: text), blob.count >= AES256GCM.nonceLength + AES256GCM.tagLength else {
                throw error(.integrityFailure, "\(where_) has a malformed ciphertext", scope: subject)
            }
            let bytes = [UInt8](blob)
            let aad = PersonalFieldFormat.associatedData(record, subject: subject, keyVersion: version, path: path)
            do {
                return .plaintext(try AES256GCM.open(Array(bytes[AES256GCM.nonceLength...]), key: key.material,
                                                     nonce: Array(bytes[..<AES256GCM.nonceLength]), aad: aad))
            } catch {
                throw self.error(.integrityFailure,
                    "\(where_) does not open: its tag does not match (moved from another record, field or subject, or tampered)",
                    scope: subject)
            }
        }
    }

    /// A field found in the payload tree, for ``Mapper/personalFields(of:snapshot:notificationID:)``:
    /// checked against its stored path (its place in the tree differs by encoding).
    func read(_ o: [String: JSONValue], at: [String]) -> PersonalFieldReading {
        typealias K = PersonalFieldFormat.Key
        var explicit: String?
        if case .string(let s)? = o[K.subject.rawValue] { explicit = s }
        let subject = explicit ?? record.scope ?? ""
        var path = at
        if case .array(let items)? = o[K.path.rawValue] {
            path = items.compactMap { if case .string(let s) = $0 { return s } else { return nil } }
        }
        var reading = PersonalFieldReading(path: path, subject: subject, namesSubject: explicit != nil, keyVersion: nil,
                                           outcome: .redacted(Redaction(subject: subject)))
        let where_ = "the personal field at \(path.joined(separator: "."))"
        if case .bool(true)? = o[K.redacted.rawValue] {
            var at: Date?
            switch o[K.shreddedAt.rawValue] {
            case .double(let d)?: at = Date(timeIntervalSince1970: d)
            case .int(let i)?: at = Date(timeIntervalSince1970: Double(i))
            default: break
            }
            reading.outcome = .redacted(Redaction(subject: subject, shreddedAt: at))
            return reading
        }
        guard case .int(let k)? = o[K.keyVersion.rawValue], let version = UInt32(exactly: k),
              case .string(let text)? = o[K.ciphertext.rawValue], !subject.isEmpty else {
            reading.outcome = .failed(error(.decodingFailed, "\(where_) is not a sealed personal field"))
            return reading
        }
        reading.keyVersion = version
        do {
            switch try open(subject: subject, version: version, path: path, text: text, where_) {
            case .shredded(let at): reading.outcome = .redacted(Redaction(subject: subject, shreddedAt: at))
            case .plaintext(let p):
                reading.outcome = .value(record.encoding == .compact ? try CompactJSON.text(from: p) : p)
            }
        } catch let e as EventSourcingError {
            reading.outcome = .failed(e)
        } catch is PersonalFieldNeedsKeys {
            reading.outcome = .failed(error(.keyUnavailable, "\(where_): its key was not fetched", scope: subject))
        } catch {
            reading.outcome = .failed(self.error(.decodingFailed, "\(where_) does not decode: \(Mapper.describe(error))", scope: subject))
        }
        return reading
    }
}

/// `Personal`'s `Codable` conformance: through the sealer or opener in `userInfo`, else an error.
enum PersonalFieldCodec {
    static func encode<V>(_ field: Personal<V>, to encoder: any Encoder) throws {
        guard let sealer = encoder.userInfo[.personalFields] as? PersonalFieldSealer else {
            throw EncodingError.invalidValue(field, .init(codingPath: encoder.codingPath,
                debugDescription: "a Personal field is only written by the Mapper, which seals it under its subject's key: "
                    + "this encoder has no field sealer, and the plaintext is never written"))
        }
        try sealer.encode(field, to: encoder)
    }

    static func decode<V>(_ type: Personal<V>.Type, from decoder: any Decoder) throws -> Personal<V> {
        guard let opener = decoder.userInfo[.personalFields] as? PersonalFieldOpener else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                debugDescription: "a Personal field is only read by the Mapper, which opens it with its subject's key: this decoder has no field opener"))
        }
        return try opener.decode(type, from: decoder)
    }
}
