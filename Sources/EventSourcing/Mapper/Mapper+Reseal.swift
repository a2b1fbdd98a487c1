import Foundation
import KeyManagement

/// Re-encryption: a stored record opened and sealed again under a scope's newest data-key
/// version, at the same coordinates (so with the same associated data but for the header's key
/// version and nonce), and the key versions a record uses (for retiring old ones).
extension Mapper {
    /// A record sealed again, and what changed in it.
    package struct Resealed: Sendable {
        /// The new state.
        package var state: [UInt8]
        /// The key scope its header names (unchanged).
        package var keyScope: String
        /// Whether the record itself (its header's key) moved to the new version.
        package var recordResealed: Bool
        /// How many personal fields inside it moved to the new version.
        package var fieldsResealed: Int
    }

    /// One use of a data-key version by a record: its header's, or a personal field's.
    package struct KeyUse: Sendable, Hashable {
        package var scope: String
        package var version: UInt32
        package var personalField: Bool
    }

    /// Seals `stored` again so that nothing in it uses a version of `key.scope` older than
    /// `key.version`: the record itself, if its header names that scope, and every personal
    /// field sealed under that scope (its own or another subject's record). Nothing else changes:
    /// coordinates, header scope, flags, the payload and the other fields' ciphertexts.
    ///
    /// A record of another scope that holds such a field is sealed again under the key version it
    /// already had (with a fresh nonce): re-encrypting one scope never moves another.
    /// - Returns: nil when nothing in the record uses an older version of the scope (also for an
    ///   unencrypted record: encrypting those is another operation).
    /// - Throws: ``EventSourcingError`` naming the record: `.integrityFailure` for a record or
    ///   field that does not open, `.shredded`, `.keyUnavailable`, `.keyRetired`.
    package func reseal(_ stored: StoredEvent, snapshot: Bool, under key: DataKey,
                        notificationID: Int64? = nil) async throws -> Resealed? {
        guard case .success(let (header, bodyOffset)) = StateHeader.parse(stored.state),
              header.flags.contains(.encrypted), let recordScope = header.keyScope else {
            if case .failure = StateHeader.parse(stored.state) {
                throw record(.integrityFailure, "the record's header does not parse", stored, notificationID)
            }
            return nil
        }
        guard let cipher else {
            throw record(.keyUnavailable, "record is encrypted but the mapper has no keyring", stored, notificationID)
        }
        let target = ExactScope(key.scope)
        let moveRecord = ExactScope(recordScope) == target && header.keyVersion < key.version
        let coordinates = RecordFormat.Coordinates(snapshot: snapshot, originatorID: stored.originatorID,
                                                   originatorVersion: stored.originatorVersion, topic: stored.topic)
        let recordKey: DataKey
        do { recordKey = try await cipher.openingKey(scope: recordScope, version: header.keyVersion) } catch {
            var e = Self.translate(error, stored: stored, scope: recordScope)
            e.notificationID = notificationID
            throw e
        }
        let opened: [UInt8]?
        do {
            opened = try RecordFormat.open(stored.state, header: header, bodyOffset: bodyOffset, key: recordKey, at: coordinates)
        } catch {
            throw record(.integrityFailure, "record could not be decrypted (\(error.code))", stored, notificationID)
        }
        guard let inner = opened else {
            throw record(.integrityFailure, "authentication tag does not match: record tampered, corrupt or moved", stored, notificationID)
        }
        var body = inner
        var fieldsResealed = 0
        var payload = inner
        if header.flags.contains(.compressed) { payload = try decompressed(inner, stored, notificationID) }
        var flags = header.flags
        if PersonalFieldFormat.mayContainFields(payload) {
            let encoding: PayloadEncoding = header.flags.contains(.compact) ? .compact : .json
            let fieldRecord = PersonalFieldFormat.Record(snapshot: snapshot, originatorID: stored.originatorID,
                                                         originatorVersion: stored.originatorVersion, topic: stored.topic,
                                                         notificationID: notificationID, scope: recordScope, encoding: encoding)
            let found: [PersonalFieldSplice.Field]
            do { found = try PersonalFieldSplice.fields(in: payload, encoding: encoding) } catch {
                throw record(.integrityFailure, "the payload's personal fields do not parse", stored, notificationID)
            }
            var edits: [PersonalFieldSplice.Edit] = []
            for f in found {
                let subject = f.subject ?? recordScope
                guard ExactScope(subject) == target, f.version < key.version else { continue }
                let old: DataKey
                do { old = try await cipher.openingKey(scope: subject, version: f.version) } catch {
                    var e = Self.translate(error, stored: stored, scope: subject)
                    e.notificationID = notificationID
                    throw e
                }
                let where_ = "the personal field at \(f.path.joined(separator: "."))"
                guard let blob = Data(base64Encoded: f.ciphertext), blob.count >= AES256GCM.nonceLength + AES256GCM.tagLength else {
                    throw record(.integrityFailure, "\(where_) has a malformed ciphertext", stored, notificationID)
                }
                let bytes = [UInt8](blob)
                let plaintext: [UInt8]
                do {
                    plaintext = try AES256GCM.open(Array(bytes[AES256GCM.nonceLength...]), key: old.material,
                                                   nonce: Array(bytes[..<AES256GCM.nonceLength]),
                                                   aad: PersonalFieldFormat.associatedData(fieldRecord, subject: subject,
                                                                                           keyVersion: f.version, path: f.path))
                } catch {
                    throw record(.integrityFailure, "\(where_) does not open: its tag does not match", stored, notificationID)
                }
                let sealed: [UInt8]
                do {
                    let nonce = try AES256GCM.randomNonce()
                    sealed = nonce + (try AES256GCM.seal(plaintext, key: key.material, nonce: nonce,
                                                         aad: PersonalFieldFormat.associatedData(fieldRecord, subject: subject,
                                                                                                 keyVersion: key.version, path: f.path)))
                } catch {
                    throw record(.recorderFailure, "\(where_) could not be encrypted (\(error.code))", stored, notificationID)
                }
                edits.append(PersonalFieldSplice.Edit(field: f, version: key.version,
                                                      ciphertext: Data(sealed).base64EncodedString(), encoding: encoding))
            }
            if !edits.isEmpty {
                fieldsResealed = edits.count
                let spliced = PersonalFieldSplice.apply(edits, to: payload)
                body = spliced
                flags.remove(.compressed)
                if let z = try compressed(spliced, topic: stored.topic) {
                    body = z
                    flags.insert(.compressed)
                }
            }
        }
        guard moveRecord || fieldsResealed > 0 else { return nil }
        let sealKey = moveRecord ? key : recordKey
        let state: [UInt8]
        do { state = try RecordFormat.seal(body, flags: flags, key: sealKey, at: coordinates) } catch {
            throw record(.recorderFailure, "encryption failed (\(error.code))", stored, notificationID)
        }
        return Resealed(state: state, keyScope: recordScope, recordResealed: moveRecord, fieldsResealed: fieldsResealed)
    }

