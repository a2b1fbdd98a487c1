import Foundation
import KeyManagement
import Testing

@Suite("Keyring")
struct KeyringTests {
    static let shredTime = Date(timeIntervalSince1970: 1_700_000_000)

    /// Mints, persists and returns the v1 key for `scope`.
    @discardableResult
    static func create(_ scope: String, in keyring: Keyring) async throws -> DataKey {
        let w = try await keyring.writeKey(for: scope)
        #expect(w.pending != nil, "scope \(scope) already had a key")
        try await keyring.persist([w])
        return w.key
    }

    // MARK: Opening

    @Test("Opening an empty store records a check for the first master key only")
    func openingAnEmptyStoreWritesOneCheck() async throws {
        let store = InMemoryKeyStore()
        let primary = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [primary])
        let checks = try await store.masterKeyChecks()
        #expect(checks.map(\.kekID) == [primary.id])
        #expect(checks.first?.kdf == nil)
        #expect(keyring.primaryMasterKeyID == primary.id)
        #expect(try await store.dataKeys(after: nil, limit: 100).isEmpty)
        // Reopening with the same key works.
        _ = try await Keyring.open(store: store, masterKeys: [primary])
        #expect(try await store.masterKeyChecks().count == 1)
    }

    @Test("Reopening a store with a different master key throws wrongMasterKey and writes nothing")
    func reopeningWithAnotherMasterKeyFails() async throws {
        let store = InMemoryKeyStore()
        let right = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [right])
        try await Self.create("alice", in: keyring)
        let checksBefore = try await store.masterKeyChecks()

        let wrong = try MasterKey.generate()
        let error = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [wrong])
        }
        #expect(error?.code == .wrongMasterKey)
        // A right key listed alongside an unknown one is refused too.
        let mixed = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [right, wrong])
        }
        #expect(mixed?.code == .wrongMasterKey)
        #expect(try await store.masterKeyChecks() == checksBefore)
        #expect(try await store.dataKeys(after: nil, limit: 100).count == 1)
    }

    @Test("A master key whose id matches but whose bytes do not is refused")
    func forgedCheckIsRefused() async throws {
        // A store whose check record claims the key's id but was sealed by another key.
        let store = InMemoryKeyStore()
        let real = try MasterKey.generate()
        let impostor = try MasterKey.generate()
        let other = InMemoryKeyStore()
        _ = try await Keyring.open(store: other, masterKeys: [impostor])
        var check = try #require(try await other.masterKeyChecks().first)
        check.kekID = real.id
        try await store.insertMasterKeyCheck(check)
        let error = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [real])
        }
        #expect(error?.code == .wrongMasterKey)
    }

    @Test("Opening with no master key is rejected")
    func openingWithoutKeysFails() async {
        let error = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [])
        }
        #expect(error?.code == .invalidKeyMaterial)
    }

    @Test("The scrypt parameters of a passphrase-derived master key are stored with its check")
    func kdfParametersAreStored() async throws {
        let store = InMemoryKeyStore()
        #expect(try await Keyring.storedKDFParameters(in: store) == nil)
        let params = KDFParameters(salt: Array(repeating: 3, count: 16), n: 1 << 10)
        let key = try MasterKey(passphrase: "open sesame", parameters: params)
        _ = try await Keyring.open(store: store, masterKeys: [key])
        let stored = try #require(try await Keyring.storedKDFParameters(in: store))
        #expect(stored == params)
        // The stored parameters derive the same key again, which opens the store.
        let again = try MasterKey(passphrase: "open sesame", parameters: stored)
        _ = try await Keyring.open(store: store, masterKeys: [again])
        let wrong = try MasterKey(passphrase: "open sesamE", parameters: stored)
        let error = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [wrong])
        }
        #expect(error?.code == .wrongMasterKey)
    }

    // MARK: Writing and reading

    @Test("writeKey mints a pending version 1 for a new scope and stores nothing by itself")
    func writeKeyMintsPendingVersionOne() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let w = try await keyring.writeKey(for: "alice")
        #expect(w.key.scope == "alice")
        #expect(w.key.version == 1)
        #expect(w.key.material.count == 32)
        let pending = try #require(w.pending)
        #expect(pending.scope == "alice")
        #expect(pending.version == 1)
        #expect(pending.kekID == master.id)
        #expect(pending.wrapped.count == AES256GCM.nonceLength + 32 + AES256GCM.tagLength)
        // The wrapped form does not contain the key bytes in clear.
        let raw = TestSupport.copyBytes(w.key.material)
        #expect(!Self.contains(pending.wrapped, raw))
        #expect(try await store.dataKeys(scope: "alice").isEmpty)
        // The key's description names scope and version only.
        let hex = raw.map { String(format: "%02x", $0) }.joined()
        #expect(w.key.description == "DataKey(scope: alice, version: 1)")
        #expect(!"\(w.key)".contains(hex))
        // Two different scopes get different keys.
        let other = try await keyring.writeKey(for: "bob")
        #expect(!other.key.material.constantTimeEquals(w.key.material))
    }

    @Test("After persist, writeKey returns the same key with nothing pending")
    func persistThenWriteKeyReturnsTheStoredKey() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let first = try await keyring.writeKey(for: "alice")
        try await keyring.persist([first])
        #expect(try await store.dataKeys(scope: "alice") == [try #require(first.pending)])

        let second = try await keyring.writeKey(for: "alice")
        #expect(second.pending == nil)
        #expect(second.key.version == 1)
        #expect(second.key.material.constantTimeEquals(first.key.material))

        // A fresh keyring on the same store (empty cache) unwraps the same key too.
        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        let third = try await fresh.writeKey(for: "alice")
        #expect(third.pending == nil)
        #expect(third.key.version == 1)
        #expect(third.key.material.constantTimeEquals(first.key.material))
        #expect(try await store.dataKeys(scope: "alice").count == 1)
    }

    @Test("readKey returns a persisted key equal to the one minted, from cache and from the store")
    func readKeyReturnsThePersistedKey() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let minted = try await Self.create("alice", in: keyring)
        let bob = try await Self.create("bob", in: keyring)

        let cached = try await keyring.readKey(scope: "alice", version: 1)
        #expect(cached.scope == "alice" && cached.version == 1)
        #expect(cached.material.constantTimeEquals(minted.material))

        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        let unwrapped = try await fresh.readKey(scope: "alice", version: 1)
        #expect(unwrapped.material.constantTimeEquals(minted.material))
        #expect(!unwrapped.material.constantTimeEquals(bob.material))
        #expect(try await fresh.readKey(scope: "bob", version: 1).material.constantTimeEquals(bob.material))
    }

    @Test("readKey of a missing version or scope throws keyNotFound")
    func readKeyOfMissingKeyIsUnavailable() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        try await Self.create("alice", in: keyring)
        for (scope, version) in [("alice", UInt32(2)), ("alice", 0), ("nobody", 1)] {
            let error = await #expect(throws: KeyManagementError.self) {
                try await keyring.readKey(scope: scope, version: version)
            }
            #expect(error?.code == .keyNotFound)
            #expect(error?.scope == scope)
            #expect(error?.keyVersion == version)
        }
        // An unpersisted pending key is not readable either.
        _ = try await keyring.writeKey(for: "carol")
        let error = await #expect(throws: KeyManagementError.self) {
            try await keyring.readKey(scope: "carol", version: 1)
        }
        #expect(error?.code == .keyNotFound)
    }

    @Test("Persisting a second version 1 for a scope fails with keyExists")
    func concurrentFirstWritesConflict() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let a = try await Keyring.open(store: store, masterKeys: [master])
        let b = try await Keyring.open(store: store, masterKeys: [master])
        let wa = try await a.writeKey(for: "alice")
        let wb = try await b.writeKey(for: "alice")
        #expect(wb.pending != nil)
        try await a.persist([wa])
        let error = await #expect(throws: KeyManagementError.self) { try await b.persist([wb]) }
        #expect(error?.code == .keyExists)
        // After invalidating, b sees the winner's key.
        b.invalidate(scope: "alice")
        let again = try await b.writeKey(for: "alice")
        #expect(again.pending == nil)
        #expect(again.key.material.constantTimeEquals(wa.key.material))
    }

    @Test("A tampered or transplanted wrapped key fails its integrity check")
    func tamperedWrappedKeysAreRejected() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        try await Self.create("alice", in: keyring)
        try await Self.create("bob", in: keyring)
        let alice = try #require(try await store.dataKeys(scope: "alice").first)
        var bob = try #require(try await store.dataKeys(scope: "bob").first)

        // Bob's record with Alice's wrapped bytes: the scope is bound into the AAD.
        bob.wrapped = alice.wrapped
        #expect(try await store.rewrapDataKey(bob, previousKEKID: master.id))
        // Alice's record with one flipped bit.
        var flipped = alice
        flipped.wrapped[20] ^= 0x04
        #expect(try await store.rewrapDataKey(flipped, previousKEKID: master.id))

        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        for scope in ["alice", "bob"] {
            let error = await #expect(throws: KeyManagementError.self) {
                try await fresh.readKey(scope: scope, version: 1)
            }
            #expect(error?.code == .authenticationFailed, "\(scope)")
        }
    }

    // MARK: Rotation

    @Test("rotate creates version 2; both versions stay readable and writeKey moves to version 2")
    func rotateCreatesANewVersion() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let v1 = try await Self.create("alice", in: keyring)

        #expect(try await keyring.rotate(scope: "alice") == 2)
        let v2 = try await keyring.readKey(scope: "alice", version: 2)
        #expect(v2.version == 2)
        #expect(!v2.material.constantTimeEquals(v1.material))
        #expect(try await keyring.readKey(scope: "alice", version: 1).material.constantTimeEquals(v1.material))

        let w = try await keyring.writeKey(for: "alice")
        #expect(w.pending == nil)
        #expect(w.key.version == 2)
        #expect(w.key.material.constantTimeEquals(v2.material))

        // A fresh keyring agrees.
        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        let fw = try await fresh.writeKey(for: "alice")
        #expect(fw.pending == nil)
        #expect(fw.key.version == 2)
        #expect(fw.key.material.constantTimeEquals(v2.material))
        #expect(try await fresh.readKey(scope: "alice", version: 1).material.constantTimeEquals(v1.material))

        // Rotating again, from either keyring, continues the sequence.
        #expect(try await fresh.rotate(scope: "alice") == 3)
        #expect(try await store.dataKeys(scope: "alice").map(\.version) == [1, 2, 3])
    }

    @Test("Rotating a scope that has no key throws keyNotFound and creates nothing")
    func rotatingAnUnknownScopeFails() async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let error = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: "ghost") }
        #expect(error?.code == .keyNotFound)
        #expect(try await store.dataKeys(scope: "ghost").isEmpty)
    }

    @Test("After rotateMasterKey only the new master key opens the store, and it reads every key")
    func rotateMasterKeyRetiresTheOldKey() async throws {
        let store = InMemoryKeyStore()
        let old = try MasterKey.generate()
        let new = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [old])

        var originals: [String: [DataKey]] = [:]
        for i in 0..<7 {
            let scope = "scope-\(i)"
            originals[scope] = [try await Self.create(scope, in: keyring)]
            if i % 3 == 0 {
                _ = try await keyring.rotate(scope: scope)
                originals[scope]!.append(try await keyring.readKey(scope: scope, version: 2))
            }
        }
        let total = originals.values.map(\.count).reduce(0, +)
        #expect(total == 10)

        // A small page size exercises the cursor.
        let progress = try await keyring.rotateMasterKey(to: new, pageSize: 3)
        #expect(progress.rewrapped == total)
        #expect(keyring.primaryMasterKeyID == new.id)

        let records = try await store.dataKeys(after: nil, limit: 1000)
        #expect(records.count == total)
        #expect(records.allSatisfy { $0.kekID == new.id })
        #expect(try await store.masterKeyChecks().map(\.kekID) == [new.id])

        let withOld = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [old])
        }
        #expect(withOld?.code == .wrongMasterKey)
        let withBoth = await #expect(throws: KeyManagementError.self) {
            try await Keyring.open(store: store, masterKeys: [new, old])
        }
        #expect(withBoth?.code == .wrongMasterKey)

        let reopened = try await Keyring.open(store: store, masterKeys: [new])
        for (scope, keys) in originals {
            for key in keys {
                let read = try await reopened.readKey(scope: scope, version: key.version)
                #expect(read.material.constantTimeEquals(key.material), "\(scope) v\(key.version)")
            }
            let w = try await reopened.writeKey(for: scope)
            #expect(w.pending == nil)
            #expect(w.key.version == UInt32(keys.count))
        }

        // The rotating keyring itself keeps working and wraps new keys under the new master key.
        let fresh = try await keyring.writeKey(for: "after-rotation")
        #expect(fresh.pending?.kekID == new.id)
        #expect(try await keyring.readKey(scope: "scope-1", version: 1).material
            .constantTimeEquals(originals["scope-1"]![0].material))
    }

    // MARK: Shredding

    @Test("Shredding destroys every version, leaves a tombstone and makes the scope unusable")
    func shredMakesTheScopeUnusable() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        try await Self.create("alice", in: keyring)
        _ = try await keyring.rotate(scope: "alice")
        _ = try await keyring.readKey(scope: "alice", version: 1) // make sure both are cached
        let bob = try await Self.create("bob", in: keyring)

        let tombstone = try await keyring.shred(scope: "alice", at: Self.shredTime)
        #expect(tombstone.scope == "alice")
        #expect(tombstone.shreddedAt == Self.shredTime)
        #expect(tombstone.destroyedVersions.sorted() == [1, 2])
        #expect(try await store.dataKeys(scope: "alice").isEmpty)
        #expect(try await store.tombstone(scope: "alice") == tombstone)

        for version: UInt32 in [1, 2, 3] {
            let error = await #expect(throws: KeyManagementError.self) {
                try await keyring.readKey(scope: "alice", version: version)
            }
            #expect(error?.code == .shredded)
            #expect(error?.scope == "alice")
            #expect(error?.shreddedAt == Self.shredTime)
        }
        let write = await #expect(throws: KeyManagementError.self) { try await keyring.writeKey(for: "alice") }
        #expect(write?.code == .shredded)
        #expect(write?.scope == "alice")
        #expect(write?.shreddedAt == Self.shredTime)
        let rotate = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: "alice") }
        #expect(rotate?.code == .shredded)
        #expect(rotate?.shreddedAt == Self.shredTime)
        let again = await #expect(throws: KeyManagementError.self) {
            try await keyring.shred(scope: "alice", at: Date())
        }
        #expect(again?.code == .shredded)
        #expect(again?.shreddedAt == Self.shredTime)
        // The first tombstone is kept, not replaced by the failed second shred.
        #expect(try await store.tombstones() == [tombstone])
        #expect(try await store.dataKeys(scope: "alice").isEmpty)

        // Other scopes are untouched.
        #expect(try await keyring.readKey(scope: "bob", version: 1).material.constantTimeEquals(bob.material))
        let bw = try await keyring.writeKey(for: "bob")
        #expect(bw.pending == nil)
        #expect(bw.key.material.constantTimeEquals(bob.material))
    }

    @Test("A keyring opened after the shred also refuses the scope, with the shred time")
    func shredIsSeenByOtherKeyrings() async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        try await Self.create("alice", in: keyring)
        try await Self.create("bob", in: keyring)
        _ = try await keyring.shred(scope: "alice", at: Self.shredTime)

        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        let read = await #expect(throws: KeyManagementError.self) { try await fresh.readKey(scope: "alice", version: 1) }
        #expect(read?.code == .shredded)
        #expect(read?.scope == "alice")
        #expect(read?.shreddedAt == Self.shredTime)
        // Asked twice, to cover the remembered-shred path as well.
        let readAgain = await #expect(throws: KeyManagementError.self) { try await fresh.readKey(scope: "alice", version: 1) }
        #expect(readAgain?.code == .shredded)
        #expect(readAgain?.shreddedAt == Self.shredTime)
        let write = await #expect(throws: KeyManagementError.self) { try await fresh.writeKey(for: "alice") }
        #expect(write?.code == .shredded)
        #expect(write?.shreddedAt == Self.shredTime)
        let rotate = await #expect(throws: KeyManagementError.self) { try await fresh.rotate(scope: "alice") }
        #expect(rotate?.code == .shredded)
        #expect(try await fresh.readKey(scope: "bob", version: 1).version == 1)
    }

    @Test("A scope shredded before it ever had a key can never get one")
    func shreddingAnUnusedScopeBlocksIt() async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let tombstone = try await keyring.shred(scope: "carol", at: Self.shredTime)
        #expect(tombstone.destroyedVersions.isEmpty)
        let write = await #expect(throws: KeyManagementError.self) { try await keyring.writeKey(for: "carol") }
        #expect(write?.code == .shredded)
        #expect(try await store.dataKeys(scope: "carol").isEmpty)
    }

    @Test("A key minted before its scope was shredded cannot be persisted afterwards")
    func pendingKeyCannotOutliveAShred() async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let pending = try await keyring.writeKey(for: "dave")
        _ = try await keyring.shred(scope: "dave", at: Self.shredTime)
        let error = await #expect(throws: KeyManagementError.self) { try await keyring.persist([pending]) }
        #expect(error?.code == .shredded)
        #expect(try await store.dataKeys(scope: "dave").isEmpty)
        let read = await #expect(throws: KeyManagementError.self) { try await keyring.readKey(scope: "dave", version: 1) }
        #expect(read?.code == .shredded)
    }

    // MARK: Scopes

    static let invalidScopes: [String] = [
        "",
        String(repeating: "a", count: 256),
        String(repeating: "é", count: 128), // 128 characters, but 256 UTF-8 bytes
        "alice\u{0}",
        "line\nbreak",
        "tab\there",
        "bell\u{7}",
        "del\u{7F}",
        "c1\u{85}control",
        "c1-last\u{9F}",
        "ünïcødé\u{1}", // an ASCII control character in a non-ASCII scope
    ]

    static let validScopes: [String] = [
        "a",
        String(repeating: "a", count: 255),
        String(repeating: "€", count: 85), // 255 UTF-8 bytes
        "aggregate:order/42",
        "with space",
        "ünïcødé-scope",
    ]

    @Test("KeyScope.validate rejects empty, over-long and control-character scopes",
          arguments: invalidScopes)
    func invalidScopesAreRejected(scope: String) {
        let error = #expect(throws: KeyManagementError.self) { try KeyScope.validate(scope) }
        #expect(error?.code == .invalidScope)
    }

    @Test("KeyScope.validate accepts 1–255 UTF-8 bytes without control characters",
          arguments: validScopes)
    func validScopesAreAccepted(scope: String) {
        #expect(throws: Never.self) { try KeyScope.validate(scope) }
    }

    @Test("writeKey, rotate and shred reject invalid scopes with invalidScope and change nothing",
          arguments: invalidScopes)
    func keyringRejectsInvalidScopes(scope: String) async throws {
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let write = await #expect(throws: KeyManagementError.self) { try await keyring.writeKey(for: scope) }
        #expect(write?.code == .invalidScope)
        let rotate = await #expect(throws: KeyManagementError.self) { try await keyring.rotate(scope: scope) }
        #expect(rotate?.code == .invalidScope)
        let shred = await #expect(throws: KeyManagementError.self) { try await keyring.shred(scope: scope) }
        #expect(shred?.code == .invalidScope)
        #expect(try await store.tombstones().isEmpty)
        #expect(try await store.dataKeys(after: nil, limit: 10).isEmpty)
    }

    @Test("The longest valid scope works end to end", arguments: [
        String(repeating: "a", count: 255), String(repeating: "€", count: 85),
    ])
    func longestScopeWorks(scope: String) async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let key = try await Self.create(scope, in: keyring)
        let fresh = try await Keyring.open(store: store, masterKeys: [master])
        #expect(try await fresh.readKey(scope: scope, version: 1).material.constantTimeEquals(key.material))
    }

    // MARK: Cache

    @Test("A small key cache evicts without losing or re-minting keys", arguments: [1, 2])
    func smallCacheKeepsEveryKey(capacity: Int) async throws {
        let store = InMemoryKeyStore()
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master], cacheCapacity: capacity)
        let scopes = (0..<5).map { "subject-\($0)" }

        var keys: [String: [DataKey]] = [:]
        for scope in scopes { keys[scope] = [try await Self.create(scope, in: keyring)] }
        // Rotate two scopes, interleaved with other traffic.
        for scope in [scopes[1], scopes[3]] {
            _ = try await keyring.writeKey(for: scopes[0])
            let v = try await keyring.rotate(scope: scope)
            #expect(v == 2)
            keys[scope]!.append(try await keyring.readKey(scope: scope, version: 2))
        }

        for round in 0..<3 {
            for scope in (round % 2 == 0 ? scopes : scopes.reversed()) {
                let expected = keys[scope]!
                let w = try await keyring.writeKey(for: scope)
                #expect(w.pending == nil, "round \(round): \(scope) was re-minted")
                #expect(w.key.version == expected.last!.version, "round \(round): \(scope)")
                #expect(w.key.material.constantTimeEquals(expected.last!.material), "round \(round): \(scope)")
                for key in expected {
                    let read = try await keyring.readKey(scope: scope, version: key.version)
                    #expect(read.scope == scope && read.version == key.version)
                    #expect(read.material.constantTimeEquals(key.material), "round \(round): \(scope) v\(key.version)")
                }
            }
        }
        // Nothing beyond the expected versions was created.
        let stored = try await store.dataKeys(after: nil, limit: 100)
        #expect(stored.count == 7)
        #expect(Set(stored.map(\.scope)) == Set(scopes))
    }

    @Test("A non-positive cache capacity still works")
    func zeroCacheCapacityWorks() async throws {
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()],
                                             cacheCapacity: 0)
        let a = try await Self.create("a", in: keyring)
        let b = try await Self.create("b", in: keyring)
        #expect(try await keyring.readKey(scope: "a", version: 1).material.constantTimeEquals(a.material))
        #expect(try await keyring.writeKey(for: "b").key.material.constantTimeEquals(b.material))
        #expect(try await keyring.writeKey(for: "a").pending == nil)
    }

    // MARK: Helpers

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        for i in 0...(haystack.count - needle.count) where Array(haystack[i..<(i + needle.count)]) == needle {
            return true
        }
        return false
    }
}
