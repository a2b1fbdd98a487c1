import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging

/// A small CQRS application: customers are registered (write side, encrypted events), a
/// projection keeps a directory table in the same SQLite file (read side, exactly once), and
/// an erasure request shreds one customer, which removes that customer from the directory.
///
///     swift run CustomerDirectory [DIRECTORY]
///
/// The store and its master key go to DIRECTORY (a new temporary directory by default).
enum CustomerDirectoryExample {
    /// What a run showed.
    struct Outcome: Sendable {
        /// The read model after the registrations, and after the erasure.
        var before: [DirectoryRow]
        var after: [DirectoryRow]
        /// The erased customer's id (lowercased, as the directory stores it).
        var erasedCustomerID: String
        /// The store's database file.
        var databasePath: String
    }

    static let customers: [(name: String, email: String, address: String)] = [
        ("Ada Lovelace", "ada@example.org", "12 St James's Square, London"),
        ("Grace Hopper", "grace@example.org", "1 Navy Yard, Arlington"),
        ("Alan Turing", "alan@example.org", "43 Adlington Road, Wilmslow"),
    ]

    /// Runs the example in `directory`, printing through `say`.
    static func run(in directory: URL, say: @Sendable (String) -> Void = { print($0) }) async throws -> Outcome {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let databasePath = directory.appendingPathComponent("customers.sqlite").path
        guard !FileManager.default.fileExists(atPath: databasePath) else {
            // Its master key was made by an earlier run and is gone: start in a new directory.
            throw EventSourcingError(.invalidArgument, "\(databasePath) exists already: give the example a new directory")
        }
        var quiet = Logger(label: "customer-directory")
        quiet.logLevel = .warning

        // The master key wraps every customer's data key. A real application loads it from a
        // key file, a passphrase or a key manager; the example makes one for this run.
        let masterKey = try MasterKey.generate()
        let store = try SQLiteStore(path: databasePath, logger: quiet)
        let runnerTask: Task<Void, any Error>
        let outcome: Outcome
        do {
            let keyring = try await Keyring.open(store: store, masterKeys: [masterKey], logger: quiet)
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring), logger: quiet)

            // The read side: the runner follows the log from the projection's tracking position.
            let runner = try ProjectionRunner(application: app, projection: DirectoryProjection(), store: store, logger: quiet)
            runnerTask = Task { try await runner.run() }

            // The write side: register the customers; one of them moves.
            var ids: [UUID] = []
            var last: Int64 = 0
            for c in customers {
                var customer = try AggregateRoot<Customer>(.registered(name: c.name, email: c.email, address: c.address))
                if c.name == "Grace Hopper" { try customer.record(.moved(address: "7 Harbour Street, Arlington")) }
                let recordings = try await app.save(&customer)
                last = recordings.last?.notificationID ?? last
                ids.append(customer.id)
            }
            // Read your writes: wait until the directory holds the last save.
            try await runner.wait(until: last, timeout: .seconds(30))
            let before = try await store.directory()
            say("Read model after registering \(customers.count) customers:")
            show(before, say)

            // An erasure request from Ada Lovelace: shred her key scope (her aggregate id). The
            // shred writes an erasure record to the log; the runner passes it to the
            // projection's erase hook, which deletes her row.
            let erased = ids[0]
            let receipt = try await app.shred(aggregateID: erased)
            say("")
            let n = receipt.eventsAffected
            say("Erasure request: shredded key scope \(receipt.keyScope) (\(n) event\(n == 1 ? "" : "s") unreadable from now on).")
            guard let end = try await app.notificationLog.maxNotificationID else {
                throw EventSourcingError(.recorderFailure, "the log is empty after the shred")
            }
            try await runner.wait(until: end, timeout: .seconds(30))
            let after = try await store.directory()
            say("Read model after the erasure:")
            show(after, say)
            outcome = Outcome(before: before, after: after, erasedCustomerID: erased.uuidString.lowercased(),
                              databasePath: databasePath)
        } catch {
            await store.close()
            throw error
        }
        runnerTask.cancel()
        do { try await runnerTask.value } catch {
            await store.close()
            throw error
        }
        await store.close()
        say("")
        say("Store: \(databasePath) (events, keys, tracking and the read model in one file)")
        say("The projection's position: esctl projections --store sqlite:\(databasePath)")
        return outcome
    }

    static func show(_ rows: [DirectoryRow], _ say: (String) -> Void) {
        if rows.isEmpty { say("  (empty)") }
        for r in rows {
            say("  \(r.name.padding(toLength: 14, withPad: " ", startingAt: 0)) \(r.email.padding(toLength: 19, withPad: " ", startingAt: 0)) \(r.address)")
        }
    }
}

@main
struct CustomerDirectoryMain {
    static func main() async {
        let arguments = CommandLine.arguments.dropFirst()
        let directory = arguments.first.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("customer-directory-\(UUID().uuidString.prefix(8))")
        do {
            _ = try await CustomerDirectoryExample.run(in: directory)
        } catch {
            FileHandle.standardError.write(Data("customer-directory: \(error)\n".utf8))
            exit(1)
        }
    }
}
