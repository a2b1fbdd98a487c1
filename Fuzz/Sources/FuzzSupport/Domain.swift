import EventSourcing
import Foundation
import KeyManagement

/// An aggregate whose events use most Codable shapes: nested structs, optionals, arrays,
/// dictionaries, Data, Date, UUID, every integer width, floats, and cases with and without
/// associated values.
public struct FuzzAggregate: Aggregate, Equatable {
    public static let typeName = "FuzzAggregate"

    public struct Address: Codable, Sendable, Equatable {
        public var street: String
        public var zip: String?
        public var lines: [String]
    }

    public enum Event: Codable, Sendable, Equatable {
        case registered(name: String, email: String, age: Int, score: Double, address: Address)
        case tagged(tags: [String], weights: [String: Double], flags: [Bool], data: Data, when: Date, id: UUID)
        case counted(UInt8, Int64, UInt64, Int8?, Float)
        case nested([[String: [Int?]]])
        case cleared
    }

    public var name = ""
    public var tags: [String] = []
    public var count = 0

    public init() {}

    public mutating func apply(_ event: Event) throws {
        switch event {
        case .registered(let name, _, _, _, _): self.name = name
        case .tagged(let tags, _, _, _, _, _): self.tags += tags
        case .counted(let n, _, _, _, _): count += Int(n)
        case .nested: count += 1
        case .cleared: tags = []
        }
    }

    /// One event of each case, with values at their edges.
    public static let samples: [Event] = [
        .registered(name: "Ada Lovelace", email: "ada@example.org", age: 36, score: -0.25,
                    address: Address(street: "12 St James's Square", zip: nil, lines: ["London", "é 世界 🐕"])),
        .tagged(tags: ["a", "", "\u{1}\"/\\"], weights: ["x": 1.5, "y": -1e300], flags: [true, false],
                data: Data([0, 1, 2, 255]), when: Date(timeIntervalSince1970: 1_700_000_000.25),
                id: Fuzz.originatorID),
        .counted(255, .min, .max, nil, 3.5),
        .counted(0, -1, 0, -128, -0.0),
        .nested([["k": [1, nil, -2]], [:], ["": []]]),
        .cleared,
    ]
}

/// Records as the library stores them, and the same by the format of SECURITY.md §5.
public enum Records {
    public static let scope = "fuzz-scope"
    public static let nonce = [UInt8](repeating: 0x0C, count: 12)

    /// The associated data of SECURITY.md §5.3, written from the specification (not the library).
    public static func associatedData(header: [UInt8], snapshot: Bool, originatorID: UUID,
                                      originatorVersion: Int, topic: String) -> [UInt8] {
        let u = originatorID.uuid
        let t = Array(topic.utf8)
        let v = UInt64(originatorVersion)
        return (snapshot ? Array("ESSN".utf8) : Array("ESEV".utf8)) + header
            + [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
            + (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) }
            + [UInt8(t.count >> 8), UInt8(t.count & 0xFF)] + t
    }

    /// `body` sealed under `key` as an encrypted record of `scope` v1 with the given flags.
    public static func seal(_ body: [UInt8], flags: StateHeader.Flags, key: DataKey, topic: String,
                            originatorVersion: Int) throws -> [UInt8] {
        var f = flags
        f.insert(.encrypted)
        f.remove(.uuidScope)
        let header = StateHeader(flags: f, keyScope: key.scope, keyVersion: key.version, nonce: nonce).bytes
        let aad = associatedData(header: header, snapshot: f.contains(.snapshot), originatorID: Fuzz.originatorID,
                                 originatorVersion: originatorVersion, topic: topic)
        return header + (try AES256GCM.seal(body, key: key.material, nonce: nonce, aad: aad))
    }

    /// Plaintext records of every sample event and a snapshot, in both encodings, compressed
    /// and not, written by the library's own mapper.
    public static func plaintext() async throws -> [StoredEvent] {
        var out: [StoredEvent] = []
        for encoding in [Mapper.PayloadEncoding.compact, .json] {
            for compressor in [ZlibCompressor(), nil] as [ZlibCompressor?] {
                let mapper = Mapper(keyring: nil, configuration: .init(encoding: encoding, compressor: compressor, plaintextReads: .allowed))
                let at = Date(timeIntervalSince1970: 1_700_000_000)
                var root = try AggregateRoot<FuzzAggregate>(id: Fuzz.originatorID, FuzzAggregate.samples[0], at: at)
                for e in FuzzAggregate.samples.dropFirst() { try root.record(e, at: at) }
                // Written through an application, as a program would (the mapper's encoders are package API).
                let recorder = InMemoryRecorder()
                let app = Application(recorder: recorder, snapshots: recorder, mapper: mapper)
                try await app.save(&root)
                try await app.takeSnapshot(FuzzAggregate.self, id: root.id)
                out += try await recorder.selectEvents(originatorID: root.id)
                if let snapshot = try await recorder.selectSnapshot(originatorID: root.id, lte: nil) { out.append(snapshot) }
            }
        }
        return out
    }
}
