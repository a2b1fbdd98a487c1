import Foundation

/// The envelope written for an event: schema version, timestamp, and the event.
struct EventEnvelope<A: Aggregate>: Encodable {
    var v: Int
    var t: Double
    var e: A.Event
}

/// The envelope written for a snapshot: schema version, created/modified times, and the state.
struct SnapshotEnvelope<A: Aggregate>: Encodable {
    var v: Int
    var c: Double
    var m: Double
    var s: A
}

/// A stored envelope's body: decoded, or (an older schema) kept as a tree for the upcasters.
enum StoredBody<T: Decodable>: Sendable where T: Sendable {
    case current(T)
    case older(version: Int, JSONValue)

    static func decode<K: CodingKey>(in c: KeyedDecodingContainer<K>, forKey key: K, storedVersion: Int,
                                     currentVersion: Int, what: String) throws -> StoredBody<T> {
        if storedVersion == currentVersion { return .current(try c.decode(T.self, forKey: key)) }
        guard storedVersion < currentVersion, storedVersion >= 1 else {
            throw EventSourcingError(.decodingFailed,
                "\(what) schema version \(storedVersion) is not readable by this code (current \(currentVersion))")
        }
        return .older(version: storedVersion, try c.decode(JSONValue.self, forKey: key))
    }

    /// The value, running `step` from the stored schema up to `currentVersion` first if need be.
    /// The upcast tree is decoded through the payload's own encoding (compact or JSON), so every
    /// type keeps the representation it was written with (`Data`, `Decimal`, `URL`, … differ
    /// between the two).
    /// Personal fields (`fields`) in an upcast tree are read with their stored paths trusted: an
    /// upcaster may rename or move a field (see ``Personal``).
    func value(currentVersion: Int, encoding: Mapper.PayloadEncoding, fields: PersonalFieldOpener? = nil,
               step: (inout JSONValue, Int) throws -> Void) throws -> T {
        switch self {
        case .current(let v): return v
        case .older(let version, var json):
            for from in version..<currentVersion { try step(&json, from) }
            fields?.trustStoredPaths = true
            switch encoding {
            case .compact:
                return try Mapper.deserialise(T.self, Mapper.Payload(bytes: try CompactEncoder().encode(json), encoding: .compact),
                                              fields: fields)
            case .json:
                return try Mapper.deserialise(T.self, Mapper.Payload(bytes: Array(try Mapper.jsonEncoder.encode(json)), encoding: .json),
                                              fields: fields)
            }
        }
    }
}

/// A stored event envelope, as read.
struct StoredEventEnvelope<A: Aggregate>: Decodable {
    var v: Int
    var t: Double
    var e: StoredBody<A.Event>

    private enum CodingKeys: String, CodingKey { case v, t, e }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        v = try c.decode(Int.self, forKey: .v)
        t = try c.decode(Double.self, forKey: .t)
        e = try StoredBody.decode(in: c, forKey: .e, storedVersion: v, currentVersion: A.eventSchemaVersion, what: "event")
    }
}

/// A stored snapshot envelope, as read.
struct StoredSnapshotEnvelope<A: Aggregate>: Decodable {
    var v: Int
    var c: Double
    var m: Double
    var s: StoredBody<A>

    private enum CodingKeys: String, CodingKey { case v, c, m, s }

    init(from decoder: any Decoder) throws {
        let k = try decoder.container(keyedBy: CodingKeys.self)
        v = try k.decode(Int.self, forKey: .v)
        c = try k.decode(Double.self, forKey: .c)
        m = try k.decode(Double.self, forKey: .m)
        s = try StoredBody.decode(in: k, forKey: .s, storedVersion: v, currentVersion: A.snapshotSchemaVersion, what: "snapshot")
    }
}
