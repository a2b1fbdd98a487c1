import EventSourcing
import Foundation
import Testing

@Suite("Record header")
struct StateHeaderTests {
    @Test("A canonical lowercase UUID scope is stored as 16 bytes and reads back as the same text")
    func compactUUID() throws {
        for _ in 0..<200 {
            let scope = UUID().uuidString.lowercased()
            let header = StateHeader(flags: [.encrypted], keyScope: scope, keyVersion: 7, nonce: Array(repeating: 9, count: 12))
            let bytes = header.bytes
            let expected = 36
            #expect(bytes.count == expected)
            #expect(bytes[3] & StateHeader.Flags.uuidScope.rawValue != 0)
            guard case .success(let (parsed, offset)) = StateHeader.parse(bytes) else {
                Issue.record("header did not parse")
                return
            }
            #expect(parsed.keyScope == scope)
            #expect(parsed.keyVersion == 7)
            #expect(offset == bytes.count)
        }
    }

    @Test("Other scopes, uppercase UUIDs included, are stored verbatim with their length", arguments: [
        "subject-alice", "A1B2C3D4-0000-4000-8000-000000000001", "a1b2c3d4-0000-4000-8000-00000000000", "ü-subject",
        "a1b2c3d4-0000-4000-8000-0000000000011", "a1b2c3d40000-4000-8000-0000000000001",
    ])
    func verbatim(_ scope: String) throws {
        let header = StateHeader(flags: [.encrypted], keyScope: scope, keyVersion: 1, nonce: Array(repeating: 1, count: 12))
        let bytes = header.bytes
        #expect(bytes[3] & StateHeader.Flags.uuidScope.rawValue == 0)
        #expect(Int(bytes[4]) == scope.utf8.count)
        guard case .success(let (parsed, _)) = StateHeader.parse(bytes) else {
            Issue.record("header did not parse")
            return
        }
        #expect(parsed.keyScope == scope)
    }
}
