// Fuzzes the mapper's read path: header → decrypt → decompress → decode, with a fixed test key.
//
// Input byte 0 chooses the mode:
// - even: the rest is a stored `state` as is (plaintext records reach decompression and
//   decoding; encrypted ones stop at the header or the tag);
// - odd: byte 1 holds flags (compressed, snapshot, compact) and the rest is a body, which the
//   target seals under the test data key with the associated data of SECURITY.md §5.3, so
//   mutated payloads get past authentication as they would for someone holding the key.
// - bit 1 set (2, 3, 6, 7): the record is a `PersonalAggregate`'s, whose events and state
//   hold `Personal` fields (own subject, another subject, a shredded subject); byte 1 is its
//   originator version (personal fields are bound to it), then as above (even: a state, odd:
//   flags and a body to seal). Bit 2 also set (6, 7): under the discard topic, read as a
//   discard marker (`Repository.contains` and `get`) instead of decoded.
// The mapper has two preset compression dictionaries with the same id (an Adler-32 collision),
// so a compressed body naming that id is inflated with each in turn; seeds include bodies
// compressed with one of them. Any other id fails as a missing dictionary.
// Invariants: nothing traps; every failure is an EventSourcingError naming the record (also a
// personal field's failure that `Mapper.personalFields` reports), whose description holds
// nothing of a personal field's plaintext (`PersonalAggregate.secretMarker`).
import EventSourcing
import Foundation
import FuzzSupport
import KeyManagement

/// Two dictionaries with one id: "baab…" and "abba…" have the same Adler-32.
let dictionaries: [CompressionDictionary] = {
    let tail = Array(#"{"e":{"registered":{"name":"Ada Lovelace","email":"ada@example.org"}},"t":1800000000,"v":1}"#.utf8)
    do {
        return [try CompressionDictionary(Array("baab".utf8) + tail), try CompressionDictionary(Array("abba".utf8) + tail)]
    } catch { Fuzz.fail("setup: dictionaries: \(error)") }
}()

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    var seeds: [[UInt8]] = []
    for r in try await Records.plaintext() {
        guard case .success(let (h, o)) = StateHeader.parse(r.state) else { continue }
        seeds.append([0] + r.state)
        seeds.append([1, h.flags.rawValue] + Array(r.state[o...]))
        // The same payload compressed with a preset dictionary.
        var payload = Array(r.state[o...])
        if h.flags.contains(.compressed) { payload = try ZlibCompressor().decompress(payload) }
        seeds.append([1, h.flags.union(.compressed).rawValue] + (try ZlibCompressor().compress(payload, dictionary: dictionaries[1])))
    }
    for b in try await PersonalRecords.bodies() {
        let discard = DiscardMarker.isDiscard(topic: b.topic)
        seeds.append([discard ? 7 : 3, UInt8(b.version), b.flags.rawValue] + b.body)
    }
    return seeds
}

struct Setup: Sendable {
    let mapper: Mapper
    let key: DataKey
}

/// A keyring over an in-memory store holding fixed data keys for `Records.scope` and the
/// personal fields' subjects (`PersonalAggregate.shreddedSubject` shredded), and the mapper on it.
let setup: Setup = {
    let made = Fuzz.run { () async throws -> Setup in
        let keyring = try await PersonalRecords.keyring(shred: true)
        let write = try await keyring.sealingKey(for: Records.scope, likelyNew: false)
        guard write.key.version == 1, write.minted == nil else {
            Fuzz.fail("setup: no fixed key for \(Records.scope)")
        }
        let mapper = Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed,
                                                                   retiredCompressionDictionaries: dictionaries))
        // Self-check: a record sealed by the specification's rules opens through the library.
        let body = try CompactEncoder().encode(["v": 1])
        let sealed = try Records.seal(body, flags: [.compact], key: write.key, topic: "FuzzAggregate.cleared", originatorVersion: 1)
        let opened = try await mapper.open(StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: 1,
                                                       topic: "FuzzAggregate.cleared", state: sealed), snapshot: false)
        guard opened == Array(#"{"v":1}"#.utf8) else { Fuzz.fail("self-check: sealed record reads back as \(opened)") }
        try await personalSelfCheck(mapper, write.key)
        return Setup(mapper: mapper, key: write.key)
    }
    switch made {
    case .success(let s): return s
    case .failure(let e): Fuzz.fail("setup: \(e)")
    }
}()

