import EventSourcing

/// The workload's aggregate, shared by esbench and the pipeline benchmarks: a customer whose
/// events carry the workload's personal data (the peer's `Customer` in bench_pyes.py).
public struct Customer: Aggregate {
    public static var typeName: String { "Customer" }
    public enum Event: Codable, Sendable {
        case registered(name: String, email: String, address: String)
        case contactUpdated(name: String, email: String, address: String)
    }
    public var name = ""
    public var email = ""
    public var address = ""
    public init() {}
    public mutating func apply(_ event: Event) {
        switch event {
        case .registered(let n, let e, let a), .contactUpdated(let n, let e, let a):
            name = n
            email = e
            address = a
        }
    }
}
