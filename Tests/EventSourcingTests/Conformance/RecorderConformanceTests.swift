import ESTestTags
import EventSourcing
import EventSourcingTestKit
import Foundation
import KeyManagement
import Testing

extension RecorderFactory {
    /// The test kit's recorder suite over this factory's stores (each behaviour a fresh store).
    var recorderConformance: RecorderConformance {
        RecorderConformance {
            let store = try await make()
            return .init(recorder: store.recorder, snapshots: store.snapshots, close: store.close)
        }
    }

    /// The test kit's key-store suite over this factory's key store: the store itself, or an
    /// ``InMemoryKeyStore`` for the in-memory recorder.
    var keyStoreConformance: KeyStoreConformance {
        KeyStoreConformance {
            let store = try await make()
            return .init(keyStore: store.keyStore ?? InMemoryKeyStore(), close: store.close)
        }
    }
}

/// The test kit's conformance suites (`EventSourcingTestKit`) run against every backend: each
/// behaviour a test case per recorder or key store.
@Suite("Recorder conformance", .tags(.conformance))
struct RecorderConformanceTests {
    @Test("Every recorder shows the recorder behaviours",
          arguments: RecorderFactory.all, RecorderConformance.Behaviour.allCases)
    func recorder(_ factory: RecorderFactory, _ behaviour: RecorderConformance.Behaviour) async throws {
        try await factory.recorderConformance.check(behaviour)
    }

    @Test("Every key store shows the key-store behaviours",
          arguments: RecorderFactory.all, KeyStoreConformance.Behaviour.allCases)
    func keyStore(_ factory: RecorderFactory, _ behaviour: KeyStoreConformance.Behaviour) async throws {
        try await factory.keyStoreConformance.check(behaviour)
    }

    @Test("deleteSnapshots(keyScope:) works on snapshots made by an encrypted Mapper", arguments: RecorderFactory.all)
    func deleteSnapshotsRealMapper(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            let mapper = Mapper(keyring: keyring)
            var made: [StoredEvent] = []
            let people = ["p-1", "p-1", "p-2"]
            for person in people {
                let root = try AggregateRoot<Customer>(.registered(personID: person, name: "N", email: "e@x"))
                let (stored, key) = try await mapper.encodeSnapshot(root)
                if let key { try await keyring.persist([key]) }
                #expect(stored.keyScope == person)
                try await store.snapshots.insertSnapshot(stored)
                made.append(stored)
            }
            let dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            let (dogSnap, dogKey) = try await mapper.encodeSnapshot(dog)
            if let dogKey { try await keyring.persist([dogKey]) }
            #expect(dogSnap.keyScope == dog.id.uuidString.lowercased())
            try await store.snapshots.insertSnapshot(dogSnap)

            #expect(try await store.snapshots.deleteSnapshots(keyScope: "p-1") == 2)
            #expect(try await store.snapshots.selectSnapshot(originatorID: made[0].originatorID, lte: nil) == nil)
            #expect(try await store.snapshots.selectSnapshot(originatorID: made[1].originatorID, lte: nil) == nil)
            let kept = try #require(try await store.snapshots.selectSnapshot(originatorID: made[2].originatorID, lte: nil))
            #expect(kept == made[2])
            let back = try await mapper.decodeSnapshot(kept, as: Customer.self)
            #expect(back.personID == "p-2")
            #expect(try await store.snapshots.deleteSnapshots(keyScope: dog.id.uuidString.lowercased()) == 1)
            #expect(try await store.snapshots.selectSnapshot(originatorID: dog.id, lte: nil) == nil)
        }
    }
}

/// The kit catches what it is for: a recorder or key store that breaks a rule fails `run()`,
/// naming the behaviour, and a correct one passes it.
@Suite("The test kit catches broken stores")
struct TestKitCatchesBrokenStoresTests {
    /// A recorder that swallows concurrency conflicts: a conflicting insert "succeeds" (writing nothing).
    final class ConflictSwallowingRecorder: ApplicationRecorder, SnapshotRecorder {
        let inner = InMemoryRecorder()

        func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
            do {
                return try await inner.insertEvents(events)
            } catch let e as EventSourcingError where e.code == .concurrencyConflict {
                return []
            }
        }

