import Foundation
import KeyManagement
import Testing

/// scrypt parameters are read back from the key store, so a tampered store chooses them.
/// They are bounded and checked before scrypt runs.
@Suite("scrypt parameter bounds")
struct KDFBoundsTests {
    static let salt = [UInt8](repeating: 0xA5, count: 16)

    static let accepted: [(String, KDFParameters)] = [
        ("the default", KDFParameters(salt: salt)),
        ("RFC 7914's vector", KDFParameters(salt: Array("NaCl".utf8), n: 1024, r: 8, p: 16)),
        ("n = 2", KDFParameters(salt: salt, n: 2, r: 1, p: 1)),
        ("the largest n random(n:) could derive with", KDFParameters(salt: salt, n: 1 << 19, r: 8, p: 1)),
        ("n at its bound", KDFParameters(salt: salt, n: KDFParameters.maxN, r: 4, p: 1)),
        ("r at its bound", KDFParameters(salt: salt, n: 1 << 10, r: KDFParameters.maxR, p: 1)),
        ("p at its bound", KDFParameters(salt: salt, n: 1 << 10, r: 8, p: KDFParameters.maxP)),
        ("memory at its bound", KDFParameters(salt: salt, n: 1 << 17, r: 32, p: 1)),
        ("work at its bound", KDFParameters(salt: salt, n: 1 << 17, r: 8, p: 16)),
        ("the longest salt", KDFParameters(salt: Array(repeating: 1, count: KDFParameters.maxSaltLength))),
        ("an empty salt", KDFParameters(salt: [])),
    ]

    static let refused: [(String, KDFParameters, KeyManagementError.Code)] = [
        ("n not a power of two", KDFParameters(salt: salt, n: 1000), .invalidKeyMaterial),
        ("n = 0", KDFParameters(salt: salt, n: 0), .invalidKeyMaterial),
        ("n = 1", KDFParameters(salt: salt, n: 1), .invalidKeyMaterial),
        ("r = 0", KDFParameters(salt: salt, n: 1 << 10, r: 0, p: 1), .invalidKeyMaterial),
        ("p = 0", KDFParameters(salt: salt, n: 1 << 10, r: 8, p: 0), .invalidKeyMaterial),
        ("n above its bound", KDFParameters(salt: salt, n: KDFParameters.maxN << 1, r: 1, p: 1), .limitExceeded),
        ("n = 2^63", KDFParameters(salt: salt, n: 1 << 63, r: 1, p: 1), .limitExceeded),
        ("r above its bound", KDFParameters(salt: salt, n: 1 << 10, r: KDFParameters.maxR + 1, p: 1), .limitExceeded),
        ("r = UInt64.max", KDFParameters(salt: salt, n: 1 << 10, r: .max, p: 1), .limitExceeded),
        ("p above its bound", KDFParameters(salt: salt, n: 1 << 10, r: 8, p: KDFParameters.maxP + 1), .limitExceeded),
        ("p = 2^40", KDFParameters(salt: salt, n: 1 << 16, r: 8, p: 1 << 40), .limitExceeded),
        ("1 GiB of memory", KDFParameters(salt: salt, n: 1 << 20, r: 8, p: 1), .limitExceeded),
        ("work above its bound", KDFParameters(salt: salt, n: 1 << 17, r: 16, p: 16), .limitExceeded),
        ("a salt one byte too long",
         KDFParameters(salt: Array(repeating: 1, count: KDFParameters.maxSaltLength + 1)), .limitExceeded),
    ]

    @Test("Parameters within every bound are accepted", arguments: accepted)
    func withinBoundsAreAccepted(name: String, parameters: KDFParameters) {
        #expect(throws: Never.self, "\(name)") { try parameters.validate() }
    }

    @Test("Malformed parameters are invalidKeyMaterial and costly ones limitExceeded", arguments: refused)
    func beyondBoundsAreRefused(name: String, parameters: KDFParameters, code: KeyManagementError.Code) {
        let error = #expect(throws: KeyManagementError.self, "\(name)") { try parameters.validate() }
        #expect(error?.code == code, "\(name)")
    }

    @Test("The error names the parameters and the bound they exceed")
    func errorsNameTheBound() {
        let memory = #expect(throws: KeyManagementError.self) {
            try KDFParameters(salt: Self.salt, n: 1 << 20, r: 8, p: 1).validate()
        }
        #expect(memory?.message.contains("need 1024 MiB, more than 512 MiB") == true)
        let work = #expect(throws: KeyManagementError.self) {
            try KDFParameters(salt: Self.salt, n: 1 << 17, r: 16, p: 16).validate()
        }
        #expect(work?.message.contains("n·r·p = \(1 << 25), more than \(1 << 24)") == true)
    }

    /// Without the bounds, OpenSSL accepts the first and runs it about 128 times as long as the
    /// default (over ten seconds here); with p = 2^16 instead of 32 it would run for hours.
    @Test("A passphrase is not run through scrypt with costly parameters",
          arguments: [KDFParameters(salt: salt, n: 1 << 17, r: 8, p: 32), KDFParameters(salt: salt, n: 1 << 16, r: 8, p: 1 << 20),
                      KDFParameters(salt: salt, n: 1 << 19, r: 16, p: 1)])
    func passphraseDerivationRefusesCostlyParameters(parameters: KDFParameters) {
        let error = #expect(throws: KeyManagementError.self) {
            try MasterKey(passphrase: "correct horse battery staple", parameters: parameters)
        }
        #expect(error?.code == .limitExceeded)
    }

    @Test("storedKDFParameters refuses parameters a tampered store holds, naming the master key, before any passphrase")
    func storedParametersAreChecked() async throws {
        let store = InMemoryKeyStore()
        let good = KDFParameters(salt: Self.salt, n: 1 << 10)
        let key = try MasterKey(passphrase: "open sesame", parameters: good)
        _ = try await Keyring.open(store: store, masterKeys: [key])
        #expect(try await Keyring.storedKDFParameters(in: store) == good)

        // An attacker with write access to the store replaces the parameters.
        var check = try #require(try await store.masterKeyChecks().first)
        try await store.deleteMasterKeyCheck(kekID: check.kekID)
        check.kdf = KDFParameters(salt: Self.salt, n: 1 << 16, r: 8, p: 1 << 20)
        try await store.insertMasterKeyCheck(check)

        let error = await #expect(throws: KeyManagementError.self) { try await Keyring.storedKDFParameters(in: store) }
        #expect(error?.code == .limitExceeded)
        #expect(error?.message.contains(check.kekID) == true)
    }

    @Test("A master key cannot carry parameters beyond the bounds into a check record")
    func masterKeyRefusesCostlyParameters() throws {
        let material = try KeyMaterial(randomCount: 32)
        let error = #expect(throws: KeyManagementError.self) {
            try MasterKey(material: material, kdf: KDFParameters(salt: Self.salt, n: 1 << 16, r: 8, p: 1 << 20))
        }
        #expect(error?.code == .limitExceeded)
        #expect(try MasterKey(material: material, kdf: KDFParameters(salt: Self.salt)).kdf?.n == 1 << 15)
    }

    @Test("KDFParameters.random checks n before drawing a salt")
    func randomChecksN() throws {
        #expect(try KDFParameters.random(n: 1 << 19).n == 1 << 19)
        let tooBig = #expect(throws: KeyManagementError.self) { try KDFParameters.random(n: KDFParameters.maxN << 1) }
        #expect(tooBig?.code == .limitExceeded)
        let malformed = #expect(throws: KeyManagementError.self) { try KDFParameters.random(n: 3) }
        #expect(malformed?.code == .invalidKeyMaterial)
    }
}
