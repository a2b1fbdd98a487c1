import EventSourcing
import Foundation

/// The behaviour every `ApplicationRecorder` (and, optionally, `SnapshotRecorder`) must
/// show, runnable against any implementation: the suite the library runs against its own
/// in-memory, SQLite and PostgreSQL recorders.
///
/// Give it a function that makes a fresh, empty store; each behaviour gets its own store, which
/// the suite closes afterwards. Run everything with ``run()``, or one behaviour at a time with
/// ``check(_:)`` (to parameterise a test over `Behaviour.allCases`):
///
/// ```swift
/// import EventSourcingTestKit
/// import Testing
///
/// @Test(arguments: RecorderConformance.Behaviour.allCases)
/// func conformance(_ behaviour: RecorderConformance.Behaviour) async throws {
///     try await RecorderConformance { .init(recorder: MyRecorder(), snapshots: nil) }
///         .check(behaviour)
/// }
/// ```
///
/// A recorder stores `state` opaquely, so the suite writes records with arbitrary bytes.
/// Failures are thrown as ``ConformanceFailure`` (one behaviour) or ``ConformanceFailures``
/// (from ``run()``), naming the behaviour, what was expected and what was seen.
public struct RecorderConformance: Sendable {
    /// A store under test and how to release it.
    public struct Subject: Sendable {
        /// The recorder of events and notifications.
        public var recorder: any ApplicationRecorder
        /// The recorder of snapshots, if the store records them (usually the same object).
        public var snapshots: (any SnapshotRecorder)?
        /// Releases the store (closes connections, removes files); called once per behaviour.
        public var close: @Sendable () async throws -> Void

        /// Creates a subject.
        public init(recorder: any ApplicationRecorder, snapshots: (any SnapshotRecorder)?,
                    close: @escaping @Sendable () async throws -> Void = {}) {
            self.recorder = recorder
            self.snapshots = snapshots
            self.close = close
        }
    }

    /// One behaviour the suite checks.
    public enum Behaviour: String, CaseIterable, Sendable, CustomStringConvertible {
        case emptyStore
        case unknownAggregate
        case roundTrip
        case duplicateRejected
        case conflictingBatchWritesNothing
        case duplicateWithinBatch
        case twoEventsInOneBatch
        case outOfOrderVersions
        case descendingWithLimit
        case versionRanges
        case perAggregateIsolation
        case notificationIDs
        case notificationRanges
        case notificationTopics
        case concurrentDistinctWriters
        case concurrentSameAggregate
        case snapshotSelect
        case snapshotReplace
        case snapshotsAreSeparate
        case deleteSnapshotsByKeyScope

        /// Whether the behaviour needs the subject's ``Subject/snapshots``.
        public var needsSnapshots: Bool {
            switch self {
            case .snapshotSelect, .snapshotReplace, .snapshotsAreSeparate, .deleteSnapshotsByKeyScope: true
            default: false
            }
        }

        /// What the behaviour is, in a sentence.
        public var summary: String {
            switch self {
            case .emptyStore: "an empty store selects no events, no notifications and has no max notification id"
            case .unknownAggregate: "events of an unknown aggregate are empty while others exist"
            case .roundTrip: "id, version, topic and state bytes round trip exactly, including empty and binary state"
            case .duplicateRejected: "a duplicate (id, version) is rejected with a conflict naming it, and the stored event is kept"
            case .conflictingBatchWritesNothing: "a batch with one conflicting event writes none of its events and burns no notification id"
            case .duplicateWithinBatch: "a batch holding the same (id, version) twice is rejected and writes nothing"
            case .twoEventsInOneBatch: "two events of one aggregate in one batch are both stored, in order"
            case .outOfOrderVersions: "an event may skip versions and later fill the gap; selects stay sorted by version"
            case .descendingWithLimit: "descending with limit 1 gives the last event"
            case .versionRanges: "gt and lte bound the versions, alone and together; limit 0 gives nothing"
            case .perAggregateIsolation: "each aggregate sees only its own events"
            case .notificationIDs: "notification ids are 1, 2, 3, … returned by each insert and contiguous across batches"
            case .notificationRanges: "selectNotifications honours start, limit and stop, including their edge cases"
            case .notificationTopics: "selectNotifications filters by topics, with start, limit and stop applied to the filtered log"
            case .concurrentDistinctWriters: "10 concurrent writers × 100 saves on distinct aggregates lose nothing and leave no gaps"
            case .concurrentSameAggregate: "8 concurrent writers racing on one aggregate get exactly one winner per version and no gaps"
            case .snapshotSelect: "selectSnapshot gives the latest snapshot at or below lte, or none"
            case .snapshotReplace: "a second snapshot of the same version replaces the first"
            case .snapshotsAreSeparate: "snapshots are neither events nor notifications"
            case .deleteSnapshotsByKeyScope: "deleteSnapshots(keyScope:) deletes exactly the snapshots stamped with the scope"
            }
        }

