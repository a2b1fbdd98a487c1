import EventSourcing
import Foundation
import KeyManagement

/// An aggregate whose events and state hold ``Personal`` fields: of its own key scope (no
/// subject), of another subject whose key exists, and of a subject that the fuzz targets'
/// key store has shredded; in enum cases, optionals, arrays, a nested struct, a type without a
/// default replacement.
public struct PersonalAggregate: Aggregate {
    public static let typeName = "PersonalAggregate"
    /// A data subject whose key is in the targets' key store.
    public static let otherSubject = "fuzz-subject-other"
    /// A data subject the targets' key store has crypto-shredded (its fields read redacted).
    public static let shreddedSubject = "fuzz-subject-shredded"
    /// In the plaintext of the ``Event/tagged(labels:counts:)`` fields only (keys and values):
    /// no error message may hold it.
    public static let secretMarker = "pii-"

    public struct Contact: Codable, Sendable, Equatable {
        public var label: String
        public var phone: Personal<String>
    }

    public enum Event: Codable, Sendable {
        case joined(name: Personal<String>, referrer: Personal<String>?, contacts: [Personal<String>], age: Int)
        case moved(address: Personal<FuzzAggregate.Address>, previous: Personal<String>?)
        case noted(Contact, witnesses: [Personal<Int>]?, scores: [String: Personal<Double>])
        /// Dictionaries keyed by personal data (every key and string holds ``secretMarker``).
        case tagged(labels: Personal<[String: String]>, counts: Personal<[String: Int]>)
        case left
    }

    public var name: Personal<String>?
    public var contacts: [Personal<String>] = []
    public var address: Personal<FuzzAggregate.Address>?
    public var notes: [Contact] = []

    public init() {}

    /// Records are sealed under ``Records/scope``, the subject of the fields that name none.
    public var dataSubject: String? { Records.scope }

    /// Schema 2, with schema 1 the same shape: a record whose envelope says 1 goes through the
    /// upcast path (personal fields read with their stored paths trusted).
    public static var eventSchemaVersion: Int { 2 }
    public static var snapshotSchemaVersion: Int { 2 }
    public static func upcastEvent(_ json: inout JSONValue, from version: Int) throws {}
    public static func upcastSnapshot(_ json: inout JSONValue, from version: Int) throws {}

    public mutating func apply(_ event: Event) throws {
        switch event {
        case .joined(let name, _, let contacts, _):
            self.name = name
            self.contacts += contacts
        case .moved(let address, _): self.address = address
        case .noted(let contact, _, _): notes.append(contact)
        case .tagged: break
        case .left: contacts = []
        }
    }

    /// One event of each case; every kind of field.
    public static let samples: [Event] = {
        let other = otherSubject, shredded = shreddedSubject
        return [
            .joined(name: Personal("Ada Lovelace"), referrer: Personal("Charles Babbage", subject: other),
                    contacts: [Personal("ada@example.org"), Personal("+44 20 7946 0000", subject: shredded, replacement: "(erased)"),
                               Personal("é 世界 🐕", subject: other)],
                    age: 36),
            .moved(address: Personal(FuzzAggregate.Address(street: "12 St James's Square", zip: nil, lines: ["London"]),
                                     subject: shredded, replacement: FuzzAggregate.Address(street: "", zip: nil, lines: [])),
                   previous: nil),
            .noted(Contact(label: "work", phone: Personal("+1 555 0100", subject: other)),
                   witnesses: [Personal(7, subject: shredded), Personal(-1)],
                   scores: ["a": Personal(1.5, subject: other), "": Personal(-0.0, subject: shredded)]),
            .noted(Contact(label: "", phone: Personal("")), witnesses: nil, scores: [:]),
            .tagged(labels: Personal(["pii-key": "pii-value", "pii-k2": "pii-v2"], subject: other),
                    counts: Personal(["pii-count": 1], subject: other)),
            .left,
        ]
    }()
}

/// The fixed data keys of the fuzz targets' key store, and records with personal fields.
public enum PersonalRecords {
    /// One record's body as the fuzz-mapper's sealing mode takes it: originator version, header
    /// flags, and the decrypted (still compressed, if flagged) body.
    public struct Body: Sendable {
        public var version: Int
        public var flags: StateHeader.Flags
        public var body: [UInt8]
        public var topic: String
        /// Whether decoding it fails (`.decodingFailed`): fields swapped on purpose.
        public var fails = false
    }

    /// A fixed 32-byte key per scope (never a real key), so that records written by one
    /// process (the seeds) open in another (the fuzzing run).
    static func material(for scope: String) -> KeyMaterial {
        var bytes = [UInt8](repeating: 0, count: 32)
        for (i, b) in scope.utf8.enumerated() { bytes[i % 32] &+= b &* 31 &+ UInt8(truncatingIfNeeded: i) }
        return KeyMaterial(consuming: &bytes)
    }

