import Foundation
import KeyManagement

/// Helpers shared by the KeyManagement test suites. Nothing here prints key material.
enum TestSupport {
    /// Decodes a hex string (either case; empty gives no bytes). Returns nil for malformed input.
    static func bytes(hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Key material holding a copy of `bytes` (the copy handed over is zeroized).
    static func material(_ bytes: [UInt8]) -> KeyMaterial {
        var copy = bytes
        return KeyMaterial(consuming: &copy)
    }

    /// A copy of a key's bytes, for tests that must compare or re-encode them. Never print it.
    static func copyBytes(_ material: KeyMaterial) -> [UInt8] {
        material.withUnsafeBytes { Array($0) }
    }

    /// A fresh, empty directory under the system temporary directory.
    static func makeTemporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("KeyManagementTests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func removeItem(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }
}
