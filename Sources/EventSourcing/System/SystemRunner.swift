import Foundation
import Logging
import ServiceLifecycle

/// Runs the followers of a system (all, or `only` some in this OS process), one task each.
public final class SystemRunner: Service, Sendable {
    /// The system.
    public let system: System

    public init(system: System, only: Set<String>? = nil, batchSize: Int = 100,
                logger: Logger = Logger(label: "eventsourcing.system")) throws(EventSourcingError) {
        self.system = system
    }

    /// Cancel / graceful shutdown to stop; first failure stops all, thrown.
    public func run() async throws {
        fatalError("unimplemented")
    }

    /// Read-your-writes across applications: returns once `follower` has processed leader's notification.
    public func wait(for follower: String, toProcess notificationID: Int64, of leader: String, timeout: Duration) async throws {
        fatalError("unimplemented")
    }

    /// The follower's position in the leader's log (nil: nothing processed yet).
    public func position(of follower: String, leader: String) async throws -> Int64? {
        fatalError("unimplemented")
    }
}
