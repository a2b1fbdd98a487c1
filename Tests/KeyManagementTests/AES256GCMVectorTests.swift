import Foundation
import KeyManagement
import Testing

/// One NIST CAVP AES-GCM test case, parsed from a `.rsp` fixture.
struct GCMVector: Sendable, CustomTestStringConvertible {
    var file: String
    /// The section's bracketed parameters, e.g. `["Keylen": 256, "IVlen": 96, ...]`.
    var parameters: [String: Int]
    var count: Int
    var key: [UInt8]
    var iv: [UInt8]
    var aad: [UInt8]
    var ct: [UInt8]
    var tag: [UInt8]
    /// The plaintext; nil for a decrypt vector marked `FAIL`.
    var pt: [UInt8]?
    var isFailure: Bool

    var testDescription: String {
        "\(file) PTlen=\(parameters["PTlen"] ?? -1) AADlen=\(parameters["AADlen"] ?? -1) Count=\(count)"
            + (isFailure ? " FAIL" : "")
    }
}

enum GCMVectorFile {
    static let encrypt = "gcmEncryptExtIV256-96-128.rsp"
    static let decrypt = "gcmDecrypt256-96-128.rsp"

    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    static func url(_ name: String) throws -> URL {
        guard let dir = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw ParseError(description: "the Fixtures resource directory is missing from the test bundle")
        }
        return dir.appendingPathComponent(name)
    }

    static func load(_ name: String) throws -> [GCMVector] {
        let text = try String(contentsOf: url(name), encoding: .utf8)
        return try parse(text, file: name)
    }

    /// Parses the CAVP `.rsp` format: `#` comments, `[Name = value]` section headers,
    /// blank-line separated records of `Name = hex` lines, and a bare `FAIL` line.
    static func parse(_ text: String, file: String) throws -> [GCMVector] {
        var vectors: [GCMVector] = []
        var parameters: [String: Int] = [:]
        var sectionOpen = false
        var fields: [String: String] = [:]
        var fail = false
        var lineNumber = 0

        func flush() throws {
            defer { fields = [:]; fail = false }
            guard !fields.isEmpty || fail else { return }
            func field(_ name: String) throws -> [UInt8] {
                guard let hex = fields[name] else {
                    throw ParseError(description: "\(file):\(lineNumber): record lacks \(name)")
                }
                guard let b = TestSupport.bytes(hex: hex) else {
                    throw ParseError(description: "\(file):\(lineNumber): \(name) is not hex")
                }
                return b
            }
            guard let countText = fields["Count"], let count = Int(countText) else {
                throw ParseError(description: "\(file):\(lineNumber): record lacks Count")
            }
            let pt: [UInt8]? = fail ? nil : try field("PT")
            if fail, fields["PT"] != nil {
                throw ParseError(description: "\(file):\(lineNumber): record has both PT and FAIL")
            }
            vectors.append(GCMVector(file: file, parameters: parameters, count: count,
                                     key: try field("Key"), iv: try field("IV"), aad: try field("AAD"),
                                     ct: try field("CT"), tag: try field("Tag"), pt: pt, isFailure: fail))
        }

        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.hasPrefix("#") { continue }
            if line.isEmpty { try flush(); continue }
            if line.hasPrefix("[") {
                try flush()
                guard line.hasSuffix("]") else {
                    throw ParseError(description: "\(file):\(lineNumber): malformed section header")
                }
                // A new run of headers after records starts a new section.
                if !sectionOpen { parameters = [:]; sectionOpen = true }
                let inner = line.dropFirst().dropLast()
                let parts = inner.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, let value = Int(parts[1]) else {
                    throw ParseError(description: "\(file):\(lineNumber): malformed section header")
                }
                parameters[parts[0]] = value
                continue
            }
            sectionOpen = false
            if line == "FAIL" { fail = true; continue }
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else {
                throw ParseError(description: "\(file):\(lineNumber): unexpected line")
            }
            guard fields[parts[0]] == nil else {
                throw ParseError(description: "\(file):\(lineNumber): duplicate \(parts[0])")
            }
            fields[parts[0]] = parts[1]
        }
        try flush()
        return vectors
    }

    static func encryptVectors() throws -> [GCMVector] { try load(encrypt) }
    static func decryptVectors() throws -> [GCMVector] { try load(decrypt) }
}

