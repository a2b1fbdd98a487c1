@testable import EventSourcing
import ESTestSupport
import Foundation
import KeyManagement
import Testing

/// Preset compression dictionaries: records of a topic compressed with its dictionary, named by
/// the dictionary's id inside the sealed zlib stream, read only with that dictionary.
/// A person with the workload's personal data.
struct DictionaryPerson: Aggregate {
    static var typeName: String { "Person" }
    enum Event: Codable, Sendable {
        case registered(name: String, email: String, address: String)
    }
    var name = ""
    var email = ""
    var address = ""
    mutating func apply(_ event: Event) {
        switch event {
        case .registered(let n, let e, let a): (name, email, address) = (n, e, a)
        }
    }
}

@Suite("Preset compression dictionaries")
struct CompressionDictionaryTests {
    static let topic = "Person.registered"

    /// Made-up customers in the workload's shape, far from the events the tests store.
    static func samples(_ count: Int = 40) -> [DictionaryPerson.Event] {
        workloadEvents(5_000 + count).suffix(count).map { .registered(name: $0.name, email: $0.email, address: $0.address) }
    }

    static func dictionary() throws -> CompressionDictionary {
        try CompressionDictionary.events(samples(), of: DictionaryPerson.self)
    }

    /// An application over an in-memory store with a keyring on `keys`, its mapper configured with `configuration`.
    static func app(_ recorder: InMemoryRecorder, _ keyring: Keyring, _ configuration: Mapper.Configuration) -> Application {
        Application(recorder: recorder, snapshots: nil, mapper: Mapper(keyring: keyring, configuration: configuration))
    }

    /// Saves `count` customers, one registration each, and returns their ids with what was stored.
    static func saveCustomers(_ app: Application, count: Int) async throws -> [(UUID, WorkloadEvent)] {
        var out: [(UUID, WorkloadEvent)] = []
        for w in workloadEvents(count) {
            var root = try AggregateRoot<DictionaryPerson>(.registered(name: w.name, email: w.email, address: w.address))
            try await app.save(&root)
            out.append((root.id, w))
        }
        return out
    }

    static func meanStateSize(_ recorder: InMemoryRecorder) async throws -> Double {
        let all = try await recorder.selectNotifications(start: 1, limit: 10_000, stop: nil, topics: [])
        return Double(all.reduce(0) { $0 + $1.state.count }) / Double(max(1, all.count))
    }

    @Test("records of a topic with a dictionary are stored compressed, at most 70% of the size without it, and read back exactly")
    func shrinksAndReads() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let dictionary = try Self.dictionary()
        let plainRecorder = InMemoryRecorder()
        _ = try await Self.saveCustomers(Self.app(plainRecorder, keyring, .init()), count: 200)
        let recorder = InMemoryRecorder()
        let app = Self.app(recorder, keyring, .init(compressionDictionaries: [Self.topic: dictionary]))
        let saved = try await Self.saveCustomers(app, count: 200)