    /// The data-key versions `stored` uses: its header's, and (when `opening`) its personal
    /// fields', which takes opening the record. Only versions of `scope` when given.
    /// - Throws: like ``reseal(_:snapshot:under:notificationID:)`` when the record must be opened.
    package func keyUses(of stored: StoredEvent, snapshot: Bool, scope: String?, notificationID: Int64? = nil) async throws -> [KeyUse] {
        guard case .success(let (header, _)) = StateHeader.parse(stored.state),
              header.flags.contains(.encrypted), let recordScope = header.keyScope else { return [] }
        var uses: [KeyUse] = []
        if scope.map({ ExactScope($0) == ExactScope(recordScope) }) ?? true {
            uses.append(KeyUse(scope: recordScope, version: header.keyVersion, personalField: false))
        }
        let payload = try await openPayload(stored, snapshot: snapshot, notificationID: notificationID)
        guard PersonalFieldFormat.mayContainFields(payload.bytes) else { return uses }
        let found: [PersonalFieldSplice.Field]
        do { found = try PersonalFieldSplice.fields(in: payload.bytes, encoding: payload.encoding) } catch {
            throw record(.integrityFailure, "the payload's personal fields do not parse", stored, notificationID)
        }
        for f in found {
            let subject = f.subject ?? recordScope
            if let scope, ExactScope(scope) != ExactScope(subject) { continue }
            uses.append(KeyUse(scope: subject, version: f.version, personalField: true))
        }
        return uses
    }
}

/// The sealed personal fields of a payload, found with the byte ranges of their key version
/// (`k`) and ciphertext (`c`) values, so a re-encryption replaces exactly those two values and
/// leaves every other byte of the payload as it was. Both payload encodings: in the compact
/// format containers count items, not bytes, so a value may change length; in JSON text too.
enum PersonalFieldSplice {
    struct Field {
        var subject: String?
        var version: UInt32
        var path: [String]
        var ciphertext: String
        var versionRange: Range<Int>
        var ciphertextRange: Range<Int>
    }

    struct Edit {
        var field: Field
        var version: UInt32
        var ciphertext: String
        var encoding: Mapper.PayloadEncoding
    }

