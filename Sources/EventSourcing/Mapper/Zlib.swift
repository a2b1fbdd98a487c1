import CZlib
import ESConcurrency
import Synchronization

/// The one place in EventSourcing that calls the system zlib.
///
/// Streams are created once and reused with `deflateReset`/`inflateReset`; a small pool
/// (``ResourcePool``, 16 streams kept per kind) lets concurrent tasks compress at the same time
/// without sharing a stream. A stream is borrowed for one synchronous call, so taking one never
/// waits; the extra streams of a burst are freed when given back.
enum Zlib {
    struct Failure: Error {
        var message: String
        /// The id of the preset dictionary the stream needs and the caller did not have.
        var missingDictionary: UInt32? = nil
    }

    /// Whether the system zlib may be asked for fixed codes: versions before 1.2.12 can corrupt
    /// memory when deflating with them (CVE-2018-25032).
    static let fixedCodesAvailable: Bool = {
        guard let cString = zlibVersion() else { return false }
        return versionAtLeast(String(cString: cString), [1, 2, 12])
    }()

    /// Whether a dotted version ("1.2.13", "1.3.0.1-motley") is at least `minimum`.
    static func versionAtLeast(_ version: String, _ minimum: [Int]) -> Bool {
        let parts = version.split(separator: ".").map { Int($0.prefix(while: \.isNumber)) ?? 0 }
        for (i, m) in minimum.enumerated() {
            let p = i < parts.count ? parts[i] : 0
            if p != m { return p > m }
        }
        return true
    }

    /// Runs `step` (deflate or inflate) with `Z_FINISH` over all of `input`, into a buffer of
    /// `capacity` bytes that grows, up to `limit`, whenever the step fills it. Returns the step's
    /// last return code, the output, and whether all input was consumed.
    static func finish(_ strm: UnsafeMutablePointer<z_stream>, _ input: [UInt8], capacity: Int, limit: Int,
                       _ step: (UnsafeMutablePointer<z_stream>, Int32) -> Int32) -> (rc: Int32, out: [UInt8], consumedAll: Bool) {
        var out = [UInt8](repeating: 0, count: capacity)
        var produced = 0
        var rc: Int32 = Z_OK
        input.withUnsafeBytes { inBuf in
            strm.pointee.next_in = UnsafeMutablePointer(mutating: inBuf.baseAddress?.assumingMemoryBound(to: Bytef.self))
            strm.pointee.avail_in = uInt(inBuf.count)   // ≤ UInt32.max: callers check (Zlib.maxInput)
            while true {
                rc = out.withUnsafeMutableBytes { outBuf in
                    strm.pointee.next_out = outBuf.baseAddress.map { $0.assumingMemoryBound(to: Bytef.self) + produced }
                    // A buffer past 4 GiB is offered 4 GiB at a time.
                    let offered = min(outBuf.count - produced, Int(UInt32.max))
                    strm.pointee.avail_out = uInt(offered)
                    let rc = step(strm, Z_FINISH)
                    produced += offered - Int(strm.pointee.avail_out)
                    return rc
                }
                // Out of room: grow up to the limit. Anything else (the end, a corrupt stream) stops.
                guard rc == Z_OK || rc == Z_BUF_ERROR, strm.pointee.avail_out == 0 else { break }
                if produced < out.count { continue }   // only the 4 GiB window was full
                guard out.count < limit else { break }
                out.append(contentsOf: repeatElement(0, count: min(limit, out.count * 2 + 64) - out.count))
            }
        }
        let consumedAll = strm.pointee.avail_in == 0
        strm.pointee.next_in = nil
        strm.pointee.next_out = nil
        out.removeSubrange(produced...)
        return (rc, out, consumedAll)
    }

    /// The largest input one call takes (zlib counts input in 32 bits).
    static let maxInput = Int(UInt32.max)

    /// Compresses `input` in the zlib format (RFC 1950). Fixed codes only where the system zlib
    /// is safe with them (``fixedCodesAvailable``); dynamic codes otherwise.
    /// With a `dictionary`, the stream is primed with it and names it in its header (FDICT, RFC 1950).
    static func compress(_ input: [UInt8], level: Int32, fixedCodes: Bool = false,
                         dictionary: CompressionDictionary? = nil) throws(Failure) -> [UInt8] {
        guard input.count <= maxInput else { throw Failure(message: "input of \(input.count) bytes exceeds 4 GiB") }
        let pool = DeflatePool.pool(level: level, fixedCodes: fixedCodes && fixedCodesAvailable)
        let stream = try pool.take()
        defer { pool.give(stream) }
        return try stream.compress(input, dictionary: dictionary)
    }

    /// Decompresses a complete zlib stream, refusing output larger than `limit` bytes and any
    /// trailing bytes after the stream's end. A stream that names a preset dictionary is read
    /// with the one of `dictionaries` with that id (each in turn, should two share it: the
    /// stream's checksum tells the right one); none: a ``Failure`` with ``Failure/missingDictionary``.
    static func decompress(_ input: [UInt8], limit: Int, dictionaries: [CompressionDictionary] = []) throws(Failure) -> [UInt8] {
        guard input.count <= maxInput else { throw Failure(message: "input of \(input.count) bytes exceeds 4 GiB") }
        let stream = try InflatePool.shared.take()
        defer { InflatePool.shared.give(stream) }
        guard let id = presetDictionaryID(input) else { return try stream.decompress(input, limit: limit, dictionary: nil) }
        let candidates = dictionaries.filter { $0.id == id }
        guard !candidates.isEmpty else {
            throw Failure(message: "the stream needs preset dictionary \(CompressionDictionary.hex(id))", missingDictionary: id)
        }
        var failure = Failure(message: "not a valid zlib stream")
        for dictionary in candidates {
            do { return try stream.decompress(input, limit: limit, dictionary: dictionary) } catch { failure = error }
        }
        throw failure
    }

