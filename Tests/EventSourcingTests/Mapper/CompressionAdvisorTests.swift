@testable import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Compression only where it pays: the minimum saving, and the per-topic back-off that stops
/// trying small records whose compression does not pay.
@Suite("Compression only where it pays")
struct CompressionAdvisorTests {
    /// Counts compress calls; compresses with zlib.
    final class CountingCompressor: Compressor, @unchecked Sendable {
        // @unchecked: the tests call it from one task at a time.
        var calls = 0
        let zlib = ZlibCompressor()
        func compress(_ bytes: [UInt8]) throws -> [UInt8] {
            calls += 1
            return try zlib.compress(bytes)
        }
        func decompress(_ bytes: [UInt8]) throws -> [UInt8] { try zlib.decompress(bytes) }
    }

    /// Bytes zlib cannot shrink by 10% (pseudo-random letters), `count` long.
    static func poor(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(ascii: "a") + UInt8(truncatingIfNeeded: state >> 33) % 26
        }
    }

    /// Bytes that compress to a fraction of their length.
    static func rich(_ count: Int) -> [UInt8] {
        Array(String(repeating: "the same words again and again, ", count: count / 32 + 1).utf8.prefix(count))
    }

    static func seal(_ mapper: Mapper, _ payload: [UInt8], topic: String) throws -> (compressed: Bool, state: [UInt8]) {
        let state = try mapper.seal(payload, key: nil, snapshot: false, originatorID: UUID(), originatorVersion: 1, topic: topic)
        guard case .success(let (header, _)) = StateHeader.parse(state) else {
            Issue.record("the record's header does not parse")
            return (false, state)
        }
        return (header.flags.contains(.compressed), state)
    }

    static func opened(_ mapper: Mapper, _ state: [UInt8], topic: String) async throws -> [UInt8] {
        let stored = StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: topic, state: state, keyScope: nil)
        return try await mapper.openPayload(stored, snapshot: false).bytes
    }

    @Test("small records of a topic that do not pay are stored without trying, backing off to one attempt in 64; every record reads back")
    func backsOff() async throws {
        let counter = CountingCompressor()
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, compressor: counter, plaintextReads: .allowed))
        var attempts: [Int] = []
        for i in 0..<400 {
            let payload = Self.poor(250, seed: UInt64(i))
            let before = counter.calls
            let (compressed, state) = try Self.seal(mapper, payload, topic: "Poor.Event")
            if counter.calls > before { attempts.append(i) }
            #expect(!compressed)
            #expect(try await Self.opened(mapper, state, topic: "Poor.Event") == payload)
        }
        // Tried at records 0, 2, 6, 14, 30, 62, then every 64th: a run of 1, 3, 7, 15, 31, 63 skipped after each.
        #expect(attempts == [0, 2, 6, 14, 30, 62, 126, 190, 254, 318, 382])
    }

    @Test("records that pay are all compressed, and a topic's back-off does not touch another topic")
    func paysAndTopicsApart() async throws {
        let counter = CountingCompressor()
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, compressor: counter, plaintextReads: .allowed))
        for i in 0..<50 {
            _ = try Self.seal(mapper, Self.poor(250, seed: UInt64(i)), topic: "Poor.Event")
            let payload = Self.rich(250)
            let (compressed, state) = try Self.seal(mapper, payload, topic: "Rich.Event")
            #expect(compressed, "record \(i)")
            #expect(try await Self.opened(mapper, state, topic: "Rich.Event") == payload)
        }
    }

    @Test("a topic whose small records become compressible is compressed again within 64 records")
    func recovers() throws {
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, plaintextReads: .allowed))
        for i in 0..<300 { _ = try Self.seal(mapper, Self.poor(250, seed: UInt64(i)), topic: "Mixed.Event") }
        let outcomes = try (0..<64).map { _ in try Self.seal(mapper, Self.rich(250), topic: "Mixed.Event").compressed }
        let first = try #require(outcomes.firstIndex(of: true))
        // Once one attempt pays, every following record is tried, and compressed.
        #expect(outcomes[first...].allSatisfy { $0 })
    }

    @Test("records over 1 KiB are always tried, whatever the topic's small records gave")
    func largeAlwaysTried() throws {
        let counter = CountingCompressor()
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, compressor: counter, plaintextReads: .allowed))
        for i in 0..<100 { _ = try Self.seal(mapper, Self.poor(250, seed: UInt64(i)), topic: "Doc.Event") }
        for _ in 0..<10 {
            let before = counter.calls
            #expect(try Self.seal(mapper, Self.rich(5_000), topic: "Doc.Event").compressed)
            #expect(counter.calls == before + 1)
        }
    }

    @Test("the minimum saving decides what is kept: 0 keeps any shorter form; out-of-range values are clamped")
    func minimumSaving() throws {
        // About 5% shorter under zlib: half poor letters, a little repetition.
        let payload = Self.poor(240, seed: 7) + Array("abcdefghijklmnop".utf8) + Array("abcdefghijklmnop".utf8)
        let z = try ZlibCompressor().compress(payload)
        let saving = Double(payload.count - z.count) / Double(payload.count)
        try #require(saving > 0 && saving < 0.1, "the test record saves \(saving)")

        let strict = Mapper(keyring: nil, configuration: .init(encoding: .json, plaintextReads: .allowed))
        #expect(try !Self.seal(strict, payload, topic: "T.E").compressed)
        let any = Mapper(keyring: nil, configuration: .init(encoding: .json, plaintextReads: .allowed, minimumCompressionSaving: 0))
        #expect(try Self.seal(any, payload, topic: "T.E").compressed)

        var c = Mapper.Configuration()
        #expect(c.minimumCompressionSaving == 0.1)
        c.minimumCompressionSaving = -3
        #expect(c.minimumCompressionSaving == 0)
        c.minimumCompressionSaving = 7
        #expect(c.minimumCompressionSaving == 0.5)
        c.minimumCompressionSaving = .nan
        #expect(c.minimumCompressionSaving == 0.1)
        c.minimumCompressionSaving = .infinity
        #expect(c.minimumCompressionSaving == 0.5)
    }

    @Test("the back-off's memory is bounded: past 4,096 topics it starts again")
    func boundedTopics() {
        let advisor = CompressionAdvisor()
        for i in 0..<10_000 { advisor.tried(topic: "T\(i).E", size: 100, paid: false) }
        // The last topics are remembered (their next record is skipped), the first were forgotten.
        #expect(!advisor.shouldTry(topic: "T9999.E", size: 100))
        #expect(advisor.shouldTry(topic: "T0.E", size: 100))
        #expect(advisor.shouldTry(topic: "T9999.E", size: 2_000))
    }
}