        public var description: String { rawValue }
    }

    private let makeStore: @Sendable () async throws -> Subject
    private let recordsSnapshots: Bool

    /// Creates the suite.
    /// - Parameters:
    ///   - recordsSnapshots: whether the subjects record snapshots; when false, ``run()`` leaves
    ///     out the behaviours that need them (``Behaviour/needsSnapshots``).
    ///   - makeStore: makes a fresh, empty store; called once per behaviour.
    public init(recordsSnapshots: Bool = true, makeStore: @escaping @Sendable () async throws -> Subject) {
        self.recordsSnapshots = recordsSnapshots
        self.makeStore = makeStore
    }

    /// The behaviours ``run()`` checks.
    public var behaviours: [Behaviour] {
        Behaviour.allCases.filter { recordsSnapshots || !$0.needsSnapshots }
    }

    /// Checks every behaviour of ``behaviours``, each against a fresh store.
    /// - Throws: ``ConformanceFailures`` listing every behaviour that failed.
    public func run() async throws {
        try await runEach(behaviours, check)
    }

    /// Checks one behaviour against a fresh store, which is closed afterwards.
    /// - Throws: ``ConformanceFailure`` naming the behaviour.
    public func check(_ behaviour: Behaviour) async throws(ConformanceFailure) {
        try await checkOnFreshSubject(suite: "RecorderConformance", behaviour: behaviour.rawValue, subject: "store",
                                      make: makeStore, close: { try await $0.close() }) { c, subject in
            try await Self.body(of: behaviour)(c, subject)
        }
    }

    typealias Body = @Sendable (Checker, Subject) async throws -> Void

    private static func body(of behaviour: Behaviour) -> Body {
        switch behaviour {
        case .emptyStore: emptyStore
        case .unknownAggregate: unknownAggregate
        case .roundTrip: roundTrip
        case .duplicateRejected: duplicateRejected
        case .conflictingBatchWritesNothing: conflictingBatchWritesNothing
        case .duplicateWithinBatch: duplicateWithinBatch
        case .twoEventsInOneBatch: twoEventsInOneBatch
        case .outOfOrderVersions: outOfOrderVersions
        case .descendingWithLimit: descendingWithLimit
        case .versionRanges: versionRanges
        case .perAggregateIsolation: perAggregateIsolation
        case .notificationIDs: notificationIDs
        case .notificationRanges: notificationRanges
        case .notificationTopics: notificationTopics
        case .concurrentDistinctWriters: concurrentDistinctWriters
        case .concurrentSameAggregate: concurrentSameAggregate
        case .snapshotSelect: snapshotSelect
        case .snapshotReplace: snapshotReplace
        case .snapshotsAreSeparate: snapshotsAreSeparate
        case .deleteSnapshotsByKeyScope: deleteSnapshotsByKeyScope
        }
    }
}

// MARK: - Helpers

extension RecorderConformance {
    /// A record stamped with the key scope its header names, as the mapper stamps the records it seals.
    static func event(_ id: UUID, _ version: Int, topic: String = "Thing.happened", state: [UInt8]? = nil) -> StoredEvent {
        let state = state ?? [0xE5, 0x53, UInt8(truncatingIfNeeded: version), 0x00, 0xFF]
        return StoredEvent(originatorID: id, originatorVersion: version, topic: topic, state: state,
                           keyScope: StateHeader.peekKeyScope(state))
    }

    static func snapshot(_ id: UUID, _ version: Int, state: [UInt8]) -> StoredEvent {
        StoredEvent(originatorID: id, originatorVersion: version, topic: "Thing#snapshot", state: state,
                    keyScope: StateHeader.peekKeyScope(state))
    }

    static func allNotifications(_ r: any ApplicationRecorder) async throws -> [StoredNotification] {
        try await r.selectNotifications(start: 1, limit: 1_000_000, stop: nil, topics: [])
    }

