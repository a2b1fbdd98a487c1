import Foundation
import KeyManagement

/// Turns domain events and snapshots into stored records and back, through the transcoder
/// pipeline: Codable (compact or JSON) → compressor (zlib) → cipher (AES-256-GCM under the key
/// scope's data key, which a ``RecordCipher`` such as `Keyring` hands out) → the record
/// format (``StateHeader``). Nothing above the mapper sees bytes or keys; nothing below it
/// sees plaintext.
public final class Mapper: Sendable {
    /// Whether a mapper with a keyring reads records without encryption. (A mapper without a
    /// keyring writes and reads only such records.)
    public enum PlaintextReads: Sendable {
        /// Read them: for a migration, while a store written before encryption was turned on
        /// still holds plaintext records.
        case allowed
        /// Refuse them with ``EventSourcingError/Code/plaintextRejected`` (the default): this
        /// stops anyone with write access from injecting unauthenticated records, and personal
        /// data written in the clear by mistake from being read as if it were protected.
        case rejected
    }

    /// How payloads are serialised (the Codable stage).
    public enum PayloadEncoding: Sendable {
        /// The compact binary Codable format (the default): several times faster to decode than JSON.
        case compact
        /// JSON: readable by any tool once decrypted, slower.
        case json
    }

    /// A decrypted, decompressed payload and how it is encoded.
    public struct Payload: Sendable {
        /// The payload bytes.
        public var bytes: [UInt8]
        /// Their encoding.
        public var encoding: PayloadEncoding
        /// The subject keys of its personal fields, fetched when it was opened (nil: none).
        var personalKeys: PersonalFieldKeys? = nil

        /// A payload.
        public init(bytes: [UInt8], encoding: PayloadEncoding) {
            self.bytes = bytes
            self.encoding = encoding
        }
    }

    /// The former name of ``Configuration``.
    @available(*, deprecated, renamed: "Configuration")
    public typealias Options = Configuration

    /// Pipeline settings (named `X.Configuration` like every configuration type of the library).
    public struct Configuration: Sendable {
        /// The Codable stage's format for new records; records of either format are always read.
        public var encoding: PayloadEncoding
        /// The compression stage, or nil for none.
        public var compressor: (any Compressor)?
        /// Topics never compressed: events that put attacker-chosen text next to secrets, where
        /// the compressed length could leak the secret (see SECURITY.md).
        public var uncompressedTopics: Set<String>
        /// Whether a mapper with a keyring reads unencrypted records.
        public var plaintextReads: PlaintextReads
        /// The least fraction of a record's length compression must save for the record to be
        /// stored compressed: 0.1 by default (10%); 0 keeps every compressed form that is
        /// shorter at all. Clamped to 0…0.5 (NaN: the default). When an attempt on a small record
        /// (up to 1 KiB) does not pay, the mapper stores that topic's next small records without
        /// trying, backing off to one attempt in 64 until an attempt pays again (SECURITY.md §5.4).
        public var minimumCompressionSaving: Double {
            get { saving }
            set { saving = newValue.isNaN ? 0.1 : min(max(newValue, 0), 0.5) }
        }
        private var saving = 0.1
        /// Preset dictionaries, by topic (a snapshot's topic is its aggregate's
        /// `snapshotTopic`): a record of a topic listed here is compressed with its dictionary
        /// (``CompressionDictionary``; still only where that saves ``minimumCompressionSaving``).
        /// None by default. Reading a record needs the dictionary it was written with, here or
        /// in ``retiredCompressionDictionaries``.
        public var compressionDictionaries: [String: CompressionDictionary]
        /// Dictionaries no longer written with, kept so that records written with them still read.
        public var retiredCompressionDictionaries: [CompressionDictionary]

        /// Creates options; by default the compact encoding, zlib where it saves at least 10%,
        /// every topic compressed, no preset dictionaries, and (with a keyring) unencrypted
        /// records refused.
        public init(encoding: PayloadEncoding = .compact, compressor: (any Compressor)? = ZlibCompressor(),
                    uncompressedTopics: Set<String> = [], plaintextReads: PlaintextReads = .rejected,
                    minimumCompressionSaving: Double = 0.1,
                    compressionDictionaries: [String: CompressionDictionary] = [:],
                    retiredCompressionDictionaries: [CompressionDictionary] = []) {
            self.encoding = encoding
            self.compressor = compressor
            self.uncompressedTopics = uncompressedTopics
            self.plaintextReads = plaintextReads
            self.compressionDictionaries = compressionDictionaries
            self.retiredCompressionDictionaries = retiredCompressionDictionaries
            self.minimumCompressionSaving = minimumCompressionSaving
        }

