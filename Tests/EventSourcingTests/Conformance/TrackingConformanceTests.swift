import ESTestTags
import EventSourcing
import EventSourcingTestKit
import Foundation
import KeyManagement
import Testing

extension RecorderFactory {
    /// The test kit's tracking suite over this factory's stores (each behaviour a fresh store).
    var trackingConformance: TrackingConformance {
        TrackingConformance {
            let store = try await make()
            guard let recorder = store.recorder as? any ProcessRecorder else {
                try await store.close()
                throw EventSourcingError(.invalidArgument, "the \(name) recorder is not a ProcessRecorder")
            }
            return .init(recorder: recorder, close: store.close)
        }
    }

    /// Whether the factory's store commits data keys with its events (every store with a key store).
    var commitsKeys: Bool { name != RecorderFactory.inMemory.name }

    /// Each recorder with each tracking behaviour it must show (the key-committing ones only
    /// where the store commits keys).
    static var trackingCases: [(RecorderFactory, TrackingConformance.Behaviour)] {
        all.flatMap { f in
            TrackingConformance.Behaviour.allCases.filter { f.commitsKeys || !$0.needsKeyCommitting }.map { (f, $0) }
        }
    }
}

/// Tracking records and process recorders (issue 14) on every backend.
@Suite("Tracking conformance", .tags(.conformance))
struct TrackingConformanceTests {
    @Test("Every recorder shows the tracking behaviours", arguments: RecorderFactory.trackingCases)
    func tracking(_ factory: RecorderFactory, _ behaviour: TrackingConformance.Behaviour) async throws {
        try await factory.trackingConformance.check(behaviour)
    }

    @Test("The SQLite and PostgreSQL stores are key-committing process recorders; the in-memory one a process recorder")
    func conformances() async throws {
        for factory in RecorderFactory.all {
            try await factory.withFreshStore { store async throws in
                #expect(store.recorder is any ProcessRecorder, "\(factory.name)")
                #expect((store.recorder is any KeyCommittingProcessRecorder) == factory.commitsKeys, "\(factory.name)")
            }
        }
    }
}

/// The tracking suite catches what it is for: each broken process recorder fails the behaviour
/// that names its fault, and passes the others.
@Suite("The tracking suite catches broken process recorders")
struct TrackingSuiteCatchesBrokenRecordersTests {
    /// How a ``BrokenProcessRecorder`` breaks the rules.
    enum Fault: Sendable {
        /// Accepts a tracking id equal to the recorded one (a `<` where `<=` belongs).
        case acceptsEqualID
        /// Writes a tracked insert's events, then its tracking record, in two steps.
        case eventsBeforeTracking
        /// Writes a tracked insert's tracking record, then its events, in two steps.
        case trackingBeforeEvents
        /// Checks and moves the position in two steps, with a suspension between them.
        case checkThenSet
        /// Lists positions with the page's cursor name included (`>=` where `>` belongs).
        case pagesRepeatCursor
    }

    final class BrokenProcessRecorder: ProcessRecorder {
        let inner = InMemoryRecorder()
        let fault: Fault
        init(_ fault: Fault) { self.fault = fault }

        func insertTracking(_ tracking: Tracking) async throws {
            switch fault {
            case .acceptsEqualID:
                if try await inner.maxTrackingID(tracking.name) == tracking.notificationID { return }
                try await inner.insertTracking(tracking)
            case .checkThenSet:
                try tracking.validate()
                try tracking.checkFollows(try await inner.maxTrackingID(tracking.name))
                await Task.yield()
                try await inner.deleteTracking(tracking.name)
                try await inner.insertTracking(tracking)
            case .eventsBeforeTracking, .trackingBeforeEvents, .pagesRepeatCursor:
                try await inner.insertTracking(tracking)
            }
        }

