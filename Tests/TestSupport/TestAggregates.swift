import EventSourcing
import Foundation

// The aggregates (and the workload reader) shared by the test targets and the child-process
// agent (Tests/Agent): the agent must encode events identically to the tests that read them.

/// Each event says which save it belongs to and its place in that save ("item i of k"),
/// so a reader can tell a complete save from a torn one.
public struct Ledger: Aggregate {
    public static var typeName: String { "Ledger" }
    public enum Event: Codable, Sendable, Equatable {
        case entry(save: Int, item: Int, of: Int)
    }
    public var entries = 0
    public init() {}
    public mutating func apply(_ event: Event) { entries += 1 }
}

/// The fixed aggregate id number `index` of `seed`: `SSSSSSSS-0000-4000-8000-IIIIIIIIIIII` (hex).
public func fixedAggregateID(seed: Int, index: Int) -> UUID {
    func hex(_ v: Int, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    let text = "\(hex(seed & 0xFFFF_FFFF, 8))-0000-4000-8000-\(hex(index & 0xFFFF_FFFF_FFFF, 12))"
    // Always a valid UUID string (masked hex of fixed widths); the fallback is unreachable.
    return UUID(uuidString: text) ?? UUID()
}

/// Records `count` events of save number `save` on `root` (creating it, with `id`, when nil).
public func ledgerSave(_ root: AggregateRoot<Ledger>?, id: UUID = UUID(), save: Int, count: Int) throws -> AggregateRoot<Ledger> {
    var r: AggregateRoot<Ledger>
    var first = 1
    if let root { r = root } else {
        r = try AggregateRoot<Ledger>(id: id, .entry(save: save, item: 1, of: count))
        first = 2
    }
    if first <= count {
        for item in first...count { try r.record(.entry(save: save, item: item, of: count)) }
    }
    return r
}

/// A customer carrying the workload's personal data.
public struct Customer: Aggregate {
    public static var typeName: String { "Customer" }
    public enum Event: Codable, Sendable {
        case registered(name: String, email: String, address: String)
        case updated(name: String, email: String, address: String)
    }
    public var name = ""
    public var email = ""
    public var address = ""
    public init() {}
    public mutating func apply(_ event: Event) {
        switch event {
        case .registered(let n, let e, let a), .updated(let n, let e, let a):
            (name, email, address) = (n, e, a)
        }
    }
}

/// One line of the shared workload file.
public struct WorkloadEvent: Decodable, Sendable {
    public let aggregate: Int
    public let event: Int
    public let name: String
    public let email: String
    public let address: String
}

/// The first `count` events of the shared workload (gzip's stderr goes to a file in `dir`).
public func workloadEvents(_ count: Int, in dir: TempDir) async throws -> [WorkloadEvent] {
    let path = try TestEnvironment.workloadPath()
    let text = try await ChildProcess.run("/bin/sh", ["-c", "gzip -dc \"$1\" | head -n \(count)", "sh", path],
                                          stderrPath: dir.path("gzip.stderr"))
    let decoder = JSONDecoder()
    return try text.split(separator: "\n").map { try decoder.decode(WorkloadEvent.self, from: Data($0.utf8)) }
}
