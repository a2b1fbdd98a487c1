import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
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

    @Test("Statistics are one struct on both stores and count the same things: events, aggregates, snapshots, scopes, keys, shreds",
          arguments: Backend.all)
    func statisticsAlike(_ backend: Backend) async throws {
        try await backend.withFreshStore { s in
            let (a, b) = (UUID(), UUID())
            // Stamped with a scope, as the mapper stamps encrypted records (the stores refuse unstamped ones).
            func stamped(_ e: StoredEvent) -> StoredEvent { var e = e; e.keyScope = "s1"; return e }
            _ = try await s.recorder.insertEvents([Self.rawEvent(a, 1), Self.rawEvent(a, 2), Self.rawEvent(b, 1)].map(stamped))
            try await s.recorder.insertSnapshot(stamped(StoredEvent(originatorID: a, originatorVersion: 2, topic: "Ledger.snapshot",
                                                                    state: [9])))
            for scope in ["s1", "s2"] { try await s.keyStore.insertDataKey(Self.wrapped(scope, 1, "k", 1)) }
            try await s.keyStore.insertDataKey(Self.wrapped("s1", 2, "k", 1))
            _ = try await s.keyStore.shred(scope: "s2", at: Date(timeIntervalSince1970: 1_700_000_000))
            let stats: StoreStatistics
            switch backend {
            case .sqlite: stats = try await s.sqlite!.statistics()
            case .postgres: stats = try await s.postgres!.statistics()
            }
            // The shred's erasure record is in the log (an event), and its id is no aggregate's.
            #expect(stats.events == 4 && stats.aggregates == 2 && stats.snapshots == 1, "\(stats)")
            #expect(stats.keyScopes == 1 && stats.dataKeys == 2 && stats.shreddedScopes == 1, "\(stats)")
            #expect(stats.bytesOnDisk > 0)
        }
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

    @Test("A data-key version outside UInt32 is refused with storeFailure naming the scope, by scope and by cursor (which stops instead of paging forever)",
          arguments: Backend.all, [Int64(1) << 32 | 1, -1, Int64.max])
    func dataKeyVersionOutOfRange(_ backend: Backend, _ forged: Int64) async throws {
        try await backend.withFreshStore { s in
            let store = s.keyStore
            for scope in ["subject-a", "subject-b", "subject-c"] { try await store.insertDataKey(Self.wrapped(scope, 1, "k", 1)) }
            try await s.execute("UPDATE \(s.table("data_keys")) SET version = \(forged) WHERE scope = 'subject-b'")

            let byScope = await #expect(throws: KeyManagementError.self) { _ = try await store.dataKeys(scope: "subject-b") }
            #expect(byScope?.code == .storeFailure && byScope?.scope == "subject-b", "\(String(describing: byScope))")
            if backend == .sqlite { #expect(byScope?.description.contains("refused") == true) }

            // Page through every key one at a time, as master-key rotation and `keys list` do.
            var cursor: DataKeyCursor?
            var seen: [DataKeyCursor] = []
            var stopped: KeyManagementError?
            for _ in 0..<10 {
                do {
                    guard let last = try await store.dataKeys(after: cursor, limit: 1).last else { break }
                    let next = DataKeyCursor(scope: last.scope, version: last.version)
                    if next == cursor {
                        Issue.record("the cursor did not move on: \(next.scope) v\(next.version) came back")
                        break
                    }
                    seen.append(next)
                    cursor = next
                } catch let e as KeyManagementError {
                    stopped = e
                    break
                }
            }
            #expect(stopped?.code == .storeFailure && stopped?.scope == "subject-b", "\(String(describing: stopped))")
            #expect(seen.map(\.scope) == ["subject-a"], "the keys read before the forged row: \(seen)")
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