        func maxTrackingID(_ name: String) async throws -> Int64? { try await inner.maxTrackingID(name) }
        func hasTrackingID(_ name: String, _ notificationID: Int64) async throws -> Bool {
            try await inner.hasTrackingID(name, notificationID)
        }
        func deleteTracking(_ name: String) async throws { try await inner.deleteTracking(name) }
        func trackingPositions(after name: String?, limit: Int) async throws -> [Tracking] {
            guard fault == .pagesRepeatCursor else { return try await inner.trackingPositions(after: name, limit: limit) }
            let all = try await inner.trackingPositions(after: nil, limit: limit)
            return Array(all.filter { t in name.map { t.name >= $0 } ?? true }.prefix(limit))
        }

        func insertEvents(_ events: [StoredEvent], tracking: Tracking?) async throws -> [Int64] {
            guard let tracking else { return try await inner.insertEvents(events) }
            switch fault {
            case .eventsBeforeTracking:
                let ids = try await inner.insertEvents(events)
                try await insertTracking(tracking)
                return ids
            case .trackingBeforeEvents:
                try await insertTracking(tracking)
                return try await inner.insertEvents(events)
            case .acceptsEqualID:
                if try await inner.maxTrackingID(tracking.name) == tracking.notificationID { return try await inner.insertEvents(events) }
                return try await inner.insertEvents(events, tracking: tracking)
            case .checkThenSet, .pagesRepeatCursor:
                return try await inner.insertEvents(events, tracking: tracking)
            }
        }

        func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
        func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
        func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
            try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
        }
        func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
    }

    static func failures(_ fault: Fault) async throws -> ConformanceFailures {
        let kit = TrackingConformance(commitsKeys: false) { .init(recorder: BrokenProcessRecorder(fault)) }
        return try #require(await #expect(throws: ConformanceFailures.self) { try await kit.run() })
    }

    @Test("A recorder that accepts an equal tracking id fails lowerOrEqualRefused (and the races), naming it")
    func acceptsEqualID() async throws {
        let failures = try await Self.failures(.acceptsEqualID)
        let f = try #require(failures.failures.first { $0.behaviour == "lowerOrEqualRefused" })
        #expect(f.suite == "TrackingConformance")
        #expect(f.expected.contains("trackingConflict"))
        #expect(f.observed == "it returned normally")
        #expect(Set(failures.behaviours) == ["lowerOrEqualRefused", "reusedTrackingWritesNoEvent", "concurrentSameID",
                                             "concurrentTrackedSaves"])
    }

    @Test("A recorder that writes events, then tracking, fails reusedTrackingWritesNoEvent")
    func eventsBeforeTracking() async throws {
        let failures = try await Self.failures(.eventsBeforeTracking)
        #expect(failures.behaviours.contains("reusedTrackingWritesNoEvent"))
        #expect(failures.behaviours.contains("concurrentTrackedSaves"))
        #expect(!failures.behaviours.contains("lowerOrEqualRefused"))
    }

    @Test("A recorder that writes tracking, then events, fails eventConflictWritesNoTracking")
    func trackingBeforeEvents() async throws {
        let failures = try await Self.failures(.trackingBeforeEvents)
        #expect(Set(failures.behaviours) == ["eventConflictWritesNoTracking"])
    }

    @Test("A recorder whose check and update of the position are two steps fails concurrentSameID")
    func checkThenSet() async throws {
        // A race: run the behaviour until it shows (it does at once in practice; the bound keeps
        // the test finite).
        let kit = TrackingConformance(commitsKeys: false) { .init(recorder: BrokenProcessRecorder(.checkThenSet)) }
        var caught: ConformanceFailure?
        for _ in 0..<20 where caught == nil {
            do { try await kit.check(.concurrentSameID) } catch { caught = error }
        }
        #expect(caught?.behaviour == "concurrentSameID")
    }

    @Test("A recorder whose pages repeat the cursor's name fails listsPositions, and only it")
    func pagesRepeatCursor() async throws {
        let failures = try await Self.failures(.pagesRepeatCursor)
        #expect(Set(failures.behaviours) == ["listsPositions"])
        let f = try #require(failures.failures.first)
        #expect(f.expected.contains("after \"a\""), "\(f.expected)")
    }

    @Test("The in-memory recorder passes run() as a whole")
    func inMemoryPasses() async throws {
        try await TrackingConformance(commitsKeys: false) { .init(recorder: InMemoryRecorder()) }.run()
    }
}
