import ArgumentParser
import EventSourcing
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement
import Logging

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A guided tour: encrypt personal data, read it back, rotate keys, shred a person, verify.",
        discussion: "Creates a fresh SQLite store and master key in --dir (default: a new temporary directory).")

    @Option(help: ArgumentHelp("Directory for the demo store (must not already hold one).", valueName: "path"))
    var dir: String?

    func run() async throws {
        try await Esctl.guarded { try await tour() }
    }

    private func heading(_ n: Int, _ title: String) {
        print("\n\u{2500}\u{2500} \(n). \(title) " + String(repeating: "\u{2500}", count: max(0, 60 - title.count)))
    }

    private func tour() async throws {
        let fm = FileManager.default
        let directory = dir ?? fm.temporaryDirectory.appendingPathComponent("esctl-demo-\(UUID().uuidString.prefix(8).lowercased())").path
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dbPath = directory + "/demo.sqlite"
        let keyPath = directory + "/master.key"
        let newKeyPath = directory + "/master-2.key"
        guard !fm.fileExists(atPath: dbPath), !fm.fileExists(atPath: keyPath) else {
            throw CLIError(exitCode: Exit.usage, message: "\(directory) already holds a demo store; pick another --dir")
        }
        var quiet = Logger(label: "esctl.demo")
        quiet.logLevel = .error

        heading(1, "A new store and a master key")
        let master = try MasterKey.generate()
        try master.writeKeyFile(to: keyPath)
        var store = try SQLiteStore(path: dbPath, logger: quiet)
        var keyring = try await Keyring.open(store: store, masterKeys: [master], logger: quiet)
        var app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring), logger: quiet)
        print("store:      \(dbPath)")
        print("master key: \(keyPath) (id \(master.id), mode 0600)")

        heading(2, "Register three people and an order")
        var ada = try AggregateRoot<Person>(.registered(name: "Ada Lovelace", email: "ada@analytical.example",
                                                        address: "12 St James's Square, London"))
        var alan = try AggregateRoot<Person>(.registered(name: "Alan Turing", email: "alan@bletchley.example",
                                                         address: "Hollymeade, Wilmslow"))
        var grace = try AggregateRoot<Person>(.registered(name: "Grace Hopper", email: "grace@navy.example",
                                                          address: "Arlington, Virginia"))
        var order = try AggregateRoot<Order>(.placed(customer: alan.id.uuidString.lowercased(), item: "Enigma rotor set",
                                                     deliverTo: "Hollymeade, Wilmslow"))
        try await app.save(&ada, &alan, &grace)
        try await app.save(&order)
        for p in [ada, alan, grace] { print("\(p.name.padding(toLength: 13, withPad: " ", startingAt: 0)) aggregate \(p.id.uuidString.lowercased())") }
        print("order of Alan: aggregate \(order.id.uuidString.lowercased()), key scope = Alan's id (his data subject)")

        heading(3, "What is on disk: ciphertext, no personal data")
        let first = try await store.selectNotifications(start: 1, limit: 1, stop: nil, topics: [])
        if let n = first.first, case .success(let (header, offset)) = StateHeader.parse(n.state) {
            print("notification \(n.id)  aggregate \(n.originatorID.uuidString.lowercased())  v\(n.originatorVersion)  topic \(n.topic)")
            print("header: magic E553, format 1, flags \(header.flags.contains(.compressed) ? "compressed+" : "")encrypted, key scope \(header.keyScope ?? "-"), key v\(header.keyVersion)")
            print("state (\(n.state.count) bytes, first 64):")
            print(hexdump(Array(n.state.prefix(64)), mark: offset))
        }
        await store.checkpointTruncate()
        let bytes = (fm.contents(atPath: dbPath) ?? Data()) + (fm.contents(atPath: dbPath + "-wal") ?? Data())
        for needle in ["Lovelace", "alan@bletchley.example", "Arlington"] {
            print("search the database file for \"\(needle)\": \(bytes.range(of: Data(needle.utf8)) == nil ? "not found" : "FOUND")")
        }

        heading(4, "Read back through the application")
        for id in [ada.id, alan.id, grace.id] {
            let p = try await app.repository.get(Person.self, id: id)
            print("\(p.name) <\(p.email)>, \(p.address)")
        }

        heading(5, "Rotate Ada's data key, then the master key")
        let adaScope = ada.keyScope
        let v = try await keyring.rotate(scope: adaScope)
        try ada.record(.moved(address: "Ockham Park, Surrey"))
        try await app.save(&ada)
        let latest = try await store.selectEvents(originatorID: ada.id, order: .descending, limit: 1)
        if let e = latest.first, case .success(let (h, _)) = StateHeader.parse(e.state) {
            print("Ada's data key is now v\(v); her newest event is under key v\(h.keyVersion), the first still under v1")
        }
        print("Ada reads back at her new address: \(try await app.repository.get(Person.self, id: ada.id).address)")
        let newMaster = try MasterKey.generate()
        try newMaster.writeKeyFile(to: newKeyPath)
        let r = try await keyring.rotateMasterKey(to: newMaster)
        print("master key \(master.id) -> \(newMaster.id): \(r.rewrapped) data keys rewrapped, no event rewritten")
        await store.close()
        store = try SQLiteStore(path: dbPath, logger: quiet)
        do {
            _ = try await Keyring.open(store: store, masterKeys: [master], logger: quiet)
            print("the old master key still opens the store (unexpected)")
        } catch let e as KeyManagementError where e.code == .wrongMasterKey {
            print("the old master key no longer opens the store: wrongMasterKey")
        }
        keyring = try await Keyring.open(store: store, masterKeys: [newMaster], logger: quiet)
        app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring), logger: quiet)
        print("with the new master key: \(try await app.repository.get(Person.self, id: grace.id).name) reads fine")

        heading(6, "Alan asks to be forgotten: shred his data subject")
        let receipt = try await app.shred(keyScope: alan.keyScope)
        print("erasure receipt: scope \(receipt.keyScope), key versions destroyed \(receipt.destroyedKeyVersions), events affected \(receipt.eventsAffected)")
        for (label, read) in [("Alan's person record", { _ = try await app.repository.get(Person.self, id: alan.id) }),
                              ("Alan's order", { _ = try await app.repository.get(Order.self, id: order.id) })] as [(String, () async throws -> Void)] {
            do {
                try await read()
                print("\(label): still readable (unexpected)")
            } catch let e as EventSourcingError where e.code == .shredded {
                print("\(label): shredded")
            }
        }
        do {
            try alan.record(.moved(address: "anywhere"))
            try await app.save(&alan)
            print("writing to Alan: accepted (unexpected)")
        } catch let e as EventSourcingError where e.code == .shredded {
            print("writing to Alan: refused (shredded; no new key is minted)")
        }
        for id in [ada.id, grace.id] { print("\(try await app.repository.get(Person.self, id: id).name): intact") }

        heading(7, "Verify the whole store")
        let report = try await VerificationReport.run(Session(store: store, keyring: keyring, app: app), progress: nil)
        print("events: \(report.eventsOK) ok, \(report.eventsShredded) shredded, \(report.failures.count) failing")
        await store.close()

        heading(8, "Where things are")
        print("store:              \(dbPath)")
        print("master key (now):   \(newKeyPath)")
        print("retired master key: \(keyPath) (destroy it)")
        // The same build as the demo's, so following the hint does not rebuild with PostgreSQL.
        let run = StoreURL.supportsPostgreSQL ? "swift run esctl" : "swift run --disable-default-traits esctl"
        print("try:  \(run) --store sqlite:\(dbPath) --master-key-file \(newKeyPath) keys list")
        if report.failures.isEmpty == false { throw ExitCode(Exit.verificationFailed) }
    }

    private func hexdump(_ bytes: [UInt8], mark: Int) -> String {
        stride(from: 0, to: bytes.count, by: 16).map { i in
            let row = bytes[i..<min(i + 16, bytes.count)]
            return "  " + String(format: "%04x", i) + "  " + row.map { String(format: "%02x", $0) }.joined(separator: " ")
        }.joined(separator: "\n") + "\n  (bytes 0..<\(mark) are the header; the rest is AES-256-GCM ciphertext and tag)"
    }
}
