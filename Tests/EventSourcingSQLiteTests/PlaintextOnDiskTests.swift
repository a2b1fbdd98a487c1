import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("No personal data reaches the SQLite files")
struct PlaintextOnDiskTests {
    static let eventCount = 2_000

    /// How the workload is written.
    enum Variant: String, CaseIterable, CustomTestStringConvertible {
        case encryptedCompressed, encryptedUncompressed, plaintextUncompressed
        var testDescription: String { rawValue }
    }

    /// Writes the first 2,000 workload events as customers (one save per event), then returns
    /// which of the name/email/address strings occur in the database files: while the store is
    /// open (the WAL holds the recent writes) and after it is closed.
    private func writeWorkload(_ variant: Variant) async throws -> (needles: NeedleSet, open: [String: Set<Int>], closed: [String: Set<Int>]) {
        let dir = try TempDir("plaintext")
        let events = workloadEvents(Self.eventCount)
        try #require(events.count == Self.eventCount, "the workload has fewer than \(Self.eventCount) events")

        let db = dir.path("events.sqlite")
        let store = try SQLiteStore(path: db)
        let app: Application
        switch variant {
        case .encryptedCompressed:
            app = Application(recorder: store, snapshots: store,
                              mapper: Mapper(keyring: try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])))
        case .encryptedUncompressed:
            // Without compression only the cipher stands between the text and the disk.
            app = Application(recorder: store, snapshots: store,
                              mapper: Mapper(keyring: try await Keyring.open(store: store, masterKeys: [MasterKey.generate()]),
                                             configuration: .init(compressor: nil)))
        case .plaintextUncompressed:
            app = Application(recorder: store, snapshots: store, mapper: Mapper(configuration: .init(compressor: nil)))
        }

        var roots: [Int: AggregateRoot<Customer>] = [:]
        for e in events {
            var root: AggregateRoot<Customer>
            if var r = roots[e.aggregate] {
                try r.record(.updated(name: e.name, email: e.email, address: e.address))
                root = r
            } else {
                root = try AggregateRoot<Customer>(.registered(name: e.name, email: e.email, address: e.address))
            }
            try await app.save(&root)
            roots[e.aggregate] = root
        }

        // JSON may escape "/" as "\/": look for both spellings of every string.
        var strings: [String] = []
        for e in events { strings += [e.name, e.email, e.address] }
        strings = Array(Set(strings.flatMap { [$0, $0.replacingOccurrences(of: "/", with: "\\/")] })).sorted()
        let needles = NeedleSet(strings.map { Array($0.utf8) })

        func scan() -> [String: Set<Int>] {
            var out: [String: Set<Int>] = [:]
            for (suffix, bytes) in databaseFiles(db) { out["events.sqlite" + suffix] = needles.found(in: bytes) }
            return out
        }
        let whileOpen = scan()
        await store.close()
        let afterClose = scan()
        return (needles, whileOpen, afterClose)
    }

    @Test("With encryption on, no name, email or address from the workload appears in the .sqlite, -wal or -shm file",
          arguments: [Variant.encryptedCompressed, .encryptedUncompressed])
    func encryptedWorkloadLeavesNoPlaintext(_ variant: Variant) async throws {
        let (needles, whileOpen, afterClose) = try await writeWorkload(variant)
        for (when, scan) in [("while open", whileOpen), ("after close", afterClose)] {
            for (file, found) in scan.sorted(by: { $0.key < $1.key }) {
                #expect(found.isEmpty, """
                    \(file) \(when) contains \(found.count) plaintext strings, e.g. \
                    \(found.prefix(3).map { String(decoding: needles.needles[$0], as: UTF8.self) })
                    """)
            }
        }
    }

    @Test("Control: the same workload written without encryption is found by the same search")
    func plaintextWorkloadIsFound() async throws {
        let (needles, whileOpen, afterClose) = try await writeWorkload(.plaintextUncompressed)
        // Every name, email and address is found in one of its spellings, in the files as they are.
        for (when, scan) in [("while open", whileOpen), ("after close", afterClose)] {
            let found = scan.values.reduce(into: Set<Int>()) { $0.formUnion($1) }
            var spellings: [String: Bool] = [:]
            for (i, n) in needles.needles.enumerated() {
                let s = String(decoding: n, as: UTF8.self).replacingOccurrences(of: "\\/", with: "/")
                spellings[s, default: false] = spellings[s, default: false] || found.contains(i)
            }
            let missing = spellings.filter { !$0.value }.map(\.key)
            #expect(missing.isEmpty, "\(when): \(missing.count) strings not found, e.g. \(missing.prefix(3))")
            #expect(spellings.count > 2_000)
        }
    }
}
