import EventSourcing
@testable import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Synchronization
import Testing

extension PostgresTests {
    /// Concurrent aggregate reads share one query, which also brings the data keys they need.
    @Suite("PostgreSQL grouped reads")
    struct GroupedReadTests {
        @Test("concurrent reads with different ranges each get exactly their own events, in order")
        func concurrentReadsGetTheirOwnEvents() async throws {
            try await withStore(try freshConfiguration()) { store in
                // 40 aggregates with 1…40 events each, plus plaintext-style records without a scope.
                var expected: [UUID: [StoredEvent]] = [:]
                for n in 1...40 {
                    let id = UUID()
                    let events = (1...n).map {
                        StoredEvent(originatorID: id, originatorVersion: $0, topic: "T.\(n).\($0)",
                                    state: [UInt8(truncatingIfNeeded: n), UInt8(truncatingIfNeeded: $0), 0xAB])
                    }
                    _ = try await store.insertEvents(events)
                    expected[id] = events
                }
                let ids = Array(expected.keys)
                // 400 reads at once: whole aggregates, after a version, up to a version, both, and unknown ids.
                let results = try await withThrowingTaskGroup(of: (Int, [StoredEvent], [StoredEvent]).self) { group in
                    for k in 0..<400 {
                        let id = k % 10 == 9 ? UUID() : ids[k % ids.count]
                        let all = expected[id] ?? []
                        let gt: Int? = k % 3 == 1 ? all.count / 2 : nil
                        let lte: Int? = k % 4 == 2 ? max(1, all.count - 1) : nil
                        let want = all.filter { $0.originatorVersion > (gt ?? 0) && $0.originatorVersion <= (lte ?? Int.max) }
                        group.addTask {
                            let got = try await store.selectEvents(originatorID: id, after: gt, upTo: lte)
                            return (k, got, want)
                        }
                    }
                    var out: [(Int, [StoredEvent], [StoredEvent])] = []
                    for try await r in group { out.append(r) }
                    return out
                }
                #expect(results.count == 400)
                for (k, got, want) in results {
                    #expect(got == want, "read \(k): \(got.count) events, wanted \(want.count)")
                }
            }
        }

        @Test("reads one at a time (a prepared statement) get exactly their own events, in order, and a cold key ring decrypts with the keys that came along")
        func sequentialReadsGetTheirOwnEvents() async throws {
            let masterKey = try MasterKey.generate()
            try await withStore(try freshConfiguration()) { store in
                var expected: [UUID: [StoredEvent]] = [:]
                for n in [1, 2, 7, 12] {
                    let id = UUID()
                    let events = (1...n).map {
                        StoredEvent(originatorID: id, originatorVersion: $0, topic: "T.\(n).\($0)",
                                    state: [UInt8(truncatingIfNeeded: n), UInt8(truncatingIfNeeded: $0), 0xCD])
                    }
                    _ = try await store.insertEvents(events)
                    expected[id] = events
                }
                for (id, all) in expected {
                    for (gt, lte) in [(nil, nil), (all.count / 2, nil), (nil, max(1, all.count - 1)), (1, all.count), (all.count, nil)] as [(Int?, Int?)] {
                        let want = all.filter { $0.originatorVersion > (gt ?? 0) && $0.originatorVersion <= (lte ?? Int.max) }
                        let got = try await store.selectEvents(originatorID: id, after: gt, upTo: lte)
                        #expect(got == want, "\(all.count) events, gt \(String(describing: gt)), lte \(String(describing: lte))")
                    }
                }
                #expect(try await store.selectEvents(originatorID: UUID()).isEmpty)

                let writer = try await EncryptedApp.open(store, masterKey: masterKey)
                var roots: [AggregateRoot<Ledger>] = []
                for i in 1...6 {
                    var r = try ledgerSave(nil, save: i, count: 1 + i % 3)
                    try await writer.app.save(&r)
                    roots.append(r)
                }
                let reader = try await EncryptedApp.open(store, masterKey: masterKey)
                for r in roots {
                    // The read brings the scope's key along, for the key ring's next miss.
                    let events = try await store.selectEvents(originatorID: r.id)
                    #expect(events.count == r.version)
                    let prefetched = store.prefetchedKeys.peek(scope: r.keyScope)
                    #expect(prefetched?.map(\.scope) == [r.keyScope])
                    #expect(prefetched?.map(\.version) == [1])
                    #expect(try await reader.app.repository.get(Ledger.self, id: r.id).entries == r.entries)
                }
            }
        }