    /// A keyring on a new in-memory store holding v1 of each scope's fixed key, with
    /// ``PersonalAggregate/shreddedSubject`` shredded when `shred` is set.
    public static func keyring(shred: Bool) async throws -> Keyring {
        let master = Fuzz.masterKey()
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        for scope in [Records.scope, PersonalAggregate.otherSubject, PersonalAggregate.shreddedSubject] {
            let nonce = try AES256GCM.randomNonce()
            let aad = KeyScope.wrappingAAD(scope: scope, version: 1, kekID: master.id)
            let sealed = try material(for: scope).withUnsafeBytes { raw in
                try AES256GCM.seal(Array(raw), key: master.material, nonce: nonce, aad: aad)
            }
            try await store.insertDataKey(WrappedDataKey(scope: scope, version: 1, kekID: master.id, wrapped: nonce + sealed,
                                                         createdAt: Date(timeIntervalSince1970: 1_700_000_000)))
        }
        if shred { _ = try await keyring.shred(scope: PersonalAggregate.shreddedSubject, at: Date(timeIntervalSince1970: 1_700_000_100)) }
        return keyring
    }

    /// The body of an encrypted record sealed under ``Records/scope`` v1 (its fixed key).
    static func body(of stored: StoredEvent) throws -> Body {
        guard case .success(let (h, o)) = StateHeader.parse(stored.state), h.flags.contains(.encrypted),
              h.keyScope == Records.scope, h.keyVersion == 1 else {
            Fuzz.fail("a personal record is not sealed under \(Records.scope) v1")
        }
        let aad = Records.associatedData(header: Array(stored.state[..<o]), snapshot: h.flags.contains(.snapshot),
                                         originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                         topic: stored.topic)
        let body = try AES256GCM.open(Array(stored.state[o...]), key: material(for: Records.scope), nonce: h.nonce, aad: aad)
        return Body(version: stored.originatorVersion, flags: h.flags.subtracting([.encrypted, .uuidScope]), body: body,
                    topic: stored.topic)
    }

    /// Every sample event of ``PersonalAggregate``, a snapshot with sealed fields, a snapshot
    /// taken after ``PersonalAggregate/shreddedSubject``'s shred (its fields written redacted)
    /// and a discard marker, in both encodings, compressed and not, written by the library's
    /// own mapper on a key store where no subject is shredded yet; and the uncompressed JSON
    /// events and snapshots again with schema version 1 in their envelopes.
    public static func bodies() async throws -> [Body] {
        var out: [Body] = []
        for encoding in [Mapper.PayloadEncoding.compact, .json] {
            for compressor in [ZlibCompressor(), nil] as [ZlibCompressor?] {
                let keyring = try await keyring(shred: false)
                let config = Mapper.Configuration(encoding: encoding, compressor: compressor)
                let at = Date(timeIntervalSince1970: 1_700_000_000)
                var root = try AggregateRoot<PersonalAggregate>(id: Fuzz.originatorID, PersonalAggregate.samples[0], at: at)
                for e in PersonalAggregate.samples.dropFirst() { try root.record(e, at: at) }
                let recorder = InMemoryRecorder()
                let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring, configuration: config))
                try await app.save(&root)
                try await app.takeSnapshot(PersonalAggregate.self, id: root.id)
                var records = try await recorder.selectEvents(originatorID: root.id)
                if let s = try await recorder.selectSnapshot(originatorID: root.id, lte: nil) { records.append(s) }
                // After the shred, a new application (no cached state) writes the fields redacted.
                _ = try await keyring.shred(scope: PersonalAggregate.shreddedSubject, at: Date(timeIntervalSince1970: 1_700_000_100))
                let later = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring, configuration: config))
                try await later.takeSnapshot(PersonalAggregate.self, id: root.id)
                if let s = try await recorder.selectSnapshot(originatorID: root.id, lte: nil) { records.append(s) }
                var loaded = try await later.repository.get(PersonalAggregate.self, id: root.id)
                try loaded.discard(at: at)
                try await later.save(&loaded)
                if let marker = try await recorder.selectEvents(originatorID: root.id, order: .descending, limit: 1).first {
                    records.append(marker)
                }
                let written = try records.map(body(of:))
                out += written
                // The JSON records again as schema 1 (the same shape), so seeds reach the upcast path.
                if encoding == .json, compressor == nil {
                    let v2 = Array(#""v":2"#.utf8), v1 = Array(#""v":1"#.utf8)
                    for var b in written {
                        guard let i = b.body.indices.dropLast(v2.count - 1).first(where: { b.body[$0..<$0 + v2.count].elementsEqual(v2) }) else { continue }
                        b.body.replaceSubrange(i..<i + v2.count, with: v1)
                        out.append(b)
                        // The tagged event with its two fields swapped (same subject): on the upcast
                        // path their stored paths are trusted, so both open and fail to decode as
                        // the other's type (whose message once held a dictionary key of the plaintext).
                        if case .object(var env) = try JSONDecoder().decode(JSONValue.self, from: Data(b.body)),
                           case .object(var e)? = env["e"], case .object(var tagged)? = e["tagged"] {
                            (tagged["labels"], tagged["counts"]) = (tagged["counts"], tagged["labels"])
                            e["tagged"] = .object(tagged)
                            env["e"] = .object(e)
                            b.body = Array(try JSONEncoder().encode(JSONValue.object(env)))
                            b.fails = true
                            out.append(b)
                        }
                    }
                }
            }
        }
        return out
    }
}
