/// A lossless compression stage of the transcoder pipeline.
public protocol Compressor: Sendable {
    /// Compresses `bytes`.
    func compress(_ bytes: [UInt8]) throws -> [UInt8]
    /// Decompresses what ``compress(_:)`` produced.
    /// - Throws: when `bytes` is not valid compressed data.
    func decompress(_ bytes: [UInt8]) throws -> [UInt8]
}

/// zlib (RFC 1950) through the system libz, with reused streams.
public struct ZlibCompressor: Compressor {
    /// The deflate level, 0–9 (6 is zlib's default).
    public var level: Int32
    /// The largest decompressed record accepted, a guard against decompression bombs.
    public var maxDecompressedSize: Int

    /// Creates a compressor.
    public init(level: Int32 = 6, maxDecompressedSize: Int = 64 << 20) {
        self.level = min(9, max(0, level))
        self.maxDecompressedSize = maxDecompressedSize
    }

    public func compress(_ bytes: [UInt8]) throws -> [UInt8] {
        do { return try Zlib.compress(bytes, level: level) } catch {
            throw EventSourcingError(.recorderFailure, "zlib: \(error.message)")
        }
    }

    public func decompress(_ bytes: [UInt8]) throws -> [UInt8] {
        do { return try Zlib.decompress(bytes, limit: maxDecompressedSize) } catch {
            throw EventSourcingError(.integrityFailure, "zlib: \(error.message)")
        }
    }
}
