import EventSourcing
import Foundation
import KeyManagement
import Testing

/// A canonical UUID scope is written in the header's 16-byte form; early development versions
/// wrote it length-prefixed, as text. Both forms are read (SECURITY.md §5.1): they name the same
/// scope text, so the same data key and the same shred, and the form is authenticated, so a
/// record cannot be moved from one form to the other.
@Suite("UUID key scopes in both header forms")
struct UUIDScopeFormTests {
    struct Fixture {
        var master: MasterKey
        var keyring: Keyring
        var mapper: Mapper
        var scope: String
        var key: DataKey
        /// An event as this version writes it: the scope in the 16-byte form.
        var short: StoredEvent
        /// The same event as early versions wrote it: the scope as length-prefixed text.
        var long: StoredEvent
    }

    static let event = Dog.Event.registered(name: "Fido")

    static func fixture() async throws -> Fixture {
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [master])
        let mapper = Mapper(keyring: keyring)
        let id = UUID()
        let scope = id.uuidString.lowercased()
        let batch = try await mapper.encode([DomainEvent(originatorID: id, originatorVersion: 1,
                                                         timestamp: Date(timeIntervalSince1970: 1_700_000_000), event: event)],
                                            of: Dog.self, keyScope: scope)
        try await keyring.persist(batch.newKeys)
        let short = try #require(batch.events.first)
        let key = try await keyring.readKey(scope: scope, version: 1)

        // The 16-byte form, as SECURITY.md §5.1 lays it out.
        let s = short.state
        try #require(s.count > 36 && s[3] & 0x08 != 0)
        let payload = try #require(try AES256GCM.open(s, from: 36, key: key.material, nonce: Array(s[24..<36]),
                                                      aadParts: [aad(header: Array(s[0..<36]), short)]))
        // The long form of the same header: bit 3 clear, L = 36, the scope's text.
        let header = [s[0], s[1], s[2], s[3] & ~0x08, 36] + Array(scope.utf8) + Array(s[20..<24]) + (try AES256GCM.randomNonce())
        var long = short
        long.state = try AES256GCM.seal(payload, key: key.material, nonce: Array(header[(header.count - 12)...]),
                                        aadParts: [aad(header: header, short)], prefix: header)
        return Fixture(master: master, keyring: keyring, mapper: mapper, scope: scope, key: key, short: short, long: long)
    }

    /// Associated data of an event (SECURITY.md §5.3).
    static func aad(header: [UInt8], _ stored: StoredEvent) -> [UInt8] {
        let u = stored.originatorID.uuid
        let id = [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
        let v = UInt64(stored.originatorVersion)
        let topic = Array(stored.topic.utf8)
        return Array("ESEV".utf8) + header + id + (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) }
            + [UInt8(topic.count >> 8), UInt8(topic.count & 0xFF)] + topic
    }

    @Test("A record naming a canonical UUID scope in the long form is read with that scope's key")
    func longFormIsRead() async throws {
        let f = try await Self.fixture()
        #expect(f.long.state[3] & 0x08 == 0)
        #expect(Int(f.long.state[4]) == 36)
        guard case .success(let (header, offset)) = StateHeader.parse(f.long.state) else {
            Issue.record("the long-form header did not parse")
            return
        }
        #expect(header.keyScope == f.scope)
        #expect(offset == 4 + 1 + 36 + 4 + 12)
        #expect(throws: Never.self) { try KeyScope.validate(f.scope) }

        #expect(try await f.mapper.decode(f.long, as: Dog.self).event == Self.event)
        #expect(try await f.mapper.decode(f.short, as: Dog.self).event == Self.event)
        // A keyring with an empty cache finds the key in the store by the same scope text.
        let fresh = Mapper(keyring: try await Keyring.open(store: f.keyring.store, masterKeys: [f.master]))
        #expect(try await fresh.decode(f.long, as: Dog.self).event == Self.event)
    }

    @Test("Moving a record's scope from one header form to the other fails authentication")
    func theFormIsAuthenticated() async throws {
        let f = try await Self.fixture()
        let s = f.short.state
        // The short record's ciphertext and tag under a long-form header with the same nonce.
        var shortAsLong = f.short
        shortAsLong.state = [s[0], s[1], s[2], s[3] & ~0x08, 36] + Array(f.scope.utf8) + Array(s[20..<36]) + Array(s[36...])
        guard case .success(let (header, _)) = StateHeader.parse(shortAsLong.state) else {
            Issue.record("the rewritten header did not parse")
            return
        }
        #expect(header.keyScope == f.scope)
        let integrityFailure = await #expect(throws: EventSourcingError.self) { try await f.mapper.decode(shortAsLong, as: Dog.self) }
        #expect(integrityFailure?.code == .integrityFailure)

        // The long record's ciphertext and tag under a 16-byte header with the same nonce.
        let l = f.long.state
        var longAsShort = f.long
        longAsShort.state = [l[0], l[1], l[2], l[3] | 0x08] + Array(s[4..<20]) + Array(l[41...])
        #expect(StateHeader.peekKeyScope(longAsShort.state) == f.scope)
        let integrityFailure2 = await #expect(throws: EventSourcingError.self) { try await f.mapper.decode(longAsShort, as: Dog.self) }
        #expect(integrityFailure2?.code == .integrityFailure)
    }

    @Test("One shred makes records of both forms unreadable")
    func oneShredCoversBothForms() async throws {
        let f = try await Self.fixture()
        _ = try await f.keyring.shred(scope: f.scope)
        for record in [f.short, f.long] {
            let error = await #expect(throws: EventSourcingError.self) { try await f.mapper.decode(record, as: Dog.self) }
            #expect(error?.code == .shredded)
            #expect(error?.keyScope == f.scope)
        }
    }
}