    /// Events described without their (possibly large) state: id, version, topic, state length.
    static func describe(_ events: [StoredEvent]) -> String {
        "[" + events.map { "(\($0.originatorID.uuidString.prefix(8)) v\($0.originatorVersion) \($0.topic) \($0.state.count) bytes)" }
            .joined(separator: ", ") + "]"
    }

    static func snapshots(_ subject: Subject, _ c: Checker) throws(ConformanceFailure) -> any SnapshotRecorder {
        guard let s = subject.snapshots else {
            throw c.fail(expected: "a subject that records snapshots", observed: "Subject.snapshots is nil")
        }
        return s
    }

    /// Deterministic pseudo-random bytes (SplitMix64), so a failure reproduces.
    static func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var x = seed
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            for i in 0..<8 where out.count < count { out.append(UInt8(truncatingIfNeeded: z >> (8 * UInt64(i)))) }
        }
        return out
    }

    /// An encrypted snapshot state by hand, per the record header layout (SECURITY.md): magic,
    /// format 1, flags (encrypted | snapshot), scope length, scope, key version u32 BE, nonce(12),
    /// then a made-up body.
    static func handmadeEncryptedState(scope: String, keyVersion: UInt32 = 1) -> [UInt8] {
        let s = Array(scope.utf8)
        var b: [UInt8] = [0xE5, 0x53, 0x01, 0x02 | 0x04, UInt8(s.count)] + s
        b += [UInt8(keyVersion >> 24 & 0xFF), UInt8(keyVersion >> 16 & 0xFF), UInt8(keyVersion >> 8 & 0xFF), UInt8(keyVersion & 0xFF)]
        b += [UInt8](repeating: 0x11, count: 12)
        b += pseudoRandomBytes(40, seed: UInt64(s.count))
        return b
    }

    /// Ten notifications: ids 1…10 with topics A.x, B.y, C.z, A.x, B.y, … in three batches.
    static func fillTenNotifications(_ r: any ApplicationRecorder) async throws -> [StoredEvent] {
        let topics = ["A.x", "B.y", "C.z"]
        let ids = [UUID(), UUID()]
        var events: [StoredEvent] = []
        for i in 0..<10 {
            events.append(event(ids[i % 2], i / 2 + 1, topic: topics[i % 3], state: [UInt8(i)]))
        }
        _ = try await r.insertEvents(Array(events[0..<4]))
        _ = try await r.insertEvents(Array(events[4..<5]))
        _ = try await r.insertEvents(Array(events[5..<10]))
        return events
    }
}

// MARK: - Empty store

extension RecorderConformance {
    static let emptyStore: Body = { c, store in
        let r = store.recorder
        try c.equal(try await r.selectEvents(originatorID: UUID()).count, 0, "events of an unknown id")
        try c.equal(try await r.selectEvents(originatorID: UUID(), after: 0, upTo: 10, order: .descending, limit: 5).count, 0,
                    "events of an unknown id, descending with bounds")
        try c.equal(try await r.selectNotifications(start: 1, limit: 10, stop: nil, topics: []).count, 0, "notifications")
        try c.equal(try await r.selectNotifications(start: 1, limit: 10, stop: 5, topics: ["Thing.happened"]).count, 0,
                    "notifications with stop and topics")
        try c.equal(try await r.maxNotificationID(), nil, "maxNotificationID()")
        if let s = store.snapshots {
            try c.equal(try await s.selectSnapshot(originatorID: UUID(), lte: nil), nil, "the snapshot of an unknown id",
                        describe: { $0.map { describe([$0]) } ?? "nil" })
        }
    }

    static let unknownAggregate: Body = { c, store in
        _ = try await store.recorder.insertEvents([event(UUID(), 1)])
        try c.equal(try await store.recorder.selectEvents(originatorID: UUID()).count, 0, "events of an unknown id")
    }
}

// MARK: - Round trip

