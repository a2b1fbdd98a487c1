import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite group commit")
struct GroupCommitTests {
    @Test("8 tasks × 50 concurrent saves through one store: all 400 saved, ids exactly 1…400, each task's ids increasing")
    func concurrentSavesAllCommit() async throws {
        let dir = try TempDir("group")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: MasterKey.generate())
        let app = s.app
        let results = try await withThrowingTaskGroup(of: (UUID, [Int64]).self) { group in
            for task in 0..<8 {
                group.addTask {
                    let id = fixedAggregateID(seed: 80, index: task)
                    var root = try AggregateRoot<Ledger>(id: id, .entry(save: 1, item: 1, of: 1))
                    var ids = try await app.save(&root).map(\.notificationID)
                    for save in 2...50 {
                        try root.record(.entry(save: save, item: 1, of: 1))
                        ids += try await app.save(&root).map(\.notificationID)
                    }
                    return (id, ids)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 8)
        for (id, ids) in results {
            #expect(ids.count == 50)
            #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }, "\(id): ids not increasing")
            let root = try await app.repository.get(Ledger.self, id: id)
            #expect(root.version == 50 && root.entries == 50)
        }
        #expect(results.flatMap(\.1).sorted() == (1...400).map { Int64($0) })
        let log = try await readWholeLog(app)
        #expect(log.map(\.notification.id) == (1...400).map { Int64($0) })
        #expect(log.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        await s.store.close()
    }

    @Test("Among many concurrent saves, the one that repeats a committed (id, version) fails alone with concurrencyConflict")
    func conflictFailsAloneInItsGroup() async throws {
        let dir = try TempDir("group")
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: MasterKey.generate())
        let app = s.app
        let others = 23
        for round in 0..<3 {
            var committed = try AggregateRoot<Ledger>(id: fixedAggregateID(seed: 90 + round, index: 999), .entry(save: 1, item: 1, of: 1))
            try await app.save(&committed)
            let committedID = committed.id
            let before = try #require(try await app.notificationLog.maxNotificationID)

            // Another connection holds the write lock, so the saves below queue up behind the
            // store's blocked writer and are committed together once it is released.
            let holder = try ChildProcess("python3", ["-c", """
                import sqlite3, sys
                c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
                c.execute("BEGIN IMMEDIATE")
                print("LOCKED", flush=True)
                sys.stdin.readline()
                c.execute("COMMIT")
                c.close()
                """, db], stderrPath: dir.path("holder-\(round).stderr"))
            let locked = await holder.readLine()
            try #require(locked == "LOCKED", "python3 could not lock the database: \(holder.stderr)")

            let outcomes = await withTaskGroup(of: (Int, Result<[Recording], any Error>).self) { group in
                for i in 0...others {
                    group.addTask {
                        do {
                            if i == others / 2 {
                                // One save of a fresh aggregate (inserted first) and a stale copy of
                                // `committed` (versions 1…3; version 1 exists): all of it must go.
                                var fresh = try AggregateRoot<Ledger>(id: fixedAggregateID(seed: 90 + round, index: i), .entry(save: 2, item: 1, of: 5))
                                try fresh.record(.entry(save: 2, item: 2, of: 5))
                                var stale = try AggregateRoot<Ledger>(id: committedID, .entry(save: 2, item: 3, of: 5))
                                try stale.record(.entry(save: 2, item: 4, of: 5))
                                try stale.record(.entry(save: 2, item: 5, of: 5))
                                return (i, .success(try await app.save(&fresh, &stale)))
                            }
                            var root = try AggregateRoot<Ledger>(id: fixedAggregateID(seed: 90 + round, index: i), .entry(save: 1, item: 1, of: 2))
                            try root.record(.entry(save: 1, item: 2, of: 2))
                            return (i, .success(try await app.save(&root)))
                        } catch {
                            return (i, .failure(error))
                        }
                    }
                }
                // Not synchronisation: whatever the grouping, the expectations below hold. The
                // pause only lets the saves reach the writer's queue while the lock is held, so
                // that the conflicting save shares a transaction with the others.
                try? await Task.sleep(for: .milliseconds(150))
                holder.writeLine("COMMIT")
                holder.closeStdin()
                return await group.reduce(into: [Int: Result<[Recording], any Error>]()) { $0[$1.0] = $1.1 }
            }
            #expect(await holder.waitForExit() == .exited(0), "lock holder: \(holder.stderr)")

            var newIDs: [Int64] = []
            for (i, outcome) in outcomes.sorted(by: { $0.key < $1.key }) {
                switch (i == others / 2, outcome) {
                case (true, .success):
                    Issue.record("round \(round): the stale save succeeded")
                case (true, .failure(let error)):
                    let e = error as? EventSourcingError
                    #expect(e?.code == .concurrencyConflict, "round \(round): stale save failed with \(error)")
                    #expect(e?.originatorID == committedID && e?.originatorVersion == 1)
                case (false, .success(let recordings)):
                    #expect(recordings.map(\.originatorVersion) == [1, 2])
                    #expect(recordings.count == 2 && recordings[1].notificationID == recordings[0].notificationID + 1)
                    newIDs += recordings.map(\.notificationID)
                case (false, .failure(let error)):
                    Issue.record("round \(round): save \(i) failed alongside the conflict: \(error)")
                }
            }
            // Nothing of the conflicting save was written; the others' ids follow on with no gap.
            #expect(try await s.store.selectEvents(originatorID: committedID).count == 1)
            #expect(try await s.store.selectEvents(originatorID: fixedAggregateID(seed: 90 + round, index: others / 2)).isEmpty)
            #expect(newIDs.sorted() == (1...Int64(2 * others)).map { before + $0 })
            for i in 0...others where i != others / 2 {
                let root = try await app.repository.get(Ledger.self, id: fixedAggregateID(seed: 90 + round, index: i))
                #expect(root.version == 2)
            }
        }
        let log = try await readWholeLog(app)
        #expect(log.map(\.notification.id) == (1...Int64(log.count)).map { $0 })
        #expect(log.count == 3 * (1 + 2 * others))
        await s.store.close()
    }
}
