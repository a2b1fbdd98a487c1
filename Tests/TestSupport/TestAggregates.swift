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

/// One event of the test workload: a customer's personal data.
public struct WorkloadEvent: Decodable, Sendable {
    public let aggregate: Int
    public let event: Int
    public let name: String
    public let email: String
    public let address: String
}

/// The first `count` events of a deterministic workload shaped like the shared benchmark
/// workload (ten events per customer; full names, e-mail addresses and long postal addresses),
/// generated here so the tests read nothing outside the repository. Every name, e-mail and
/// address is distinct across the first 100,000 events, so a byte search for one finds only
/// that event's copy.
public func workloadEvents(_ count: Int) -> [WorkloadEvent] {
    let first = ["Aoife", "Harper", "Noah", "Liam", "Mia", "Zoe", "Mateo", "Yusuf", "Ingrid", "Kenji",
                 "Amara", "Lucas", "Sofia", "Oskar", "Priya", "Tomás", "Elif", "Chen", "Nadia", "Rafael"]
    let last = ["Brown", "Fitzgerald-Hughes", "Williams", "Okafor", "Nakamura", "García", "Novak", "Lindqvist",
                "Haddad", "O'Connor", "Kowalski", "Dubois", "Rossi", "Andersen", "Mensah", "Petrov"]
    let domains = ["proton.me", "mail.university.edu", "example-corp.com", "post.example.org", "inbox.example.net"]
    let streets = ["Pine Place", "Sunset Street", "Highland Place", "Maple Avenue", "Harbour Road", "Elm Court"]
    let cities = ["Austin, TX", "San Francisco, CA", "Brooklyn, NY", "Portland, OR", "Denver, CO", "Madison, WI"]
    let companies = ["Acme Logistics Ltd", "Globex Corporation", "Initech Holdings", "Umbrella Freight", "Stark Supply"]
    // A fixed linear congruential sequence: the same workload on every machine and run.
    var x: UInt64 = 0x2545_F491_4F6C_DD1D
    func next(_ n: Int) -> Int {
        x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int((x >> 33) % UInt64(n))
    }
    return (0..<max(0, count)).map { i in
        let f = first[next(first.count)], l = last[next(last.count)]
        let middle = Character(Unicode.Scalar(UInt8(65 + next(26))))
        let name = "\(f) \(first[next(first.count)]) \(middle). \(l) \(i)"
        let email = "\(f.lowercased()).\(l.lowercased().replacingOccurrences(of: "'", with: ""))\(i)@\(domains[next(domains.count)])"
        let address = "\(1000 + next(90000)) \(streets[next(streets.count)]), Apt \(next(999)), Building G\(next(60)), "
            + "Floor \(next(40)), c/o \(companies[next(companies.count)]), \(cities[next(cities.count)]) "
            + "\(10000 + next(89999))-\(i % 10000), United States of America"
        return WorkloadEvent(aggregate: i / 10, event: i % 10, name: name, email: email, address: address)
    }
}
