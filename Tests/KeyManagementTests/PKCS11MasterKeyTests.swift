import Foundation
@testable import KeyManagement
import Testing

/// PKCS#11 master keys against SoftHSM2, for real (see ``SoftHSMFixture``).
@Suite("PKCS#11 master key", .enabled(if: SoftHSMFixture.available))
struct PKCS11MasterKeyTests {
    static func snapshot(_ store: InMemoryKeyStore) async throws -> ([MasterKeyCheck], [WrappedDataKey]) {
        (try await store.masterKeyChecks(), try await store.dataKeys(after: nil, limit: 10_000))
    }

    @Test("A token key opens a store and wraps data keys inside the token; reloaded from its URI it has the same id and opens them")
    func roundTrip() async throws {
        let t = try SoftHSMFixture.require()
        let kek = try SoftHSMFixture.newKey("roundtrip")
        #expect(kek.id.hasPrefix("p11-") && kek.id.count == 16)
        #expect(kek.kind == "pkcs11" && kek.label == "roundtrip" && kek.tokenLabel == t.main)
        #expect(!kek.description.contains(t.pin))
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [kek])
        var created: [DataKey] = []
        for s in ["alice", "bob"] { created.append(try await KeyringTests.create(s, in: keyring)) }
        let wrapped = try await store.dataKeys(after: nil, limit: 100)
        // iv | key | tag, like a local key's.
        #expect(wrapped.allSatisfy { $0.kekID == kek.id && $0.wrapped.count == 12 + 32 + 16 })

        let again = try PKCS11MasterKey(uri: SoftHSMFixture.uri(token: t.main, object: "roundtrip"))
        #expect(again.id == kek.id)
        let reopened = try await Keyring.open(store: store, masterKeys: [again])
        for k in created {
            #expect(try await reopened.readKey(scope: k.scope, version: k.version).material.constantTimeEquals(k.material))
        }
        // Tampered bytes or another associated data do not authenticate: nil, not an error.
        var sealed = try again.wrap(Array(repeating: 5, count: 32), aad: [1])
        #expect(try again.unwrap(sealed, aad: [2]) == nil)
        sealed[20] ^= 1
        #expect(try again.unwrap(sealed, aad: [1]) == nil)
        #expect(try again.unwrap([1, 2, 3], aad: [1]) == nil)
    }

    @Test("Another token key with the same label is the wrong master key; nothing is written")
    func otherKeySameLabel() async throws {
        let store = InMemoryKeyStore()
        let a = try SoftHSMFixture.newKey("same-label-a")
        let keyring = try await Keyring.open(store: store, masterKeys: [a])
        try await KeyringTests.create("alice", in: keyring)
        let before = try await Self.snapshot(store)
        // A local key, and a token key under another label.
        let b = try SoftHSMFixture.newKey("same-label-b")
        for wrong in [try MasterKey.generate(), b] as [any KeyEncryptionKey] {
            let e = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [wrong]) }
            #expect(e?.code == .wrongMasterKey)
        }
        let after = try await Self.snapshot(store)
        #expect(after.0 == before.0 && after.1 == before.1)
        // Creating a key whose label exists is refused.
        let e = #expect(throws: KeyManagementError.self) { try SoftHSMFixture.newKey("same-label-a") }
        #expect(e?.code == .keyExists)
    }

    @Test("Creating a key whose label several token keys already have is refused (a failed look-up is not 'no such key'); nothing is created")
    func generateRefusesWhenSeveralKeysHaveTheLabel() throws {
        let t = try SoftHSMFixture.require()
        let module = try Module.load(SoftHSMFixture.modulePath)
        let uri = try PKCS11URI(parsing: SoftHSMFixture.uri(token: t.main, object: "twin").replacingOccurrences(of: "object=twin", with: "object=twin;id=%7A%03"))
        let (slot, token) = try module.findToken(uri)
        var pinBytes = Array(t.pin.utf8)
        let s = try module.openSession(slot: slot, pin: KeyMaterial(consuming: &pinBytes), token: token, readWrite: true)
        defer { module.closeSession(s) }
        // Two keys labelled "twin" (made behind generate's back, as another tool could).
        try module.generateAES256(s, label: "twin", id: [0x7A, 1], token: token)
        try module.generateAES256(s, label: "twin", id: [0x7A, 2], token: token)
        #expect(try module.searchKeys(s, uri: PKCS11URI(object: "twin"), token: token).found == 2)
        var pin: [UInt8]? = nil
        let e = #expect(throws: KeyManagementError.self) { try PKCS11MasterKey.generate(uri: uri, pin: &pin) }
        #expect(e?.code == .keyExists)
        #expect(try module.searchKeys(s, uri: PKCS11URI(id: [0x7A, 3]), token: token).found == 0, "a third 'twin' key was created")
    }

    @Test("Rotation between kinds: local → PKCS#11 → helper command → local; every data key opens at each step, and only with the new key")
    func rotationAcrossKinds() async throws {
        let h = try CommandMasterKeyTests.Helper()
        defer { h.remove() }
        let store = InMemoryKeyStore()
        let local = try MasterKey.generate()
        var keyring = try await Keyring.open(store: store, masterKeys: [local])
        var created: [DataKey] = []
        for i in 0..<25 { created.append(try await KeyringTests.create("subject-\(i)", in: keyring)) }
        _ = try await keyring.rotate(scope: "subject-0")

        let chain: [any KeyEncryptionKey] = [try SoftHSMFixture.newKey("rotation"), try h.start(), try MasterKey.generate()]
        var previous: any KeyEncryptionKey = local
        for next in chain {
            let before = try await store.dataKeys(after: nil, limit: 100)
            let result = try await keyring.rotateMasterKey(to: next, pageSize: 7)
            if next is PKCS11MasterKey || next is MasterKey {
                // A rewrap between a local and a token key keeps every row's size (SQLite
                // rewraps in place, leaving no copy, only then): ids of 16 characters, 60 bytes.
                let after = try await store.dataKeys(after: nil, limit: 100)
                #expect(after.map(\.wrapped.count) == before.map(\.wrapped.count))
                #expect(after.allSatisfy { $0.kekID.utf8.count == 16 && $0.wrapped.count == 60 })
            }
            #expect(result.rewrapped == 26)
            #expect(try await store.masterKeyChecks().map(\.kekID) == [next.id])
            #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == next.id })
            let e = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [previous]) }
            #expect(e?.code == .wrongMasterKey)
            keyring = try await Keyring.open(store: store, masterKeys: [next])
            for k in created {
                #expect(try await keyring.readKey(scope: k.scope, version: k.version).material.constantTimeEquals(k.material))
            }
            _ = try await keyring.readKey(scope: "subject-0", version: 2)
            previous = next
        }
    }

    @Test("A wrong PIN, a missing key, an unknown token, a bad module path, a pin-value: each its own typed error naming no PIN")
    func badInput() throws {
        let t = try SoftHSMFixture.require()
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let wrongPinFile = dir.appendingPathComponent("wrong.pin").path
        try Data("0000-wrong-pin\n".utf8).write(to: URL(fileURLWithPath: wrongPinFile))
        // The PIN-test token: no other test logs in to it, so a wrong PIN reaches the token.
        var rightPin: [UInt8]? = Array(t.pin.utf8)
        try PKCS11MasterKey.generate(uri: PKCS11URI(parsing: SoftHSMFixture.uri(token: t.pinTest, object: "pin-key")), pin: &rightPin)
        #expect(rightPin.map { $0.allSatisfy { $0 == 0 } } == true, "the PIN given is zeroized")

        let wrongPIN = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: SoftHSMFixture.uri(token: t.pinTest, object: "pin-key", pinFile: wrongPinFile))
        }
        #expect(wrongPIN?.code == .keySourceFailed)
        #expect(wrongPIN?.message.contains("PIN for PKCS#11 token '\(t.pinTest)' is incorrect") == true)

        let missingKey = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: SoftHSMFixture.uri(token: t.main, object: "no-such-key"))
        }
        #expect(missingKey?.code == .keySourceFailed)
        #expect(missingKey?.message.contains("has no AES key 'no-such-key'") == true)

        let unknownToken = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: SoftHSMFixture.uri(token: "no-such-token", object: "x"))
        }
        #expect(unknownToken?.code == .keySourceFailed)
        #expect(unknownToken?.message.contains("no PKCS#11 token 'no-such-token'") == true)

        let badModule = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: "pkcs11:token=\(t.main);object=x?module-path=\(dir.path)/missing.so&pin-source=file:\(t.pinFile)")
        }
        #expect(badModule?.code == .keySourceUnavailable)
        // A shared library that is not a PKCS#11 module.
        let notModule = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: "pkcs11:token=\(t.main);object=x?module-path=/usr/lib/x86_64-linux-gnu/libz.so.1")
        }
        #expect(notModule?.code == .keySourceUnavailable)

        let pinValue = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: "pkcs11:token=\(t.main);object=x?pin-value=9876-typed&module-path=\(SoftHSMFixture.modulePath)")
        }
        #expect(pinValue?.code == .invalidArgument)
        #expect(pinValue?.message.contains("9876") == false)

        let missingPinFile = #expect(throws: KeyManagementError.self) {
            try PKCS11MasterKey(uri: SoftHSMFixture.uri(token: t.main, object: "x", pinFile: dir.path + "/none"))
        }
        #expect(missingPinFile?.code == .keySourceUnavailable)
        for e in [wrongPIN, missingKey, unknownToken, badModule, notModule, missingPinFile] {
            #expect(e?.description.contains(t.pin) == false)
        }
    }
}

