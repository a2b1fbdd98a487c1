// esctl-scale-seed: fills an initialised SQLite store (esctl init) with SCOPES key scopes for
// Benchmarks/esctl-scale.sh, through the library, as an application would: one account
// aggregate per scope (its own id is its scope), EVENTS events each, and every ROTATE-th scope
// with a second data-key version. Prints one scope id on stdout (for `keys show`), and what it
// did on stderr.
//
//   esctl-scale-seed --db PATH --master-key-file PATH --scopes N [--events 1] [--rotate-every 10]
import EventSourcing
import EventSourcingSQLite
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

var db = "", keyFile = "", scopes = 0, events = 1, rotateEvery = 10
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let a = arguments.next() {
    switch a {
    case "--db": db = arguments.next() ?? ""
    case "--master-key-file": keyFile = arguments.next() ?? ""
    case "--scopes": scopes = Int(arguments.next() ?? "") ?? 0
    case "--events": events = Int(arguments.next() ?? "") ?? 0
    case "--rotate-every": rotateEvery = Int(arguments.next() ?? "") ?? 0
    default: fail("unknown argument \(a)")
    }
}
guard !db.isEmpty, !keyFile.isEmpty, scopes > 0, events > 0, rotateEvery >= 0 else {
    fail("usage: esctl-scale-seed --db PATH --master-key-file PATH --scopes N [--events 1] [--rotate-every 10]")
}

let started = ContinuousClock.now
do {
    let store = try SQLiteStore(path: db, configuration: .init(synchronous: .normal))
    let keyring = try await Keyring.open(store: store, masterKeys: [try MasterKey(contentsOfFile: keyFile)])
    let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
    var made = 0
    var first: UUID?
    while made < scopes {
        let n = min(1000, scopes - made)
        var roots = try (0..<n).map { i -> AggregateRoot<Account> in
            var root = try AggregateRoot<Account>(.opened(name: "customer \(made + i)", email: "c\(made + i)@example.com"))
            for e in 1..<events { try root.record(.renamed(name: "customer \(made + i), \(e)")) }
            return root
        }
        try await app.save(&roots)
        if first == nil { first = roots.first?.id }
        if rotateEvery > 0 {
            for (i, root) in roots.enumerated() where (made + i) % rotateEvery == 0 {
                _ = try await keyring.rotate(scope: root.id.uuidString.lowercased())
            }
        }
        made += n
    }
    await store.checkpointTruncate()
    await store.close()
    print(first?.uuidString.lowercased() ?? "")
    FileHandle.standardError.write(Data("esctl-scale-seed: \(scopes) scopes, \(scopes * events) events in \(ContinuousClock.now - started)\n".utf8))
} catch {
    fail("\(error)")
}