    /// The payload's sealed fields (a field written redacted has no `k` or `c` and is left out).
    /// - Throws: for a payload or field object that does not parse.
    static func fields(in payload: [UInt8], encoding: Mapper.PayloadEncoding) throws -> [Field] {
        switch encoding {
        case .compact: return try compactFields(payload)
        case .json:
            var scan = JSONScan(payload)
            return try scan.fields()
        }
    }

    /// `payload` with each edit's `k` and `c` values replaced (edits applied from the end).
    static func apply(_ edits: [Edit], to payload: [UInt8]) -> [UInt8] {
        var replacements: [(Range<Int>, [UInt8])] = []
        for e in edits {
            switch e.encoding {
            case .compact:
                replacements.append((e.field.versionRange, [CompactTag.uint.rawValue] + varint(UInt64(e.version))))
                let c = Array(e.ciphertext.utf8)
                replacements.append((e.field.ciphertextRange, [CompactTag.string.rawValue] + varint(UInt64(c.count)) + c))
            case .json:
                replacements.append((e.field.versionRange, Array(String(e.version).utf8)))
                // Base64 needs no JSON escaping.
                replacements.append((e.field.ciphertextRange, [0x22] + Array(e.ciphertext.utf8) + [0x22]))
            }
        }
        replacements.sort { $0.0.lowerBound > $1.0.lowerBound }
        var out = payload
        for (range, bytes) in replacements { out.replaceSubrange(range, with: bytes) }
        return out
    }

    private static func varint(_ v: UInt64) -> [UInt8] {
        var v = v
        var out: [UInt8] = []
        repeat {
            var b = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { b |= 0x80 }
            out.append(b)
        } while v != 0
        return out
    }

    static func malformed(_ what: String) -> DecodingError {
        .dataCorrupted(.init(codingPath: [], debugDescription: what))
    }

    // MARK: Compact

    private static func compactFields(_ payload: [UInt8]) throws -> [Field] {
        let reader = try CompactReader(payload)
        var out: [Field] = []
        try walk(reader, reader.root, depth: 0, into: &out)
        return out
    }

    private static func walk(_ reader: CompactReader, _ at: CompactCursor, depth: Int, into out: inout [Field]) throws {
        guard depth < CompactReader.maxDepth else { throw malformed("nesting too deep") }
        switch try reader.tag(at: at.offset) {
        case .array:
            let (n, first) = try reader.open(at, .array)
            var c = first
            for _ in 0..<n {
                try walk(reader, c, depth: depth + 1, into: &out)
                c = try reader.after(c)
            }
        case .map:
            let map = try reader.mapEntries(at)
            if map.find(PersonalFieldFormat.Key.marker.rawValue) != nil {
                if let f = try compactField(reader, map) { out.append(f) }
                return
            }
            for e in map.entries { try walk(reader, e.value, depth: depth + 1, into: &out) }
        default: return
        }
    }

