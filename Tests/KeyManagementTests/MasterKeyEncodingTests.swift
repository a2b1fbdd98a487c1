import Foundation
@testable import KeyManagement
import Testing

/// Master-key text: the caller's buffer is zeroized, nothing past the size bound is read, and
/// the library's own base64 (which decodes straight into the key's buffer instead of through
/// Foundation's `Data`) agrees with Foundation on every valid input.
@Suite("Master key text and base64")
struct MasterKeyEncodingTests {
    /// 32 key bytes that include non-base64 bytes, so they read as a raw key.
    static let rawBytes: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 0xC5) }

    static var inputs: [(String, [UInt8])] {
        let b64 = Data(rawBytes).base64EncodedString()
        return [
            ("raw", rawBytes),
            ("base64", Array(b64.utf8)),
            ("base64 with whitespace", Array(("  " + b64 + "\r\n").utf8)),
            ("base64 of 16 bytes", Array(Data(rawBytes.prefix(16)).base64EncodedString().utf8)),
            ("not base64", Array("definitely not a key!".utf8)),
            ("too long", Array(repeating: UInt8(ascii: " "), count: MasterKey.maxEncodedLength) + Array(b64.utf8)),
        ]
    }

    @Test("MasterKey(encoded:) zeroizes the caller's bytes, whether it succeeds or not", arguments: inputs)
    func encodedInputIsZeroized(name: String, input: [UInt8]) {
        var bytes = input
        let key = try? MasterKey(encoded: &bytes)
        #expect(bytes.count == input.count, "\(name)")
        #expect(bytes.allSatisfy { $0 == 0 }, "\(name): the caller's copy of the key text was left in memory")
        if name == "raw" || name.hasPrefix("base64 with") || name == "base64" {
            #expect(key?.material.constantTimeEquals(TestSupport.material(Self.rawBytes)) == true, "\(name)")
        } else {
            #expect(key == nil, "\(name)")
        }
    }

    @Test("Key text longer than maxEncodedLength is refused, even when it holds a valid key")
    func overlongTextIsRefused() throws {
        // Valid base64 of a 32-byte key, padded with whitespace that is otherwise ignored.
        let b64 = Array(Data(Self.rawBytes).base64EncodedString().utf8)
        var exactly = b64 + Array(repeating: UInt8(ascii: "\n"), count: MasterKey.maxEncodedLength - b64.count)
        #expect(try MasterKey(encoded: &exactly).material.constantTimeEquals(TestSupport.material(Self.rawBytes)))

        var over = b64 + Array(repeating: UInt8(ascii: "\n"), count: MasterKey.maxEncodedLength - b64.count + 1)
        let error = #expect(throws: KeyManagementError.self) { try MasterKey(encoded: &over, source: "standard input") }
        #expect(error?.code == .invalidKeyMaterial)
        #expect(error?.message.contains("standard input") == true)
        #expect(error?.message.contains("\(MasterKey.maxEncodedLength)") == true)
    }

    @Test("A key file past maxEncodedLength is refused, and a huge one is not read into memory")
    func oversizedKeyFilesAreRefused() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let b64 = Array((Data(Self.rawBytes).base64EncodedString() + "\n").utf8)

        let padded = dir.appendingPathComponent("padded.key")
        try Data(b64 + Array(repeating: UInt8(ascii: " "), count: MasterKey.maxEncodedLength)).write(to: padded)
        let error = #expect(throws: KeyManagementError.self) { try MasterKey(contentsOfFile: padded.path) }
        #expect(error?.code == .invalidKeyMaterial)
        #expect(error?.message.contains("longer than \(MasterKey.maxEncodedLength) bytes") == true)

        // A sparse 4 GiB file (larger than Int32.max): reading it whole would take gigabytes of memory.
        let huge = dir.appendingPathComponent("huge.key")
        #expect(FileManager.default.createFile(atPath: huge.path, contents: Data(b64)))
        let handle = try FileHandle(forWritingTo: huge)
        try handle.truncate(atOffset: 4 << 30)
        try handle.close()
        let hugeError = #expect(throws: KeyManagementError.self) { try MasterKey(contentsOfFile: huge.path) }
        #expect(hugeError?.code == .invalidKeyMaterial)
        #expect(hugeError?.message.contains("longer than \(MasterKey.maxEncodedLength) bytes") == true)

        // A directory cannot be read as a key file.
        let notAFile = #expect(throws: KeyManagementError.self) { try MasterKey(contentsOfFile: dir.path) }
        #expect(notAFile?.code == .keySourceUnavailable)
    }

    // MARK: base64

    @Test("The base64 encoder matches Foundation for every length from 0 to 100 bytes")
    func encoderMatchesFoundation() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...100 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let ours = bytes.withUnsafeBytes { Base64.encode($0) }
            #expect(ours == Array(Data(bytes).base64EncodedString().utf8), "length \(length)")
            let withNewline = bytes.withUnsafeBytes { Base64.encode($0, newline: true) }
            #expect(withNewline == ours + [0x0A], "length \(length)")
        }
    }

    @Test("The base64 decoder matches Foundation on valid text and agrees on its length")
    func decoderMatchesFoundation() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...100 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let text = Array(Data(bytes).base64EncodedString().utf8)
            let count = text.withUnsafeBytes { Base64.decodedCount($0) }
            #expect(count == length, "length \(length)")
            var out = [UInt8](repeating: 0xEE, count: length)
            let ok = text.withUnsafeBytes { t in out.withUnsafeMutableBytes { Base64.decode(t, into: $0) } }
            #expect(ok, "length \(length)")
            #expect(out == bytes, "length \(length)")
        }
    }

    static let malformedBase64 = ["QUI", "QQ=", "Q===", "QU=D", "=QUJ", "QUJDQQ==QUJD", "QUJD====", "QUJ-", "QUJ_",
                                  "QUJ\u{0}", "QUJDé", "QQ==Q"]

    @Test("Malformed base64 is refused: missing or misplaced padding, other alphabets, other bytes",
          arguments: malformedBase64)
    func malformedBase64IsRefused(text: String) {
        let bytes = Array(text.utf8)
        #expect(bytes.withUnsafeBytes { Base64.decodedCount($0) } == nil)
        var out = [UInt8](repeating: 0, count: 3)
        #expect(!bytes.withUnsafeBytes { t in out.withUnsafeMutableBytes { Base64.decode(t, into: $0) } })
    }

    @Test("Whitespace anywhere in base64 key text is ignored")
    func whitespaceIsIgnored() throws {
        let b64 = Data(Self.rawBytes).base64EncodedString()
        var spread: [UInt8] = []
        for (i, c) in b64.utf8.enumerated() { spread += i % 5 == 0 ? [c, 0x20, 0x09, 0x0A, 0x0D] : [c] }
        let key = try MasterKey(encoded: &spread)
        #expect(key.material.constantTimeEquals(TestSupport.material(Self.rawBytes)))
    }

    @Test("base64EncodedKey and the key file hold the same text as Foundation's encoding of the key")
    func encodedKeyMatchesFoundation() throws {
        let dir = try TestSupport.makeTemporaryDirectory()
        defer { TestSupport.removeItem(dir) }
        let key = try MasterKey(material: TestSupport.material(Self.rawBytes))
        let expected = Data(Self.rawBytes).base64EncodedString()
        #expect(key.base64EncodedKey() == expected)
        let path = dir.appendingPathComponent("k").path
        try key.writeKeyFile(to: path)
        #expect(FileManager.default.contents(atPath: path) == Data((expected + "\n").utf8))
    }
}
