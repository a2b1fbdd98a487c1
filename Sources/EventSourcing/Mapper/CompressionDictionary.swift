import CZlib
import Foundation

/// A preset dictionary for compressing a topic's records: bytes those records are likely to
/// repeat (field names, the envelope, common words and values), which deflate can then refer to
/// instead of spelling them out in every record.
///
/// Small records of personal data gain little from per-record compression (about 5% on the
/// benchmark workload, so the mapper stores them uncompressed); with a dictionary built from a
/// few dozen representative events, the same records shrink by half or more
/// (<doc:Performance#Preset-compression-dictionaries>). Give the mapper a dictionary per topic
/// with ``Mapper/Configuration/compressionDictionaries``.
///
/// A record compressed with a dictionary is an ordinary zlib stream (RFC 1950) whose header
/// names the dictionary by its ``id``, the Adler-32 checksum of its bytes, inside the sealed
/// payload: it reads only while the mapper has that dictionary, among its current or retired
/// ones (``Mapper/Configuration/retiredCompressionDictionaries``); without it, reading fails with
/// ``EventSourcingError/Code/compressionDictionaryMissing``, naming the record and the id.
/// Keep every dictionary you ever wrote with, as you keep the code of old event schemas.
///
/// **Build it from synthetic or public samples, never from stored personal data**: the
/// dictionary is part of your code, not sealed by any key, and a shred does not erase it. The
/// length of a compressed record also tells how much of it the dictionary predicted
/// (SECURITY.md §5.4).
public struct CompressionDictionary: Sendable, Hashable {
    /// The longest dictionary, in bytes: deflate's window (32 KiB); only the last bytes of a
    /// longer one could ever be used.
    public static let maxSize = 32 * 1024

    /// The dictionary's bytes.
    public let bytes: [UInt8]
    /// The id a zlib stream compressed with this dictionary carries (its DICTID, RFC 1950): the
    /// Adler-32 checksum of ``bytes``.
    public let id: UInt32

    /// A dictionary of `bytes`, put in order with what records most often repeat last: deflate
    /// refers to nearer bytes in fewer bits.
    /// - Throws: ``EventSourcingError`` with `.invalidArgument` for no bytes or more than ``maxSize``.
    public init(_ bytes: [UInt8]) throws(EventSourcingError) {
        guard !bytes.isEmpty, bytes.count <= Self.maxSize else {
            throw EventSourcingError(.invalidArgument,
                "a compression dictionary holds 1 to \(Self.maxSize) bytes; this one has \(bytes.count)")
        }
        self.bytes = bytes
        self.id = bytes.withUnsafeBufferPointer { b in
            UInt32(truncatingIfNeeded: adler32(adler32(0, nil, 0), b.baseAddress, uInt(b.count)))
        }
    }

    /// A dictionary of sample payloads laid end to end, the last sample last; when together
    /// they exceed ``maxSize``, the earliest bytes are left out.
    /// - Throws: ``EventSourcingError`` with `.invalidArgument` when the samples hold no bytes.
    public init(samples: [[UInt8]]) throws(EventSourcingError) {
        var joined: [UInt8] = []
        joined.reserveCapacity(min(Self.maxSize, samples.reduce(0) { $0 &+ $1.count }))
        for sample in samples.reversed() {
            let room = Self.maxSize - joined.count
            guard room > 0 else { break }
            joined.insert(contentsOf: sample.suffix(room), at: 0)
        }
        try self.init(joined)
    }

    /// A dictionary for aggregate type `A`'s events, from sample events encoded as the mapper
    /// encodes records of them (the envelope with `A`'s schema version, in `encoding`).
    ///
    /// Use made-up events in the shape and vocabulary of real ones, the most typical last. A
    /// sample with a ``Personal`` field cannot be encoded here (its field would be sealed under a
    /// subject's key; sealed fields are random bytes that no dictionary predicts): leave such
    /// fields out of the samples' types, or build the bytes yourself with ``init(samples:)``.
    ///
    /// The same samples always give the same dictionary (the envelopes' timestamps are
    /// `timestamp`, not the time of the call), so a dictionary can be built at every start of
    /// the application rather than stored; change the samples and it is another dictionary,
    /// and the old one must be kept for reading.
    /// - Throws: ``EventSourcingError`` with `.invalidArgument` when a sample does not encode or
    ///   the samples are empty.
    public static func events<A: Aggregate>(_ samples: [A.Event], of type: A.Type,
                                            encoding: Mapper.PayloadEncoding = .compact,
                                            timestamp: Date = Date(timeIntervalSince1970: 1_800_000_000)) throws(EventSourcingError) -> CompressionDictionary {
        var encoded: [[UInt8]] = []
        encoded.reserveCapacity(samples.count)
        for (i, sample) in samples.enumerated() {
            let envelope = EventEnvelope<A>(v: A.eventSchemaVersion, t: timestamp.timeIntervalSince1970, e: sample)
            do {
                switch encoding {
                case .compact: encoded.append(try CompactEncoder().encode(envelope))
                case .json: encoded.append(Array(try Mapper.jsonEncoder.encode(envelope)))
                }
            } catch {
                throw EventSourcingError(.invalidArgument,
                    "sample event \(i) of \(A.typeName) could not be encoded for a compression dictionary: \(Mapper.describe(error))")
            }
        }
        return try CompressionDictionary(samples: encoded)
    }
}

extension CompressionDictionary: CustomStringConvertible {
    /// The id in hex and the size; never the bytes.
    public var description: String {
        "CompressionDictionary(id: " + Self.hex(id) + ", \(bytes.count) bytes)"
    }

    /// `id` as eight lowercase hex digits.
    static func hex(_ id: UInt32) -> String {
        let digits = String(id, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
    }
}
