@testable import CustomerDirectory
import Foundation
import Synchronization
import Testing

/// The runnable example (`swift run customer-directory`) runs here, in a temporary directory.
@Suite("Examples: customer directory")
struct CustomerDirectoryExampleTests {
    static func tempDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("es-example-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test("The read model holds every customer; after the erasure request the shredded customer's name, e-mail and address are gone from it, its output and the files, and the others are intact")
    func beforeAndAfter() async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let printed = Mutex<[String]>([])
        let outcome = try await CustomerDirectoryExample.run(in: dir.appendingPathComponent("run")) { line in
            printed.withLock { $0.append(line) }
        }
        let ada = CustomerDirectoryExample.customers[0]
        let others = CustomerDirectoryExample.customers.dropFirst()

        // Before: every customer, with Grace's move applied.
        #expect(outcome.before.count == 3)
        let beforeByName = Dictionary(uniqueKeysWithValues: outcome.before.map { ($0.name, $0) })
        #expect(beforeByName[ada.name]?.email == ada.email)
        #expect(beforeByName[ada.name]?.address == ada.address)
        #expect(beforeByName[ada.name]?.customerID == outcome.erasedCustomerID)
        #expect(beforeByName["Grace Hopper"]?.address == "7 Harbour Street, Arlington")

        // After: Ada is gone, the others unchanged.
        #expect(outcome.after.count == 2)
        #expect(!outcome.after.contains { $0.customerID == outcome.erasedCustomerID })
        for row in outcome.after {
            for field in [row.name, row.email, row.address] {
                #expect(![ada.name, ada.email, ada.address].contains(field), "the erased customer's data is in the read model: \(row)")
            }
        }
        #expect(outcome.after == outcome.before.filter { $0.customerID != outcome.erasedCustomerID })
        #expect(Set(outcome.after.map(\.email)) == Set(others.map(\.email)))

        // The printed read model: Ada's line before the erasure, none after.
        let lines = printed.withLock { $0 }
        let split = try #require(lines.firstIndex { $0.hasPrefix("Read model after the erasure") })
        let beforeText = lines[..<split].joined(separator: "\n"), afterText = lines[split...].joined(separator: "\n")
        for value in [ada.name, ada.email, ada.address] {
            #expect(beforeText.contains(value))
            #expect(!afterText.contains(value), "printed after the erasure: \(value)")
        }
        for c in others { #expect(afterText.contains(c.name) && afterText.contains(c.email)) }

        // The store's files (database, WAL, SHM) no longer hold Ada's data anywhere: the
        // projection's deletion was zeroed (secure_delete) and the WAL checkpointed.
        for suffix in ["", "-wal", "-shm"] {
            guard let bytes = FileManager.default.contents(atPath: outcome.databasePath + suffix) else { continue }
            for value in [ada.name, ada.email, ada.address] {
                #expect(bytes.range(of: Data(value.utf8)) == nil, "\(value) is still in customers.sqlite\(suffix)")
            }
        }
    }

    @Test("A directory that already holds the example's store is refused, and the store is left as it was")
    func refusesExistingStore() async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let first = try await CustomerDirectoryExample.run(in: dir) { _ in }
        let bytes = FileManager.default.contents(atPath: first.databasePath)
        await #expect(throws: (any Error).self) { _ = try await CustomerDirectoryExample.run(in: dir) { _ in } }
        #expect(FileManager.default.contents(atPath: first.databasePath) == bytes)
    }
}
