import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Testing

/// A record with a plaintext-looking state (the store does not look inside it).
private func rawEvent(_ id: UUID, _ version: Int, topic: String = "Ledger.Entry") -> StoredEvent {
    StoredEvent(originatorID: id, originatorVersion: version, topic: topic, state: [0x01, 0x02, 0x03])
}

extension PostgresTests {
    /// Rows and schema changes the library never makes, put in through a client of the test's
    /// own: typed errors naming the row, the scope or the constraint; SQLSTATEs in `storeCode`.
    @Suite("Rows and constraints from outside the library")
    struct HostileRowTests {
        @Test("A schema_version below 1 refuses the open with databaseCorrupt and changes nothing", arguments: [Int64(-1), 0, Int64.min])
        func badSchemaVersion(_ value: Int64) async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                _ = try await store.insertEvents([rawEvent(fixedAggregateID(seed: 340, index: 1), 1)])
                try await withRawClient(config) { client in
                    _ = try await client.query("UPDATE \(unescaped: s).es_meta SET value = \(value) WHERE key = 'schema_version'")
                    let before = try await client.strings("SELECT key || '=' || value FROM \(unescaped: s).es_meta")
                    let databaseCorrupt = await #expect(throws: EventSourcingError.self) {
                        let reopened = try await PostgresStore(configuration: config)
                        await reopened.close()
                    }
                    #expect(databaseCorrupt?.code == .databaseCorrupt)
                    #expect(try await client.strings("SELECT key || '=' || value FROM \(unescaped: s).es_meta") == before)
                    #expect(try await client.scalar("SELECT count(*) FROM \(unescaped: s).events") == 1)
                }
            }
        }

        @Test("After a grouped read, a data-key version outside UInt32 is still refused with storeFailure naming the scope (by scope and by cursor: StoreTwinTests)",
              arguments: [Int64(1) << 32 | 1, -1])
        func dataKeyVersionOutOfRange(_ forged: Int64) async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                for scope in ["subject-a", "subject-b", "subject-c"] {
                    try await store.insertDataKey(WrappedDataKey(scope: scope, version: 1, kekID: "k", wrapped: [1, 2], createdAt: Date()))
                }
                let id = fixedAggregateID(seed: 341, index: 1)
                _ = try await store.insertEvents([rawEvent(id, 1)])
                try await withRawClient(config) { client in
                    _ = try await client.query("UPDATE \(unescaped: s).data_keys SET version = \(forged) WHERE scope = 'subject-b'")
                    _ = try await client.query("UPDATE \(unescaped: s).events SET key_scope = 'subject-b'")
                }

                // The grouped read of the events still answers; the scope's keys are not kept
                // from it, so the key ring's look-up refuses the row instead of using a truncated version.
                #expect(try await store.selectEvents(originatorID: id).count == 1)
                let reading = await #expect(throws: KeyManagementError.self) { _ = try await store.dataKeys(scope: "subject-b", reading: 1) }
                #expect(reading?.code == .storeFailure && reading?.scope == "subject-b", "\(String(describing: reading))")
            }
        }

        @Test("A tombstone's version list or a master-key check's KDF parameters that do not parse are storeFailure, not skipped or dropped")
        func keyStoreRowsThatDoNotParse() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                _ = try await store.shred(scope: "subject-1", at: Date())
                try await store.insertMasterKeyCheck(MasterKeyCheck(kekID: "k1", sealed: [1, 2, 3], kdf: nil, createdAt: Date()))
                try await withRawClient(config) { client in
                    _ = try await client.query("UPDATE \(unescaped: s).tombstones SET destroyed_versions = '1,x'")
                    _ = try await client.query("UPDATE \(unescaped: s).master_key_checks SET kdf = '{\"not\": \"kdf\"}'")
                }
                let listed = await #expect(throws: KeyManagementError.self) { _ = try await store.tombstones() }
                #expect(listed?.code == .storeFailure && listed?.scope == "subject-1", "\(String(describing: listed))")
                let one = await #expect(throws: KeyManagementError.self) { _ = try await store.tombstone(scope: "subject-1") }
                #expect(one?.code == .storeFailure && one?.scope == "subject-1", "\(String(describing: one))")
                let checks = await #expect(throws: KeyManagementError.self) { _ = try await store.masterKeyChecks() }
                #expect(checks?.code == .storeFailure && checks?.message.contains("k1") == true, "\(String(describing: checks))")
            }
        }

        @Test("A NULL where the library always writes a value (NOT NULL dropped) is databaseCorrupt, naming the notification in the log")
        func nullTopic() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let id = fixedAggregateID(seed: 343, index: 1)
                let ids = try await store.insertEvents([rawEvent(id, 1), rawEvent(id, 2)])
                try await withRawClient(config) { client in
                    _ = try await client.query("ALTER TABLE \(unescaped: s).events ALTER COLUMN topic DROP NOT NULL")
                    _ = try await client.query("UPDATE \(unescaped: s).events SET topic = NULL WHERE notification_id = \(ids[1])")
                }
                let log = await #expect(throws: EventSourcingError.self) { try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: []) }
                #expect(log?.code == .databaseCorrupt)
                #expect(log?.notificationID == ids[1] && log?.originatorID == id && log?.originatorVersion == 2, "\(String(describing: log))")
                #expect(log?.message.contains("topic") == true)
                let events = await #expect(throws: EventSourcingError.self) { try await store.selectEvents(originatorID: id) }
                #expect(events?.code == .databaseCorrupt)
                #expect(events?.message.contains("NULL") == true, "\(String(describing: events))")
            }
        }

        @Test("The snapshot cursor's first page starts at the first row: a snapshot of the nil UUID at a negative version is not skipped")
        func firstSnapshotPageHasNoStandInCursor() async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let id = fixedAggregateID(seed: 347, index: 1)
                try await store.insertSnapshot(StoredEvent(originatorID: id, originatorVersion: 1, topic: "Ledger.snapshot",
                                                           state: [1]))
                try await withRawClient(config) { client in
                    _ = try await client.query("""
                        INSERT INTO \(unescaped: s).snapshots (originator_id, originator_version, topic, state)
                        VALUES ('00000000-0000-0000-0000-000000000000', -5, 'Ledger.snapshot', '\\x01'::bytea)
                        """)
                }
                var cursor: SnapshotCursor?
                var seen: [String] = []
                for _ in 0..<5 {
                    guard let last = try await store.selectSnapshots(after: cursor, limit: 1).last else { break }
                    seen.append("\(last.originatorID.uuidString.lowercased())@\(last.originatorVersion)")
                    cursor = SnapshotCursor(after: last)
                }
                #expect(seen == ["00000000-0000-0000-0000-000000000000@-5", "\(id.uuidString.lowercased())@1"])
            }
        }

        @Test("A repeated (originator id, version) is concurrencyConflict with SQLSTATE 23505")
        func eventKeyConflict() async throws {
            try await withStore(try freshConfiguration()) { store in
                let id = fixedAggregateID(seed: 344, index: 1)
                _ = try await store.insertEvents([rawEvent(id, 1)])
                let e = await #expect(throws: EventSourcingError.self) { try await store.insertEvents([rawEvent(id, 2), rawEvent(id, 1)]) }
                #expect(e?.code == .concurrencyConflict)
                #expect(e?.originatorID == id && e?.originatorVersion == 1 && e?.storeCode == "23505", "\(String(describing: e))")
                #expect(try await store.selectEvents(originatorID: id).count == 1)
            }
        }

        @Test("A unique index on another column, or a CHECK constraint, added to events: constraintViolation with its SQLSTATE, and the save fails alone",
              arguments: [
                ("CREATE UNIQUE INDEX one_per_topic ON %s.events (topic)", "23505", "one_per_topic"),
                ("ALTER TABLE %s.events ADD CONSTRAINT no_hostile CHECK (topic <> 'Ledger.Opened' OR originator_version < 2)",
                 "23514", "no_hostile"),
              ])
        func otherConstraints(_ ddl: String, _ sqlState: String, _ constraint: String) async throws {
            let config = try freshConfiguration()
            let s = config.schema
            try await withStore(config) { store in
                let a = fixedAggregateID(seed: 345, index: 1), b = fixedAggregateID(seed: 345, index: 2)
                _ = try await store.insertEvents([rawEvent(a, 1, topic: "Ledger.Opened")])
                try await withRawClient(config) { client in
                    _ = try await client.query(PostgresQuery(unsafeSQL: ddl.replacingOccurrences(of: "%s", with: "\"\(s)\"")))
                }
                let failing = [rawEvent(b, 1, topic: "Ledger.Other"), rawEvent(b, 2, topic: "Ledger.Opened")]
                let fine = [rawEvent(fixedAggregateID(seed: 345, index: 3), 1, topic: "Ledger.Fine")]
                // Both in one call of the save function when they share a group; alone otherwise.
                let bad = Task { try await store.insertEvents(failing) }
                let good = Task { try await store.insertEvents(fine) }
                let e = await #expect(throws: EventSourcingError.self) { try await bad.value }
                #expect(e?.code == .constraintViolation)
                #expect(e?.storeCode == sqlState && e?.originatorID == b, "\(String(describing: e))")
                #expect(e?.message.contains(constraint) == true, "\(String(describing: e))")
                #expect(try await good.value.count == 1)
                #expect(try await store.selectEvents(originatorID: b).isEmpty)
            }
        }

        @Test("A data key that exists is still KeyManagementError.keyExists")
        func dataKeyConflict() async throws {
            try await withStore(try freshConfiguration()) { store in
                let key = WrappedDataKey(scope: "subject-1", version: 1, kekID: "k", wrapped: [1], createdAt: Date())
                try await store.insertDataKey(key)
                let e = await #expect(throws: KeyManagementError.self) { try await store.insertDataKey(key) }
                #expect(e?.code == .keyExists && e?.scope == "subject-1")
            }
        }

        @Test("Server errors carry their SQLSTATE in storeCode (a lock timeout: 55P03)")
        func lockTimeoutCarriesItsCode() async throws {
            let config = try freshConfiguration { $0.lockTimeout = .milliseconds(100) }
            let s = config.schema
            try await withStore(config) { store in
                _ = try await store.insertEvents([rawEvent(fixedAggregateID(seed: 346, index: 1), 1)])
                try await withRawClient(config) { client in
                    try await client.withTransaction(logger: quietLogger) { conn in
                        try await conn.query("LOCK TABLE \(unescaped: s).events IN EXCLUSIVE MODE", logger: quietLogger)
                        let e = await #expect(throws: EventSourcingError.self) {
                            try await store.insertEvents([rawEvent(fixedAggregateID(seed: 346, index: 2), 1)])
                        }
                        #expect(e?.code == .databaseLocked)
                        #expect(e?.storeCode == "55P03", "\(String(describing: e))")
                    }
                }
            }
        }
    }
}
