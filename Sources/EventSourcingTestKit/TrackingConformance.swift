import EventSourcing
import Foundation
import KeyManagement

/// The behaviour every `ProcessRecorder` (tracking records, and events with a tracking record
/// in one transaction) must show, and, for a `KeyCommittingProcessRecorder`, new data keys
/// committed with them: the suite the library runs against its in-memory, SQLite and PostgreSQL
/// recorders, beside ``RecorderConformance``.
///
/// Give it a function that makes a fresh, empty store; each behaviour gets its own store, which
/// the suite closes afterwards:
///
/// ```swift
/// @Test(arguments: TrackingConformance.Behaviour.allCases.filter { !$0.needsKeyCommitting })
/// func tracking(_ behaviour: TrackingConformance.Behaviour) async throws {
///     try await TrackingConformance { .init(recorder: MyRecorder()) }.check(behaviour)
/// }
/// ```
public struct TrackingConformance: Sendable {
    /// A store under test and how to release it.
    public struct Subject: Sendable {
        /// The process recorder.
        public var recorder: any ProcessRecorder
        /// The same store as a key-committing process recorder, if it is one (needed by the
        /// behaviours whose ``Behaviour/needsKeyCommitting`` is true).
        public var keyCommitting: (any KeyCommittingProcessRecorder)?
        /// Releases the store; called once per behaviour.
        public var close: @Sendable () async throws -> Void

        /// Creates a subject; `keyCommitting` defaults to `recorder` when it is one.
        public init(recorder: any ProcessRecorder, keyCommitting: (any KeyCommittingProcessRecorder)? = nil,
                    close: @escaping @Sendable () async throws -> Void = {}) {
            self.recorder = recorder
            self.keyCommitting = keyCommitting ?? (recorder as? any KeyCommittingProcessRecorder)
            self.close = close
        }
    }

    /// One behaviour the suite checks.
    public enum Behaviour: String, CaseIterable, Sendable, CustomStringConvertible {
        case unknownName
        case lowerOrEqualRefused
        case hasTrackingID
        case namesIndependent
        case deleteForRebuild
        case eventConflictWritesNoTracking
        case reusedTrackingWritesNoEvent
        case trackedInsertRoundTrip
        case badNamesRefused
        case concurrentSameID
        case concurrentTrackedSaves
        case newKeysCommittedWithTracking
        case listsPositions

        /// Whether the behaviour needs the subject's ``Subject/keyCommitting``.
        public var needsKeyCommitting: Bool { self == .newKeysCommittedWithTracking }

        /// What the behaviour is, in a sentence.
        public var summary: String {
            switch self {
            case .unknownName: "maxTrackingID is nil and hasTrackingID false for a name never recorded"
            case .lowerOrEqualRefused: "24 then 23 fails with trackingConflict naming the name and both ids, 24 then 24 fails, and neither changes the position"
            case .hasTrackingID: "hasTrackingID is true for ids at or below the recorded position, false above it"
            case .namesIndependent: "each name has its own position"
            case .deleteForRebuild: "deleteTracking forgets one name's position (a rebuild starts again at 1), and no other"
            case .eventConflictWritesNoTracking: "a tracked insert whose event conflicts writes neither its events nor its tracking record"
            case .reusedTrackingWritesNoEvent: "a tracked insert with a reused tracking id writes no event and uses no notification id"
            case .trackedInsertRoundTrip: "a tracked insert stores events and position together; nil tracking is a plain insert; no events moves only the position"
            case .badNamesRefused: "an empty name, one over 255 bytes, one with NUL, or an id below 1 is refused with invalidArgument and writes nothing"
            case .concurrentSameID: "of 16 concurrent inserts of one tracking id, exactly one succeeds"
            case .concurrentTrackedSaves: "of 8 concurrent tracked saves with one tracking id, exactly one stores its event"
            case .newKeysCommittedWithTracking: "new data keys commit with the events and tracking record, and a refused tracked save stores none"
            case .listsPositions: "trackingPositions lists every name's position in the byte order of its UTF-8, page by page, without a deleted name; a bad limit or name is refused"
            }
        }