        /// Every dictionary a record may name, each once.
        var readingDictionaries: [CompressionDictionary] {
            var seen = Set<CompressionDictionary>()
            return (compressionDictionaries.sorted { $0.key < $1.key }.map(\.value) + retiredCompressionDictionaries)
                .filter { seen.insert($0).inserted }
        }
    }

    /// Events encoded for one save, with any data keys minted for them.
    package struct EncodedBatch: Sendable {
        /// The records to insert.
        package var events: [StoredEvent]
        /// Keys minted for these records that are not stored yet.
        package var newKeys: [SealingKey]
        /// The domain events encoded (`[DomainEvent<A.Event>]`, the first records of ``events``,
        /// in order), for in-process publishing after the commit; nil publishes them untyped.
        package var published: (any Sendable)? = nil
    }

    // Shared: both are thread-safe, and their option storage is never changed after creation.
    static let jsonEncoder = JSONEncoder()
    static let jsonDecoder = JSONDecoder()

    /// The cipher stage's key source; nil writes plaintext (with compression, if any).
    public let cipher: (any RecordCipher)?
    /// The cipher when it is a `Keyring` (key rotation, shredding), else nil.
    public let keyring: Keyring?
    /// The pipeline settings.
    public let configuration: Configuration
    /// Which small records are worth trying to compress, per topic.
    let compressionAdvisor = CompressionAdvisor()
    /// The configuration's dictionaries, current and retired, for reading.
    let readingDictionaries: [CompressionDictionary]

    /// The pipeline settings, by their former name.
    @available(*, deprecated, renamed: "configuration")
    public var options: Configuration { configuration }

    /// Creates a mapper whose cipher is `keyring` (nil: no encryption).
    public convenience init(keyring: Keyring? = nil, configuration: Configuration = Configuration()) {
        self.init(cipher: keyring, configuration: configuration)
    }

    /// Creates a mapper with any cipher (nil: no encryption).
    public init(cipher: (any RecordCipher)?, configuration: Configuration = Configuration()) {
        self.cipher = cipher
        self.keyring = cipher as? Keyring
        self.configuration = configuration
        self.readingDictionaries = configuration.readingDictionaries
    }

    /// Creates a mapper whose cipher is `keyring`, with settings under their former label.
    @available(*, deprecated, renamed: "init(keyring:configuration:)")
    public convenience init(keyring: Keyring? = nil, options: Configuration) {
        self.init(cipher: keyring, configuration: options)
    }

    /// Creates a mapper with any cipher, with settings under their former label.
    @available(*, deprecated, renamed: "init(cipher:configuration:)")
    public convenience init(cipher: (any RecordCipher)?, options: Configuration) {
        self.init(cipher: cipher, configuration: options)
    }

    // MARK: Internals

    /// Refuses a record stored for another aggregate type: its topic must be `A.typeName + "."`
    /// followed by an event name (or `A.snapshotTopic`). Without this, an aggregate whose events
    /// happen to have the same shape would be read as the wrong type.
    static func checkTopic<A: Aggregate>(_ stored: StoredEvent, of type: A.Type, snapshot: Bool,
                                         notificationID: Int64?) throws(EventSourcingError) {
        let ok: Bool
        if snapshot {
            ok = stored.topic == A.snapshotTopic
        } else {
            let name = A.typeName.utf8
            let topic = stored.topic.utf8
            ok = topic.count > name.count + 1 && topic.starts(with: name)
                && topic[topic.index(topic.startIndex, offsetBy: name.count)] == UInt8(ascii: ".")
        }
        guard ok else {
            throw EventSourcingError(.aggregateTypeMismatch,
                "the record belongs to another aggregate type than \(A.typeName) (asked for \(A.self))",
                originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                topic: stored.topic, notificationID: notificationID)
        }
    }

    func serialise<T: Encodable>(_ value: T) throws -> [UInt8] {
        switch configuration.encoding {
        case .compact: return try CompactEncoder().encode(value)
        case .json: return Array(try Mapper.jsonEncoder.encode(value))
        }
    }

    /// An encoder in the configured format whose `userInfo` holds `fields`, made once per batch.
    enum RecordEncoder {
        case compact(CompactEncoder)
        case json(JSONEncoder)

        init(_ encoding: PayloadEncoding, fields: PersonalFieldSealer) {
            switch encoding {
            case .compact: self = .compact(CompactEncoder(userInfo: [.personalFields: fields]))
            case .json:
                let encoder = JSONEncoder()
                encoder.userInfo[.personalFields] = fields
                self = .json(encoder)
            }
        }