        let without = try await Self.meanStateSize(plainRecorder)
        let with = try await Self.meanStateSize(recorder)
        #expect(with <= 0.7 * without, "mean record \(with) bytes with the dictionary, \(without) without")
        for n in try await recorder.selectNotifications(start: 1, limit: 1_000, stop: nil, topics: []) {
            guard case .success(let (h, _)) = StateHeader.parse(n.state) else {
                Issue.record("header does not parse")
                continue
            }
            #expect(h.flags.contains(.compressed) && h.flags.contains(.encrypted))
        }
        for (id, w) in saved {
            let root = try await app.repository.get(DictionaryPerson.self, id: id)
            #expect(root.state.name == w.name && root.state.email == w.email && root.state.address == w.address)
        }
    }

    @Test("the same sample events give the same dictionary, call after call; other samples another")
    func deterministic() async throws {
        let first = try Self.dictionary()
        try await Task.sleep(for: .milliseconds(5))
        let again = try Self.dictionary()
        #expect(first == again && first.id == again.id)
        let other = try CompressionDictionary.events(Self.samples(39), of: DictionaryPerson.self)
        #expect(other.id != first.id)
    }

    @Test("the zlib stream names the dictionary by its id (FDICT, the Adler-32 of its bytes)")
    func streamNamesDictionary() throws {
        let dictionary = try CompressionDictionary(Array("the words the records repeat".utf8))
        var adler: UInt32 = 1
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in dictionary.bytes {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        adler = b << 16 | a
        #expect(dictionary.id == adler)
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, minimumCompressionSaving: 0,
                                                                  compressionDictionaries: ["T.e": dictionary]))
        let payload = Array(#"{"e":"the words the records repeat, and the words the records repeat"}"#.utf8)
        let state = try mapper.seal(payload, key: nil, snapshot: false, originatorID: UUID(), originatorVersion: 1, topic: "T.e")
        guard case .success(let (h, offset)) = StateHeader.parse(state) else {
            Issue.record("header does not parse")
            return
        }
        #expect(h.flags.contains(.compressed))
        #expect(Zlib.presetDictionaryID(Array(state[offset...])) == dictionary.id)
        // Another topic is compressed without it.
        let other = try mapper.seal(payload, key: nil, snapshot: false, originatorID: UUID(), originatorVersion: 1, topic: "T.f")
        if case .success(let (_, o)) = StateHeader.parse(other) {
            let id: UInt32? = Zlib.presetDictionaryID(Array(other[o...]))
            #expect(id == nil)
        }
    }

    @Test("without the dictionary, reading fails with compressionDictionaryMissing naming the record and the id, never the data; a retired copy reads it")
    func missingDictionary() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let dictionary = try Self.dictionary()
        let recorder = InMemoryRecorder()
        let saved = try await Self.saveCustomers(Self.app(recorder, keyring, .init(compressionDictionaries: [Self.topic: dictionary])), count: 3)
        let (id, w) = saved[1]

        let bare = Self.app(recorder, keyring, .init())
        do {
            _ = try await bare.repository.get(DictionaryPerson.self, id: id)
            Issue.record("a record compressed with a dictionary the mapper lacks was read")
        } catch let e as EventSourcingError {
            #expect(e.code == .compressionDictionaryMissing, "\(e)")
            #expect(e.originatorID == id && e.originatorVersion == 1 && e.topic == Self.topic, "\(e)")
            #expect(e.message.contains(CompressionDictionary.hex(dictionary.id)), "\(e.message)")
            #expect(!"\(e)".contains(w.name) && !"\(e)".contains(w.email), "the error shows the data: \(e)")
        }
        let retired = Self.app(recorder, keyring, .init(retiredCompressionDictionaries: [dictionary]))
        #expect(try await retired.repository.get(DictionaryPerson.self, id: id).state.email == w.email)
    }

    @Test("two dictionaries with the same id (an Adler-32 collision) each read their own records: the stream's checksum picks the right one")
    func collidingIDs() async throws {
        // "baab" and "abba": the same byte sum and the same weighted sum, so the same Adler-32.
        let one = try CompressionDictionary(Array("baab".utf8) + Array(repeating: UInt8(ascii: "x"), count: 64))
        let two = try CompressionDictionary(Array("abba".utf8) + Array(repeating: UInt8(ascii: "x"), count: 64))
        try #require(one.id == two.id && one != two)
        let payload = Array(#"{"k":"baabxxxxabbaxxxxbaab"}"#.utf8)
        let zOne = try ZlibCompressor().compress(payload, dictionary: one)
        let zTwo = try ZlibCompressor().compress(payload, dictionary: two)
        #expect(try ZlibCompressor().decompress(zOne, dictionaries: [two, one]) == payload)
        #expect(try ZlibCompressor().decompress(zTwo, dictionaries: [one, two]) == payload)
        // With only the other one: refused as corrupt (its checksum fails), never returned wrong.
        #expect(throws: EventSourcingError.self) { try ZlibCompressor().decompress(zOne, dictionaries: [two]) }
    }

    @Test("bad dictionaries are refused with invalidArgument; samples past 32 KiB keep the last bytes; the description shows no bytes")
    func badDictionaries() throws {
        #expect { try CompressionDictionary([]) } throws: { ($0 as? EventSourcingError)?.code == .invalidArgument }
        #expect { try CompressionDictionary([UInt8](repeating: 7, count: CompressionDictionary.maxSize + 1)) } throws: {
            ($0 as? EventSourcingError)?.code == .invalidArgument
        }
        #expect { try CompressionDictionary(samples: []) } throws: { ($0 as? EventSourcingError)?.code == .invalidArgument }
        #expect { try CompressionDictionary(samples: [[], []]) } throws: { ($0 as? EventSourcingError)?.code == .invalidArgument }
        #expect { try CompressionDictionary.events([], of: DictionaryPerson.self) } throws: { ($0 as? EventSourcingError)?.code == .invalidArgument }

        let big = (0..<40).map { i in [UInt8](repeating: UInt8(i), count: 1_000) }
        let d = try CompressionDictionary(samples: big)
        #expect(d.bytes.count == CompressionDictionary.maxSize)
        #expect(d.bytes.suffix(1_000) == ArraySlice(big[39]) && d.bytes.first == 7)
        let secret = try CompressionDictionary(Array("Ada Lovelace".utf8))
        #expect(!"\(secret)".contains("Ada") && "\(secret)".contains(CompressionDictionary.hex(secret.id)))
    }

    @Test("a dictionary is used only where it pays the minimum saving, and an uncompressed topic stays uncompressed")
    func respectsSettings() throws {
        let dictionary = try CompressionDictionary(Array("nothing like the records at all".utf8))
        let random = CompressionAdvisorTests.poor(300, seed: 9)
        let mapper = Mapper(keyring: nil, configuration: .init(encoding: .json, uncompressedTopics: ["T.secret"],
                                                                  compressionDictionaries: ["T.e": dictionary, "T.secret": dictionary]))
        for topic in ["T.e", "T.secret"] {
            let state = try mapper.seal(random, key: nil, snapshot: false, originatorID: UUID(), originatorVersion: 1, topic: topic)
            if case .success(let (h, _)) = StateHeader.parse(state) { #expect(!h.flags.contains(.compressed), "\(topic)") }
        }
        let repetitive = Array(String(repeating: "nothing like the records at all; ", count: 10).utf8)
        let state = try mapper.seal(repetitive, key: nil, snapshot: false, originatorID: UUID(), originatorVersion: 1, topic: "T.secret")
        if case .success(let (h, _)) = StateHeader.parse(state) { #expect(!h.flags.contains(.compressed)) }
    }
}