        public var description: String { rawValue }
    }

    private let makeStore: @Sendable () async throws -> Subject
    private let commitsKeys: Bool

    /// Creates the suite.
    /// - Parameters:
    ///   - commitsKeys: whether the subjects are key-committing process recorders; when false,
    ///     ``run()`` leaves out the behaviours that need one (``Behaviour/needsKeyCommitting``).
    ///   - makeStore: makes a fresh, empty store; called once per behaviour.
    public init(commitsKeys: Bool = true, makeStore: @escaping @Sendable () async throws -> Subject) {
        self.commitsKeys = commitsKeys
        self.makeStore = makeStore
    }

    /// The behaviours ``run()`` checks.
    public var behaviours: [Behaviour] {
        Behaviour.allCases.filter { commitsKeys || !$0.needsKeyCommitting }
    }

    /// Checks every behaviour of ``behaviours``, each against a fresh store.
    /// - Throws: ``ConformanceFailures`` listing every behaviour that failed.
    public func run() async throws {
        try await runEach(behaviours, check)
    }

    /// Checks one behaviour against a fresh store, which is closed afterwards.
    /// - Throws: ``ConformanceFailure`` naming the behaviour.
    public func check(_ behaviour: Behaviour) async throws(ConformanceFailure) {
        try await checkOnFreshSubject(suite: "TrackingConformance", behaviour: behaviour.rawValue, subject: "store",
                                      make: makeStore, close: { try await $0.close() }) { c, subject in
            try await Self.body(of: behaviour)(c, subject)
        }
    }

    typealias Body = @Sendable (Checker, Subject) async throws -> Void

    private static func body(of behaviour: Behaviour) -> Body {
        switch behaviour {
        case .unknownName: unknownName
        case .lowerOrEqualRefused: lowerOrEqualRefused
        case .hasTrackingID: hasTrackingID
        case .namesIndependent: namesIndependent
        case .deleteForRebuild: deleteForRebuild
        case .eventConflictWritesNoTracking: eventConflictWritesNoTracking
        case .reusedTrackingWritesNoEvent: reusedTrackingWritesNoEvent
        case .trackedInsertRoundTrip: trackedInsertRoundTrip
        case .badNamesRefused: badNamesRefused
        case .concurrentSameID: concurrentSameID
        case .concurrentTrackedSaves: concurrentTrackedSaves
        case .newKeysCommittedWithTracking: newKeysCommittedWithTracking
        case .listsPositions: listsPositions
        }
    }
}

// MARK: - Helpers

extension TrackingConformance {
    static func event(_ id: UUID, _ version: Int, state: [UInt8]? = nil) -> StoredEvent {
        RecorderConformance.event(id, version, state: state)
    }

    /// A record sealed (by its made-up header) under `scope`, stamped with it.
    static func scopedEvent(_ id: UUID, _ version: Int, scope: String) -> StoredEvent {
        let state = RecorderConformance.handmadeEncryptedState(scope: scope)
        return StoredEvent(originatorID: id, originatorVersion: version, topic: "Thing.happened", state: state,
                           keyScope: StateHeader.peekKeyScope(state))
    }

    static func notificationIDs(_ r: any ApplicationRecorder) async throws -> [Int64] {
        try await RecorderConformance.allNotifications(r).map(\.id)
    }

    static func position(_ id: Int64?) -> String { id.map(String.init) ?? "nil" }
}

// MARK: - Positions

extension TrackingConformance {
    static let unknownName: Body = { c, store in
        let r = store.recorder
        try c.equal(try await r.maxTrackingID("never-recorded"), nil, "maxTrackingID of an unknown name", describe: position)
        try c.equal(try await r.hasTrackingID("never-recorded", 1), false, "hasTrackingID(unknown, 1)")
        try await r.insertTracking(Tracking(name: "other", notificationID: 5))
        try c.equal(try await r.maxTrackingID("never-recorded"), nil, "maxTrackingID of an unknown name while another is recorded",
                    describe: position)
        try c.equal(try await r.maxTrackingID("othe"), nil, "maxTrackingID of a prefix of a recorded name", describe: position)
        try c.equal(try await r.hasTrackingID("never-recorded", 5), false, "hasTrackingID(unknown, 5)")
    }

