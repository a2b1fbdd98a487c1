import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import NIOCore
import PostgresNIO
import Testing

extension PostgresTests {
    @Suite("No personal data reaches the PostgreSQL tables")
    struct PlaintextInTableTests {
        static let eventCount = 1_000
        /// A snapshot every 5 versions: each workload customer (10 events) gets two.
        static let snapshotInterval = 5

        enum Variant: String, CaseIterable, CustomTestStringConvertible {
            case encryptedCompressed, encryptedUncompressed, plaintextUncompressed
            var testDescription: String { rawValue }
        }

        struct Scan {
            let needles: NeedleSet
            let inEvents: Set<Int>
            let inSnapshots: Set<Int>
            let eventRows: Int
            let snapshotRows: Int
        }

        /// Writes the first 1,000 workload events as customers (one save per event, snapshots on),
        /// then reads every byte of the events and snapshots tables back with a client of its
        /// own and returns which names, emails and addresses occur in them.
        private func writeWorkload(_ variant: Variant) async throws -> Scan {
            let dir = try TempDir("plaintext")
            let events = workloadEvents(Self.eventCount)
            try #require(events.count == Self.eventCount, "the workload has fewer than \(Self.eventCount) events")
            let config = try freshConfiguration()
            return try await withStore(config) { store in
                let intervals: [SnapshotInterval] = [.every(Self.snapshotInterval, for: Customer.self)]
                let app: Application
                switch variant {
                case .encryptedCompressed:
                    app = try await EncryptedApp.open(store, masterKey: MasterKey.generate(), snapshotIntervals: intervals).app
                case .encryptedUncompressed:
                    // Without compression only the cipher stands between the text and the table.
                    app = try await EncryptedApp.open(store, masterKey: MasterKey.generate(), snapshotIntervals: intervals,
                                                      options: .init(compressor: nil)).app
                case .plaintextUncompressed:
                    app = Application(recorder: store, snapshots: store, mapper: Mapper(configuration: .init(compressor: nil)),
                                      snapshotIntervals: intervals)
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
                strings = Array(Set(strings.flatMap { [$0, $0.replacingOccurrences(of: "/", with: "\\/")] }))
                    .filter { $0.utf8.count >= 8 }.sorted()
                let needles = NeedleSet(strings.map { Array($0.utf8) })

                // Every column of every row, as the server returns it.
                let s = config.schema
                return try await withRawClient(config) { client in
                    var eventRows = 0, snapshotRows = 0
                    var inEvents = Set<Int>(), inSnapshots = Set<Int>()
                    for try await (state, topic, scope, id) in try await client.query(
                        "SELECT state, topic, coalesce(key_scope, ''), originator_id::text FROM \(unescaped: s).events"
                    ).decode((ByteBuffer, String, String, String).self) {
                        eventRows += 1
                        inEvents.formUnion(needles.found(in: Array(state.readableBytesView) + Array((topic + scope + id).utf8)))
                    }
                    for try await (state, topic, scope, id) in try await client.query(
                        "SELECT state, topic, coalesce(key_scope, ''), originator_id::text FROM \(unescaped: s).snapshots"
                    ).decode((ByteBuffer, String, String, String).self) {
                        snapshotRows += 1
                        inSnapshots.formUnion(needles.found(in: Array(state.readableBytesView) + Array((topic + scope + id).utf8)))
                    }
                    return Scan(needles: needles, inEvents: inEvents, inSnapshots: inSnapshots,
                                eventRows: eventRows, snapshotRows: snapshotRows)
                }
            }
        }

        private func sample(_ scan: Scan, _ found: Set<Int>) -> [String] {
            found.sorted().prefix(3).map { String(decoding: scan.needles.needles[$0], as: UTF8.self) }
        }

        @Test("With encryption on, no name, email or address of the first 1,000 workload events appears in the events or snapshots table",
              arguments: [Variant.encryptedCompressed, .encryptedUncompressed])
        func encryptedWorkloadLeavesNoPlaintext(_ variant: Variant) async throws {
            let scan = try await writeWorkload(variant)
            #expect(scan.eventRows == Self.eventCount)
            #expect(scan.snapshotRows == Self.eventCount / Self.snapshotInterval, "the snapshots were not all written")
            #expect(scan.inEvents.isEmpty, "the events table contains \(scan.inEvents.count) plaintext strings, e.g. \(sample(scan, scan.inEvents))")
            #expect(scan.inSnapshots.isEmpty,
                    "the snapshots table contains \(scan.inSnapshots.count) plaintext strings, e.g. \(sample(scan, scan.inSnapshots))")
        }

        @Test("Control: the same workload written with a plaintext, uncompressed Mapper is found by the same search")
        func plaintextWorkloadIsFound() async throws {
            let scan = try await writeWorkload(.plaintextUncompressed)
            #expect(scan.eventRows == Self.eventCount)
            #expect(scan.snapshotRows == Self.eventCount / Self.snapshotInterval)
            // Every name, email and address is found in the events in one of its spellings.
            var spellings: [String: Bool] = [:]
            for (i, n) in scan.needles.needles.enumerated() {
                let s = String(decoding: n, as: UTF8.self).replacingOccurrences(of: "\\/", with: "/")
                spellings[s, default: false] = spellings[s, default: false] || scan.inEvents.contains(i)
            }
            let missing = spellings.filter { !$0.value }.map(\.key)
            #expect(missing.isEmpty, "\(missing.count) strings not found in the events table, e.g. \(missing.prefix(3))")
            #expect(spellings.count > 2_000)
            // The snapshots hold each customer's latest details: 100 customers, 3 strings each at least.
            #expect(scan.inSnapshots.count >= 300, "only \(scan.inSnapshots.count) strings found in the snapshots table")
        }
    }
}
