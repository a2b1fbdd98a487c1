// Fuzzes StateHeader.parse, the first thing every read does with a stored record.
// Invariants: parsing never traps; a parsed header re-encodes to bytes that parse to the same
// header (the stored form may differ only by the old length-prefixed spelling of a UUID scope);
// the body offset lies within the record.
import EventSourcing
import FuzzSupport

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    var seeds = try await Records.plaintext().map(\.state)
    let uuidScope = StateHeader(flags: [.encrypted, .compact], keyScope: Fuzz.originatorID.uuidString.lowercased(),
                                keyVersion: 7, nonce: Records.nonce).bytes
    let textScope = StateHeader(flags: [.encrypted, .compressed, .snapshot], keyScope: "customer:42",
                                keyVersion: 0xFFFF_FFFF, nonce: Records.nonce).bytes
    seeds += [uuidScope + [1, 2, 3], textScope + [0xFF]]
    return seeds
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let state = Fuzz.bytes(data, size)
    guard case .success(let (header, offset)) = StateHeader.parse(state) else {
        if StateHeader.peekKeyScope(state) != nil { Fuzz.fail("peekKeyScope found a scope in an unparseable header") }
        return 0
    }
    guard offset <= state.count else { Fuzz.fail("body offset \(offset) beyond \(state.count) bytes") }
    guard StateHeader.peekKeyScope(state) == header.keyScope else { Fuzz.fail("peekKeyScope disagrees with parse") }
    guard header.flags.contains(.encrypted) == (header.keyScope != nil) else { Fuzz.fail("scope without encryption or the reverse") }
    let again = header.bytes
    guard case .success(let (h2, o2)) = StateHeader.parse(again) else { Fuzz.fail("re-encoded header does not parse") }
    guard o2 == again.count, h2.keyScope == header.keyScope, h2.keyVersion == header.keyVersion,
          h2.nonce == header.nonce,
          h2.flags.subtracting(.uuidScope) == header.flags.subtracting(.uuidScope) else {
        Fuzz.fail("re-encoded header parses differently")
    }
    guard h2.bytes == again else { Fuzz.fail("encoding a parsed header is not idempotent") }
    if again != Array(state[0..<offset]) {
        // Allowed only for the two spellings the writer normalises: a UUID scope stored as text,
        // and the UUID-scope bit on an unencrypted record.
        let legacyUUID = header.flags.contains(.encrypted) && !header.flags.contains(.uuidScope)
            && again.count == 36 && header.keyScope?.utf8.count == 36
        let ignoredBit = !header.flags.contains(.encrypted) && header.flags.contains(.uuidScope)
        guard legacyUUID || ignoredBit else { Fuzz.fail("stored header does not round-trip") }
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