extension RecorderConformance {
    static let roundTrip: Body = { c, store in
        let id = UUID()
        let states: [[UInt8]] = [[], [0x00], [0x00, 0x00, 0x01, 0x00, 0xFF, 0x00], Array(0...255), pseudoRandomBytes(70_000, seed: 1)]
        let topics = ["Dog.registered", "Dog.addedTrick", "Ünïcode.tøpic", "a", "x.y.z#snapshot-like"]
        let events = states.indices.map { i in
            StoredEvent(originatorID: id, originatorVersion: i + 1, topic: topics[i], state: states[i])
        }
        try c.equal(try await store.recorder.insertEvents(events), [1, 2, 3, 4, 5], "the notification ids of a first insert")
        let back = try await store.recorder.selectEvents(originatorID: id)
        try c.equal(back.count, events.count, "the number of events read back")
        for (b, e) in zip(back, events) {
            try c.equal(b.originatorID, e.originatorID, "the originator id of version \(e.originatorVersion)")
            try c.equal(b.originatorVersion, e.originatorVersion, "a version read back")
            try c.equal(b.topic, e.topic, "the topic of version \(e.originatorVersion)")
            try c.require(b.state == e.state, "the state of version \(e.originatorVersion) unchanged in storage",
                          observed: "\(b.state.count) bytes, not the \(e.state.count) stored")
        }
        let notes = try await allNotifications(store.recorder)
        try c.equal(notes.map(\.id), [1, 2, 3, 4, 5], "the notification ids")
        try c.require(notes.map(\.storedEvent) == events, "the notifications carry the stored events exactly",
                      observed: describe(notes.map(\.storedEvent)))
    }
}

// MARK: - Optimistic concurrency

extension RecorderConformance {
    static let duplicateRejected: Body = { c, store in
        let id = UUID()
        let original = event(id, 1, state: [1, 2, 3])
        _ = try await store.recorder.insertEvents([original])
        let e = try await c.eventSourcingError(.concurrencyConflict, "inserting (id, 1) again") {
            try await store.recorder.insertEvents([event(id, 1, state: [9, 9, 9])])
        }
        try c.equal(e.originatorID, id, "the conflict's originatorID")
        try c.equal(e.originatorVersion, 1, "the conflict's originatorVersion")
        try c.equal(try await store.recorder.selectEvents(originatorID: id), [original], "the stored events", describe: describe)
        try c.equal(try await store.recorder.maxNotificationID(), 1, "maxNotificationID()")
    }

    static let conflictingBatchWritesNothing: Body = { c, store in
        let (a, b, cc) = (UUID(), UUID(), UUID())
        _ = try await store.recorder.insertEvents([event(a, 1), event(a, 2)])
        let before = try await allNotifications(store.recorder)
        let e = try await c.eventSourcingError(.concurrencyConflict, "a batch holding a stored (id, version)") {
            try await store.recorder.insertEvents([event(b, 1), event(b, 2), event(a, 2), event(cc, 1)])
        }
        try c.equal(e.originatorID, a, "the conflict's originatorID")
        try c.equal(e.originatorVersion, 2, "the conflict's originatorVersion")
        try c.equal(try await store.recorder.selectEvents(originatorID: b).count, 0, "events of the batch's first aggregate")
        try c.equal(try await store.recorder.selectEvents(originatorID: cc).count, 0, "events of the batch's last aggregate")
        try c.equal(try await store.recorder.selectEvents(originatorID: a).map(\.originatorVersion), [1, 2], "the stored versions")
        try c.require(try await allNotifications(store.recorder) == before, "the notification log unchanged")
        try c.equal(try await store.recorder.maxNotificationID(), 2, "maxNotificationID()")
        // The failed batch consumed no notification ids: the next insert continues at 3.
        try c.equal(try await store.recorder.insertEvents([event(b, 1)]), [3], "the next insert's notification ids (none burnt)")
    }

    static let duplicateWithinBatch: Body = { c, store in
        let (a, b) = (UUID(), UUID())
        let e = try await c.eventSourcingError(.concurrencyConflict, "a batch naming (id, 1) twice") {
            try await store.recorder.insertEvents([event(b, 1), event(a, 1, state: [1]), event(a, 1, state: [2])])
        }
        try c.equal(e.originatorID, a, "the conflict's originatorID")
        try c.equal(e.originatorVersion, 1, "the conflict's originatorVersion")
        try c.equal(try await store.recorder.selectEvents(originatorID: a).count, 0, "events of the repeated aggregate")
        try c.equal(try await store.recorder.selectEvents(originatorID: b).count, 0, "events of the batch's other aggregate")
        try c.equal(try await store.recorder.maxNotificationID(), nil, "maxNotificationID()")
        try c.equal(try await allNotifications(store.recorder).count, 0, "notifications")
    }

    static let twoEventsInOneBatch: Body = { c, store in
        let id = UUID()
        let ids = try await store.recorder.insertEvents([event(id, 1, topic: "T.a"), event(id, 2, topic: "T.b")])
        try c.equal(ids, [1, 2], "the notification ids")
        let back = try await store.recorder.selectEvents(originatorID: id)
        try c.equal(back.map(\.originatorVersion), [1, 2], "the stored versions")
        try c.equal(back.map(\.topic), ["T.a", "T.b"], "the stored topics")
    }

