/// A lossless compression stage of the transcoder pipeline.
public protocol Compressor: Sendable {
    /// Compresses `bytes`.
    func compress(_ bytes: [UInt8]) throws -> [UInt8]
    /// Decompresses what ``compress(_:)`` produced.
    /// - Throws: when `bytes` is not valid compressed data.
    func decompress(_ bytes: [UInt8]) throws -> [UInt8]
    /// Compresses `bytes` primed with a preset `dictionary`, so that what the record shares with
    /// it costs almost nothing. By default a compressor has no dictionaries and compresses as
    /// ``compress(_:)`` does.
    func compress(_ bytes: [UInt8], dictionary: CompressionDictionary) throws -> [UInt8]
    /// Decompresses what either `compress` produced, taking a preset dictionary the data names
    /// from `dictionaries`. By default, as ``decompress(_:)``.
    /// - Throws: ``EventSourcingError`` with `.compressionDictionaryMissing` when the data names a
    ///   dictionary not in `dictionaries`; any error when it is not valid compressed data.
    func decompress(_ bytes: [UInt8], dictionaries: [CompressionDictionary]) throws -> [UInt8]
}

extension Compressor {
    public func compress(_ bytes: [UInt8], dictionary: CompressionDictionary) throws -> [UInt8] { try compress(bytes) }
    public func decompress(_ bytes: [UInt8], dictionaries: [CompressionDictionary]) throws -> [UInt8] { try decompress(bytes) }
}

/// zlib (RFC 1950) through the system libz, with reused streams, and preset dictionaries
/// (``CompressionDictionary``) named by their id in the stream's header.
public struct ZlibCompressor: Compressor {
    /// How deflate codes what it compresses. Whatever the strategy, the output is an ordinary
    /// zlib stream: records written with one are read the same way as records written with another.
    public enum Strategy: Sendable, Hashable {
        /// Huffman codes built for each record and stored with it (zlib's default): the
        /// smallest output.
        case dynamic
        /// The fixed Huffman codes of RFC 1951 (zlib's `Z_FIXED`): reading builds no code tables
        /// per record. On the ~260-byte records of the benchmark workload, inflate took 0.95 µs
        /// instead of 2.8 µs and the compressed form was ~14% larger (Docs/Performance.md).
        /// With a system zlib older than 1.2.12, which can corrupt memory deflating with fixed
        /// codes (CVE-2018-25032), dynamic codes are written instead.
        case fixed
        /// Fixed codes for input of at most this many bytes, dynamic codes for longer input,
        /// where the code tables cost less per byte and save more.
        case fixedUpTo(Int)
    }

    /// `.fixedUpTo(2048)`: small events, the common case, read fastest; long ones stay smallest.
    public static let defaultStrategy = Strategy.fixedUpTo(2048)

    /// Whether this process's zlib is used with fixed codes: version 1.2.12 or later. With an
    /// older one every strategy writes dynamic codes (see ``Strategy/fixed``).
    public static var fixedCodesAvailable: Bool { Zlib.fixedCodesAvailable }

    /// The deflate level, 0–9 (6 is zlib's default).
    public var level: Int32
    /// How deflate codes its output; ``defaultStrategy`` unless set.
    public var strategy: Strategy
    /// The largest decompressed record accepted, a guard against decompression bombs.
    public var maxDecompressedSize: Int

    /// Creates a compressor.
    public init(level: Int32 = 6, strategy: Strategy = ZlibCompressor.defaultStrategy, maxDecompressedSize: Int = 64 << 20) {
        self.level = min(9, max(0, level))
        self.strategy = strategy
        self.maxDecompressedSize = max(0, maxDecompressedSize)
    }

    public func compress(_ bytes: [UInt8]) throws -> [UInt8] {
        try compress(bytes, with: nil)
    }

    public func compress(_ bytes: [UInt8], dictionary: CompressionDictionary) throws -> [UInt8] {
        try compress(bytes, with: dictionary)
    }

    private func compress(_ bytes: [UInt8], with dictionary: CompressionDictionary?) throws(EventSourcingError) -> [UInt8] {
        let fixedCodes = switch strategy {
        case .dynamic: false
        case .fixed: true
        case .fixedUpTo(let limit): bytes.count <= limit
        }
        do { return try Zlib.compress(bytes, level: level, fixedCodes: fixedCodes, dictionary: dictionary) } catch {
            throw EventSourcingError(.recorderFailure, "zlib: \(error.message)")
        }
    }

    public func decompress(_ bytes: [UInt8]) throws -> [UInt8] {
        try decompress(bytes, dictionaries: [])
    }

    public func decompress(_ bytes: [UInt8], dictionaries: [CompressionDictionary]) throws -> [UInt8] {
        do { return try Zlib.decompress(bytes, limit: maxDecompressedSize, dictionaries: dictionaries) } catch {
            if let id = error.missingDictionary {
                throw EventSourcingError(.compressionDictionaryMissing,
                    "the payload was compressed with preset dictionary \(CompressionDictionary.hex(id)), which this mapper "
                    + "does not have (Mapper.Configuration.compressionDictionaries or retiredCompressionDictionaries)")
            }
            throw EventSourcingError(.integrityFailure, "zlib: \(error.message)")
        }
    }
}
