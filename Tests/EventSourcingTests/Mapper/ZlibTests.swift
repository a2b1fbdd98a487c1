@testable import EventSourcing
import Foundation
import KeyManagement
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

    /// BTYPE of the first deflate block (RFC 1951 §3.2.3): 0 stored, 1 fixed codes, 2 dynamic codes.
    static func firstBlockType(_ zlibStream: [UInt8]) -> Int { Int(zlibStream[2] >> 1) & 3 }

    /// A ~260-byte record of the kind the workload stores.
    static let smallRecord = Array(#"{"name":"Harper Olivia W. Fitzgerald-Hughes","email":"harper.fitzgerald-hughes3258@mail.university.edu","address":"58879 Sunset Street, Suite 12, Building C, Floor 3, c/o Example Corp, Portland, OR 97201-1234, United States of America"}"#.utf8)

    @Test("each strategy writes the blocks it says (fixed or dynamic codes), and every stream reads back with any compressor")
    func strategies() throws {
        let dynamic = ZlibCompressor(strategy: .dynamic), fixed = ZlibCompressor(strategy: .fixed)
        let byDefault = ZlibCompressor()
        #expect(byDefault.strategy == .fixedUpTo(2048))
        let text = Array(String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 200).utf8)  // 9,000 bytes
        let cases: [(input: [UInt8], compressor: ZlibCompressor, blockType: Int, what: String)] = [
            (Self.smallRecord, dynamic, 2, "dynamic, small record"),
            (Self.smallRecord, fixed, 1, "fixed, small record"),
            (Self.smallRecord, byDefault, 1, "default, small record: fixed"),
            (Self.smallRecord, ZlibCompressor(strategy: .fixedUpTo(Self.smallRecord.count)), 1, "at the limit: fixed"),
            (Self.smallRecord, ZlibCompressor(strategy: .fixedUpTo(Self.smallRecord.count - 1)), 2, "one byte over: dynamic"),
            (text, dynamic, 2, "dynamic, long text"),
            (text, fixed, 1, "fixed, long text"),
            (text, byDefault, 2, "default, long text: dynamic"),
        ]
        // This machine's zlib (1.2.13) takes fixed codes; an older one (CVE-2018-25032) gets dynamic ones.
        let fixedType = ZlibCompressor.fixedCodesAvailable ? 1 : 2
        for c in cases {
            let packed = try c.compressor.compress(c.input)
            #expect(Self.firstBlockType(packed) == (c.blockType == 1 ? fixedType : c.blockType), "\(c.what)")
            // Reading does not depend on how a record was written.
            for reader in [dynamic, fixed, byDefault, ZlibCompressor(level: 1)] {
                #expect(try reader.decompress(packed) == c.input, "\(c.what)")
            }
        }
        // Fixed codes still compress a small record, a little less than dynamic ones.
        let d = try dynamic.compress(Self.smallRecord).count, f = try fixed.compress(Self.smallRecord).count
        if ZlibCompressor.fixedCodesAvailable {
            #expect(d < f && f < Self.smallRecord.count, "dynamic \(d), fixed \(f), input \(Self.smallRecord.count)")
        } else {
            #expect(d == f, "an old zlib writes dynamic codes for every strategy")
        }
        // Each level keeps its strategy (separate stream pools).
        for level: Int32 in [1, 9] {
            #expect(Self.firstBlockType(try ZlibCompressor(level: level, strategy: .fixed).compress(text)) == fixedType)
            #expect(Self.firstBlockType(try ZlibCompressor(level: level, strategy: .dynamic).compress(text)) == 2)
        }
    }

    @Test("input that fixed codes would grow (mostly bytes ≥ 0x90) round trips with every strategy, whatever zlib chooses",
          arguments: [1, 40, 255, 700, 2048, 5000])
    func incompressibleUnderFixedCodes(_ count: Int) throws {
        // Literals 0x90–0xFF take 9 bits with fixed codes: a fixed block would be larger than the
        // input, which deflateBound does not allow for. The output buffer must grow, or zlib
        // must fall back to a stored block; either way nothing may fail.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(count)
        let input = (0..<count).map { _ -> UInt8 in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return 0x90 + UInt8(truncatingIfNeeded: state >> 33) % 0x70
        }
        for strategy in [ZlibCompressor.Strategy.fixed, .dynamic, .fixedUpTo(4096)] {
            for level: Int32 in [1, 6, 9] {
                let z = ZlibCompressor(level: level, strategy: strategy)
                let packed = try z.compress(input)
                #expect(try z.decompress(packed) == input, "\(strategy) level \(level)")
            }
        }
    }

    @Test("deflate's output buffer grows when it fills, for any starting size, and nothing is lost",
          arguments: [0, 1, 7, 64])
    func deflateBufferGrows(_ initialCapacity: Int) throws {
        let text = Array(String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 300).utf8)
        for input in [Self.smallRecord, text, pseudoRandomBytes(5_000, seed: 3), []] {
            for fixedCodes in [false, true] {
                let packed = try DeflateStream(level: 6, fixedCodes: fixedCodes).compress(input, initialCapacity: initialCapacity)
                #expect(try ZlibCompressor().decompress(packed) == input, "\(input.count) bytes, fixed \(fixedCodes)")
                #expect(packed == (try DeflateStream(level: 6, fixedCodes: fixedCodes).compress(input)),
                        "the same stream whatever the buffer's first size")
            }
        }
    }

    @Test("a negative decompression limit is taken as 0: everything non-empty is refused, nothing crashes")
    func negativeLimit() throws {
        let z = ZlibCompressor(maxDecompressedSize: -5)
        #expect(z.maxDecompressedSize == 0)
        let packed = try ZlibCompressor().compress(Array("x".utf8))
        #expect(throws: (any Error).self) { try z.decompress(packed) }
    }

    @Test("fixed codes are used only from zlib 1.2.12 on (CVE-2018-25032): version comparison")
    func zlibVersionGate() {
        let cases: [(String, Bool)] = [
            ("1.2.13", true), ("1.2.12", true), ("1.3", true), ("1.3.0.1-motley", true), ("2.0.0", true),
            ("1.2.11", false), ("1.2.11.1", false), ("1.2", false), ("1.1.4", false), ("0.9", false), ("", false),
        ]
        for (version, safe) in cases {
            #expect(Zlib.versionAtLeast(version, [1, 2, 12]) == safe, "\(version)")
        }
    }

    @Test("an application switched between strategies reads the records written with the other")
    func mixedStrategiesThroughTheMapper() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let recorder = InMemoryRecorder()
        let name = String(repeating: "Biscuit the Beagle of Kingsbridge Terrace ", count: 4)
        let byDefault = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        let withDynamic = Application(recorder: recorder, mapper: Mapper(
            keyring: keyring, configuration: .init(compressor: ZlibCompressor(strategy: .dynamic))))
        var dog = try AggregateRoot<Dog>(.registered(name: name))
        try await byDefault.save(&dog)
        try dog.record(.addedTrick(name))
        try await withDynamic.save(&dog)
        let stored = try await recorder.selectEvents(originatorID: dog.id)
        #expect(stored.count == 2)
        #expect(try stored.allSatisfy { s in
            guard case .success(let (h, _)) = StateHeader.parse(s.state) else { return false }
            return h.flags.contains(.compressed) && h.flags.contains(.encrypted)
        })
        for app in [byDefault, withDynamic] {
            let read = try await app.repository.get(Dog.self, id: dog.id)
            #expect(read.name == name)
            #expect(read.tricks == [name])
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