    /// The DICTID of a zlib stream whose header says it was compressed with a preset dictionary;
    /// nil for any other input (inflate judges it).
    static func presetDictionaryID(_ input: [UInt8]) -> UInt32? {
        // CMF, FLG (FDICT is bit 5), then the 4-byte DICTID, big-endian.
        guard input.count >= 6, input[1] & 0x20 != 0 else { return nil }
        return UInt32(input[2]) << 24 | UInt32(input[3]) << 16 | UInt32(input[4]) << 8 | UInt32(input[5])
    }
}

/// A `z_stream` set up for deflate. Used by one task at a time (handed out by a pool).
final class DeflateStream: @unchecked Sendable {
    // @unchecked: only the task that took it from DeflatePool touches it until it is given back.
    private let strm: UnsafeMutablePointer<z_stream>

    init(level: Int32, fixedCodes: Bool) throws(Zlib.Failure) {
        strm = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        strm.initialize(to: z_stream())
        guard es_deflate_init_strategy(strm, level, fixedCodes ? Z_FIXED : Z_DEFAULT_STRATEGY) == Z_OK else {
            strm.deallocate()
            throw Zlib.Failure(message: "deflateInit failed")
        }
    }

    deinit {
        deflateEnd(strm)
        strm.deallocate()
    }

    /// - Parameter initialCapacity: the output buffer's first size; deflateBound's unless given (tests).
    func compress(_ input: [UInt8], dictionary: CompressionDictionary? = nil, initialCapacity: Int? = nil) throws(Zlib.Failure) -> [UInt8] {
        guard deflateReset(strm) == Z_OK else { throw Zlib.Failure(message: "deflateReset failed") }
        if let dictionary {
            let rc = dictionary.bytes.withUnsafeBufferPointer { deflateSetDictionary(strm, $0.baseAddress, uInt($0.count)) }
            guard rc == Z_OK else { throw Zlib.Failure(message: "deflateSetDictionary failed (\(rc))") }
        }
        // deflateBound assumes deflate falls back to a stored block when coding would grow the
        // data; zlib before 1.2.13 could write a larger fixed-code block instead, so the
        // buffer grows when it runs out.
        let capacity = initialCapacity ?? Int(deflateBound(strm, uLong(input.count)))
        let r = Zlib.finish(strm, input, capacity: capacity, limit: Int.max, deflate)
        guard r.rc == Z_STREAM_END else { throw Zlib.Failure(message: "deflate did not finish (\(r.rc))") }
        return r.out
    }
}

/// A `z_stream` set up for inflate. Used by one task at a time (handed out by a pool).
final class InflateStream: @unchecked Sendable {
    // @unchecked: only the task that took it from InflatePool touches it until it is given back.
    private let strm: UnsafeMutablePointer<z_stream>

    init() throws(Zlib.Failure) {
        strm = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        strm.initialize(to: z_stream())
        guard es_inflate_init(strm) == Z_OK else {
            strm.deallocate()
            throw Zlib.Failure(message: "inflateInit failed")
        }
    }

    deinit {
        inflateEnd(strm)
        strm.deallocate()
    }

    /// - Parameter dictionary: given to inflate when the stream asks for its preset dictionary
    ///   (a stream that asks and has none is not valid; inflate refuses one whose checksum differs).
    func decompress(_ input: [UInt8], limit: Int, dictionary: CompressionDictionary?) throws(Zlib.Failure) -> [UInt8] {
        guard inflateReset(strm) == Z_OK else { throw Zlib.Failure(message: "inflateReset failed") }
        let r = Zlib.finish(strm, input, capacity: min(limit, max(64, input.count * 4)), limit: limit) { s, flush in
            let rc = inflate(s, flush)
            guard rc == Z_NEED_DICT, let dictionary else { return rc }
            let set = dictionary.bytes.withUnsafeBufferPointer { inflateSetDictionary(s, $0.baseAddress, uInt($0.count)) }
            guard set == Z_OK else { return set }
            return inflate(s, flush)
        }
        guard r.rc == Z_STREAM_END else {
            throw Zlib.Failure(message: r.out.count >= limit ? "decompressed size exceeds \(limit) bytes" : "not a valid zlib stream")
        }
        guard r.consumedAll else { throw Zlib.Failure(message: "trailing bytes after the zlib stream") }
        return r.out
    }
}

/// The deflate streams, one pool per (level, fixed codes) setting.
enum DeflatePool {
    private struct Settings: Hashable { var level: Int32; var fixedCodes: Bool }
    private static let pools = Mutex<[Settings: ResourcePool<DeflateStream, Zlib.Failure>]>([:])

    static func pool(level: Int32, fixedCodes: Bool) -> ResourcePool<DeflateStream, Zlib.Failure> {
        let settings = Settings(level: level, fixedCodes: fixedCodes)
        return pools.withLock { p in
            if let existing = p[settings] { return existing }
            let made = ResourcePool<DeflateStream, Zlib.Failure>(
                capacity: 16,
                make: { () throws(Zlib.Failure) -> DeflateStream in
                    try DeflateStream(level: settings.level, fixedCodes: settings.fixedCodes)
                })
            p[settings] = made
            return made
        }
    }
}

/// The inflate streams.
enum InflatePool {
    static let shared = ResourcePool<InflateStream, Zlib.Failure>(
        capacity: 16, make: { () throws(Zlib.Failure) -> InflateStream in try InflateStream() })
}
