// Fuzzes the mapper's read path: header → decrypt → decompress → decode, with a fixed test key.
//
// Input byte 0 chooses the mode:
// - even: the rest is a stored `state` as is (plaintext records reach decompression and
//   decoding; encrypted ones stop at the header or the tag);
// - odd: byte 1 holds flags (compressed, snapshot, compact) and the rest is a body, which the
//   target seals under the test data key with the associated data of SECURITY.md §5.3, so
//   mutated payloads get past authentication as they would for someone holding the key.
// Invariants: nothing traps; every failure is an EventSourcingError naming the record.
import EventSourcing
import Foundation
import FuzzSupport
import KeyManagement

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    var seeds: [[UInt8]] = []
    for r in try await Records.plaintext() {
        guard case .success(let (h, o)) = StateHeader.parse(r.state) else { continue }
        seeds.append([0] + r.state)
        seeds.append([1, h.flags.rawValue] + Array(r.state[o...]))
    }
    return seeds
}

struct Setup: Sendable {
    let mapper: Mapper
    let key: DataKey
}

/// A keyring over an in-memory store holding one data key for `Records.scope`, and the mapper on it.
let setup: Setup = {
    let made = Fuzz.run { () async throws -> Setup in
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [Fuzz.masterKey()])
        let write = try await keyring.sealingKey(for: Records.scope, likelyNew: false)
        try await keyring.persist([write])
        let mapper = Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed))
        // Self-check: a record sealed by the specification's rules opens through the library.
        let body = try CompactEncoder().encode(["v": 1])
        let sealed = try Records.seal(body, flags: [.compact], key: write.key, topic: "FuzzAggregate.cleared", originatorVersion: 1)
        let opened = try await mapper.open(StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: 1,
                                                       topic: "FuzzAggregate.cleared", state: sealed), snapshot: false)
        guard opened == Array(#"{"v":1}"#.utf8) else { Fuzz.fail("self-check: sealed record reads back as \(opened)") }
        return Setup(mapper: mapper, key: write.key)
    }
    switch made {
    case .success(let s): return s
    case .failure(let e): Fuzz.fail("setup: \(e)")
    }
}()

func check(_ result: Result<some Any, any Error>, _ stored: StoredEvent, _ what: String) {
    guard case .failure(let error) = result else { return }
    guard let e = error as? EventSourcingError else { Fuzz.fail("\(what) threw \(type(of: error)): \(error)") }
    guard e.originatorID == stored.originatorID, e.originatorVersion == stored.originatorVersion else {
        Fuzz.fail("\(what) failed without naming the record: \(e)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    guard let mode = input.first else { return 0 }
    let version = 3
    var snapshot = false
    let state: [UInt8]
    var topic = "FuzzAggregate.registered"
    if mode & 1 == 0 {
        state = Array(input.dropFirst())
        if case .success(let (h, _)) = StateHeader.parse(state) { snapshot = h.flags.contains(.snapshot) }
    } else {
        guard input.count >= 2 else { return 0 }
        let flags = StateHeader.Flags(rawValue: input[1]).intersection([.compressed, .snapshot, .compact])
        snapshot = flags.contains(.snapshot)
        if snapshot { topic = FuzzAggregate.snapshotTopic }
        do {
            state = try Records.seal(Array(input.dropFirst(2)), flags: flags, key: setup.key, topic: topic,
                                     originatorVersion: version)
        } catch { Fuzz.fail("sealing: \(error)") }
    }
    let stored = StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: version, topic: topic, state: state)
    let mapper = setup.mapper
    let isSnapshot = snapshot
    check(Fuzz.run { try await mapper.open(stored, snapshot: isSnapshot) }, stored, "open")
    if isSnapshot {
        check(Fuzz.run { try await mapper.decodeSnapshot(stored, as: FuzzAggregate.self) }, stored, "decodeSnapshot")
    } else {
        check(Fuzz.run { try await mapper.decode(stored, as: FuzzAggregate.self) }, stored, "decode")
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