@Suite("PKCS#11 URI")
struct PKCS11URITests {
    @Test("RFC 7512 attributes are read and percent-decoded")
    func parses() throws {
        let u = try PKCS11URI(parsing: "pkcs11:token=My%20Token;object=es-master;id=%01%ff;type=secret-key;serial=42?module-path=/usr/lib/m.so&pin-source=file:///run/pin")
        #expect(u.token == "My Token" && u.object == "es-master" && u.id == [1, 255] && u.serial == "42")
        #expect(u.modulePath == "/usr/lib/m.so" && u.pinSource == "/run/pin")
        #expect(u.description == "pkcs11:token=My Token;serial=42;object=es-master;id=%01%ff")
    }

    @Test("Malformed URIs are refused with invalidArgument", arguments: [
        "token=x;object=y", "pkcs11:token=x", "pkcs11:token=x;object=y;object=z", "pkcs11:object=%zz",
        "pkcs11:object=y;colour=blue", "pkcs11:object=y;type=private", "pkcs11:object=y?pin-source=relative",
        "pkcs11:object=y;slot-id=abc", "pkcs11:object=y?pin-value=1234",
        // Found by fuzz-pkcs11-uri: the bytes of "pin-value" with a combining acute after the
        // "e" are another character sequence, which a character-wise check let through.
        "pkcs11:object=pin-value\u{0301}", "pkcs11:object=y?pin-value\u{0301}=1234",
    ])
    func refuses(_ text: String) {
        let e = #expect(throws: KeyManagementError.self) { try PKCS11URI(parsing: text) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("1234") == false)
    }
}
