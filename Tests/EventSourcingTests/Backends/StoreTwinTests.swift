import ESTestSupport
import ESTestTags
import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Behaviour the SQLite and PostgreSQL stores share, tested once over both (these tests were
/// near-identical copies in each store's test target). Backend-specific checks (an error's
/// database code, a statement count) stay with each store's own tests.
@Suite("SQLite and PostgreSQL stores alike")
struct StoreTwinTests {
    private static func wrapped(_ scope: String, _ version: UInt32, _ kek: String, _ byte: UInt8) -> WrappedDataKey {
        WrappedDataKey(scope: scope, version: version, kekID: kek, wrapped: Array(repeating: byte, count: 60),
                       createdAt: Date(timeIntervalSince1970: 1_700_000_000))
    }

    /// A record with a plaintext-looking state (the store does not look inside it).
    private static func rawEvent(_ id: UUID, _ version: Int) -> StoredEvent {
        StoredEvent(originatorID: id, originatorVersion: version, topic: "Ledger.Entry", state: [0x01, 0x02, 0x03])
    }

    @Test("A rewrap batch that fails part-way changes no row: the rows before the failure are rolled back with it",
          arguments: Backend.all)
    func failedRewrapBatchChangesNothing(_ backend: Backend) async throws {
        try await backend.withFreshStore { s in
            let store = s.keyStore
            let scopes = (0..<6).map { "s\($0)" }
            for scope in scopes { try await store.insertDataKey(Self.wrapped(scope, 1, "old", 1)) }
            // A failure the store cannot see coming, at the fourth row of the batch.
            try await s.refuseDataKeyUpdates(scope: "s3")
            let before = try await store.dataKeys(after: nil, limit: 100)
            await #expect(throws: (any Error).self) {
                try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") })
            }
            #expect(try await store.dataKeys(after: nil, limit: 100) == before)

            // Without the failure the same batch replaces every row, and the store keeps working.
            try await s.allowDataKeyUpdates()
            #expect(try await store.rewrapDataKeys(scopes.map { DataKeyRewrap(Self.wrapped($0, 1, "new", 2), previousKEKID: "old") }) == 6)
            #expect(try await store.dataKeys(after: nil, limit: 100).allSatisfy { $0.kekID == "new" && $0.wrapped == Array(repeating: 2, count: 60) })
        }
    }

    @Test("A forged row at notification id Int64.max - 1: one more event fits, then saves are databaseCorrupt (no overflow, no random ids)",
          arguments: Backend.all)
    func notificationIDsExhausted(_ backend: Backend) async throws {
        try await backend.withFreshStore { s in
            let store = s.recorder
            let id = fixedAggregateID(seed: 311, index: 1)
            _ = try await store.insertEvents([Self.rawEvent(id, 1)])
            try await s.execute("UPDATE \(s.table("events")) SET notification_id = 9223372036854775806")
            // One more fits exactly; two do not.
            let two = await #expect(throws: EventSourcingError.self) {
                _ = try await store.insertEvents([Self.rawEvent(id, 2), Self.rawEvent(id, 3)])
            }
            #expect(two?.code == .databaseCorrupt, "\(String(describing: two))")
            #expect(try await store.insertEvents([Self.rawEvent(id, 2)]) == [Int64.max])
            let after = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([Self.rawEvent(id, 3)]) }
            #expect(after?.code == .databaseCorrupt, "\(String(describing: after))")
            switch backend {
            case .sqlite:
                // The store names the last notification id it found.
                #expect(two?.notificationID == Int64.max - 1)
                #expect(after?.notificationID == Int64.max)
            case .postgres:
                // The server's refusal, raised by the store's insert function.
                #expect(two?.storeCode == "ES004")
                #expect(after?.storeCode == "ES004")
            }
            #expect(try await store.selectEvents(originatorID: id).map(\.originatorVersion) == [1, 2])
        }
    }
}