    static let lowerOrEqualRefused: Body = { c, store in
        let r = store.recorder
        try await r.insertTracking(Tracking(name: "projection-a", notificationID: 24))
        let lower = try await c.eventSourcingError(.trackingConflict, "inserting tracking 23 after 24") {
            try await r.insertTracking(Tracking(name: "projection-a", notificationID: 23))
        }
        for part in ["projection-a", "24", "23"] {
            try c.require(lower.message.contains(part), "the conflict's message names \(part)", observed: lower.message)
        }
        try c.equal(lower.notificationID, 23, "the conflict's notificationID (the refused one)")
        try c.equal(try await r.maxTrackingID("projection-a"), 24, "the position after 23 was refused", describe: position)
        let equal = try await c.eventSourcingError(.trackingConflict, "inserting tracking 24 again") {
            try await r.insertTracking(Tracking(name: "projection-a", notificationID: 24))
        }
        try c.require(equal.message.contains("projection-a") && equal.message.contains("24"),
                      "the conflict's message names the name and the id", observed: equal.message)
        _ = try await c.eventSourcingError(.trackingConflict, "inserting tracking 1 after 24") {
            try await r.insertTracking(Tracking(name: "projection-a", notificationID: 1))
        }
        try c.equal(try await r.maxTrackingID("projection-a"), 24, "the position after 24 and 1 were refused", describe: position)
        // Moving forward, also by a jump (positions may skip ids a follower filtered out).
        try await r.insertTracking(Tracking(name: "projection-a", notificationID: 25))
        try await r.insertTracking(Tracking(name: "projection-a", notificationID: Int64.max))
        try c.equal(try await r.maxTrackingID("projection-a"), Int64.max, "the position after 25 and Int64.max", describe: position)
    }

    static let hasTrackingID: Body = { c, store in
        let r = store.recorder
        try await r.insertTracking(Tracking(name: "p", notificationID: 10))
        for id: Int64 in [1, 9, 10] {
            try c.equal(try await r.hasTrackingID("p", id), true, "hasTrackingID(p, \(id)) with position 10")
        }
        for id: Int64 in [11, 1000, Int64.max] {
            try c.equal(try await r.hasTrackingID("p", id), false, "hasTrackingID(p, \(id)) with position 10")
        }
        try await r.insertTracking(Tracking(name: "p", notificationID: 20))
        try c.equal(try await r.hasTrackingID("p", 15), true, "hasTrackingID(p, 15) with position 20")
        try c.equal(try await r.hasTrackingID("p", 21), false, "hasTrackingID(p, 21) with position 20")
    }

    static let namesIndependent: Body = { c, store in
        let r = store.recorder
        try await r.insertTracking(Tracking(name: "a", notificationID: 24))
        try await r.insertTracking(Tracking(name: "b", notificationID: 3))
        try await r.insertTracking(Tracking(name: "A", notificationID: 1))   // names are exact: "A" is not "a"
        try await r.insertTracking(Tracking(name: "b", notificationID: 10))
        try c.equal(try await r.maxTrackingID("a"), 24, "a's position", describe: position)
        try c.equal(try await r.maxTrackingID("b"), 10, "b's position", describe: position)
        try c.equal(try await r.maxTrackingID("A"), 1, "A's position", describe: position)
        _ = try await c.eventSourcingError(.trackingConflict, "b at 5 (below b's 10, above A's 1)") {
            try await r.insertTracking(Tracking(name: "b", notificationID: 5))
        }
        try c.equal(try await r.maxTrackingID("a"), 24, "a's position after b was refused", describe: position)
        try c.equal(try await r.maxTrackingID("b"), 10, "b's position after it was refused", describe: position)
    }

