// esctl-scale-seed: fills an initialised store (esctl init) with SCOPES key scopes for
// Benchmarks/esctl-scale.sh, through the library, as an application would: one account
// aggregate per scope (its own id is its scope), EVENTS events each, and every ROTATE-th scope
// with a second data-key version. The store is a SQLite file or a PostgreSQL database (a store
// URL, as `esctl --store` takes; a PostgreSQL password comes from PGPASSWORD, never from the
// arguments). Aggregates are saved 1,000 per `save` (one batch insert, one transaction).
//
// Prints SAMPLE scope ids on stdout, one a line, spread evenly over the store (the first, then
// one in each SAMPLE-th of it; each is a scope with one data-key version), for the commands
// that act on one subject; and what it did on stderr.
//
//   esctl-scale-seed (--store URL | --db PATH) --master-key-file PATH --scopes N
//                    [--events 1] [--rotate-every 10] [--sample 1] [--rotate-concurrency 8]
import EventSourcing
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement

struct Account: Aggregate {
    static var typeName: String { "Account" }
    enum Event: Codable, Sendable {
        case opened(name: String, email: String)
        case renamed(name: String)
    }
    var name = ""
    mutating func apply(_ event: Event) {
        switch event {
        case .opened(let name, _), .renamed(let name): self.name = name
        }
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("esctl-scale-seed: \(message)\n".utf8))
    exit(64)
}

var url = "", keyFile = "", scopes = 0, events = 1, rotateEvery = 10, sample = 1, rotateConcurrency = 8
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let a = arguments.next() {
    switch a {
    case "--store": url = arguments.next() ?? ""
    case "--db": url = "sqlite:" + (arguments.next() ?? "")
    case "--master-key-file": keyFile = arguments.next() ?? ""
    case "--scopes": scopes = Int(arguments.next() ?? "") ?? 0
    case "--events": events = Int(arguments.next() ?? "") ?? 0
    case "--rotate-every": rotateEvery = Int(arguments.next() ?? "") ?? -1
    case "--sample": sample = Int(arguments.next() ?? "") ?? 0
    case "--rotate-concurrency": rotateConcurrency = Int(arguments.next() ?? "") ?? 0
    default: fail("unknown argument \(a)")
    }
}
guard !url.isEmpty, url != "sqlite:", !keyFile.isEmpty, scopes > 0, events > 0, rotateEvery >= 0,
      (1...scopes).contains(sample), (1...64).contains(rotateConcurrency) else {
    fail("usage: esctl-scale-seed (--store URL | --db PATH) --master-key-file PATH --scopes N [--events 1] [--rotate-every 10] [--sample 1…N] [--rotate-concurrency 1…64]")
}

// The sampled positions: the first scope, then one in each SAMPLE-th of the store, moved off the
// rotated positions (multiples of ROTATE) so every sampled scope has one data-key version.
let sampled: Set<Int> = Set((0..<sample).map { k in
    var i = k * (scopes / sample)
    if rotateEvery > 0, i % rotateEvery == 0, i + 1 < scopes { i += 1 }
    return i
})

let started = ContinuousClock.now
do {
    var location = try StoreURL(parsing: url, setting: "--store")
    if case .postgres(var configuration) = location, configuration.password == nil {
        configuration.password = ProcessInfo.processInfo.environment["PGPASSWORD"]
        location = .postgres(configuration)
    }
    var options = EncryptedStore.Options()
    options.sqlite.synchronous = .normal
    let store = try await EncryptedStore.open(location, masterKeys: [try MasterKey(contentsOfFile: keyFile)], options: options)
    let app = store.application, keyring = store.keyring
    var made = 0
    var picked: [String] = []
    while made < scopes {
        let n = min(1000, scopes - made)
        var roots = try (0..<n).map { i -> AggregateRoot<Account> in
            var root = try AggregateRoot<Account>(.opened(name: "customer \(made + i)", email: "c\(made + i)@example.com"))
            for e in 1..<events { try root.record(.renamed(name: "customer \(made + i), \(e)")) }
            return root
        }
        try await app.save(&roots)
        for (i, root) in roots.enumerated() where sampled.contains(made + i) { picked.append(root.id.uuidString.lowercased()) }
        if rotateEvery > 0 {
            // Rotations one scope at a time, ROTATE-CONCURRENCY in flight (a PostgreSQL round trip
            // each; a SQLite store serialises them on its writer).
            let toRotate = roots.indices.filter { (made + $0) % rotateEvery == 0 }.map { roots[$0].id.uuidString.lowercased() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = toRotate.makeIterator()
                for _ in 0..<rotateConcurrency {
                    guard let scope = next.next() else { break }
                    group.addTask { _ = try await keyring.rotate(scope: scope) }
                }
                while try await group.next() != nil {
                    if let scope = next.next() { group.addTask { _ = try await keyring.rotate(scope: scope) } }
                }
            }
        }
        made += n
    }
    if case .sqlite(let s) = store.backend { await s.checkpointTruncate() }
    await store.close()
    print(picked.joined(separator: "\n"))
    FileHandle.standardError.write(Data("esctl-scale-seed: \(scopes) scopes, \(scopes * events) events in \(ContinuousClock.now - started)\n".utf8))
} catch {
    fail("\(error)")
}