@Suite("AES-256-GCM against NIST CAVP vectors")
struct AES256GCMVectorTests {
    @Test("The fixtures hold the expected filtered vector sets")
    func fixturesHoldTheExpectedVectors() throws {
        let enc = try GCMVectorFile.encryptVectors()
        let dec = try GCMVectorFile.decryptVectors()
        // 25 (PTlen, AADlen) sections; 3 vectors each, plus one FAIL where the first 3 had none.
        #expect(enc.count == 75)
        #expect(dec.count == 78)
        #expect(enc.allSatisfy { !$0.isFailure })
        #expect(dec.filter(\.isFailure).count == 37)

        let encSections = Set(enc.map { [$0.parameters["PTlen"] ?? -1, $0.parameters["AADlen"] ?? -1] })
        let decSections = Set(dec.map { [$0.parameters["PTlen"] ?? -1, $0.parameters["AADlen"] ?? -1] })
        #expect(encSections.count == 25)
        #expect(decSections == encSections)
        // Every decrypt section has at least one authentication-failure case.
        for section in decSections {
            let inSection = dec.filter { [$0.parameters["PTlen"] ?? -1, $0.parameters["AADlen"] ?? -1] == section }
            let hasFailure = inSection.contains { $0.isFailure }
            #expect(hasFailure, "section \(section) has no FAIL vector")
        }
    }

    @Test("Every vector matches its section's declared key, IV, tag, text and AAD lengths")
    func vectorsMatchTheirSectionParameters() throws {
        for v in try GCMVectorFile.encryptVectors() + GCMVectorFile.decryptVectors() {
            #expect(v.parameters["Keylen"] == 256, "\(v.testDescription)")
            #expect(v.parameters["IVlen"] == 96, "\(v.testDescription)")
            #expect(v.parameters["Taglen"] == 128, "\(v.testDescription)")
            #expect(v.key.count * 8 == 256, "\(v.testDescription)")
            #expect(v.iv.count * 8 == 96, "\(v.testDescription)")
            #expect(v.tag.count * 8 == 128, "\(v.testDescription)")
            #expect(v.ct.count * 8 == v.parameters["PTlen"], "\(v.testDescription)")
            #expect(v.aad.count * 8 == v.parameters["AADlen"], "\(v.testDescription)")
            if let pt = v.pt { #expect(pt.count == v.ct.count, "\(v.testDescription)") }
        }
    }

    @Test("Sealing with the vector's key, IV and AAD produces exactly CT || Tag",
          arguments: try GCMVectorFile.encryptVectors())
    func sealProducesTheExpectedCiphertextAndTag(_ v: GCMVector) throws {
        let pt = try #require(v.pt)
        let sealed = try AES256GCM.seal(pt, key: TestSupport.material(v.key), nonce: v.iv, aad: v.aad)
        #expect(sealed == v.ct + v.tag)
    }

    @Test("Opening an encrypt vector's CT || Tag returns its plaintext",
          arguments: try GCMVectorFile.encryptVectors())
    func openInvertsEncryptVectors(_ v: GCMVector) throws {
        let opened = try AES256GCM.open(v.ct + v.tag, key: TestSupport.material(v.key), nonce: v.iv, aad: v.aad)
        #expect(opened == v.pt)
    }

    @Test("Opening a decrypt vector returns its plaintext, or fails authentication for FAIL vectors",
          arguments: try GCMVectorFile.decryptVectors())
    func openMatchesDecryptVectors(_ v: GCMVector) throws {
        let key = TestSupport.material(v.key)
        if let pt = v.pt {
            let opened = try AES256GCM.open(v.ct + v.tag, key: key, nonce: v.iv, aad: v.aad)
            #expect(opened == pt)
        } else {
            let error = #expect(throws: KeyManagementError.self) {
                try AES256GCM.open(v.ct + v.tag, key: key, nonce: v.iv, aad: v.aad)
            }
            #expect(error?.code == .authenticationFailed)
        }
    }

