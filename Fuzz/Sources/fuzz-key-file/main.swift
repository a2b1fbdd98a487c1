// Fuzzes master-key loading: key files (MasterKey(contentsOfFile:)), the same text in memory
// and in an environment variable, and the scrypt parameters stored for a passphrase key.
//
// Input byte 0 chooses the mode: even, the rest is a key file; odd, the rest is the JSON of
// KDFParameters as a store keeps it, and the target derives a key with them when they are cheap.
// Invariants: nothing traps or hangs; every failure is a KeyManagementError; the file, memory
// and environment paths agree; an error message never repeats the key text.
import Foundation
import FuzzSupport
import KeyManagement

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    let key = Fuzz.masterKey()
    let path = (Fuzz.scratchDirectory as NSString).appendingPathComponent("seed.key")
    try? FileManager.default.removeItem(atPath: path)
    try key.writeKeyFile(to: path)
    let file = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    let base64 = Array(key.base64EncodedKey().utf8)
    var raw: [UInt8] = []
    key.material.withUnsafeBytes { raw = Array($0) }
    let spaced = Array(base64.prefix(20)) + Array(" \r\n\t".utf8) + Array(base64.dropFirst(20))
    let kdf = try JSONEncoder().encode(KDFParameters(salt: Array(repeating: 7, count: 16), n: 1 << 10, r: 8, p: 1))
    let big = try JSONEncoder().encode(KDFParameters(salt: [1], n: 1 << 20, r: 32, p: 16))
    return [[0] + file, [0] + base64, [0] + raw, [0] + spaced, [0] + Array(repeating: 0x41, count: 44),
            [1] + Array(kdf), [1] + Array(big)]
}

let keyPath = (Fuzz.scratchDirectory as NSString).appendingPathComponent("fuzz.key")

func message(_ error: any Error, _ what: String) -> String {
    guard let e = error as? KeyManagementError else { Fuzz.fail("\(what) threw \(type(of: error))") }
    return e.message
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    guard let mode = input.first else { return 0 }
    let body = Array(input.dropFirst())
    if mode & 1 == 0 {
        guard FileManager.default.createFile(atPath: keyPath, contents: Data(body)) else { Fuzz.fail("cannot write \(keyPath)") }
        // Key-like text: a long run of base64 characters, which no message has of its own.
        let text = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let keyLike = text.utf8.count >= 40 && text.utf8.allSatisfy {
            ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D
        }
        var outcomes: [String: String?] = [:]   // path → key id, or nil for an error
        do { outcomes["file"] = try MasterKey(contentsOfFile: keyPath).id } catch {
            let m = message(error, "file")
            if keyLike, m.contains(text) { Fuzz.fail("an error repeats the key text") }
            outcomes["file"] = .some(nil)
        }
        var copy = body
        do { outcomes["memory"] = try MasterKey(encoded: &copy).id } catch {
            _ = message(error, "memory")
            outcomes["memory"] = .some(nil)
        }
        guard copy.allSatisfy({ $0 == 0 }) else { Fuzz.fail("MasterKey(encoded:) left key bytes behind") }
        if !body.isEmpty, String(validating: body, as: UTF8.self) != nil {
            do {
                outcomes["environment"] = try MasterKey(environmentVariable: "K", environment: ["K": String(decoding: body, as: UTF8.self)]).id
            } catch {
                _ = message(error, "environment")
                outcomes["environment"] = .some(nil)
            }
        }
        guard Set(outcomes.values.map { $0 ?? "error" }).count == 1 else { Fuzz.fail("key sources disagree: \(outcomes)") }
    } else {
        guard let parameters = try? JSONDecoder().decode(KDFParameters.self, from: Data(body)) else { return 0 }
        do { try parameters.validate() } catch {
            _ = message(error, "validate")
            return 0
        }
        // Deriving is the expensive part: exercise it only for cheap parameters.
        guard parameters.n * parameters.r * parameters.p <= 1 << 13 else { return 0 }
        do {
            let key = try MasterKey(passphrase: "fuzz passphrase", parameters: parameters)
            guard key.kdf == parameters, key.material.count == 32 else { Fuzz.fail("derived key does not keep its parameters") }
        } catch {
            _ = message(error, "passphrase")
        }
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
