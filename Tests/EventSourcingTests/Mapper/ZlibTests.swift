import EventSourcing
import Foundation
import Testing

/// The zlib stage: round trips, interoperability with another implementation (Python's zlib),
/// and refusal of corrupt, truncated, padded and oversized input.
@Suite("ZlibCompressor")
struct ZlibTests {
    struct Golden: Sendable, CustomStringConvertible {
        let name: String
        /// `zlib.compress(plaintext, level)` from Python 3, base64.
        let compressed: String
        let plaintext: [UInt8]
        var description: String { name }
    }

    /// Generated with `python3 -c 'import zlib, base64; print(base64.b64encode(zlib.compress(p, level)).decode())'`.
    static let goldens: [Golden] = [
        Golden(name: "hello, level 6", compressed: "eJzLSM3JyQcABiwCFQ==", plaintext: Array("hello".utf8)),
        Golden(name: "empty, level 6", compressed: "eJwDAAAAAAE=", plaintext: []),
        Golden(name: "JSON envelope, level 9",
               compressed: "eNqrVipTsjLUUSoBkuYGUKBnqqOUqmRVrVSUmp5ZXJJalJoC4uUl5gJFldwyU/KVamtrAc1uERc=",
               plaintext: Array(#"{"v":1,"t":1700000000.5,"e":{"registered":{"name":"Fido"}}}"#.utf8)),
        Golden(name: "\"abc\" × 1000, level 9", compressed: "eNrtwkERAAAMAqCsav8Oq7EHHOmiqqr+fuzUfK0=",
               plaintext: Array(String(repeating: "abc", count: 1000).utf8)),
        Golden(name: "stored block, level 0", compressed: "eAEBFQDq/3N0b3JlZCBibG9jaywgbGV2ZWwgMFeZB3E=",
               plaintext: Array("stored block, level 0".utf8)),
        Golden(name: "UTF-8, level 1", compressed: "eAFzLzq85/D8VB2FJzumPZ/ao/Bh/oRtAHPzC3s=",
               plaintext: Array("Grüße, 世界 🐶".utf8)),
    ]

    static func decode64(_ s: String) -> [UInt8] { [UInt8](Data(base64Encoded: s)!) }

    @Test("round trips", arguments: [
        ("empty", [UInt8]()),
        ("one byte", [0x00]),
        ("one byte 0xFF", [0xFF]),
        ("1 MiB of text", Array(String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 23_302).utf8.prefix(1 << 20))),
        ("1 MiB of zeros", [UInt8](repeating: 0, count: 1 << 20)),
        ("64 KiB incompressible", pseudoRandomBytes(64 << 10, seed: 42)),
        ("1 MiB incompressible", pseudoRandomBytes(1 << 20, seed: 7)),
    ] as [(String, [UInt8])])
    func roundTrip(_ name: String, _ input: [UInt8]) throws {
        for level: Int32 in [0, 1, 6, 9] {
            let z = ZlibCompressor(level: level)
            let packed = try z.compress(input)
            #expect(try z.decompress(packed) == input, "\(name) at level \(level)")
        }
    }

    @Test("repetitive input actually shrinks")
    func compresses() throws {
        let input = [UInt8](repeating: 0x41, count: 100_000)
        #expect(try ZlibCompressor().compress(input).count < 1000)
    }

    @Test("many concurrent round trips do not interfere (pooled streams)")
    func concurrent() async throws {
        let z = ZlibCompressor()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<32 {
                group.addTask { () async throws in
                    let input = pseudoRandomBytes(1000 + i * 37, seed: UInt64(i)) + [UInt8](repeating: UInt8(i), count: 5000)
                    for _ in 0..<20 {
                        #expect(try z.decompress(z.compress(input)) == input)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    @Test("decompresses streams made by Python's zlib", arguments: goldens)
    func golden(_ g: Golden) throws {
        #expect(try ZlibCompressor().decompress(Self.decode64(g.compressed)) == g.plaintext)
    }

    @Test("corrupt data throws", arguments: goldens.filter { !$0.plaintext.isEmpty })
    func corrupt(_ g: Golden) throws {
        let blob = Self.decode64(g.compressed)
        let z = ZlibCompressor()
        // A bad header, a damaged body and a wrong Adler-32 checksum.
        for i in [0, 1, blob.count / 2, blob.count - 1] {
            var bad = blob
            bad[i] ^= 0xFF
            #expect(throws: (any Error).self, "byte \(i) flipped") { try z.decompress(bad) }
        }
        #expect(throws: (any Error).self) { try z.decompress([]) }
        #expect(throws: (any Error).self) { try z.decompress(Array("not zlib at all".utf8)) }
    }

    @Test("trailing garbage after the stream throws", arguments: goldens)
    func trailingGarbage(_ g: Golden) throws {
        let blob = Self.decode64(g.compressed)
        let z = ZlibCompressor()
        #expect(throws: (any Error).self) { try z.decompress(blob + [0x00]) }
        #expect(throws: (any Error).self) { try z.decompress(blob + blob) }
    }

    @Test("a truncated stream throws at every length", arguments: goldens)
    func truncated(_ g: Golden) throws {
        let blob = Self.decode64(g.compressed)
        let z = ZlibCompressor()
        for n in 0..<blob.count {
            #expect(throws: (any Error).self, "first \(n) of \(blob.count) bytes") { try z.decompress(Array(blob.prefix(n))) }
        }
        let big = try z.compress(pseudoRandomBytes(100_000, seed: 3))
        for n in [2, 100, big.count / 2, big.count - 4, big.count - 1] {
            #expect(throws: (any Error).self) { try z.decompress(Array(big.prefix(n))) }
        }
    }

    @Test("a stream that inflates beyond maxDecompressedSize throws; exactly the limit is accepted")
    func decompressionBomb() throws {
        let bomb = try ZlibCompressor().compress([UInt8](repeating: 0, count: 1 << 20))
        #expect(bomb.count < 2000)
        #expect(throws: (any Error).self) { try ZlibCompressor(maxDecompressedSize: 64 << 10).decompress(bomb) }
        #expect(throws: (any Error).self) { try ZlibCompressor(maxDecompressedSize: (1 << 20) - 1).decompress(bomb) }
        #expect(try ZlibCompressor(maxDecompressedSize: 1 << 20).decompress(bomb).count == 1 << 20)

        let golden = Self.decode64("eNrtwkERAAAMAqCsav8Oq7EHHOmiqqr+fuzUfK0=")   // 3000 bytes
        #expect(throws: (any Error).self) { try ZlibCompressor(maxDecompressedSize: 2999).decompress(golden) }
        #expect(throws: (any Error).self) { try ZlibCompressor(maxDecompressedSize: 10).decompress(golden) }
        #expect(try ZlibCompressor(maxDecompressedSize: 3000).decompress(golden).count == 3000)
        // The failures leave the pooled streams usable.
        #expect(try ZlibCompressor().decompress(golden).count == 3000)
    }

    @Test("a decompression failure surfaces as an EventSourcingError")
    func errorType() throws {
        let e = #expect(throws: EventSourcingError.self) { try ZlibCompressor().decompress([0x78, 0x9C, 0xFF, 0xFF]) }
        #expect(e?.code == .integrityFailure)
    }
}