    @Test("The multi-part AAD and prefix/offset API agrees with the vectors",
          arguments: try GCMVectorFile.encryptVectors().filter { $0.aad.count >= 2 })
    func aadPartsAndPrefixAgreeWithVectors(_ v: GCMVector) throws {
        let key = TestSupport.material(v.key)
        let pt = try #require(v.pt)
        let split = v.aad.count / 3
        let parts = [Array(v.aad[..<split]), [], Array(v.aad[split...])]
        let prefix: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF, 0x01]
        let sealed = try AES256GCM.seal(pt, key: key, nonce: v.iv, aadParts: parts, prefix: prefix)
        #expect(sealed == prefix + v.ct + v.tag)
        let opened = try AES256GCM.open(sealed, from: prefix.count, key: key, nonce: v.iv, aadParts: parts)
        #expect(opened == pt)
        // The parts are concatenated, so a different split of the same bytes verifies too...
        let resplit = [Array(v.aad[..<1]), Array(v.aad[1...])]
        #expect(try AES256GCM.open(sealed, from: prefix.count, key: key, nonce: v.iv, aadParts: resplit) == pt)
        // ...but dropping a part does not.
        #expect(try AES256GCM.open(sealed, from: prefix.count, key: key, nonce: v.iv, aadParts: [parts[2]]) == nil)
    }
}

@Suite("AES-256-GCM input checks and tamper detection")
struct AES256GCMBehaviourTests {
    static let key = TestSupport.material((0..<32).map { UInt8($0) &* 7 &+ 3 })
    static let nonce: [UInt8] = Array(0x10..<0x1C)
    static let plaintext = Array("a record that must not be altered unnoticed".utf8)
    static let aad = Array("scope=alice;version=1".utf8)