    static let deleteForRebuild: Body = { c, store in
        let r = store.recorder
        try await r.insertTracking(Tracking(name: "view", notificationID: 40))
        try await r.insertTracking(Tracking(name: "other", notificationID: 7))
        try await r.deleteTracking("view")
        try c.equal(try await r.maxTrackingID("view"), nil, "the position after deleteTracking", describe: position)
        try c.equal(try await r.hasTrackingID("view", 1), false, "hasTrackingID(view, 1) after deleteTracking")
        try c.equal(try await r.maxTrackingID("other"), 7, "another name's position after deleteTracking(view)", describe: position)
        try await r.insertTracking(Tracking(name: "view", notificationID: 1))
        try c.equal(try await r.maxTrackingID("view"), 1, "the position of a rebuild's first record", describe: position)
        try await r.deleteTracking("never-recorded")
        try c.equal(try await r.maxTrackingID("other"), 7, "another name's position after deleting an unknown name",
                    describe: position)
    }

    static let listsPositions: Body = { c, store in
        let r = store.recorder
        func describe(_ list: [Tracking]) -> String { "[" + list.map { "\($0.name)=\($0.notificationID)" }.joined(separator: ", ") + "]" }
        try c.equal(try await r.trackingPositions(after: nil, limit: 10), [], "the positions of a store without any", describe: describe)
        // Byte order: "Z" (0x5A) before "a", "a" before "ab", "ab" before "é" (0xC3 0xA9); a
        // locale's collation would put "Z" elsewhere.
        let recorded = [Tracking(name: "ab", notificationID: 3), Tracking(name: "é-view", notificationID: 9),
                        Tracking(name: "a", notificationID: 12), Tracking(name: "Zeta", notificationID: 1),
                        Tracking(name: "gone", notificationID: 4)]
        for t in recorded { try await r.insertTracking(t) }
        try await r.insertTracking(Tracking(name: "a", notificationID: 20))
        try await r.deleteTracking("gone")
        let expected = [Tracking(name: "Zeta", notificationID: 1), Tracking(name: "a", notificationID: 20),
                        Tracking(name: "ab", notificationID: 3), Tracking(name: "é-view", notificationID: 9)]
        try c.equal(try await r.trackingPositions(after: nil, limit: 10), expected, "every position, in byte order", describe: describe)
        try c.equal(try await r.trackingPositions(after: nil, limit: 2), Array(expected[0..<2]), "the first page of 2",
                    describe: describe)
        try c.equal(try await r.trackingPositions(after: "a", limit: 2), Array(expected[2..<4]), "the page of 2 after \"a\"",
                    describe: describe)
        try c.equal(try await r.trackingPositions(after: "aa", limit: 10), Array(expected[2..<4]),
                    "the page after \"aa\" (not a recorded name)", describe: describe)
        try c.equal(try await r.trackingPositions(after: "é-view", limit: 10), [], "the page after the last name", describe: describe)
        try c.equal(try await r.trackingPositions(), expected, "trackingPositions() (every page)", describe: describe)
        for limit in [0, -1, Tracking.maxPageSize + 1] {
            _ = try await c.eventSourcingError(.invalidArgument, "trackingPositions(after: nil, limit: \(limit))") {
                try await r.trackingPositions(after: nil, limit: limit)
            }
        }
        _ = try await c.eventSourcingError(.invalidArgument, "trackingPositions(after: \"\", limit: 10)") {
            try await r.trackingPositions(after: "", limit: 10)
        }
    }
}

// MARK: - Events and tracking in one transaction

extension TrackingConformance {
    static let eventConflictWritesNoTracking: Body = { c, store in
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        _ = try await r.insertEvents([event(a, 1)], tracking: Tracking(name: "proc", notificationID: 3))
        let e = try await c.eventSourcingError(.concurrencyConflict, "a tracked insert holding a stored (id, version)") {
            try await r.insertEvents([event(b, 1), event(a, 1)], tracking: Tracking(name: "proc", notificationID: 4))
        }
        try c.equal(e.originatorID, a, "the conflict's originatorID")
        try c.equal(try await r.maxTrackingID("proc"), 3, "the position after the conflicting insert", describe: position)
        try c.equal(try await r.selectEvents(originatorID: b).count, 0, "events stored of the conflicting batch")
        try c.equal(try await notificationIDs(r), [1], "the notification ids after the conflicting insert")
        // A new name is not created by a conflicting insert either.
        _ = try await c.eventSourcingError(.concurrencyConflict, "a conflicting insert tracked under a new name") {
            try await r.insertEvents([event(a, 1)], tracking: Tracking(name: "fresh", notificationID: 1))
        }
        try c.equal(try await r.maxTrackingID("fresh"), nil, "the new name's position after a conflicting insert", describe: position)
        // The position is still free: the retry with the right version stores both.
        try c.equal(try await r.insertEvents([event(b, 1)], tracking: Tracking(name: "proc", notificationID: 4)), [2],
                    "the ids of the retried insert")
        try c.equal(try await r.maxTrackingID("proc"), 4, "the position after the retried insert", describe: position)
    }

