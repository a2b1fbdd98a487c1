import Foundation
import Logging

/// Automatic snapshotting for one aggregate type: a snapshot is taken whenever a save carries
/// an aggregate of the type past a multiple of `events`.
///
/// ```swift
/// Application(recorder: store, snapshots: store, mapper: mapper, snapshotIntervals: [.every(100, for: Dog.self)])
/// ```
public struct SnapshotInterval: Sendable, Hashable {
    /// The aggregate type's ``Aggregate/typeName``.
    public let typeName: String
    /// The interval, in events.
    public let events: Int

    /// A snapshot of every aggregate of type `A` each `events` events (ignored when below 1).
    public static func every<A: Aggregate>(_ events: Int, for type: A.Type) -> SnapshotInterval {
        SnapshotInterval(typeName: A.typeName, events: events)
    }

    private init(typeName: String, events: Int) {
        self.typeName = typeName
        self.events = events
    }

    /// The intervals by type name, for the application's look-up: intervals below 1 are
    /// dropped, and of two intervals for one type the shorter counts.
    static func byTypeName(_ intervals: [SnapshotInterval]) -> [String: Int] {
        Dictionary(intervals.filter { $0.events > 0 }.map { ($0.typeName, $0.events) }, uniquingKeysWith: min)
    }

    /// Intervals from a dictionary keyed by type name (the former, stringly typed form).
    static func fromTypeNames(_ intervals: [String: Int]) -> [SnapshotInterval] {
        intervals.sorted { $0.key < $1.key }.map { SnapshotInterval(typeName: $0.key, events: $0.value) }
    }
}

extension Application {
    /// Creates an application with snapshot intervals keyed by type name.
    @available(*, deprecated, message: "use snapshotIntervals: [.every(100, for: Dog.self)]")
    public convenience init(recorder: any ApplicationRecorder, snapshots: (any SnapshotRecorder)? = nil, mapper: Mapper = Mapper(),
                            snapshotIntervals: [String: Int], logger: Logger = Logger(label: "eventsourcing.application")) {
        self.init(recorder: recorder, snapshots: snapshots, mapper: mapper,
                  snapshotIntervals: SnapshotInterval.fromTypeNames(snapshotIntervals), logger: logger)
    }
}