        @Test("two stores in one database, in different schemas, each read only their own events for the same aggregate id, and an events table in public is never read")
        func readsStayInTheirSchema() async throws {
            let a = try freshConfiguration(), b = try freshConfiguration()
            let id = UUID()
            // A decoy where a default search_path ("$user", public) would find it first. Only this
            // test makes public.events; its rows are for this test's aggregate id alone.
            try await withRawClient(a) { client in
                try await client.query("""
                    CREATE TABLE IF NOT EXISTS public.events (notification_id bigint, originator_id uuid, originator_version bigint,
                        topic text, state bytea, key_scope text)
                    """)
                try await client.query("INSERT INTO public.events VALUES (0, \(id), 1, 'decoy', '\\x00', NULL)")
            }
            do {
                try await withStore(a) { storeA in
                    try await withStore(b) { storeB in
                        let inA = (1...3).map { StoredEvent(originatorID: id, originatorVersion: $0, topic: "A", state: [0xA, UInt8($0)]) }
                        let inB = (1...5).map { StoredEvent(originatorID: id, originatorVersion: $0, topic: "B", state: [0xB, UInt8($0)]) }
                        _ = try await storeA.insertEvents(inA)
                        _ = try await storeB.insertEvents(inB)
                        for _ in 0..<3 {
                            #expect(try await storeA.selectEvents(originatorID: id) == inA)
                            #expect(try await storeB.selectEvents(originatorID: id) == inB)
                        }
                        let nobody = UUID()
                        #expect(try await storeA.selectEvents(originatorID: nobody).isEmpty)
                        // And all of it through the prepared statement (the function would hide a wrong search_path).
                        for store in [storeA, storeB] {
                            let prepared = store.preparedReads.load(ordering: .relaxed)
                            let fallbacks = store.preparedReadFallbacks.load(ordering: .relaxed)
                            #expect(prepared)
                            #expect(fallbacks == 0)
                        }
                    }
                }
            } catch {
                _ = try? await withRawClient(a) { client in try await client.query("DELETE FROM public.events WHERE originator_id = \(id)") }
                throw error
            }
            try await withRawClient(a) { client in
                try await client.query("DELETE FROM public.events WHERE originator_id = \(id)")
                // Dropped only when no other run of this test still has rows in it.
                try await client.query("""
                    DO $$ BEGIN
                        IF NOT EXISTS (SELECT 1 FROM public.events) THEN DROP TABLE public.events; END IF;
                    END $$
                    """)
            }
        }

        @Test("a read whose preparation failed (blocked by a lock past the timeout) does not break the reads after it")
        func failedPreparationRecovers() async throws {
            // One connection, so the read after the failure runs where the preparation failed.
            let config = try freshConfiguration { $0.operationTimeout = .seconds(10); $0.poolSize = 1 }
            // The server's statement timeout (1 s) ends the blocked preparation well before the
            // store's own deadline (10 s), which would close the connection instead.
            var clientConfig = try PostgresStore.clientConfiguration(for: config)
            clientConfig.options.additionalStartupParameters = clientConfig.options.additionalStartupParameters.map {
                $0.0 == "statement_timeout" ? ($0.0, "1000") : $0
            }
            let client = PostgresClient(configuration: clientConfig)
            let runner = Task { await client.run() }
            defer { runner.cancel() }
            try await withStore(client, config) { store in
                let id = UUID()
                let events = (1...3).map { StoredEvent(originatorID: id, originatorVersion: $0, topic: "T", state: [0xEE, UInt8($0)]) }
                _ = try await store.insertEvents(events)
                try await withRawClient(config) { client in
                    try await client.withConnection { connection in
                        // Another session holds the table: the statement cannot even be parsed
                        // until the lock goes, and the server's statement timeout ends it first.
                        try await connection.query("BEGIN", logger: quietLogger)
                        try await connection.query("LOCK TABLE \"\(unescaped: config.schema)\".events IN ACCESS EXCLUSIVE MODE",
                                                   logger: quietLogger)
                        let databaseUnavailable = await #expect(throws: EventSourcingError.self) {
                            _ = try await store.selectEvents(originatorID: id)
                        }
                        #expect(databaseUnavailable?.code == .databaseUnavailable)
                        // Hold the lock until the server has refused the preparation (however slow this machine).
                        let waited = ContinuousClock.now
                        while store.preparedReadFallbacks.load(ordering: .relaxed) == 0, ContinuousClock.now - waited < .seconds(30) {
                            try await Task.sleep(for: .milliseconds(50))
                        }
                        try await connection.query("ROLLBACK", logger: quietLogger)
                    }
                }
                let failed = store.preparedReadFallbacks.load(ordering: .relaxed)
                #expect(failed == 1, "the preparation failed once, under the lock")
                for _ in 0..<3 {
                    #expect(try await store.selectEvents(originatorID: id) == events)
                }
                // The connection that remembered the failure was closed: the later reads were prepared again.
                let after = store.preparedReadFallbacks.load(ordering: .relaxed)
                #expect(after == 1)
            }
        }

