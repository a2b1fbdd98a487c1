import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Master keys")
struct MasterKeyTests {
    /// 32 key bytes that include non-base64 bytes (0x00, 0x01, 0xFF...), so they read as raw.
    static let rawBytes: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 0xC5) }

    static func write(_ bytes: [UInt8], named name: String, in dir: URL) throws -> String {
        let url = dir.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    @Test("A key file holding exactly 32 raw bytes loads those bytes")
    func rawThirtyTwoByteFileLoads() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        #expect(Self.rawBytes.contains(where: { $0 >= 0x80 })) // so it cannot be mistaken for base64
        let path = try Self.write(Self.rawBytes, named: "raw.key", in: dir)
        let key = try MasterKey(contentsOfFile: path)
        #expect(key.material.count == 32)
        #expect(key.material.constantTimeEquals(TestSupport.material(Self.rawBytes)))
        #expect(key.kdf == nil)
        #expect(key.id == (try MasterKey(material: TestSupport.material(Self.rawBytes))).id)
    }

    @Test("A key file holding base64 text with a trailing newline loads the decoded bytes")
    func base64FileWithTrailingNewlineLoads() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let text = Data(Self.rawBytes).base64EncodedString()
        for (name, contents) in [("lf.key", text + "\n"), ("crlf.key", text + "\r\n"),
                                 ("padded.key", "  " + text + " \n\n"), ("bare.key", text)] {
            let path = try Self.write(Array(contents.utf8), named: name, in: dir)
            let key = try MasterKey(contentsOfFile: path)
            #expect(key.material.constantTimeEquals(TestSupport.material(Self.rawBytes)), "\(name)")
        }
    }

    @Test("A 32-character base64 text is decoded, not taken as 32 raw bytes")
    func thirtyTwoBase64CharactersAreNotRaw() throws {
        // 32 base64 characters decode to 24 bytes: not a valid key, and not silently raw.
        var text = Array(String(repeating: "QUJD", count: 8).utf8)
        #expect(text.count == 32)
        let error = #expect(throws: KeyManagementError.self) { try MasterKey(encoded: &text) }
        #expect(error?.code == .invalidKeyMaterial)
    }

    static let malformedFiles: [(String, [UInt8])] = [
        ("empty", []),
        ("31 raw bytes", [UInt8](repeating: 0xF0, count: 31)),
        ("33 raw bytes", [UInt8](repeating: 0xF0, count: 33)),
        ("64 raw bytes", [UInt8](repeating: 0x00, count: 64)),
        ("base64 of 16 bytes", base64Line(count: 16)),
        ("base64 of 31 bytes", base64Line(count: 31)),
        ("base64 of 33 bytes", base64Line(count: 33)),
        ("not base64", Array("this is not a key, just some text!!\n".utf8)),
    ]

    static func base64Line(count: Int) -> [UInt8] {
        Array((Data(repeating: 7, count: count).base64EncodedString() + "\n").utf8)
    }

    @Test("Key files of the wrong length or format are rejected with invalidKeyMaterial",
          arguments: malformedFiles)
    func wrongLengthFilesAreRejected(name: String, contents: [UInt8]) throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let path = try Self.write(contents, named: "bad.key", in: dir)
        let error = #expect(throws: KeyManagementError.self) { try MasterKey(contentsOfFile: path) }
        #expect(error?.code == .invalidKeyMaterial, "\(name)")
    }

    @Test("A missing key file is reported as keySourceUnavailable")
    func missingFileIsKeySourceUnavailable() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let path = dir.appendingPathComponent("does-not-exist.key").path
        let error = #expect(throws: KeyManagementError.self) { try MasterKey(contentsOfFile: path) }
        #expect(error?.code == .keySourceUnavailable)
    }

    @Test("MasterKey(material:) accepts only 32 bytes", arguments: [0, 16, 31, 33, 64])
    func materialMustBeThirtyTwoBytes(count: Int) {
        let error = #expect(throws: KeyManagementError.self) {
            try MasterKey(material: TestSupport.material([UInt8](repeating: 9, count: count)))
        }
        #expect(error?.code == .invalidKeyMaterial)
    }

    @Test("A base64 key in an environment variable loads the decoded bytes")
    func environmentVariableLoads() throws {
        let name = "KM_TEST_MASTER_KEY"
        let b64 = Data(Self.rawBytes).base64EncodedString()
        let key = try MasterKey(environmentVariable: name, environment: [name: b64, "OTHER": "x"])
        #expect(key.material.constantTimeEquals(TestSupport.material(Self.rawBytes)))
        let withNewline = try MasterKey(environmentVariable: name, environment: [name: b64 + "\n"])
        #expect(withNewline.id == key.id)
    }

    @Test("The process environment is read by default")
    func processEnvironmentIsTheDefault() throws {
        // No setenv here: changing the environment while another test spawns a child races
        // Foundation's Process.run, which copies the environment (a CI run crashed in its
        // memcpy). A variable the test process already has, set but not key material, shows
        // the default reads the process environment: refused as invalid key material, where an
        // environment without it (the next test) is keySourceUnavailable.
        let name = try #require(["PATH", "HOME", "PWD"].first { ProcessInfo.processInfo.environment[$0]?.isEmpty == false },
                                "the test process has none of PATH, HOME, PWD")
        let e = #expect(throws: KeyManagementError.self) { try MasterKey(environmentVariable: name) }
        #expect(e?.code == .invalidKeyMaterial)
        let absent = #expect(throws: KeyManagementError.self) { try MasterKey(environmentVariable: name, environment: [:]) }
        #expect(absent?.code == .keySourceUnavailable)
    }

    @Test("An unset or empty environment variable is keySourceUnavailable; a bad value is invalidKeyMaterial")
    func environmentVariableErrors() {
        let name = "KM_TEST_MASTER_KEY"
        let unset = #expect(throws: KeyManagementError.self) {
            try MasterKey(environmentVariable: name, environment: ["SOMETHING_ELSE": "x"])
        }
        #expect(unset?.code == .keySourceUnavailable)
        let empty = #expect(throws: KeyManagementError.self) {
            try MasterKey(environmentVariable: name, environment: [name: ""])
        }
        #expect(empty?.code == .keySourceUnavailable)
        let short = Data(repeating: 1, count: 16).base64EncodedString()
        let tooShort = #expect(throws: KeyManagementError.self) {
            try MasterKey(environmentVariable: name, environment: [name: short])
        }
        #expect(tooShort?.code == .invalidKeyMaterial)
        // The error names the variable, never its value.
        #expect(tooShort.map { !"\($0)".contains(short) && !$0.message.contains(short) } == true)
        let garbage = #expect(throws: KeyManagementError.self) {
            try MasterKey(environmentVariable: name, environment: [name: "not base64 at all!"])
        }
        #expect(garbage?.code == .invalidKeyMaterial)
    }

    @Test("A passphrase derives the same key with the same salt and a different key with another salt")
    func passphraseDerivationIsDeterministicPerSalt() throws {
        let salt1 = KDFParameters(salt: Array(repeating: 0xA5, count: 16), n: 1 << 10, r: 8, p: 1)
        let salt2 = KDFParameters(salt: Array(repeating: 0x5A, count: 16), n: 1 << 10, r: 8, p: 1)
        let a = try MasterKey(passphrase: "correct horse battery staple", parameters: salt1)
        let b = try MasterKey(passphrase: "correct horse battery staple", parameters: salt1)
        let c = try MasterKey(passphrase: "correct horse battery staple", parameters: salt2)
        let d = try MasterKey(passphrase: "correct horse battery stapler", parameters: salt1)
        var otherCost = salt1
        otherCost.n = 1 << 11
        let e = try MasterKey(passphrase: "correct horse battery staple", parameters: otherCost)

        #expect(a.material.count == 32)
        #expect(a.material.constantTimeEquals(b.material))
        #expect(a.id == b.id)
        #expect(!a.material.constantTimeEquals(c.material))
        #expect(a.id != c.id)
        #expect(!a.material.constantTimeEquals(d.material))
        #expect(!a.material.constantTimeEquals(e.material))
        #expect(a.kdf == salt1)
        #expect(c.kdf == salt2)
    }

    @Test("Passphrase derivation is scrypt (RFC 7914 test vector)")
    func passphraseDerivationMatchesRFC7914() throws {
        // RFC 7914 §12: scrypt(P="password", S="NaCl", N=1024, r=8, p=16, dkLen=64).
        // PBKDF2 output blocks are independent, so a 32-byte key is the first 32 bytes.
        let expected = try #require(TestSupport.bytes(hex:
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"))
        let params = KDFParameters(salt: Array("NaCl".utf8), n: 1024, r: 8, p: 16)
        let key = try MasterKey(passphrase: "password", parameters: params)
        #expect(key.material.constantTimeEquals(TestSupport.material(expected)))
    }

    @Test("An empty passphrase is rejected with invalidKeyMaterial")
    func emptyPassphraseIsRejected() {
        let good = KDFParameters(salt: Array(repeating: 1, count: 16), n: 1 << 10)
        let empty = #expect(throws: KeyManagementError.self) { try MasterKey(passphrase: "", parameters: good) }
        #expect(empty?.code == .invalidKeyMaterial)
    }

    /// Runs in a child process (an exit test): a memory-safety bug on this path would
    /// otherwise abort the whole test run instead of failing one test.
    @Test("Invalid scrypt parameters are rejected with invalidKeyMaterial without corrupting memory")
    func invalidScryptParametersAreRejectedSafely() async {
        await #expect(processExitsWith: .success) {
            let notPowerOfTwo = KDFParameters(salt: Array(repeating: 1, count: 16), n: 1000)
            for _ in 0..<200 {
                do {
                    _ = try MasterKey(passphrase: "pw", parameters: notPowerOfTwo)
                    exit(10) // derived a key from invalid parameters
                } catch let error as KeyManagementError where error.code == .invalidKeyMaterial {
                    // expected
                } catch {
                    exit(11) // wrong error code
                }
                // Churn small allocations so a corrupted allocator free list is noticed here.
                var keep: [KeyMaterial] = []
                for _ in 0..<8 { keep.append(TestSupport.material(Array(repeating: 0x5A, count: 32))) }
                keep.removeAll()
            }
        }
    }

    @Test("Random KDF parameters have a fresh 16-byte salt and the documented defaults")
    func randomKDFParameters() throws {
        let a = try KDFParameters.random()
        let b = try KDFParameters.random(n: 1 << 10)
        #expect(a.salt.count == 16)
        #expect(a.salt != b.salt)
        #expect(a.n == 1 << 15 && a.r == 8 && a.p == 1)
        #expect(b.n == 1 << 10)
        let decoded = try JSONDecoder().decode(KDFParameters.self, from: JSONEncoder().encode(a))
        #expect(decoded == a)
    }

    @Test("writeKeyFile creates a mode 0600 file that loads back as the same key")
    func writeKeyFileCreatesOwnerOnlyFile() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let path = dir.appendingPathComponent("master.key").path
        let key = try MasterKey.generate()
        try key.writeKeyFile(to: path)

        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o7777 == 0o600)
        #expect(st.st_mode & S_IFMT == S_IFREG)

        let contents = try #require(FileManager.default.contents(atPath: path))
        #expect(contents.count == 45) // 44 base64 characters and a newline
        #expect(contents.last == UInt8(ascii: "\n"))

        let loaded = try MasterKey(contentsOfFile: path)
        #expect(loaded.id == key.id)
        #expect(loaded.material.constantTimeEquals(key.material))
    }

    @Test("writeKeyFile refuses to overwrite an existing file and leaves it intact")
    func writeKeyFileRefusesToOverwrite() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let path = dir.appendingPathComponent("master.key").path
        let first = try MasterKey.generate()
        let second = try MasterKey.generate()
        try first.writeKeyFile(to: path)
        let error = #expect(throws: KeyManagementError.self) { try second.writeKeyFile(to: path) }
        #expect(error?.code == .keySourceUnavailable)
        #expect(try MasterKey(contentsOfFile: path).id == first.id)

        // Also for a pre-existing file that is not a key.
        let other = dir.appendingPathComponent("notes.txt").path
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: other))
        let error2 = #expect(throws: KeyManagementError.self) { try second.writeKeyFile(to: other) }
        #expect(error2?.code == .keySourceUnavailable)
        #expect(FileManager.default.contents(atPath: other) == Data("keep me".utf8))

        // And in a directory that does not exist.
        let nowhere = dir.appendingPathComponent("missing/master.key").path
        let error3 = #expect(throws: KeyManagementError.self) { try second.writeKeyFile(to: nowhere) }
        #expect(error3?.code == .keySourceUnavailable)
    }

    @Test("The same key bytes always get the same id, and different keys different ids")
    func idIsAFingerprintOfTheKey() throws {
        let a = try MasterKey(material: TestSupport.material(Self.rawBytes))
        let b = try MasterKey(material: TestSupport.material(Self.rawBytes))
        var other = Self.rawBytes
        other[31] ^= 1
        let c = try MasterKey(material: TestSupport.material(other))
        #expect(a.id == b.id)
        #expect(a.id != c.id)
        #expect(a.id.count == 16)
        #expect(a.id.allSatisfy { "0123456789abcdef".contains($0) })

        let generated = try MasterKey.generate()
        let copy = try MasterKey(material: TestSupport.material(TestSupport.copyBytes(generated.material)))
        #expect(copy.id == generated.id)
        #expect(try MasterKey.generate().id != generated.id)
        // The id is not the key itself (nor its leading bytes).
        let hex = TestSupport.copyBytes(generated.material).map { String(format: "%02x", $0) }.joined()
        #expect(!hex.hasPrefix(generated.id))
    }

    @Test("Descriptions of keys never contain the key bytes")
    func descriptionsAreRedacted() throws {
        let key = try MasterKey.generate()
        let b64 = key.base64EncodedKey()
        let raw = TestSupport.copyBytes(key.material)
        let hex = raw.map { String(format: "%02x", $0) }.joined()
        #expect(b64.count == 44)
        #expect(Data(base64Encoded: b64).map { [UInt8]($0) } == raw)

        let texts = [
            key.description, "\(key)", String(describing: key), String(reflecting: key),
            key.material.description, key.material.debugDescription, String(reflecting: key.material),
        ]
        for text in texts {
            #expect(!text.contains(b64))
            #expect(!text.contains(String(b64.prefix(16))))
            #expect(!text.lowercased().contains(hex))
            #expect(!text.lowercased().contains(String(hex.prefix(16))))
        }
        #expect(key.description.contains(key.id))
        #expect(key.material.description.contains("redacted"))
    }
}