    @Test("Nonces that are not 12 bytes are rejected with invalidNonce", arguments: [0, 8, 11, 13, 16])
    func nonStandardNonceLengthsAreRejected(length: Int) throws {
        let nonce = [UInt8](repeating: 0x42, count: length)
        let sealError = #expect(throws: KeyManagementError.self) {
            try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: nonce, aad: Self.aad)
        }
        #expect(sealError?.code == .invalidNonce)

        // A well-formed ciphertext under a valid nonce must still be refused with the bad nonce.
        let sealed = try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: Self.nonce, aad: Self.aad)
        let openError = #expect(throws: KeyManagementError.self) {
            try AES256GCM.open(sealed, key: Self.key, nonce: nonce, aad: Self.aad)
        }
        #expect(openError?.code == .invalidNonce)

        let partsError = #expect(throws: KeyManagementError.self) {
            try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: nonce, aadParts: [Self.aad], prefix: [])
        }
        #expect(partsError?.code == .invalidNonce)
        let partsOpenError = #expect(throws: KeyManagementError.self) {
            try AES256GCM.open(sealed, from: 0, key: Self.key, nonce: nonce, aadParts: [Self.aad])
        }
        #expect(partsOpenError?.code == .invalidNonce)
    }

    @Test("Keys that are not 32 bytes are rejected with invalidKeyMaterial", arguments: [0, 16, 24, 31, 33])
    func nonAES256KeysAreRejected(length: Int) {
        let key = TestSupport.material([UInt8](repeating: 0x11, count: length))
        let error = #expect(throws: KeyManagementError.self) {
            try AES256GCM.seal(Self.plaintext, key: key, nonce: Self.nonce)
        }
        #expect(error?.code == .invalidKeyMaterial)
        let openError = #expect(throws: KeyManagementError.self) {
            try AES256GCM.open([UInt8](repeating: 0, count: 32), key: key, nonce: Self.nonce)
        }
        #expect(openError?.code == .invalidKeyMaterial)
    }

    @Test("Sealed output is the plaintext length plus a 16-byte tag and round-trips")
    func sealedOutputRoundTrips() throws {
        for length in [0, 1, 15, 16, 17, 1000] {
            let pt = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 31) }
            let sealed = try AES256GCM.seal(pt, key: Self.key, nonce: Self.nonce, aad: Self.aad)
            #expect(sealed.count == length + AES256GCM.tagLength)
            #expect(try AES256GCM.open(sealed, key: Self.key, nonce: Self.nonce, aad: Self.aad) == pt)
        }
    }

    @Test("Flipping any bit of the tag makes opening fail with authenticationFailed")
    func flippedTagByteFailsAuthentication() throws {
        let sealed = try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: Self.nonce, aad: Self.aad)
        for i in (sealed.count - AES256GCM.tagLength)..<sealed.count {
            for bit in [0, 7] {
                var tampered = sealed
                tampered[i] ^= UInt8(1 << bit)
                let error = #expect(throws: KeyManagementError.self) {
                    try AES256GCM.open(tampered, key: Self.key, nonce: Self.nonce, aad: Self.aad)
                }
                #expect(error?.code == .authenticationFailed, "tag byte \(i) bit \(bit)")
            }
        }
    }

    @Test("A flipped ciphertext byte, other AAD, other nonce or other key fail authentication")
    func anyAlteredInputFailsAuthentication() throws {
        let sealed = try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: Self.nonce, aad: Self.aad)
        var flippedCT = sealed
        flippedCT[3] ^= 0x01
        var otherNonce = Self.nonce
        otherNonce[11] ^= 0x80
        let otherKey = TestSupport.material((0..<32).map { UInt8($0) &* 7 &+ 4 })
        let cases: [(String, () throws -> [UInt8])] = [
            ("flipped ciphertext", { try AES256GCM.open(flippedCT, key: Self.key, nonce: Self.nonce, aad: Self.aad) }),
            ("other AAD", { try AES256GCM.open(sealed, key: Self.key, nonce: Self.nonce, aad: Self.aad + [0]) }),
            ("missing AAD", { try AES256GCM.open(sealed, key: Self.key, nonce: Self.nonce) }),
            ("other nonce", { try AES256GCM.open(sealed, key: Self.key, nonce: otherNonce, aad: Self.aad) }),
            ("other key", { try AES256GCM.open(sealed, key: otherKey, nonce: Self.nonce, aad: Self.aad) }),
            ("truncated", { try AES256GCM.open(Array(sealed.dropLast()), key: Self.key, nonce: Self.nonce, aad: Self.aad) }),
            ("shorter than a tag", { try AES256GCM.open(Array(sealed.prefix(15)), key: Self.key, nonce: Self.nonce, aad: Self.aad) }),
            ("empty", { try AES256GCM.open([], key: Self.key, nonce: Self.nonce, aad: Self.aad) }),
        ]
        for (name, open) in cases {
            let error = #expect(throws: KeyManagementError.self, "\(name)") { try open() }
            #expect(error?.code == .authenticationFailed, "\(name)")
        }
    }

    @Test("The offset-based open returns nil, not a throw, for a bad tag or an out-of-range offset")
    func offsetOpenReturnsNilOnFailure() throws {
        let prefix: [UInt8] = [1, 2, 3]
        let sealed = try AES256GCM.seal(Self.plaintext, key: Self.key, nonce: Self.nonce,
                                        aadParts: [Self.aad], prefix: prefix)
        #expect(try AES256GCM.open(sealed, from: 3, key: Self.key, nonce: Self.nonce, aadParts: [Self.aad]) == Self.plaintext)
        var tampered = sealed
        tampered[tampered.count - 1] ^= 1
        #expect(try AES256GCM.open(tampered, from: 3, key: Self.key, nonce: Self.nonce, aadParts: [Self.aad]) == nil)
        #expect(try AES256GCM.open(sealed, from: 2, key: Self.key, nonce: Self.nonce, aadParts: [Self.aad]) == nil)
        #expect(try AES256GCM.open(sealed, from: -1, key: Self.key, nonce: Self.nonce, aadParts: [Self.aad]) == nil)
        #expect(try AES256GCM.open(sealed, from: sealed.count, key: Self.key, nonce: Self.nonce, aadParts: [Self.aad]) == nil)
    }

    @Test("Random nonces are 12 bytes and do not repeat")
    func randomNoncesAreFreshAndTwelveBytes() throws {
        var seen = Set<[UInt8]>()
        for _ in 0..<64 {
            let n = try AES256GCM.randomNonce()
            #expect(n.count == AES256GCM.nonceLength)
            seen.insert(n)
        }
        #expect(seen.count == 64)
        #expect(AES256GCM.nonceLength == 12)
        #expect(AES256GCM.tagLength == 16)
    }
}