        @Test("keys read with events never outlive a shred by this store")
        func prefetchedKeysForgottenOnShred() async throws {
            let masterKey = try MasterKey.generate()
            try await withStore(try freshConfiguration()) { store in
                let t = try await EncryptedApp.open(store, masterKey: masterKey)
                var root = try ledgerSave(nil, save: 1, count: 3)
                try await t.app.save(&root)
                let scope = root.keyScope
                // The read brings the scope's key along for the key ring's next miss…
                #expect(try await store.selectEvents(originatorID: root.id).count == 3)
                _ = try await t.keyring.shred(scope: scope)
                // …but after the shred the store answers from the table: no key.
                #expect(try await store.dataKeys(scope: scope, reading: 1).isEmpty)
                let fresh = try await EncryptedApp.open(store, masterKey: masterKey)
                let shredded = await #expect(throws: EventSourcingError.self) { _ = try await fresh.app.repository.get(Ledger.self, id: root.id) }
                #expect(shredded?.code == .shredded)
            }
        }

        @Test("a page's keys are read in one query (prefetchDataKeys): each scope's versions, unknown and empty scopes left out, none kept across a shred")
        func prefetchDataKeysForAPage() async throws {
            let masterKey = try MasterKey.generate()
            try await withStore(try freshConfiguration()) { store in
                let t = try await EncryptedApp.open(store, masterKey: masterKey)
                var roots: [AggregateRoot<Ledger>] = []
                for save in 1...3 {
                    var root = try ledgerSave(nil, save: save, count: 1)
                    try await t.app.save(&root)
                    roots.append(root)
                }
                _ = try await t.keyring.rotate(scope: roots[0].keyScope)
                let scopes = roots.map(\.keyScope)
                try await store.prefetchDataKeys(scopes: scopes + ["no-such-scope", ""])
                #expect(store.prefetchedKeys.peek(scope: scopes[0])?.map(\.version) == [1, 2])
                #expect(store.prefetchedKeys.peek(scope: scopes[1])?.map(\.version) == [1])
                #expect(store.prefetchedKeys.peek(scope: scopes[2])?.map(\.scope) == [scopes[2]])
                #expect(store.prefetchedKeys.peek(scope: "no-such-scope") == nil)
                // A shred through this store forgets what was kept: the next miss reads the table.
                _ = try await t.keyring.shred(scope: scopes[1])
                #expect(store.prefetchedKeys.peek(scope: scopes[1]) == nil)
                #expect(try await store.dataKeys(scope: scopes[1], reading: 1).isEmpty)
                // A cold key ring reads the whole log through one prefetch per page.
                let fresh = try await EncryptedApp.open(store, masterKey: masterKey)
                let items = try await fresh.app.notificationLog.read(start: 1, limit: 100)
                #expect(items.filter { if case .decoded = $0.outcome { true } else { false } }.count == 2)
                #expect(items.filter(\.isShredded).count == 1)
            }
        }

        @Test("keys read with events are not used once older than their lifetime (a shred by another process)")
        func prefetchedKeysExpire() async throws {
            let masterKey = try MasterKey.generate()
            let config = try freshConfiguration()
            try await withStore(config) { store in
                let other = try await PostgresStore(configuration: config)
                do {
                    let t = try await EncryptedApp.open(store, masterKey: masterKey)
                    var root = try ledgerSave(nil, save: 1, count: 2)
                    try await t.app.save(&root)
                    let scope = root.keyScope
                    #expect(try await store.selectEvents(originatorID: root.id).count == 2)
                    // Another process shreds the scope; this store cannot know.
                    let shredder = try await EncryptedApp.open(other, masterKey: masterKey)
                    _ = try await shredder.keyring.shred(scope: scope)
                    try await Task.sleep(for: .milliseconds(1_100))
                    #expect(try await store.dataKeys(scope: scope, reading: 1).isEmpty)
                } catch {
                    await other.close()
                    throw error
                }
                await other.close()
            }
        }

        @Test("a cold key ring decrypts aggregates read concurrently, with the keys that came with their events")
        func coldKeyringReadsWithPrefetchedKeys() async throws {
            let masterKey = try MasterKey.generate()
            try await withStore(try freshConfiguration()) { store in
                let writer = try await EncryptedApp.open(store, masterKey: masterKey)
                var roots: [AggregateRoot<Ledger>] = []
                for i in 1...20 {
                    var r = try ledgerSave(nil, save: i, count: 1 + i % 4)
                    try await writer.app.save(&r)
                    roots.append(r)
                }
                let reader = try await EncryptedApp.open(store, masterKey: masterKey)
                let loaded = try await withThrowingTaskGroup(of: (UUID, Int).self) { group in
                    for r in roots {
                        group.addTask { (r.id, try await reader.app.repository.get(Ledger.self, id: r.id).entries) }
                    }
                    var out: [UUID: Int] = [:]
                    for try await (id, n) in group { out[id] = n }
                    return out
                }
                for r in roots { #expect(loaded[r.id] == r.version) }
            }
        }
    }
}
