// Per-record cost of each transcoder stage and of the whole pipeline, on the first 1,000
// records of the shared workload (../shared/bench/workload-10k-aggregates.jsonl.gz).
//
//   cd Benchmarks && swift package benchmark --target PipelineBenchmarks
//
// Each iteration handles one record; with scalingFactor .kilo the table reports per record.
import Benchmark
import BenchDomain
import EventSourcing
import Foundation
import KeyManagement

/// Records and pre-computed stage inputs, built once.
final class Fixture: Sendable {
    let events: [DomainEvent<Customer.Event>]
    let scope = "bench-subject"
    let plainMapper = Mapper(options: .init(compressor: nil))
    let fullMapper: Mapper
    let json: [[UInt8]]            // Codable stage output (with its 4-byte plaintext header stripped)
    let compressed: [[UInt8]]
    let sealed: [[UInt8]]
    let plainStored: [StoredEvent]
    let fullStored: [StoredEvent]
    let key: KeyMaterial
    let nonce: [UInt8]
    let zlib = ZlibCompressor()
    /// zlib with dynamic Huffman codes (the default before `.fixedUpTo(2048)`), for comparison.
    let zlibDynamic = ZlibCompressor(strategy: .dynamic)
    let compressedDynamic: [[UInt8]]

    private init(events: [DomainEvent<Customer.Event>], keyring: Keyring) async throws {
        self.events = events
        fullMapper = Mapper(keyring: keyring)
        var plain: [StoredEvent] = []
        var full: [StoredEvent] = []
        for e in events {
            plain += try await plainMapper.encode([e], of: Customer.self, keyScope: scope).events
            full += try await fullMapper.encode([e], of: Customer.self, keyScope: scope).events
        }
        let w = try await keyring.writeKey(for: scope)
        try await keyring.persist([w])
        plainStored = plain
        fullStored = full
        json = plain.map { Array($0.state.dropFirst(4)) }
        let z = ZlibCompressor()
        compressed = try json.map { try z.compress($0) }
        let zd = ZlibCompressor(strategy: .dynamic)
        compressedDynamic = try json.map { try zd.compress($0) }
        key = try KeyMaterial(randomCount: 32)
        nonce = try AES256GCM.randomNonce()
        let k = key, n = nonce
        sealed = try compressed.map { try AES256GCM.seal($0, key: k, nonce: n) }
    }

    nonisolated(unsafe) private static var cached: Fixture?

    static func get() async throws -> Fixture {
        if let cached { return cached }
        let workload = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("shared/bench/workload-10k-aggregates.jsonl.gz").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "gzip -dc \"$0\" | head -n 1000", workload]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        struct Row: Decodable { var event: Int; var name: String; var email: String; var address: String }
        var events: [DomainEvent<Customer.Event>] = []
        let id = UUID()
        for (i, line) in data.split(separator: UInt8(ascii: "\n")).enumerated() {
            let r = try JSONDecoder().decode(Row.self, from: Data(line))
            let ev: Customer.Event = r.event == 0 ? .registered(name: r.name, email: r.email, address: r.address)
                                                   : .contactUpdated(name: r.name, email: r.email, address: r.address)
            events.append(DomainEvent(originatorID: id, originatorVersion: i + 1, timestamp: Date(), event: ev))
        }
        guard !events.isEmpty else { fatalError("workload not found at \(workload)") }  // benchmark setup only
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let f = try await Fixture(events: events, keyring: keyring)
        cached = f
        return f
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                           scalingFactor: .kilo, maxDuration: .seconds(3), maxIterations: 1_000_000)

    func record(_ i: Int, _ n: Int) -> Int { i % n }

    Benchmark("Codable only: encode") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try await f.plainMapper.encode([f.events[record(i, f.events.count)]], of: Customer.self, keyScope: f.scope))
        }
    }
    Benchmark("Codable only: decode") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try await f.plainMapper.decode(f.plainStored[record(i, f.plainStored.count)], as: Customer.self))
        }
    }
    Benchmark("zlib: compress") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations { blackHole(try f.zlib.compress(f.json[record(i, f.json.count)])) }
    }
    Benchmark("zlib: decompress") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations { blackHole(try f.zlib.decompress(f.compressed[record(i, f.compressed.count)])) }
    }
    Benchmark("zlib dynamic codes: compress") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations { blackHole(try f.zlibDynamic.compress(f.json[record(i, f.json.count)])) }
    }
    Benchmark("zlib dynamic codes: decompress") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try f.zlibDynamic.decompress(f.compressedDynamic[record(i, f.compressedDynamic.count)]))
        }
    }
    Benchmark("AES-256-GCM: seal (with fresh nonce)") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try AES256GCM.seal(f.compressed[record(i, f.compressed.count)], key: f.key, nonce: try AES256GCM.randomNonce()))
        }
    }
    Benchmark("AES-256-GCM: open") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try AES256GCM.open(f.sealed[record(i, f.sealed.count)], key: f.key, nonce: f.nonce))
        }
    }
    Benchmark("Full pipeline: encode") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try await f.fullMapper.encode([f.events[record(i, f.events.count)]], of: Customer.self, keyScope: f.scope))
        }
    }
    Benchmark("Full pipeline: decode") { benchmark in
        let f = try await Fixture.get()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try await f.fullMapper.decode(f.fullStored[record(i, f.fullStored.count)], as: Customer.self))
        }
    }
}
