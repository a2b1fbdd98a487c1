import Foundation
import ServiceLifecycle

/// A runner of one projection, whatever its view type: what a ``ProjectionGroup`` holds.
public protocol ProjectionRunning: Service {
    /// The projection's name.
    var name: String { get }
    /// Returns once the view reflects notification `notificationID` (see
    /// ``ProjectionRunner/wait(until:timeout:)``).
    func wait(until notificationID: Int64, timeout: Duration) async throws
}

extension ProjectionRunner: ProjectionRunning {}

/// The projection runners of an application, run together and waited for by name: the
/// read-your-writes handle a request handler keeps (`try await projections.wait(for:
/// "customers", until: recording.notificationID, timeout: .seconds(5))`).
///
/// ``run()`` runs every runner concurrently until the task is cancelled or the service group
/// shuts down gracefully; the first runner that fails stops the others and its error is thrown.
public struct ProjectionGroup: Service, Sendable {
    /// The runners, by name.
    public let runners: [String: any ProjectionRunning]

    /// Groups `runners`.
    /// - Throws: `.invalidArgument` when two have the same name (they would share a tracking
    ///   position).
    public init(_ runners: [any ProjectionRunning]) throws(EventSourcingError) {
        var byName: [String: any ProjectionRunning] = [:]
        for r in runners {
            guard byName[r.name] == nil else {
                throw EventSourcingError(.invalidArgument, "two projection runners are named \"\(r.name)\": names must be unique")
            }
            byName[r.name] = r
        }
        self.runners = byName
    }

    /// The names of the projections, sorted.
    public var names: [String] { runners.keys.sorted() }

    /// Returns once projection `name`'s view reflects notification `notificationID`.
    /// - Throws: `.invalidArgument` for a name no runner of the group has (naming it and the
    ///   names it has); otherwise as ``ProjectionRunner/wait(until:timeout:)``.
    public func wait(for name: String, until notificationID: Int64, timeout: Duration) async throws {
        guard let runner = runners[name] else {
            throw EventSourcingError(.invalidArgument,
                "no projection named \"\(name)\" in this group (it has: \(names.map { "\"\($0)\"" }.joined(separator: ", ")))",
                notificationID: notificationID)
        }
        try await runner.wait(until: notificationID, timeout: timeout)
    }

    /// Returns once every projection's view reflects notification `notificationID` (the
    /// timeout applies to each in turn, measured from this call).
    public func wait(until notificationID: Int64, timeout: Duration) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + min(max(timeout, .zero), .seconds(365 * 86_400))
        for name in names {
            try await wait(for: name, until: notificationID, timeout: max(deadline - clock.now, .zero))
        }
    }

    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for runner in runners.values {
                group.addTask { try await runner.run() }
            }
            do {
                while try await group.next() != nil {}
            } catch {
                group.cancelAll()
                throw error
            }
        }
    }
}