        func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
            switch self {
            case .compact(let e): return try e.encode(value)
            case .json(let e): return Array(try e.encode(value))
            }
        }
    }

    static func deserialise<T: Decodable>(_ type: T.Type, _ payload: Payload, fields: PersonalFieldOpener? = nil) throws -> T {
        switch payload.encoding {
        case .compact:
            guard let fields else { return try CompactDecoder().decode(T.self, from: payload.bytes) }
            return try CompactDecoder(userInfo: [.personalFields: fields]).decode(T.self, from: payload.bytes)
        case .json:
            guard let fields else { return try jsonDecoder.decode(T.self, from: Data(payload.bytes)) }
            let decoder = JSONDecoder()
            decoder.userInfo[.personalFields] = fields
            return try decoder.decode(T.self, from: Data(payload.bytes))
        }
    }

    /// The opener for `payload`'s personal fields, or nil when opening found none.
    static func fieldOpener(_ payload: Payload, stored: StoredEvent, snapshot: Bool, notificationID: Int64?) -> PersonalFieldOpener? {
        guard let keys = payload.personalKeys else { return nil }
        return PersonalFieldOpener(record: .init(snapshot: snapshot, originatorID: stored.originatorID,
                                                 originatorVersion: stored.originatorVersion, topic: stored.topic,
                                                 notificationID: notificationID, scope: keys.recordScope,
                                                 encoding: payload.encoding), keys: keys)
    }

    /// The cipher's key for sealing `scope`'s records, or nil without a cipher.
    func sealingKey(for scope: String, likelyNew: Bool, encryptions: Int = 1) async throws(EventSourcingError) -> SealingKey? {
        guard let cipher else { return nil }
        // The number of records (or fields) to be sealed under it, for a cipher that counts them.
        do { return try await cipher.sealingKey(for: scope, likelyNew: likelyNew, encryptions: encryptions) } catch {
            throw Self.translate(error, stored: nil, scope: scope)
        }
    }

    /// `payload` compressed (with the topic's preset dictionary, if any), or nil when the
    /// topic is not compressed or compressing it does not save the configured minimum.
    func compressed(_ payload: [UInt8], topic: String) throws -> [UInt8]? {
        guard let compressor = configuration.compressor, !configuration.uncompressedTopics.contains(topic),
              compressionAdvisor.shouldTry(topic: topic, size: payload.count) else { return nil }
        let z = if let dictionary = configuration.compressionDictionaries[topic] {
            try compressor.compress(payload, dictionary: dictionary)
        } else {
            try compressor.compress(payload)
        }
        // Kept only when it saves at least the minimum (and is shorter at all).
        let saved = payload.count - z.count
        let paid = saved > 0 && Double(saved) >= configuration.minimumCompressionSaving * Double(payload.count)
        compressionAdvisor.tried(topic: topic, size: payload.count, paid: paid)
        return paid ? z : nil
    }

    /// A stored record's compressed `body`, decompressed (with the preset dictionary it names).
    /// - Throws: ``EventSourcingError`` naming the record: `.compressionDictionaryMissing` when
    ///   the mapper lacks the dictionary, else `.integrityFailure`.
    func decompressed(_ body: [UInt8], _ stored: StoredEvent, _ notificationID: Int64?,
                      corrupt: String = "compressed payload is corrupt") throws(EventSourcingError) -> [UInt8] {
        let compressor = configuration.compressor ?? ZlibCompressor()
        do { return try compressor.decompress(body, dictionaries: readingDictionaries) } catch {
            if let e = error as? EventSourcingError, e.code == .compressionDictionaryMissing {
                throw record(.compressionDictionaryMissing, e.message, stored, notificationID)
            }
            throw record(.integrityFailure, corrupt, stored, notificationID)
        }
    }

    func seal(_ json: [UInt8], key: DataKey?, snapshot: Bool, originatorID: UUID,
              originatorVersion: Int, topic: String) throws -> [UInt8] {
        var payload = json
        var flags: StateHeader.Flags = snapshot ? [.snapshot] : []
        if configuration.encoding == .compact { flags.insert(.compact) }
        if let z = try compressed(json, topic: topic) {
            payload = z
            flags.insert(.compressed)
        }
        guard let key else { return RecordFormat.plain(payload, flags: flags) }
        do {
            return try RecordFormat.seal(payload, flags: flags, key: key,
                                         at: .init(snapshot: snapshot, originatorID: originatorID,
                                                   originatorVersion: originatorVersion, topic: topic))
        } catch {
            throw EventSourcingError(.recorderFailure, "encryption failed (\(error.code))", originatorID: originatorID,
                                     originatorVersion: originatorVersion, topic: topic, keyScope: key.scope)
        }
    }
}