    static let reusedTrackingWritesNoEvent: Body = { c, store in
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        try c.equal(try await r.insertEvents([event(a, 1)], tracking: Tracking(name: "proc", notificationID: 5)), [1],
                    "the ids of the first tracked insert")
        for reused: Int64 in [5, 4] {
            let e = try await c.eventSourcingError(.trackingConflict, "a tracked insert with tracking id \(reused) after 5") {
                try await r.insertEvents([event(b, 1), event(b, 2)], tracking: Tracking(name: "proc", notificationID: reused))
            }
            try c.require(e.message.contains("proc") && e.message.contains("5") && e.message.contains("\(reused)"),
                          "the conflict's message names the name and both ids", observed: e.message)
            try c.equal(try await r.selectEvents(originatorID: b).count, 0, "events stored by the refused insert (id \(reused))")
            try c.equal(try await r.maxNotificationID(), 1, "maxNotificationID() after the refused insert (id \(reused))")
            try c.equal(try await r.maxTrackingID("proc"), 5, "the position after the refused insert", describe: position)
        }
        // No notification id was used up: the next insert gets 2 and 3.
        try c.equal(try await r.insertEvents([event(b, 1), event(b, 2)], tracking: Tracking(name: "proc", notificationID: 6)), [2, 3],
                    "the ids of the next tracked insert")
        try c.equal(try await r.insertEvents([event(b, 3)]), [4], "the id of a plain insert after it")
        try c.equal(try await notificationIDs(r), [1, 2, 3, 4], "the notification ids")
    }

    static let trackedInsertRoundTrip: Body = { c, store in
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        let events = [event(a, 1, state: [1]), event(a, 2, state: [2]), event(b, 1, state: [3])]
        try c.equal(try await r.insertEvents(events, tracking: Tracking(name: "proc", notificationID: 17)), [1, 2, 3],
                    "the ids of a tracked insert")
        try c.equal(try await r.maxTrackingID("proc"), 17, "the position after a tracked insert", describe: position)
        let notes = try await RecorderConformance.allNotifications(r)
        try c.equal(notes.map(\.storedEvent), events, "the notifications of the tracked insert", describe: RecorderConformance.describe)
        // Without tracking: a plain insert, which moves no position.
        try c.equal(try await r.insertEvents([event(b, 2, state: [4])], tracking: nil), [4], "the ids of an insert without tracking")
        try c.equal(try await r.maxTrackingID("proc"), 17, "the position after an insert without tracking", describe: position)
        // No events: only the position moves (a notification the follower ignored).
        try c.equal(try await r.insertEvents([], tracking: Tracking(name: "proc", notificationID: 18)), [],
                    "the ids of a tracked insert without events")
        try c.equal(try await r.maxTrackingID("proc"), 18, "the position after a tracked insert without events", describe: position)
        try c.equal(try await r.maxNotificationID(), 4, "maxNotificationID() after a tracked insert without events")
    }

