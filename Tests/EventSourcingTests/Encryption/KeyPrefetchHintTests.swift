import EventSourcing
import Foundation
import KeyManagement
import Testing

@Suite("Reading a page of the log asks the key store for the page's missing keys at once")
struct KeyPrefetchHintTests {
    @Test("One hint per page with each missing scope once; none for cached or shredded scopes")
    func hints() async throws {
        let masterKey = try MasterKey.generate()
        let log = CallLog()
        let keys = LoggingKeyStore(InMemoryKeyStore(), log: log)
        @Sendable func given() -> [String] { log.all.filter { $0.hasPrefix("prefetch ") } }
        let recorder = InMemoryRecorder()
        let writer = Application(recorder: recorder, mapper: Mapper(keyring: try await Keyring.open(store: keys, masterKeys: [masterKey])))
        var dogs: [AggregateRoot<Dog>] = []
        for name in ["a", "b", "c"] {
            var dog = try AggregateRoot<Dog>(.registered(name: name))
            try dog.record(.addedTrick("sit"))
            try await writer.save(&dog)
            dogs.append(dog)
        }
        // A reader with a cold key cache: one hint for the page, each scope once, in log order.
        let keyring = try await Keyring.open(store: keys, masterKeys: [masterKey])
        let reader = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        let before = given().count
        let page = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(page.count == 6)
        #expect(page.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        #expect(Array(given().dropFirst(before)) == ["prefetch " + dogs.map(\.keyScope).joined(separator: ",")])
        // Warm: nothing to ask for.
        _ = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(given().count == before + 1)
        // A scope this key ring shredded is not asked for either (the others are cached).
        _ = try await keyring.shred(scope: dogs[0].keyScope)
        _ = try await reader.notificationLog.read(start: 1, limit: 10)
        #expect(given().count == before + 1)
    }
}
