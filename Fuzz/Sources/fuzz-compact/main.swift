// Fuzzes the compact binary decoder on arbitrary bytes: into JSONValue, into the events of a
// realistic aggregate, and into JSON text through Mapper.open (a plaintext compact record).
// Invariants: nothing traps or runs away; every failure is a DecodingError (directly) or
// decodingFailed naming the record (through the mapper); the JSON view and the JSONValue view
// accept exactly the same payloads (except non-finite numbers, which JSON cannot hold); a
// decoded JSONValue re-encodes and decodes to itself.
import EventSourcing
import Foundation
import FuzzSupport

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    var seeds: [[UInt8]] = []
    for e in FuzzAggregate.samples { seeds.append(try CompactEncoder().encode(e)) }
    let tree: JSONValue = .object(["a": .array([.null, .bool(true), .int(-3), .double(0.5), .string("s")]),
                                   "b": .object(["c": .array([])])])
    seeds.append(try CompactEncoder().encode(tree))
    // Whole envelopes as the mapper writes them (compact, uncompressed records minus the header).
    for r in try await Records.plaintext() {
        if case .success(let (h, o)) = StateHeader.parse(r.state), h.flags.contains(.compact), !h.flags.contains(.compressed) {
            seeds.append(Array(r.state[o...]))
        }
    }
    return seeds
}

let mapper = Mapper(keyring: nil, configuration: .init(plaintextReads: .allowed))
let header = StateHeader(flags: [.compact], keyScope: nil, keyVersion: 0, nonce: []).bytes

func isDecodingError(_ error: any Error) -> Bool { error is DecodingError }

func hasNonFinite(_ v: JSONValue) -> Bool {
    switch v {
    case .double(let d): return !d.isFinite
    case .array(let a): return a.contains(where: hasNonFinite)
    case .object(let o): return o.values.contains(where: hasNonFinite)
    default: return false
    }
}

func hasNaN(_ v: JSONValue) -> Bool {
    switch v {
    case .double(let d): return d.isNaN
    case .array(let a): return a.contains(where: hasNaN)
    case .object(let o): return o.values.contains(where: hasNaN)
    default: return false
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Fuzz.bytes(data, size)

    // Typed decoding: any outcome but a trap, and failures are DecodingErrors.
    do { _ = try CompactDecoder().decode(FuzzAggregate.Event.self, from: bytes) } catch {
        if !isDecodingError(error) { Fuzz.fail("event decoding threw \(type(of: error))") }
    }
    do { _ = try CompactDecoder().decode([String: [Int?]].self, from: bytes) } catch {
        if !isDecodingError(error) { Fuzz.fail("dictionary decoding threw \(type(of: error))") }
    }

    var value: JSONValue?
    do { value = try CompactDecoder().decode(JSONValue.self, from: bytes) } catch {
        if !isDecodingError(error) { Fuzz.fail("JSONValue decoding threw \(type(of: error))") }
    }

    let stored = StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: 1, topic: "FuzzAggregate.cleared",
                             state: header + bytes)
    let opened = Fuzz.run { try await mapper.open(stored, snapshot: false) }
    switch (opened, value) {
    case (.success(let text), let value?):
        guard !hasNonFinite(value) else { Fuzz.fail("JSON text written for a non-finite number") }
        guard (try? JSONSerialization.jsonObject(with: Data(text), options: [.fragmentsAllowed])) != nil else {
            Fuzz.fail("Mapper.open wrote text that is not JSON")
        }
    case (.success, nil): Fuzz.fail("Mapper.open accepted a payload JSONValue refuses")
    case (.failure(let error), let value):
        guard let e = error as? EventSourcingError, e.code == .decodingFailed, e.originatorID == Fuzz.originatorID,
              e.originatorVersion == 1 else {
            Fuzz.fail("Mapper.open failed without decodingFailed naming the record: \(error)")
        }
        if let value, !hasNonFinite(value) { Fuzz.fail("Mapper.open refused a payload JSONValue accepts") }
    }

    if let value, !hasNaN(value) {
        do {
            let again = try CompactDecoder().decode(JSONValue.self, from: CompactEncoder().encode(value))
            guard again == value else { Fuzz.fail("JSONValue does not survive a re-encoding") }
        } catch {
            Fuzz.fail("a decoded JSONValue cannot be re-encoded: \(error)")
        }
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