    static let outOfOrderVersions: Body = { c, store in
        let id = UUID()
        _ = try await store.recorder.insertEvents([event(id, 3)])
        _ = try await store.recorder.insertEvents([event(id, 1)])
        _ = try await store.recorder.insertEvents([event(id, 2)])
        try c.equal(try await store.recorder.selectEvents(originatorID: id).map(\.originatorVersion), [1, 2, 3], "the stored versions")
        _ = try await c.eventSourcingError(.concurrencyConflict, "inserting version 3 again") {
            try await store.recorder.insertEvents([event(id, 3)])
        }
        // Notifications stay in commit order, not version order.
        try c.equal(try await allNotifications(store.recorder).map(\.originatorVersion), [3, 1, 2], "the versions in log order")
    }
}

// MARK: - Selecting events

extension RecorderConformance {
    static let descendingWithLimit: Body = { c, store in
        let id = UUID()
        _ = try await store.recorder.insertEvents((1...5).map { event(id, $0) })
        _ = try await store.recorder.insertEvents([event(id, 6)])
        let r = store.recorder
        try c.equal(try await r.selectEvents(originatorID: id, order: .descending, limit: 1).map(\.originatorVersion), [6],
                    "desc, limit 1")
        try c.equal(try await r.selectEvents(originatorID: id, order: .descending).map(\.originatorVersion),
                    [6, 5, 4, 3, 2, 1], "desc, no limit")
        try c.equal(try await r.selectEvents(originatorID: id, limit: 2).map(\.originatorVersion), [1, 2],
                    "ascending, limit 2")
        try c.equal(try await r.selectEvents(originatorID: id, upTo: 4, order: .descending, limit: 1).map(\.originatorVersion), [4],
                    "desc, lte 4, limit 1")
    }

    static let versionRanges: Body = { c, store in
        let id = UUID()
        _ = try await store.recorder.insertEvents((1...6).map { event(id, $0) })
        let r = store.recorder
        let cases: [(after: Int?, upTo: Int?, desc: Bool, limit: Int?, expected: [Int])] = [
            (2, nil, false, nil, [3, 4, 5, 6]),
            (nil, 3, false, nil, [1, 2, 3]),
            (1, 4, false, nil, [2, 3, 4]),
            (0, 6, false, nil, [1, 2, 3, 4, 5, 6]),
            (6, nil, false, nil, []),
            (nil, 0, false, nil, []),
            (3, 3, false, nil, []),
            (4, 2, false, nil, []),
            (nil, 100, false, nil, [1, 2, 3, 4, 5, 6]),
            (1, 5, true, 2, [5, 4]),
            (1, 5, false, 2, [2, 3]),
            (nil, nil, false, 0, []),
            (1, 5, true, 0, []),
            (nil, nil, false, 100, [1, 2, 3, 4, 5, 6]),
        ]
        for k in cases {
            let got = try await r.selectEvents(originatorID: id, after: k.after, upTo: k.upTo, order: k.desc ? .descending : .ascending, limit: k.limit).map(\.originatorVersion)
            try c.equal(got, k.expected, "versions after \(k.after.map(String.init) ?? "nil"), up to \(k.upTo.map(String.init) ?? "nil"), "
                        + "descending \(k.desc), limit \(k.limit.map(String.init) ?? "nil")")
        }
    }

    static let perAggregateIsolation: Body = { c, store in
        let (a, b) = (UUID(), UUID())
        _ = try await store.recorder.insertEvents([event(a, 1, state: [0xA1]), event(b, 1, state: [0xB1])])
        _ = try await store.recorder.insertEvents([event(b, 2, state: [0xB2]), event(a, 2, state: [0xA2]), event(a, 3, state: [0xA3])])
        let ea = try await store.recorder.selectEvents(originatorID: a)
        let eb = try await store.recorder.selectEvents(originatorID: b)
        try c.equal(ea.map(\.state), [[0xA1], [0xA2], [0xA3]], "the states of the first aggregate")
        try c.equal(eb.map(\.state), [[0xB1], [0xB2]], "the states of the second aggregate")
        try c.require(ea.allSatisfy { $0.originatorID == a } && eb.allSatisfy { $0.originatorID == b },
                      "each aggregate's events carry its own id")
        // The same version number in two aggregates is no conflict.
        try c.equal(try await store.recorder.insertEvents([event(b, 3)]), [6], "the notification id of another aggregate's version 3")
    }
}