/// Self-check: the personal seeds, sealed as `test` seals them, all read back: the first
/// (`PersonalAggregate.samples[0]`, compact, compressed) decodes through `Personal.init(from:)`
/// with its own subject's and the other subject's fields opened and the shredded subject's
/// redacted; every event and snapshot decodes, every discard marker is read as one, and
/// `personalFields` finds opened, redacted (shredded) and written-redacted fields.
func personalSelfCheck(_ mapper: Mapper, _ key: DataKey) async throws {
    let bodies = try await PersonalRecords.bodies()
    guard let b = bodies.first, b.version == 1 else { Fuzz.fail("self-check: no personal record") }
    func stored(_ b: PersonalRecords.Body) throws -> StoredEvent {
        let snapshot = b.flags.contains(.snapshot)
        let topic = snapshot ? PersonalAggregate.snapshotTopic
            : DiscardMarker.isDiscard(topic: b.topic) ? PersonalAggregate.discardTopic : PersonalAggregate.typeName + ".joined"
        return StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: b.version, topic: topic,
                           state: try Records.seal(b.body, flags: b.flags, key: key, topic: topic, originatorVersion: b.version))
    }
    let event = try await mapper.decode(try stored(b), as: PersonalAggregate.self).event
    guard case .joined(let name, let referrer?, let contacts, 36) = event, contacts.count == 3,
          name.value == "Ada Lovelace", !name.isRedacted, referrer.value == "Charles Babbage", !referrer.isRedacted,
          contacts[1].isRedacted, contacts[1].value == "(erased)", contacts[2].subject == PersonalAggregate.otherSubject,
          !contacts[2].isRedacted else {
        Fuzz.fail("self-check: the personal record decodes as \(event)")
    }
    var opened = 0, redacted = 0, writtenRedacted = 0, markers = 0
    for b in bodies {
        let s = try stored(b)
        if DiscardMarker.isDiscard(topic: s.topic) {
            let recorder = InMemoryRecorder()
            _ = try await recorder.insertEvents([s])
            guard try await !Application(recorder: recorder, mapper: mapper).repository.contains(s.originatorID) else {
                Fuzz.fail("self-check: a discard marker does not read as one")
            }
            markers += 1
            continue
        }
        let snapshot = b.flags.contains(.snapshot)
        if b.fails {
            var failure: (any Error)?
            do { _ = try await mapper.decode(s, as: PersonalAggregate.self) } catch { failure = error }
            guard let e = failure as? EventSourcingError, e.code == .decodingFailed else {
                Fuzz.fail("self-check: a personal seed with swapped fields does not fail with decodingFailed: \(String(describing: failure))")
            }
            check(Result<Void, any Error>.failure(e), s, "self-check decode")
        } else if snapshot { _ = try await mapper.decodeSnapshot(s, as: PersonalAggregate.self) } else { _ = try await mapper.decode(s, as: PersonalAggregate.self) }
        for r in try await mapper.personalFields(of: s, snapshot: snapshot) {
            switch r.outcome {
            case .value: opened += 1
            case .redacted: if r.keyVersion == nil { writtenRedacted += 1 } else { redacted += 1 }
            case .failed(let e): Fuzz.fail("self-check: a personal field of a seed fails: \(e)")
            }
        }
    }
    guard opened > 0, redacted > 0, writtenRedacted > 0, markers == 4, bodies.count == 4 * 9 + 8 + 1 else {
        Fuzz.fail("self-check: \(bodies.count) personal seeds read \(opened) opened, \(redacted) redacted, \(writtenRedacted) written redacted fields, \(markers) markers")
    }
}

