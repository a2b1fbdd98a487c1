import EventSourcing
import Foundation
import KeyManagement
import Testing

/// The aggregate cache and personal fields of other subjects than the aggregate's own: a shred
/// of such a subject does not touch the aggregate's key, so neither evicting the aggregate's
/// scope nor checking its key on a hit would notice it.
@Suite("Personal fields and the aggregate cache")
struct PersonalFieldCacheTests {
    static func apps() async throws -> (Application, Application) {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let recorder = InMemoryRecorder()
        let cached = Application(recorder: recorder, mapper: Mapper(keyring: keyring), cache: .lru(maxEntries: 100))
        // Another application over the same store and keyring (another part of the program).
        let other = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        return (cached, other)
    }

    static func order() throws -> AggregateRoot<PDOrder> {
        try AggregateRoot<PDOrder>(PDOrder.place(customer: "Ann Example", customerSubject: "subject-a", street: "1 Road",
                                                 city: "Town", courier: "Bob Courier", courierSubject: "subject-b", amount: 120))
    }

    @Test("A cached order is read afresh after its courier's shred, through the same application or another sharing the keyring",
          arguments: [false, true])
    func shredOfAnotherSubjectReachesTheCache(throughOther: Bool) async throws {
        let (app, other) = try await Self.apps()
        var order = try Self.order()
        try await app.save(&order)
        let before = try await app.repository.get(PDOrder.self, id: order.id)   // cached
        #expect(before.courier?.value == "Bob Courier")
        #expect(app.aggregateCache?.contains(order.id) == true)

        _ = try await (throughOther ? other : app).shred(keyScope: "subject-b")
        let after = try await app.repository.get(PDOrder.self, id: order.id)
        #expect(after.courier?.isRedacted == true, "the cache returned the shredded courier's name")
        #expect(after.courier?.value == "")
        #expect(after.customer?.value == "Ann Example")
        #expect(after.amount == 120)
    }

    @Test("A root read before the courier's shred and saved after it is not cached with the courier's name")
    func rootReadBeforeTheShredIsNotCachedAfterItsSave() async throws {
        let (app, other) = try await Self.apps()
        var order = try Self.order()
        try await app.save(&order)
        var held = try await other.repository.get(PDOrder.self, id: order.id)   // read before the shred
        _ = try await other.shred(keyScope: "subject-b")
        try held.record(.shipped(note: "left at the door"))
        try await app.save(&held)                                               // the cache takes the saved root
        let after = try await app.repository.get(PDOrder.self, id: order.id)
        #expect(after.status == "shipped")
        #expect(after.courier?.isRedacted == true, "the saved root's decrypted courier name was cached")
    }
}