    private static func compactField(_ reader: CompactReader, _ map: CompactMapEntries) throws -> Field? {
        typealias K = PersonalFieldFormat.Key
        guard map.find(K.redacted.rawValue) == nil, let k = map.find(K.keyVersion.rawValue),
              let c = map.find(K.ciphertext.rawValue) else { return nil }
        var pos = k.offset + 1
        let version: UInt64
        switch try reader.tag(at: k.offset) {
        case .uint: version = try reader.varint(&pos)
        case .int:
            let z = try reader.varint(&pos)
            let v = Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))
            guard v >= 0 else { throw malformed("negative key version") }
            version = UInt64(v)
        default: throw malformed("key version is not an integer")
        }
        guard let v32 = UInt32(exactly: version) else { throw malformed("key version out of range") }
        guard try reader.tag(at: c.offset) == .string else { throw malformed("ciphertext is not a string") }
        var cpos = c.offset + 1
        let text = try reader.string(reader.stringRange(&cpos))
        var subject: String?
        if let s = map.find(K.subject.rawValue) {
            guard try reader.tag(at: s.offset) == .string else { throw malformed("subject is not a string") }
            var spos = s.offset + 1
            subject = try reader.string(reader.stringRange(&spos))
        }
        var path: [String] = []
        if let p = map.find(K.path.rawValue) {
            let (n, first) = try reader.open(p, .array)
            var item = first
            for _ in 0..<n {
                guard try reader.tag(at: item.offset) == .string else { throw malformed("path segment is not a string") }
                var ipos = item.offset + 1
                path.append(try reader.string(reader.stringRange(&ipos)))
                item = try reader.after(item)
            }
        }
        return Field(subject: subject, version: v32, path: path, ciphertext: text,
                     versionRange: k.offset..<(try reader.after(k).offset),
                     ciphertextRange: c.offset..<(try reader.after(c).offset))
    }

    // MARK: JSON

    /// A scanner of JSON text that records, for every object holding the marker key, the byte
    /// ranges of its members' values. Depth-limited like the compact reader.
    struct JSONScan {
        let b: [UInt8]
        var i = 0
        var found: [Field] = []

        init(_ bytes: [UInt8]) { b = bytes }

        mutating func fields() throws -> [Field] {
            skipSpace()
            try value(depth: 0)
            skipSpace()
            guard i == b.count else { throw malformed("trailing bytes after the JSON value") }
            return found
        }

        private mutating func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }

        private mutating func value(depth: Int) throws {
            guard depth < CompactReader.maxDepth else { throw malformed("nesting too deep") }
            guard i < b.count else { throw malformed("truncated JSON") }
            switch b[i] {
            case 0x7B: try object(depth: depth)
            case 0x5B:
                i += 1
                skipSpace()
                if i < b.count, b[i] == 0x5D { i += 1; return }
                while true {
                    skipSpace()
                    try value(depth: depth + 1)
                    skipSpace()
                    guard i < b.count else { throw malformed("truncated JSON array") }
                    if b[i] == 0x2C { i += 1; continue }
                    guard b[i] == 0x5D else { throw malformed("bad JSON array") }
                    i += 1
                    return
                }
            case 0x22: try skipString()
            default:
                // Numbers and literals: up to the next structural character.
                let start = i
                while i < b.count, ![0x2C, 0x5D, 0x7D, 0x20, 0x0A, 0x0D, 0x09].contains(b[i]) { i += 1 }
                guard i > start else { throw malformed("empty JSON value") }
            }
        }

        private mutating func skipString() throws {
            guard i < b.count, b[i] == 0x22 else { throw malformed("expected a JSON string") }
            i += 1
            while i < b.count {
                if b[i] == 0x5C { i += 2; continue }
                if b[i] == 0x22 { i += 1; return }
                i += 1
            }
            throw malformed("truncated JSON string")
        }

        private mutating func object(depth: Int) throws {
            i += 1
            var members: [(key: Range<Int>, value: Range<Int>)] = []
            skipSpace()
            if i < b.count, b[i] == 0x7D { i += 1; return }
            while true {
                skipSpace()
                let keyStart = i
                try skipString()
                let key = keyStart..<i
                skipSpace()
                guard i < b.count, b[i] == 0x3A else { throw malformed("expected ':' in a JSON object") }
                i += 1
                skipSpace()
                let valueStart = i
                try value(depth: depth + 1)
                members.append((key, valueStart..<i))
                skipSpace()
                guard i < b.count else { throw malformed("truncated JSON object") }
                if b[i] == 0x2C { i += 1; continue }
                guard b[i] == 0x7D else { throw malformed("bad JSON object") }
                i += 1
                break
            }
            try record(members)
        }

        private func decodedKey(_ r: Range<Int>) throws -> String {
            try Mapper.jsonDecoder.decode(String.self, from: Data(b[r]))
        }

        private mutating func record(_ members: [(key: Range<Int>, value: Range<Int>)]) throws {
            typealias K = PersonalFieldFormat.Key
            var byKey: [String: Range<Int>] = [:]
            for m in members {
                let k = try decodedKey(m.key)
                if byKey[k] == nil { byKey[k] = m.value }   // a repeated key: the first, as decoders read it
            }
            guard byKey[K.marker.rawValue] != nil, byKey[K.redacted.rawValue] == nil,
                  let k = byKey[K.keyVersion.rawValue], let c = byKey[K.ciphertext.rawValue] else { return }
            // Fields sit inside other values: a marker object found inside a field's own
            // members (only a forged payload has one) was recorded first and is dropped here.
            if let start = members.first?.key.lowerBound { found.removeAll { $0.versionRange.lowerBound >= start } }
            guard let version = UInt32(String(decoding: b[k], as: UTF8.self)) else { throw malformed("bad key version") }
            let text = try decodedKey(c)
            let subject = try byKey[K.subject.rawValue].map { try decodedKey($0) }
            let path = try byKey[K.path.rawValue].map { try Mapper.jsonDecoder.decode([String].self, from: Data(b[$0])) } ?? []
            found.append(Field(subject: subject, version: version, path: path, ciphertext: text, versionRange: k, ciphertextRange: c))
        }
    }
}
