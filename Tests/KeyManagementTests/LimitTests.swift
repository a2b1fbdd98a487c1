import Foundation
@testable import KeyManagement
import Testing

/// Counts and sizes that come from a caller or a file: each is refused with a typed error
/// before anything traps or allocates in proportion to it.
@Suite("Limits on caller-given counts and sizes")
struct LimitTests {
    @Test("KeyMaterial(randomCount:) refuses counts outside 1…maxRandomCount with invalidKeyMaterial",
          arguments: [-1, 0, Int.min, KeyMaterial.maxRandomCount + 1, Int(Int32.max) + 1, Int.max])
    func randomCountOutOfRangeIsRefused(count: Int) {
        let error = #expect(throws: KeyManagementError.self) { try KeyMaterial(randomCount: count) }
        #expect(error?.code == .invalidKeyMaterial)
        #expect(error?.message.contains("\(count)") == true)
    }

    @Test("KeyMaterial(randomCount:) creates keys of 1…maxRandomCount bytes",
          arguments: [1, 32, KeyMaterial.maxRandomCount])
    func randomCountInRangeWorks(count: Int) throws {
        let key = try KeyMaterial(randomCount: count)
        #expect(key.count == count)
    }

    /// A length above Int32.max cannot be handed to the public AES-GCM calls without allocating
    /// 2 GiB or more, so the one conversion every OpenSSL length goes through is tested here.
    @Test("Lengths handed to OpenSSL above Int32.max or below 0 are limitExceeded, not a trap",
          arguments: [Int(Int32.max) + 1, Int(UInt32.max), Int.max, -1, Int.min])
    func cLengthRefusesWhatIntDoesNotHold(count: Int) {
        let error = #expect(throws: KeyManagementError.self) { try LibCrypto.cLength(count, of: "the plaintext") }
        #expect(error?.code == .limitExceeded)
        #expect(error?.message.contains("the plaintext") == true)
    }

    @Test("Lengths from 0 to Int32.max pass through unchanged", arguments: [0, 1, 4096, Int(Int32.max)])
    func cLengthKeepsValidLengths(count: Int) throws {
        #expect(try LibCrypto.cLength(count, of: "x") == Int32(count))
    }

    @Test("Associated-data parts are checked one by one, and the check passes real parts through")
    func aadLengthsAreChecked() throws {
        #expect(try LibCrypto.aadLengths([[], [1, 2, 3], Array(repeating: 0, count: 70_000)]) == [0, 3, 70_000])
    }

    @Test("randomBytes refuses a negative count with limitExceeded instead of trapping")
    func randomBytesRefusesNegativeCounts() {
        let error = #expect(throws: KeyManagementError.self) { try LibCrypto.randomBytes(-1) }
        #expect(error?.code == .limitExceeded)
    }

    @Test("rotateMasterKey refuses a page size below 1 with invalidArgument and changes nothing",
          arguments: [0, -1, Int.min])
    func rotateMasterKeyRefusesEmptyPages(pageSize: Int) async throws {
        let store = InMemoryKeyStore()
        let old = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [old])
        for scope in ["alice", "bob"] { try await keyring.persist([keyring.writeKey(for: scope)]) }
        let checksBefore = try await store.masterKeyChecks()
        let keysBefore = try await store.dataKeys(after: nil, limit: 100)

        let new = try MasterKey.generate()
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.rotateMasterKey(to: new, pageSize: pageSize)
        }
        #expect(error?.code == .invalidArgument)
        #expect(try await store.masterKeyChecks() == checksBefore)
        #expect(try await store.dataKeys(after: nil, limit: 100) == keysBefore)
        #expect(keyring.primaryMasterKeyID == old.id)
        // The old key still opens the store.
        _ = try await Keyring.open(store: store, masterKeys: [old])
    }

    @Test("InMemoryKeyStore returns an empty page for a limit below 1", arguments: [0, -1])
    func inMemoryStoreHonoursNonPositiveLimits(limit: Int) async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        try await keyring.persist([keyring.writeKey(for: "alice")])
        #expect(try await store.dataKeys(after: nil, limit: limit).isEmpty)
        #expect(try await store.dataKeys(after: nil, limit: 1).count == 1)
    }
}