        func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
            try await inner.selectEvents(query)
        }

        func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
            try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
        }

        func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
        func insertSnapshot(_ snapshot: StoredEvent) async throws { try await inner.insertSnapshot(snapshot) }
        func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
            try await inner.selectSnapshot(originatorID: originatorID, lte: lte)
        }
        func deleteSnapshots(keyScope: String) async throws -> Int { try await inner.deleteSnapshots(keyScope: keyScope) }
    }

    /// A key store that lets a shredded scope get a new key (the refusal is swallowed and the key stored).
    final class ResurrectingKeyStore: KeyStore {
        let inner = InMemoryKeyStore()
        let resurrected = InMemoryKeyStore()

        func insertDataKey(_ key: WrappedDataKey) async throws {
            do {
                try await inner.insertDataKey(key)
            } catch let e as KeyManagementError where e.code == .shredded {
                try await resurrected.insertDataKey(key)
            }
        }

        func dataKeys(scope: String) async throws -> [WrappedDataKey] {
            try await inner.dataKeys(scope: scope) + resurrected.dataKeys(scope: scope)
        }

        func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
        func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
        func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
        func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
            try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
        }
        func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
            try await inner.dataKeys(after: cursor, limit: limit)
        }
        func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
        func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
        func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
    }

    @Test("A recorder that swallows concurrency conflicts fails run(), naming duplicateRejected and what was seen")
    func conflictSwallowingRecorderFails() async throws {
        let kit = RecorderConformance {
            let r = ConflictSwallowingRecorder()
            return .init(recorder: r, snapshots: r)
        }
        let failures = try #require(await #expect(throws: ConformanceFailures.self) { try await kit.run() })
        let duplicate = try #require(failures.failures.first { $0.behaviour == RecorderConformance.Behaviour.duplicateRejected.rawValue })
        #expect(duplicate.suite == "RecorderConformance")
        #expect(duplicate.expected.contains("concurrencyConflict"))
        #expect(duplicate.observed == "it returned normally")
        #expect(duplicate.description.contains("RecorderConformance.duplicateRejected"))
        // Every failure is about conflicts; the behaviours that have none pass.
        #expect(Set(failures.behaviours) == ["duplicateRejected", "conflictingBatchWritesNothing", "duplicateWithinBatch",
                                             "outOfOrderVersions", "concurrentSameAggregate"])
        // check(_:) throws the one failure.
        let one = await #expect(throws: ConformanceFailure.self) { try await kit.check(.duplicateRejected) }
        #expect(one?.behaviour == "duplicateRejected")
        try await kit.check(.roundTrip)
    }

    @Test("A key store that lets a shredded scope get a new key fails run(), naming insertAfterShredRefused")
    func resurrectingKeyStoreFails() async throws {
        let kit = KeyStoreConformance { .init(keyStore: ResurrectingKeyStore()) }
        let failures = try #require(await #expect(throws: ConformanceFailures.self) { try await kit.run() })
        let refused = try #require(failures.failures.first { $0.behaviour == KeyStoreConformance.Behaviour.insertAfterShredRefused.rawValue })
        #expect(refused.suite == "KeyStoreConformance")
        #expect(refused.expected.contains("shredded"))
        #expect(refused.observed == "it returned normally")
        #expect(Set(failures.behaviours) == ["insertAfterShredRefused", "shredNeverKeyedScope", "shredRacingInserts"])
        try await kit.check(.rewrapBatchConditions)
    }

    /// A key store whose pages ignore the cursor: every page starts at the first key.
    final class CursorIgnoringKeyStore: KeyStore {
        let inner = InMemoryKeyStore()

        func dataKeys(after cursor: DataKeyCursor?, limit: Int) async throws -> [WrappedDataKey] {
            try await inner.dataKeys(after: nil, limit: limit)
        }

        func masterKeyChecks() async throws -> [MasterKeyCheck] { try await inner.masterKeyChecks() }
        func insertMasterKeyCheck(_ check: MasterKeyCheck) async throws { try await inner.insertMasterKeyCheck(check) }
        func deleteMasterKeyCheck(kekID: String) async throws { try await inner.deleteMasterKeyCheck(kekID: kekID) }
        func dataKeys(scope: String) async throws -> [WrappedDataKey] { try await inner.dataKeys(scope: scope) }
        func insertDataKey(_ key: WrappedDataKey) async throws { try await inner.insertDataKey(key) }
        func rewrapDataKey(_ key: WrappedDataKey, previousKEKID: String) async throws -> Bool {
            try await inner.rewrapDataKey(key, previousKEKID: previousKEKID)
        }
        func tombstone(scope: String) async throws -> Tombstone? { try await inner.tombstone(scope: scope) }
        func tombstones() async throws -> [Tombstone] { try await inner.tombstones() }
        func shred(scope: String, at time: Date) async throws -> Tombstone { try await inner.shred(scope: scope, at: time) }
    }

    @Test("A key store whose pages ignore the cursor fails pagingEachKeyOnce (and the check ends: it does not page forever)")
    func cursorIgnoringKeyStoreFails() async throws {
        let kit = KeyStoreConformance { .init(keyStore: CursorIgnoringKeyStore()) }
        let failure = await #expect(throws: ConformanceFailure.self) { try await kit.check(.pagingEachKeyOnce) }
        #expect(failure?.behaviour == "pagingEachKeyOnce")
        #expect(failure?.expected.contains("pages of 1 list every key once") == true)
    }

    @Test("The in-memory recorder and key store pass run() as a whole")
    func inMemoryPassesRun() async throws {
        try await RecorderFactory.inMemory.recorderConformance.run()
        try await RecorderFactory.inMemory.keyStoreConformance.run()
    }

    @Test("A failure names scopes and versions but never a key's wrapped bytes")
    func failuresHideWrappedBytes() async throws {
        let kit = KeyStoreConformance { .init(keyStore: ResurrectingKeyStore()) }
        let failures = try #require(await #expect(throws: ConformanceFailures.self) { try await kit.run() })
        for f in failures.failures {
            // The suite's made-up keys are 60 copies of one byte; no run of them appears.
            #expect(!f.description.contains("[1, 1, 1"))
            #expect(!f.description.contains("wrapped: ["))
        }
    }
}