// MARK: - The notification log

extension RecorderConformance {
    static let notificationIDs: Body = { c, store in
        let (a, b) = (UUID(), UUID())
        var returned: [Int64] = []
        let batches: [[StoredEvent]] = [
            [event(a, 1)],
            [event(b, 1), event(b, 2)],
            [event(a, 2)],
            [event(a, 3), event(b, 3), event(a, 4)],
        ]
        var expectedIDs: Int64 = 0
        for batch in batches {
            let ids = try await store.recorder.insertEvents(batch)
            try c.equal(ids, Array((expectedIDs + 1)...(expectedIDs + Int64(batch.count))), "the ids returned by an insert")
            expectedIDs += Int64(batch.count)
            returned += ids
            try c.equal(try await store.recorder.maxNotificationID(), expectedIDs, "maxNotificationID() after an insert")
        }
        let notes = try await allNotifications(store.recorder)
        try c.equal(notes.map(\.id), Array(1...7), "the notification ids")
        try c.equal(notes.map(\.id), returned, "the notification ids against those the inserts returned")
        try c.equal(notes.map(\.storedEvent), batches.flatMap { $0 }, "the notifications' events", describe: describe)
    }

    static let notificationRanges: Body = { c, store in
        let events = try await fillTenNotifications(store.recorder)
        let r = store.recorder
        let cases: [(start: Int64, limit: Int, stop: Int64?, expected: [Int64])] = [
            (1, 100, nil, Array(1...10)), (1, 10, nil, Array(1...10)), (1, 3, nil, [1, 2, 3]), (4, 3, nil, [4, 5, 6]),
            (5, 100, 7, [5, 6, 7]), (5, 2, 9, [5, 6]), (7, 1, 7, [7]), (10, 5, nil, [10]), (11, 5, nil, []),
            (1000, 5, nil, []), (5, 10, 3, []), (1, 10, 100, Array(1...10)), (1, 10, 0, []),
        ]
        for k in cases {
            let got = try await r.selectNotifications(start: k.start, limit: k.limit, stop: k.stop, topics: []).map(\.id)
            try c.equal(got, k.expected, "ids with start \(k.start), limit \(k.limit), stop \(k.stop.map(String.init) ?? "nil")")
        }
        let page = try await r.selectNotifications(start: 3, limit: 2, stop: nil, topics: [])
        try c.equal(page.map(\.storedEvent), Array(events[2..<4]), "the events of notifications 3 and 4", describe: describe)
    }

    static let notificationTopics: Body = { c, store in
        _ = try await fillTenNotifications(store.recorder)
        let r = store.recorder
        // A.x at 1, 4, 7, 10; B.y at 2, 5, 8; C.z at 3, 6, 9.
        let cases: [(start: Int64, limit: Int, stop: Int64?, topics: [String], expected: [Int64])] = [
            (1, 100, nil, ["A.x"], [1, 4, 7, 10]),
            (1, 100, nil, ["A.x", "C.z"], [1, 3, 4, 6, 7, 9, 10]),
            (1, 100, nil, ["C.z", "B.y", "A.x"], Array(1...10)),
            (1, 100, nil, ["Nope.none"], []),
            (1, 100, nil, ["A"], []),                  // topics match exactly, not by prefix
            (1, 100, nil, ["Nope.none", "B.y"], [2, 5, 8]),
            (2, 2, nil, ["A.x"], [4, 7]),              // limit counts matching notifications only
            (5, 100, nil, ["A.x", "B.y"], [5, 7, 8, 10]),
            (2, 100, 8, ["A.x"], [4, 7]),
            (11, 100, nil, ["A.x"], []),
            (8, 100, 6, ["A.x"], []),
        ]
        for k in cases {
            let got = try await r.selectNotifications(start: k.start, limit: k.limit, stop: k.stop, topics: k.topics).map(\.id)
            try c.equal(got, k.expected, "ids with start \(k.start), limit \(k.limit), stop \(k.stop.map(String.init) ?? "nil"), "
                        + "topics \(k.topics)")
        }
        let notes = try await r.selectNotifications(start: 1, limit: 100, stop: nil, topics: ["C.z"])
        try c.require(notes.allSatisfy { $0.topic == "C.z" }, "only C.z notifications", observed: "\(notes.map(\.topic))")
        try c.equal(notes.map(\.state), [[2], [5], [8]], "the states of the C.z notifications")
    }
}

// MARK: - Concurrency