    static let badNamesRefused: Body = { c, store in
        let r = store.recorder
        let a = UUID()
        let long = String(repeating: "é", count: 128)   // 128 characters, 256 bytes
        let bad = ["", String(repeating: "x", count: 256), long, "a\u{0}b", "\u{0}"]
        for name in bad {
            let what = "a name of \(name.utf8.count) bytes\(name.utf8.contains(0) ? " with NUL" : "")"
            _ = try await c.eventSourcingError(.invalidArgument, "insertTracking with \(what)") {
                try await r.insertTracking(Tracking(name: name, notificationID: 1))
            }
            _ = try await c.eventSourcingError(.invalidArgument, "maxTrackingID with \(what)") { try await r.maxTrackingID(name) }
            _ = try await c.eventSourcingError(.invalidArgument, "hasTrackingID with \(what)") { try await r.hasTrackingID(name, 1) }
            _ = try await c.eventSourcingError(.invalidArgument, "deleteTracking with \(what)") { try await r.deleteTracking(name) }
            _ = try await c.eventSourcingError(.invalidArgument, "a tracked insert with \(what)") {
                try await r.insertEvents([event(a, 1)], tracking: Tracking(name: name, notificationID: 1))
            }
        }
        for id: Int64 in [0, -1, Int64.min] {
            _ = try await c.eventSourcingError(.invalidArgument, "insertTracking with notification id \(id)") {
                try await r.insertTracking(Tracking(name: "p", notificationID: id))
            }
            _ = try await c.eventSourcingError(.invalidArgument, "a tracked insert with notification id \(id)") {
                try await r.insertEvents([event(a, 1)], tracking: Tracking(name: "p", notificationID: id))
            }
        }
        try c.equal(try await r.maxNotificationID(), nil, "maxNotificationID() after the refused inserts")
        try c.equal(try await r.maxTrackingID("p"), nil, "p's position after the refused inserts", describe: position)
        // The longest names are accepted: 255 bytes, also of multi-byte characters.
        for name in [String(repeating: "x", count: 255), String(repeating: "é", count: 127) + "x"] {
            try await r.insertTracking(Tracking(name: name, notificationID: 2))
            try c.equal(try await r.maxTrackingID(name), 2, "the position of a name of \(name.utf8.count) bytes", describe: position)
        }
        try c.equal(try await r.maxTrackingID(String(repeating: "x", count: 254)), nil, "the position of a 254-byte prefix",
                    describe: position)
    }

    static let concurrentSameID: Body = { c, store in
        let r = store.recorder
        try await r.insertTracking(Tracking(name: "race", notificationID: 6))
        let tasks = 16
        let outcomes = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    do {
                        try await r.insertTracking(Tracking(name: "race", notificationID: 7))
                        return "ok"
                    } catch let e as EventSourcingError where e.code == .trackingConflict {
                        return "conflict"
                    }
                }
            }
            var all: [String] = []
            for try await o in group { all.append(o) }
            return all
        }
        try c.equal(outcomes.filter { $0 == "ok" }.count, 1, "the number of inserts of id 7 that succeeded")
        try c.equal(outcomes.filter { $0 == "conflict" }.count, tasks - 1, "the number refused with trackingConflict")
        try c.equal(try await r.maxTrackingID("race"), 7, "the position", describe: position)
        // The same race on a name never recorded.
        let fresh = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    do {
                        try await r.insertTracking(Tracking(name: "fresh", notificationID: 1))
                        return true
                    } catch let e as EventSourcingError where e.code == .trackingConflict {
                        return false
                    }
                }
            }
            var wins = 0
            for try await won in group where won { wins += 1 }
            return wins
        }
        try c.equal(fresh, 1, "the number of first inserts of a new name that succeeded")
    }

    static let concurrentTrackedSaves: Body = { c, store in
        let r = store.recorder
        let writers = 8
        let ids = (0..<writers).map { _ in UUID() }
        let won = try await withThrowingTaskGroup(of: (UUID, [Int64])?.self) { group in
            for id in ids {
                group.addTask {
                    do {
                        return (id, try await r.insertEvents([event(id, 1)], tracking: Tracking(name: "proc", notificationID: 9)))
                    } catch let e as EventSourcingError where e.code == .trackingConflict {
                        return nil
                    }
                }
            }
            var all: [(UUID, [Int64])] = []
            for try await w in group { if let w { all.append(w) } }
            return all
        }
        try c.equal(won.count, 1, "the number of tracked saves with tracking id 9 that succeeded")
        try c.equal(won.first?.1, [1], "the winner's notification ids")
        try c.equal(try await notificationIDs(r), [1], "the notification ids (only the winner's event)")
        if let winner = won.first?.0 {
            for id in ids {
                try c.equal(try await r.selectEvents(originatorID: id).count, id == winner ? 1 : 0,
                            "events stored for \(id == winner ? "the winner" : "a refused save")")
            }
        }
        try c.equal(try await r.maxTrackingID("proc"), 9, "the position", describe: position)
    }
}

