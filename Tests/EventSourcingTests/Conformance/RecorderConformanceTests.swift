import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Behaviour every recorder must share, run against each of ``RecorderFactory/all``.
/// Records are built by hand with arbitrary bytes: a recorder stores `state` opaquely.
@Suite("Recorder conformance")
struct RecorderConformanceTests {
    private static func event(_ id: UUID, _ version: Int, topic: String = "Thing.happened",
                              state: [UInt8]? = nil) -> StoredEvent {
        StoredEvent(originatorID: id, originatorVersion: version, topic: topic,
                    state: state ?? [0xE5, 0x53, UInt8(truncatingIfNeeded: version), 0x00, 0xFF])
    }

    private static func allNotifications(_ r: any ApplicationRecorder) async throws -> [StoredNotification] {
        try await r.selectNotifications(start: 1, limit: 1_000_000, stop: nil, topics: [])
    }

    // MARK: Empty store

    @Test("an empty store selects no events, no notifications and has no max notification id",
          arguments: RecorderFactory.all)
    func emptyStore(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let r = store.recorder
            #expect(try await r.selectEvents(originatorID: UUID()).isEmpty)
            #expect(try await r.selectEvents(originatorID: UUID(), gt: 0, lte: 10, desc: true, limit: 5).isEmpty)
            #expect(try await r.selectNotifications(start: 1, limit: 10, stop: nil, topics: []).isEmpty)
            #expect(try await r.selectNotifications(start: 1, limit: 10, stop: 5, topics: ["Thing.happened"]).isEmpty)
            #expect(try await r.maxNotificationID() == nil)
            #expect(try await store.snapshots.selectSnapshot(originatorID: UUID(), lte: nil) == nil)
        }
    }

    @Test("events of an unknown aggregate are empty while others exist", arguments: RecorderFactory.all)
    func unknownAggregate(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            _ = try await store.recorder.insertEvents([Self.event(UUID(), 1)])
            #expect(try await store.recorder.selectEvents(originatorID: UUID()).isEmpty)
        }
    }

    // MARK: Round trip

    @Test("id, version, topic and state bytes round trip exactly, including empty and binary state",
          arguments: RecorderFactory.all)
    func roundTrip(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            let states: [[UInt8]] = [
                [],
                [0x00],
                [0x00, 0x00, 0x01, 0x00, 0xFF, 0x00],
                Array(0...255),
                pseudoRandomBytes(70_000, seed: 1),
            ]
            let topics = ["Dog.registered", "Dog.addedTrick", "Ünïcode.tøpic", "a", "x.y.z#snapshot-like"]
            let events = states.indices.map { i in
                StoredEvent(originatorID: id, originatorVersion: i + 1, topic: topics[i], state: states[i])
            }
            let ids = try await store.recorder.insertEvents(events)
            #expect(ids == [1, 2, 3, 4, 5])

            let back = try await store.recorder.selectEvents(originatorID: id)
            #expect(back.count == events.count)
            for (b, e) in zip(back, events) {
                #expect(b.originatorID == e.originatorID)
                #expect(b.originatorVersion == e.originatorVersion)
                #expect(b.topic == e.topic)
                #expect(b.state == e.state, "state of version \(e.originatorVersion) changed in storage")
            }

            let notes = try await Self.allNotifications(store.recorder)
            #expect(notes.map(\.id) == [1, 2, 3, 4, 5])
            #expect(notes.map(\.storedEvent) == events)
        }
    }

    // MARK: Optimistic concurrency

    @Test("a duplicate (id, version) is rejected with a conflict naming it, and the stored event is kept",
          arguments: RecorderFactory.all)
    func duplicateRejected(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            let original = Self.event(id, 1, state: [1, 2, 3])
            _ = try await store.recorder.insertEvents([original])
            let e = await expectESError(.concurrencyConflict) {
                try await store.recorder.insertEvents([Self.event(id, 1, state: [9, 9, 9])])
            }
            #expect(e?.originatorID == id)
            #expect(e?.originatorVersion == 1)
            #expect(try await store.recorder.selectEvents(originatorID: id) == [original])
            #expect(try await store.recorder.maxNotificationID() == 1)
        }
    }

    @Test("a batch with one conflicting event writes none of its events and burns no notification id",
          arguments: RecorderFactory.all)
    func conflictingBatchWritesNothing(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let (a, b, c) = (UUID(), UUID(), UUID())
            _ = try await store.recorder.insertEvents([Self.event(a, 1), Self.event(a, 2)])
            let before = try await Self.allNotifications(store.recorder)

            let e = await expectESError(.concurrencyConflict) {
                try await store.recorder.insertEvents([Self.event(b, 1), Self.event(b, 2), Self.event(a, 2),
                                                       Self.event(c, 1)])
            }
            #expect(e?.originatorID == a)
            #expect(e?.originatorVersion == 2)

            #expect(try await store.recorder.selectEvents(originatorID: b).isEmpty)
            #expect(try await store.recorder.selectEvents(originatorID: c).isEmpty)
            #expect(try await store.recorder.selectEvents(originatorID: a).map(\.originatorVersion) == [1, 2])
            #expect(try await Self.allNotifications(store.recorder) == before)
            #expect(try await store.recorder.maxNotificationID() == 2)

            // The failed batch consumed no notification ids: the next insert continues at 3.
            #expect(try await store.recorder.insertEvents([Self.event(b, 1)]) == [3])
        }
    }

    @Test("a batch holding the same (id, version) twice is rejected and writes nothing",
          arguments: RecorderFactory.all)
    func duplicateWithinBatch(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let (a, b) = (UUID(), UUID())
            let e = await expectESError(.concurrencyConflict) {
                try await store.recorder.insertEvents([Self.event(b, 1), Self.event(a, 1, state: [1]),
                                                       Self.event(a, 1, state: [2])])
            }
            #expect(e?.originatorID == a)
            #expect(e?.originatorVersion == 1)
            #expect(try await store.recorder.selectEvents(originatorID: a).isEmpty)
            #expect(try await store.recorder.selectEvents(originatorID: b).isEmpty)
            #expect(try await store.recorder.maxNotificationID() == nil)
            #expect(try await Self.allNotifications(store.recorder).isEmpty)
        }
    }

    @Test("two events of one aggregate in one batch are both stored, in order", arguments: RecorderFactory.all)
    func twoEventsInOneBatch(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            let ids = try await store.recorder.insertEvents([Self.event(id, 1, topic: "T.a"), Self.event(id, 2, topic: "T.b")])
            #expect(ids == [1, 2])
            let back = try await store.recorder.selectEvents(originatorID: id)
            #expect(back.map(\.originatorVersion) == [1, 2])
            #expect(back.map(\.topic) == ["T.a", "T.b"])
        }
    }

    @Test("an event may skip versions and later fill the gap; selects stay sorted by version",
          arguments: RecorderFactory.all)
    func outOfOrderVersions(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            _ = try await store.recorder.insertEvents([Self.event(id, 3)])
            _ = try await store.recorder.insertEvents([Self.event(id, 1)])
            _ = try await store.recorder.insertEvents([Self.event(id, 2)])
            #expect(try await store.recorder.selectEvents(originatorID: id).map(\.originatorVersion) == [1, 2, 3])
            await expectESError(.concurrencyConflict) { try await store.recorder.insertEvents([Self.event(id, 3)]) }
            // Notifications stay in commit order, not version order.
            #expect(try await Self.allNotifications(store.recorder).map(\.originatorVersion) == [3, 1, 2])
        }
    }

    // MARK: Selecting events

    @Test("descending with limit 1 gives the last event", arguments: RecorderFactory.all)
    func descLimitOne(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            _ = try await store.recorder.insertEvents((1...5).map { Self.event(id, $0) })
            _ = try await store.recorder.insertEvents([Self.event(id, 6)])
            let r = store.recorder
            #expect(try await r.selectEvents(originatorID: id, gt: nil, lte: nil, desc: true, limit: 1).map(\.originatorVersion) == [6])
            #expect(try await r.selectEvents(originatorID: id, gt: nil, lte: nil, desc: true, limit: nil).map(\.originatorVersion) == [6, 5, 4, 3, 2, 1])
            #expect(try await r.selectEvents(originatorID: id, gt: nil, lte: nil, desc: false, limit: 2).map(\.originatorVersion) == [1, 2])
            #expect(try await r.selectEvents(originatorID: id, gt: nil, lte: 4, desc: true, limit: 1).map(\.originatorVersion) == [4])
        }
    }

    @Test("gt and lte bound the versions, alone and together; limit 0 gives nothing", arguments: RecorderFactory.all)
    func ranges(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            _ = try await store.recorder.insertEvents((1...6).map { Self.event(id, $0) })
            let r = store.recorder
            func versions(gt: Int?, lte: Int?, desc: Bool = false, limit: Int? = nil) async throws -> [Int] {
                try await r.selectEvents(originatorID: id, gt: gt, lte: lte, desc: desc, limit: limit).map(\.originatorVersion)
            }
            #expect(try await versions(gt: 2, lte: nil) == [3, 4, 5, 6])
            #expect(try await versions(gt: nil, lte: 3) == [1, 2, 3])
            #expect(try await versions(gt: 1, lte: 4) == [2, 3, 4])
            #expect(try await versions(gt: 0, lte: 6) == [1, 2, 3, 4, 5, 6])
            #expect(try await versions(gt: 6, lte: nil) == [])
            #expect(try await versions(gt: nil, lte: 0) == [])
            #expect(try await versions(gt: 3, lte: 3) == [])
            #expect(try await versions(gt: 4, lte: 2) == [])
            #expect(try await versions(gt: nil, lte: 100) == [1, 2, 3, 4, 5, 6])
            #expect(try await versions(gt: 1, lte: 5, desc: true, limit: 2) == [5, 4])
            #expect(try await versions(gt: 1, lte: 5, desc: false, limit: 2) == [2, 3])
            #expect(try await versions(gt: nil, lte: nil, limit: 0) == [])
            #expect(try await versions(gt: 1, lte: 5, desc: true, limit: 0) == [])
            #expect(try await versions(gt: nil, lte: nil, limit: 100) == [1, 2, 3, 4, 5, 6])
        }
    }

    @Test("each aggregate sees only its own events", arguments: RecorderFactory.all)
    func perIDIsolation(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let (a, b) = (UUID(), UUID())
            _ = try await store.recorder.insertEvents([Self.event(a, 1, state: [0xA1]), Self.event(b, 1, state: [0xB1])])
            _ = try await store.recorder.insertEvents([Self.event(b, 2, state: [0xB2]), Self.event(a, 2, state: [0xA2]),
                                                       Self.event(a, 3, state: [0xA3])])
            let ea = try await store.recorder.selectEvents(originatorID: a)
            let eb = try await store.recorder.selectEvents(originatorID: b)
            #expect(ea.map(\.state) == [[0xA1], [0xA2], [0xA3]])
            #expect(eb.map(\.state) == [[0xB1], [0xB2]])
            #expect(ea.allSatisfy { $0.originatorID == a })
            #expect(eb.allSatisfy { $0.originatorID == b })
            // The same version number in two aggregates is no conflict.
            #expect(try await store.recorder.insertEvents([Self.event(b, 3)]) == [6])
        }
    }

    // MARK: StoredNotification log

    @Test("notification ids are 1, 2, 3, … returned by each insert and contiguous across batches",
          arguments: RecorderFactory.all)
    func notificationIDs(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let (a, b) = (UUID(), UUID())
            var returned: [Int64] = []
            let batches: [[StoredEvent]] = [
                [Self.event(a, 1)],
                [Self.event(b, 1), Self.event(b, 2)],
                [Self.event(a, 2)],
                [Self.event(a, 3), Self.event(b, 3), Self.event(a, 4)],
            ]
            var expectedIDs: Int64 = 0
            for batch in batches {
                let ids = try await store.recorder.insertEvents(batch)
                #expect(ids == Array((expectedIDs + 1)...(expectedIDs + Int64(batch.count))))
                expectedIDs += Int64(batch.count)
                returned += ids
                #expect(try await store.recorder.maxNotificationID() == expectedIDs)
            }
            let notes = try await Self.allNotifications(store.recorder)
            #expect(notes.map(\.id) == Array(1...7))
            #expect(notes.map(\.id) == returned)
            #expect(notes.map(\.storedEvent) == batches.flatMap { $0 })
        }
    }

    /// Ten notifications: ids 1…10 with topics A.x, B.y, C.z, A.x, B.y, …
    private static func fillTenNotifications(_ r: any ApplicationRecorder) async throws -> [StoredEvent] {
        let topics = ["A.x", "B.y", "C.z"]
        let ids = [UUID(), UUID()]
        var events: [StoredEvent] = []
        for i in 0..<10 {
            events.append(Self.event(ids[i % 2], i / 2 + 1, topic: topics[i % 3], state: [UInt8(i)]))
        }
        _ = try await r.insertEvents(Array(events[0..<4]))
        _ = try await r.insertEvents(Array(events[4..<5]))
        _ = try await r.insertEvents(Array(events[5..<10]))
        return events
    }

    @Test("selectNotifications honours start, limit and stop, including their edge cases",
          arguments: RecorderFactory.all)
    func selectNotificationsRanges(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let events = try await Self.fillTenNotifications(store.recorder)
            let r = store.recorder
            func ids(_ start: Int64, _ limit: Int, _ stop: Int64? = nil, _ topics: [String] = []) async throws -> [Int64] {
                try await r.selectNotifications(start: start, limit: limit, stop: stop, topics: topics).map(\.id)
            }
            #expect(try await ids(1, 100) == Array(1...10))
            #expect(try await ids(1, 10) == Array(1...10))
            #expect(try await ids(1, 3) == [1, 2, 3])
            #expect(try await ids(4, 3) == [4, 5, 6])
            #expect(try await ids(5, 100, 7) == [5, 6, 7])
            #expect(try await ids(5, 2, 9) == [5, 6])
            #expect(try await ids(7, 1, 7) == [7])
            #expect(try await ids(10, 5) == [10])
            #expect(try await ids(11, 5) == [])
            #expect(try await ids(1000, 5) == [])
            #expect(try await ids(5, 10, 3) == [], "stop below start gives nothing")
            #expect(try await ids(1, 10, 100) == Array(1...10))
            #expect(try await ids(1, 10, 0) == [])

            let page = try await r.selectNotifications(start: 3, limit: 2, stop: nil, topics: [])
            #expect(page.map(\.storedEvent) == Array(events[2..<4]))
        }
    }

    @Test("selectNotifications filters by topics, with start, limit and stop applied to the filtered log",
          arguments: RecorderFactory.all)
    func selectNotificationsTopics(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            _ = try await Self.fillTenNotifications(store.recorder)
            let r = store.recorder
            func ids(_ start: Int64, _ limit: Int, _ stop: Int64? = nil, _ topics: [String]) async throws -> [Int64] {
                try await r.selectNotifications(start: start, limit: limit, stop: stop, topics: topics).map(\.id)
            }
            // A.x at 1, 4, 7, 10; B.y at 2, 5, 8; C.z at 3, 6, 9.
            #expect(try await ids(1, 100, nil, ["A.x"]) == [1, 4, 7, 10])
            #expect(try await ids(1, 100, nil, ["A.x", "C.z"]) == [1, 3, 4, 6, 7, 9, 10])
            #expect(try await ids(1, 100, nil, ["C.z", "B.y", "A.x"]) == Array(1...10))
            #expect(try await ids(1, 100, nil, ["Nope.none"]) == [])
            #expect(try await ids(1, 100, nil, ["A"]) == [], "topics match exactly, not by prefix")
            #expect(try await ids(1, 100, nil, ["Nope.none", "B.y"]) == [2, 5, 8])
            #expect(try await ids(2, 2, nil, ["A.x"]) == [4, 7], "limit counts matching notifications only")
            #expect(try await ids(5, 100, nil, ["A.x", "B.y"]) == [5, 7, 8, 10])
            #expect(try await ids(2, 100, 8, ["A.x"]) == [4, 7])
            #expect(try await ids(11, 100, nil, ["A.x"]) == [])
            #expect(try await ids(8, 100, 6, ["A.x"]) == [])
            let notes = try await r.selectNotifications(start: 1, limit: 100, stop: nil, topics: ["C.z"])
            #expect(notes.allSatisfy { $0.topic == "C.z" })
            #expect(notes.map(\.state) == [[2], [5], [8]])
        }
    }

    // MARK: Concurrency

    @Test("10 concurrent writers × 100 saves on distinct aggregates lose nothing and leave no gaps",
          arguments: RecorderFactory.all)
    func concurrentDistinctWriters(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let recorder = store.recorder
            let writers = 10, saves = 100
            let aggregateIDs = (0..<writers).map { _ in UUID() }
            let returned = try await withThrowingTaskGroup(of: [Int64].self) { group in
                for id in aggregateIDs {
                    group.addTask {
                        var ids: [Int64] = []
                        for v in 1...saves {
                            ids += try await recorder.insertEvents([Self.event(id, v, state: [UInt8(v % 256)])])
                        }
                        return ids
                    }
                }
                var all: [Int64] = []
                for try await ids in group {
                    #expect(ids == ids.sorted(), "one writer's notification ids must increase")
                    all += ids
                }
                return all
            }
            let total = writers * saves
            #expect(returned.sorted() == Array(1...Int64(total)))
            #expect(try await recorder.maxNotificationID() == Int64(total))
            let notes = try await recorder.selectNotifications(start: 1, limit: total + 10, stop: nil, topics: [])
            #expect(notes.map(\.id) == Array(1...Int64(total)))
            for id in aggregateIDs {
                let versions = try await recorder.selectEvents(originatorID: id).map(\.originatorVersion)
                #expect(versions == Array(1...saves))
                // Within one aggregate, the log holds its versions in order.
                #expect(notes.filter { $0.originatorID == id }.map(\.originatorVersion) == Array(1...saves))
            }
        }
    }

    @Test("8 concurrent writers racing on one aggregate get exactly one winner per version and no gaps",
          arguments: RecorderFactory.all)
    func concurrentSameAggregate(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let recorder = store.recorder
            let id = UUID()
            let writers = 8, target = 50
            let wins = try await withThrowingTaskGroup(of: [(version: Int, writer: Int)].self) { group in
                for w in 0..<writers {
                    group.addTask {
                        var won: [(version: Int, writer: Int)] = []
                        var v = 1
                        while v <= target {
                            do {
                                _ = try await recorder.insertEvents([Self.event(id, v, state: [UInt8(w), UInt8(v)])])
                                won.append((v, w))
                                v += 1
                            } catch let e as EventSourcingError where e.code == .concurrencyConflict {
                                #expect(e.originatorID == id)
                                let latest = try await recorder.selectEvents(originatorID: id, gt: nil, lte: nil,
                                                                             desc: true, limit: 1)
                                v = max(v + 1, (latest.first?.originatorVersion ?? 0) + 1)
                            }
                        }
                        return won
                    }
                }
                var all: [(version: Int, writer: Int)] = []
                for try await w in group { all += w }
                return all
            }
            let stored = try await recorder.selectEvents(originatorID: id)
            #expect(stored.map(\.originatorVersion) == Array(1...target))
            #expect(wins.count == target, "every version has exactly one winner")
            #expect(wins.map(\.version).sorted() == Array(1...target))
            // The stored event of each version is the winner's.
            let winnerOf = Dictionary(uniqueKeysWithValues: wins.map { ($0.version, $0.writer) })
            for e in stored {
                #expect(e.state == [UInt8(winnerOf[e.originatorVersion] ?? 255), UInt8(e.originatorVersion)])
            }
            let notes = try await recorder.selectNotifications(start: 1, limit: 1000, stop: nil, topics: [])
            #expect(notes.map(\.id) == Array(1...Int64(target)))
            #expect(notes.map(\.originatorVersion) == Array(1...target))
        }
    }

    // MARK: Snapshots

    private static func snapshot(_ id: UUID, _ version: Int, state: [UInt8]) -> StoredEvent {
        StoredEvent(originatorID: id, originatorVersion: version, topic: "Thing#snapshot", state: state)
    }

    @Test("selectSnapshot gives the latest snapshot at or below lte, or none", arguments: RecorderFactory.all)
    func snapshotSelect(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let s = store.snapshots
            let (id, other) = (UUID(), UUID())
            #expect(try await s.selectSnapshot(originatorID: id, lte: nil) == nil)
            for v in [5, 2, 9] { try await s.insertSnapshot(Self.snapshot(id, v, state: [UInt8(v), 0])) }
            try await s.insertSnapshot(Self.snapshot(other, 20, state: [20]))

            #expect(try await s.selectSnapshot(originatorID: id, lte: nil) == Self.snapshot(id, 9, state: [9, 0]))
            #expect(try await s.selectSnapshot(originatorID: id, lte: 100)?.originatorVersion == 9)
            #expect(try await s.selectSnapshot(originatorID: id, lte: 9)?.originatorVersion == 9)
            #expect(try await s.selectSnapshot(originatorID: id, lte: 8)?.originatorVersion == 5)
            #expect(try await s.selectSnapshot(originatorID: id, lte: 5) == Self.snapshot(id, 5, state: [5, 0]))
            #expect(try await s.selectSnapshot(originatorID: id, lte: 4)?.originatorVersion == 2)
            #expect(try await s.selectSnapshot(originatorID: id, lte: 1) == nil)
            #expect(try await s.selectSnapshot(originatorID: other, lte: 19) == nil)
            #expect(try await s.selectSnapshot(originatorID: other, lte: nil)?.state == [20])
            #expect(try await s.selectSnapshot(originatorID: UUID(), lte: nil) == nil)
        }
    }

    @Test("a second snapshot of the same version replaces the first", arguments: RecorderFactory.all)
    func snapshotReplace(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let s = store.snapshots
            let id = UUID()
            try await s.insertSnapshot(Self.snapshot(id, 3, state: [1, 1, 1]))
            try await s.insertSnapshot(Self.snapshot(id, 3, state: [2, 2]))
            #expect(try await s.selectSnapshot(originatorID: id, lte: nil)?.state == [2, 2])
            #expect(try await s.selectSnapshot(originatorID: id, lte: 3)?.state == [2, 2])
            // Replacing an older version keeps the newer one the latest.
            try await s.insertSnapshot(Self.snapshot(id, 7, state: [7]))
            try await s.insertSnapshot(Self.snapshot(id, 3, state: [3]))
            #expect(try await s.selectSnapshot(originatorID: id, lte: nil)?.state == [7])
            #expect(try await s.selectSnapshot(originatorID: id, lte: 6)?.state == [3])
        }
    }

    @Test("snapshots are neither events nor notifications", arguments: RecorderFactory.all)
    func snapshotsAreSeparate(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let id = UUID()
            try await store.snapshots.insertSnapshot(Self.snapshot(id, 1, state: [1]))
            #expect(try await store.recorder.selectEvents(originatorID: id).isEmpty)
            #expect(try await store.recorder.maxNotificationID() == nil)
            // And an event with the snapshot's coordinates is no conflict.
            #expect(try await store.recorder.insertEvents([Self.event(id, 1)]) == [1])
        }
    }

    /// An encrypted snapshot state by hand, per the StateHeader layout: magic, format 1,
    /// flags (encrypted | snapshot), scope length, scope, key version u32 BE, nonce(12), then a fake body.
    private static func handmadeEncryptedState(scope: String, keyVersion: UInt32 = 1) -> [UInt8] {
        let s = Array(scope.utf8)
        var b: [UInt8] = [0xE5, 0x53, 0x01, 0x02 | 0x04, UInt8(s.count)] + s
        b += [UInt8(keyVersion >> 24 & 0xFF), UInt8(keyVersion >> 16 & 0xFF), UInt8(keyVersion >> 8 & 0xFF), UInt8(keyVersion & 0xFF)]
        b += [UInt8](repeating: 0x11, count: 12)
        b += pseudoRandomBytes(40, seed: UInt64(s.count))
        return b
    }

    @Test("deleteSnapshots(keyScope:) deletes exactly the snapshots whose header names the scope (handmade headers)",
          arguments: RecorderFactory.all)
    func deleteSnapshotsHandmade(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let s = store.snapshots
            let (a1, a2, b, prefix, plain) = (UUID(), UUID(), UUID(), UUID(), UUID())
            let aState = Self.handmadeEncryptedState(scope: "person-a")
            #expect(StateHeader.peekKeyScope(aState) == "person-a", "the handmade header must parse")
            try await s.insertSnapshot(Self.snapshot(a1, 2, state: aState))
            try await s.insertSnapshot(Self.snapshot(a1, 4, state: Self.handmadeEncryptedState(scope: "person-a", keyVersion: 2)))
            try await s.insertSnapshot(Self.snapshot(a2, 3, state: Self.handmadeEncryptedState(scope: "person-a")))
            try await s.insertSnapshot(Self.snapshot(b, 3, state: Self.handmadeEncryptedState(scope: "person-b")))
            try await s.insertSnapshot(Self.snapshot(prefix, 3, state: Self.handmadeEncryptedState(scope: "person-a2")))
            try await s.insertSnapshot(Self.snapshot(plain, 1, state: [0xE5, 0x53, 0x01, 0x04, 0x7B, 0x7D]))

            #expect(try await s.deleteSnapshots(keyScope: "person-a") == 3)
            #expect(try await s.selectSnapshot(originatorID: a1, lte: nil) == nil)
            #expect(try await s.selectSnapshot(originatorID: a2, lte: nil) == nil)
            #expect(try await s.selectSnapshot(originatorID: b, lte: nil)?.keyScope == "person-b")
            #expect(try await s.selectSnapshot(originatorID: prefix, lte: nil)?.keyScope == "person-a2")
            #expect(try await s.selectSnapshot(originatorID: plain, lte: nil)?.state == [0xE5, 0x53, 0x01, 0x04, 0x7B, 0x7D])
            #expect(try await s.deleteSnapshots(keyScope: "person-a") == 0)
            #expect(try await s.deleteSnapshots(keyScope: "nobody") == 0)
            #expect(try await s.deleteSnapshots(keyScope: "person-") == 0)
            // A scope can get snapshots again after a delete (e.g. a reused aggregate id scope).
            try await s.insertSnapshot(Self.snapshot(a1, 5, state: Self.handmadeEncryptedState(scope: "person-a")))
            #expect(try await s.selectSnapshot(originatorID: a1, lte: nil)?.originatorVersion == 5)
        }
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