func check(_ result: Result<some Any, any Error>, _ stored: StoredEvent, _ what: String) {
    guard case .failure(let error) = result else { return }
    guard let e = error as? EventSourcingError else { Fuzz.fail("\(what) threw \(type(of: error)): \(error)") }
    guard e.originatorID == stored.originatorID, e.originatorVersion == stored.originatorVersion else {
        Fuzz.fail("\(what) failed without naming the record: \(e)")
    }
    // Only the sealed plaintext of personal fields holds the marker (never the outer payload).
    guard !"\(e)".contains(PersonalAggregate.secretMarker) else {
        Fuzz.fail("\(what) failed with a message that repeats a personal field's plaintext: \(e)")
    }
}

func testPersonal(_ stored: StoredEvent, snapshot: Bool, discard: Bool) {
    let mapper = setup.mapper
    if discard {
        // Read as the repository reads a discard marker: the aggregate's latest record.
        check(Fuzz.run {
            let recorder = InMemoryRecorder()
            _ = try await recorder.insertEvents([stored])
            return try await Application(recorder: recorder, mapper: mapper).repository.contains(stored.originatorID)
        }, stored, "repository.contains")
        // And as `get` reads it: "no such aggregate: discarded at …", with the marker's time.
        check(Fuzz.run {
            let recorder = InMemoryRecorder()
            _ = try await recorder.insertEvents([stored])
            return try await Application(recorder: recorder, mapper: mapper).repository.get(PersonalAggregate.self, id: stored.originatorID)
        }, stored, "repository.get")
        return
    }
    if snapshot {
        check(Fuzz.run { try await mapper.decodeSnapshot(stored, as: PersonalAggregate.self) }, stored, "decodeSnapshot")
    } else {
        check(Fuzz.run { try await mapper.decode(stored, as: PersonalAggregate.self) }, stored, "decode")
    }
    let fields = Fuzz.run { try await mapper.personalFields(of: stored, snapshot: snapshot) }
    check(fields, stored, "personalFields")
    if case .success(let readings) = fields {
        for r in readings {
            if case .failed(let e) = r.outcome { check(Result<Void, any Error>.failure(e), stored, "personalFields outcome") }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Fuzz.bytes(data, size)
    guard let mode = input.first else { return 0 }
    let personal = mode & 2 != 0
    let discard = personal && mode & 4 != 0
    var version = 3
    if personal {
        guard input.count >= 2 else { return 0 }
        version = Int(input[1])
        input.remove(at: 1)
    }
    var snapshot = false
    let state: [UInt8]
    var topic = personal ? (discard ? PersonalAggregate.discardTopic : "PersonalAggregate.joined") : "FuzzAggregate.registered"
    if mode & 1 == 0 {
        state = Array(input.dropFirst())
        if case .success(let (h, _)) = StateHeader.parse(state) { snapshot = h.flags.contains(.snapshot) }
    } else {
        guard input.count >= 2 else { return 0 }
        let flags = StateHeader.Flags(rawValue: input[1]).intersection([.compressed, .snapshot, .compact])
        snapshot = flags.contains(.snapshot)
        if snapshot { topic = personal ? PersonalAggregate.snapshotTopic : FuzzAggregate.snapshotTopic }
        do {
            state = try Records.seal(Array(input.dropFirst(2)), flags: flags, key: setup.key, topic: topic,
                                     originatorVersion: version)
        } catch { Fuzz.fail("sealing: \(error)") }
    }
    let stored = StoredEvent(originatorID: Fuzz.originatorID, originatorVersion: version, topic: topic, state: state)
    let mapper = setup.mapper
    let isSnapshot = snapshot
    check(Fuzz.run { try await mapper.open(stored, snapshot: isSnapshot) }, stored, "open")
    if personal {
        testPersonal(stored, snapshot: isSnapshot, discard: discard)
    } else if isSnapshot {
        check(Fuzz.run { try await mapper.decodeSnapshot(stored, as: FuzzAggregate.self) }, stored, "decodeSnapshot")
    } else {
        check(Fuzz.run { try await mapper.decode(stored, as: FuzzAggregate.self) }, stored, "decode")
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