extension RecorderConformance {
    static let concurrentDistinctWriters: Body = { c, store in
        let recorder = store.recorder
        let writers = 10, saves = 100
        let aggregateIDs = (0..<writers).map { _ in UUID() }
        let perWriter = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for id in aggregateIDs {
                group.addTask {
                    var ids: [Int64] = []
                    for v in 1...saves { ids += try await recorder.insertEvents([event(id, v, state: [UInt8(v % 256)])]) }
                    return ids
                }
            }
            var all: [[Int64]] = []
            for try await ids in group { all.append(ids) }
            return all
        }
        for ids in perWriter { try c.require(ids == ids.sorted(), "one writer's notification ids increase", observed: "\(ids)") }
        let total = writers * saves
        try c.equal(perWriter.flatMap { $0 }.sorted(), Array(1...Int64(total)), "every returned notification id, sorted")
        try c.equal(try await recorder.maxNotificationID(), Int64(total), "maxNotificationID()")
        let notes = try await recorder.selectNotifications(start: 1, limit: total + 10, stop: nil, topics: [])
        try c.equal(notes.map(\.id), Array(1...Int64(total)), "the notification ids")
        for id in aggregateIDs {
            try c.equal(try await recorder.selectEvents(originatorID: id).map(\.originatorVersion), Array(1...saves),
                        "one writer's stored versions")
            // Within one aggregate, the log holds its versions in order.
            try c.equal(notes.filter { $0.originatorID == id }.map(\.originatorVersion), Array(1...saves),
                        "one writer's versions in log order")
        }
    }

    static let concurrentSameAggregate: Body = { c, store in
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
                            _ = try await recorder.insertEvents([event(id, v, state: [UInt8(w), UInt8(v)])])
                            won.append((v, w))
                            v += 1
                        } catch let e as EventSourcingError where e.code == .concurrencyConflict {
                            try c.equal(e.originatorID, id, "the conflict's originatorID")
                            let latest = try await recorder.selectEvents(originatorID: id, order: .descending, limit: 1)
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
        try c.equal(stored.map(\.originatorVersion), Array(1...target), "the stored versions")
        try c.equal(wins.count, target, "the number of successful inserts (one winner per version)")
        try c.equal(wins.map(\.version).sorted(), Array(1...target), "the versions won")
        // The stored event of each version is the winner's.
        var winnerOf: [Int: Int] = [:]
        for w in wins { winnerOf[w.version] = w.writer }
        for e in stored {
            try c.equal(e.state, [UInt8(winnerOf[e.originatorVersion] ?? 255), UInt8(e.originatorVersion)],
                        "the state of version \(e.originatorVersion) (its winner's)")
        }
        let notes = try await recorder.selectNotifications(start: 1, limit: 1000, stop: nil, topics: [])
        try c.equal(notes.map(\.id), Array(1...Int64(target)), "the notification ids")
        try c.equal(notes.map(\.originatorVersion), Array(1...target), "the versions in log order")
    }
}

// MARK: - Snapshots

