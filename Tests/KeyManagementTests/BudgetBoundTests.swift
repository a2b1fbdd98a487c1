@testable import KeyManagement
import Foundation
import Synchronization
import Testing

/// The key ring's per-version encryption budgets stay bounded however many keys it mints, and
/// bounding them never lets a version seal more than its limit.
@Suite("Keyring: bounded encryption budgets")
struct BudgetBoundTests {
    @Test("minting keys for 5,000 new subjects keeps at most 2 × the cache capacity (at least 64) budget entries")
    func boundedOverManySubjects() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()], cacheCapacity: 16)
        var largest = 0
        for i in 0..<5_000 {
            let w = try await keyring.writeKey(for: "subject-\(i)", likelyNew: true, encryptions: 1)
            #expect(w.pending != nil)
            try await keyring.persist([w])
            largest = max(largest, keyring.state.withLock { $0.budget.count })
        }
        // Before: one entry per minted key, 5,000 here (217 MB over 10^6 subjects in a seed).
        #expect(largest <= 64, "budget entries reached \(largest)")
        // Every key still seals: a dropped budget only means a new reservation from the store.
        for i in stride(from: 0, to: 5_000, by: 500) {
            let w = try await keyring.writeKey(for: "subject-\(i)", encryptions: 3)
            #expect(w.pending == nil && w.key.version == 1)
        }
    }

    @Test("a trim keeps the budget of keys minted and not persisted yet, so their first block is never granted twice")
    func keepsPendingKeys() async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()], cacheCapacity: 8)
        keyring.encryptionLimit = 10
        keyring.encryptionBlock = 10
        // Minted, 4 of its 10 taken, not persisted.
        let pending = try await keyring.writeKey(for: "pending", likelyNew: true, encryptions: 4)
        #expect(pending.pending != nil)
        // Enough other keys to trim the budgets several times over.
        for i in 0..<300 {
            let w = try await keyring.writeKey(for: "other-\(i)", likelyNew: true, encryptions: 1)
            try await keyring.persist([w])
        }
        #expect(keyring.state.withLock { $0.budget.count } <= 64)
        // The pending key's remaining 6 are still its own; a seventh rotates the scope first, as
        // the limit of 10 demands (had the entry been dropped, a fresh first block of 10 would
        // have been granted to the same version: 14 records under a limit of 10).
        let more = try await keyring.writeKey(for: "pending", encryptions: 6)
        #expect(more.key.version == pending.key.version)
        try await keyring.persist([more])
        let after = try await keyring.writeKey(for: "pending", encryptions: 1)
        #expect(after.key.version == pending.key.version + 1)
    }
}