// MARK: - New data keys

extension TrackingConformance {
    static func madeUpKey(_ scope: String) -> WrappedDataKey {
        WrappedDataKey(scope: scope, version: 1, kekID: "kek-conformance", wrapped: Array(repeating: 7, count: 60),
                       createdAt: Date(timeIntervalSince1970: 1_700_000_000))
    }

    static func keyVersions(_ r: any KeyCommittingProcessRecorder, _ scope: String) async throws -> [UInt32] {
        try await r.keyStore.dataKeys(scope: scope).map(\.version)
    }

    static let newKeysCommittedWithTracking: Body = { c, store in
        guard let r = store.keyCommitting else {
            throw c.fail(expected: "a subject that commits keys (Subject.keyCommitting)", observed: "Subject.keyCommitting is nil")
        }
        let (a, b, d) = (UUID(), UUID(), UUID())
        try c.equal(try await r.insertEvents([scopedEvent(a, 1, scope: "subject-1")], newKeys: [madeUpKey("subject-1")],
                                             tracking: Tracking(name: "proc", notificationID: 3)), [1],
                    "the ids of a tracked insert with a new key")
        try c.equal(try await keyVersions(r, "subject-1"), [1], "the key versions of subject-1 after the insert")
        try c.equal(try await r.maxTrackingID("proc"), 3, "the position after the insert", describe: position)
        // A reused tracking id: neither the new key nor the event is stored.
        _ = try await c.eventSourcingError(.trackingConflict, "a tracked insert with a new key and a reused tracking id") {
            try await r.insertEvents([scopedEvent(b, 1, scope: "subject-2")], newKeys: [madeUpKey("subject-2")],
                                     tracking: Tracking(name: "proc", notificationID: 3))
        }
        try c.equal(try await keyVersions(r, "subject-2"), [], "the key versions of subject-2 after the refused insert")
        try c.equal(try await r.selectEvents(originatorID: b).count, 0, "events stored by the refused insert")
        // An event conflict: neither the new key nor the tracking record is stored.
        _ = try await c.eventSourcingError(.concurrencyConflict, "a tracked insert with a new key and a conflicting event") {
            try await r.insertEvents([scopedEvent(d, 1, scope: "subject-3"), scopedEvent(a, 1, scope: "subject-1")],
                                     newKeys: [madeUpKey("subject-3")], tracking: Tracking(name: "proc", notificationID: 4))
        }
        try c.equal(try await keyVersions(r, "subject-3"), [], "the key versions of subject-3 after the conflicting insert")
        try c.equal(try await r.maxTrackingID("proc"), 3, "the position after the conflicting insert", describe: position)
        // A key that exists: nothing of the save, and no position.
        _ = try await c.keyManagementError(.keyExists, "a tracked insert with a key version that exists") {
            try await r.insertEvents([scopedEvent(d, 1, scope: "subject-1")], newKeys: [madeUpKey("subject-1")],
                                     tracking: Tracking(name: "proc", notificationID: 4))
        }
        try c.equal(try await r.maxTrackingID("proc"), 3, "the position after the refused key", describe: position)
        try c.equal(try await notificationIDs(r), [1], "the notification ids after the refused inserts")
        // The retry stores all three.
        try c.equal(try await r.insertEvents([scopedEvent(d, 1, scope: "subject-3")], newKeys: [madeUpKey("subject-3")],
                                             tracking: Tracking(name: "proc", notificationID: 4)), [2],
                    "the ids of the retried insert")
        try c.equal(try await keyVersions(r, "subject-3"), [1], "the key versions of subject-3 after the retry")
        try c.equal(try await r.maxTrackingID("proc"), 4, "the position after the retry", describe: position)
    }
}