extension RecorderConformance {
    static let snapshotSelect: Body = { c, store in
        let s = try snapshots(store, c)
        let (id, other) = (UUID(), UUID())
        let version: (StoredEvent?) -> String = { $0.map { "v\($0.originatorVersion)" } ?? "nil" }
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: nil), nil, "the snapshot before any", describe: version)
        for v in [5, 2, 9] { try await s.insertSnapshot(snapshot(id, v, state: [UInt8(v), 0])) }
        try await s.insertSnapshot(snapshot(other, 20, state: [20]))

        try c.equal(try await s.selectSnapshot(originatorID: id, lte: nil), snapshot(id, 9, state: [9, 0]), "the latest snapshot",
                    describe: version)
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 100)?.originatorVersion, 9, "the snapshot at lte 100")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 9)?.originatorVersion, 9, "the snapshot at lte 9")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 8)?.originatorVersion, 5, "the snapshot at lte 8")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 5), snapshot(id, 5, state: [5, 0]), "the snapshot at lte 5",
                    describe: version)
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 4)?.originatorVersion, 2, "the snapshot at lte 4")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 1), nil, "the snapshot at lte 1", describe: version)
        try c.equal(try await s.selectSnapshot(originatorID: other, lte: 19), nil, "another aggregate's snapshot at lte 19",
                    describe: version)
        try c.equal(try await s.selectSnapshot(originatorID: other, lte: nil)?.state, [20], "another aggregate's snapshot state")
        try c.equal(try await s.selectSnapshot(originatorID: UUID(), lte: nil), nil, "an unknown aggregate's snapshot",
                    describe: version)
    }

    static let snapshotReplace: Body = { c, store in
        let s = try snapshots(store, c)
        let id = UUID()
        try await s.insertSnapshot(snapshot(id, 3, state: [1, 1, 1]))
        try await s.insertSnapshot(snapshot(id, 3, state: [2, 2]))
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: nil)?.state, [2, 2], "the replaced snapshot's state")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 3)?.state, [2, 2], "the replaced snapshot's state at lte 3")
        // Replacing an older version keeps the newer one the latest.
        try await s.insertSnapshot(snapshot(id, 7, state: [7]))
        try await s.insertSnapshot(snapshot(id, 3, state: [3]))
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: nil)?.state, [7], "the latest state after replacing an older one")
        try c.equal(try await s.selectSnapshot(originatorID: id, lte: 6)?.state, [3], "the older snapshot's new state")
    }

    static let snapshotsAreSeparate: Body = { c, store in
        let s = try snapshots(store, c)
        let id = UUID()
        try await s.insertSnapshot(snapshot(id, 1, state: [1]))
        try c.equal(try await store.recorder.selectEvents(originatorID: id).count, 0, "events of an aggregate with only a snapshot")
        try c.equal(try await store.recorder.maxNotificationID(), nil, "maxNotificationID() with only a snapshot")
        // And an event with the snapshot's coordinates is no conflict.
        try c.equal(try await store.recorder.insertEvents([event(id, 1)]), [1], "the ids of an event at the snapshot's coordinates")
    }

    static let deleteSnapshotsByKeyScope: Body = { c, store in
        let s = try snapshots(store, c)
        let (a1, a2, b, prefix, plain) = (UUID(), UUID(), UUID(), UUID(), UUID())
        let plainState: [UInt8] = [0xE5, 0x53, 0x01, 0x04, 0x7B, 0x7D]
        try c.equal(snapshot(a1, 2, state: handmadeEncryptedState(scope: "person-a")).keyScope, "person-a",
                    "the scope of the suite's handmade header (the suite's own check of its record layout)")
        try await s.insertSnapshot(snapshot(a1, 2, state: handmadeEncryptedState(scope: "person-a")))
        try await s.insertSnapshot(snapshot(a1, 4, state: handmadeEncryptedState(scope: "person-a", keyVersion: 2)))
        try await s.insertSnapshot(snapshot(a2, 3, state: handmadeEncryptedState(scope: "person-a")))
        try await s.insertSnapshot(snapshot(b, 3, state: handmadeEncryptedState(scope: "person-b")))
        try await s.insertSnapshot(snapshot(prefix, 3, state: handmadeEncryptedState(scope: "person-a2")))
        try await s.insertSnapshot(snapshot(plain, 1, state: plainState))

        try c.equal(try await s.deleteSnapshots(keyScope: "person-a"), 3, "the count deleted for person-a")
        try c.equal(try await s.selectSnapshot(originatorID: a1, lte: nil)?.originatorVersion, nil, "person-a's first aggregate's snapshot")
        try c.equal(try await s.selectSnapshot(originatorID: a2, lte: nil)?.originatorVersion, nil, "person-a's second aggregate's snapshot")
        try c.equal(try await s.selectSnapshot(originatorID: b, lte: nil).flatMap { StateHeader.peekKeyScope($0.state) }, "person-b", "person-b's snapshot's scope")
        try c.equal(try await s.selectSnapshot(originatorID: prefix, lte: nil).flatMap { StateHeader.peekKeyScope($0.state) }, "person-a2",
                    "the snapshot of a scope with person-a as its prefix")
        try c.equal(try await s.selectSnapshot(originatorID: plain, lte: nil)?.state, plainState, "the plaintext snapshot's state")
        try c.equal(try await s.deleteSnapshots(keyScope: "person-a"), 0, "the count of a second delete of person-a")
        try c.equal(try await s.deleteSnapshots(keyScope: "nobody"), 0, "the count deleted for an unknown scope")
        try c.equal(try await s.deleteSnapshots(keyScope: "person-"), 0, "the count deleted for a prefix of scopes")
        // A scope can get snapshots again after a delete (e.g. a reused aggregate id scope).
        try await s.insertSnapshot(snapshot(a1, 5, state: handmadeEncryptedState(scope: "person-a")))
        try c.equal(try await s.selectSnapshot(originatorID: a1, lte: nil)?.originatorVersion, 5, "a snapshot stored after the delete")
    }
}
