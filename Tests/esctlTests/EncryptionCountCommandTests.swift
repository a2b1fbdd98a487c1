import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("esctl keys show: encryption counts")
struct EncryptionCountCommandTests {
    @Test("keys show prints the encryptions reserved per version, in text and JSON (encryptions_reserved)")
    func keysShowPrintsCounts() async throws {
        let (ws, s, key) = try await CommandTests.seeded()
        let (store, _, _) = try await Stores.open(ws.storePath, keys: [key])
        // Another process reserved a block under v1 beyond the first (implicit) one.
        #expect(try await store.reserveEncryptions(scope: s.subject, version: 1, count: 100, limit: KeyUsage.defaultLimit) == 4_196)
        await store.close()

        let text = try await ws.esctl(ws.with() + ["keys", "show", s.subject])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.contains("encryptions reserved: v1 4196"))
        let j = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "show", s.subject, "--json"]))
        #expect(j["encryptions_reserved"] as? [String: Int] == ["1": 4_196])

        // A scope without a stored count: at most its first block.
        let other = try await ws.esctl(ws.with() + ["keys", "show", s.bobScope])
        #expect(other.stdout.contains("encryptions reserved: v1 at most 4096"), "\(other.summary)")
        let oj = try parseJSONObject(try await ws.esctl(ws.with() + ["keys", "show", s.bobScope, "--json"]))
        #expect(oj["encryptions_reserved"] as? [String: Int] == [:])
    }
}
