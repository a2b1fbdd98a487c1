import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

extension PostgresTests {
    /// Tracking records in a PostgreSQL schema (the behaviours every backend shares are in the
    /// conformance suite): a schema made before tracking gets its table on the next start, and
    /// a tracked save that the position refuses leaves no trace in the events table.
    @Suite("Tracking records")
    struct TrackingTests {
        @Test("A schema made before tracking (no tracking table or functions) gets them on the next start and keeps its events")
        func existingSchemaGetsTracking() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            let store = try await PostgresStore(configuration: config)
            let id = UUID()
            _ = try await store.insertEvents([StoredEvent(originatorID: id, originatorVersion: 1, topic: "T.t", state: [1])])
            await store.close()
            try await withRawClient(config) { client async throws in
                try await client.query("DROP FUNCTION \(unescaped: s).insert_tracked_save")
                try await client.query("DROP FUNCTION \(unescaped: s).insert_tracking")
                try await client.query("DROP TABLE \(unescaped: s).tracking")
            }
            try await withStore(config) { store async throws in
                #expect(try await store.maxTrackingID("view") == nil)
                #expect(try await store.insertEvents([StoredEvent(originatorID: id, originatorVersion: 2, topic: "T.t", state: [2])],
                                                     tracking: Tracking(name: "view", notificationID: 1)) == [2])
                #expect(try await store.maxTrackingID("view") == 1)
                #expect(try await store.selectEvents(originatorID: id).map(\.originatorVersion) == [1, 2])
            }
        }

        @Test("A refused position rolls back the tracked save's events and keys: no row, no key, no id used")
        func refusedPositionRollsBack() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store async throws in
                try await store.insertTracking(Tracking(name: "proc", notificationID: 8))
                let key = WrappedDataKey(scope: "subject-9", version: 1, kekID: "k", wrapped: Array(repeating: 3, count: 60),
                                         createdAt: Date(timeIntervalSince1970: 1_700_000_000))
                let e = await #expect(throws: EventSourcingError.self) {
                    try await store.insertEvents([StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: "T.t", state: [1],
                                                              keyScope: "subject-9")],
                                                 newKeys: [key], tracking: Tracking(name: "proc", notificationID: 8))
                }
                #expect(e?.code == .trackingConflict)
                #expect(e?.message.contains("\"proc\"") == true && e?.message.contains("8") == true, "\(String(describing: e))")
                try await withRawClient(config) { client async throws in
                    #expect(try await client.strings("SELECT count(*)::text FROM \(unescaped: s).events") == ["0"])
                    #expect(try await client.strings("SELECT count(*)::text FROM \(unescaped: s).data_keys") == ["0"])
                    #expect(try await client.strings("SELECT name || '=' || notification_id FROM \(unescaped: s).tracking") == ["proc=8"])
                }
                #expect(try await store.insertEvents([StoredEvent(originatorID: UUID(), originatorVersion: 1, topic: "T.t", state: [1])]) == [1])
            }
        }
    }
}
