import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// SECURITY.md §12's reference reader, exactly as printed there, run on a store this suite
/// writes: it must open what the library wrote (both payload encodings, events and snapshots)
/// and read personal fields (§5.16) as values, and as redacted after their subject's shred.
@Suite("SECURITY.md's reference reader reads the library's store", .tags(.multiProcess))
struct PythonReaderTests {
    /// The Python block of SECURITY.md's appendix.
    static func reader() throws -> String {
        let text = try String(contentsOf: CLI.packageRoot.appendingPathComponent("SECURITY.md"), encoding: .utf8)
        let appendix = try #require(text.range(of: "## 12. Appendix: reference reader (Python)"), "SECURITY.md has no §12")
        let tail = text[appendix.upperBound...]
        let open = try #require(tail.range(of: "```python\n"), "§12 has no Python block")
        let close = try #require(tail[open.upperBound...].range(of: "\n```"), "§12's Python block does not end")
        return String(tail[open.upperBound..<close.lowerBound]) + "\n"
    }

    /// Runs the reader on the workspace's store; its standard output.
    static func read(_ ws: Workspace, sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let script = ws.path("reader.py")
        try Data(try reader().utf8).write(to: URL(fileURLWithPath: script))
        let r = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", script, ws.storePath, ws.keyPath],
                              env: CLI.cleanEnvironment(home: ws.dir.path), cwd: ws.dir, scratch: ws.dir)
        let done = await r.wait()
        try #require(done.status == 0, "the reference reader failed: \(done.summary)", sourceLocation: sourceLocation)
        return done.stdout
    }

    /// The reader's line for event `id` (or the snapshot line of `snapshotOf`).
    static func line(_ out: String, event id: Int64? = nil, snapshotOf aggregate: UUID? = nil) -> String {
        let prefix = id.map { "\($0) " } ?? "snapshot \(aggregate?.uuidString.lowercased() ?? "") "
        return out.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init) ?? ""
    }

    @Test("the reader opens personal fields in compact and JSON records, events and snapshots, and reads a shredded subject's as redacted")
    func personalFields() async throws {
        let ws = try Workspace()
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let d = try await PersonalFieldStore.seed(ws.storePath, key: key)
        // A record in the JSON encoding, with a declared replacement, and its snapshot.
        let (store, keyring, _) = try await Stores.open(ws.storePath, keys: [key])
        let jsonApp = Application(recorder: store, snapshots: store,
                                  mapper: Mapper(keyring: keyring, configuration: .init(encoding: .json)), logger: Stores.quiet)
        var json = try AggregateRoot<Delivery>(.placed(customerID: Deliveries.eve, customer: Personal("Jay Json"),
                                                       address: Personal("1 JSON Way"),
                                                       courier: Personal("Kim Rider", subject: Deliveries.kim, replacement: "a courier"),
                                                       amount: 7))
        let saved: [Recording]
        do {
            saved = try await jsonApp.save(&json)
            try await jsonApp.takeSnapshot(Delivery.self, id: json.id)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        let jsonID = try #require(saved.first?.notificationID)

        let out = try await Self.read(ws)
        #expect(!out.contains("$pf"), "a sealed field was printed as stored: \(out)")
        let first = Self.line(out, event: d.id(d.adaFirst, 1))
        #expect(first.contains("'customer': 'Ada Lovelace'") && first.contains("'address': '12 Analytical Row'")
                    && first.contains("'courier': 'Bob Courier'") && first.contains("'amount': 120"), "\(first)")
        #expect(Self.line(out, event: d.id(d.adaFirst, 2)).contains("'rerouted': {'courier': 'Kim Rider'}"), "\(out)")
        let jsonLine = Self.line(out, event: jsonID)
        #expect(jsonLine.contains("'customer': 'Jay Json'") && jsonLine.contains("'courier': 'Kim Rider'"), "\(jsonLine)")
        let eveSnapshot = Self.line(out, snapshotOf: d.eveOrder)
        #expect(eveSnapshot.contains("'customer': 'Eve Online'") && eveSnapshot.contains("'courier': 'Bob Courier'"), "\(out)")
        #expect(Self.line(out, snapshotOf: json.id).contains("'courier': 'Kim Rider'"), "\(out)")

        // Both couriers shredded: their fields read as redacted (with the declared replacement),
        // everything else as before, with no error.
        try await PersonalFieldStore.shred(ws.storePath, key: key, scope: Deliveries.bob)
        try await PersonalFieldStore.shred(ws.storePath, key: key, scope: Deliveries.kim)
        let after = try await Self.read(ws)
        #expect(!after.contains("Bob Courier") && !after.contains("Kim Rider"), "\(after)")
        let firstAfter = Self.line(after, event: d.id(d.adaFirst, 1))
        #expect(firstAfter.contains("'customer': 'Ada Lovelace'")
                    && firstAfter.contains("'courier': {'$redacted': 'courier-bob', 'replacement': None}"), "\(firstAfter)")
        #expect(Self.line(after, event: jsonID).contains("'courier': {'$redacted': 'courier-kim', 'replacement': 'a courier'}"), "\(after)")
        #expect(Self.line(after, snapshotOf: d.eveOrder).contains("{'$redacted': 'courier-bob', 'replacement': None}"), "\(after)")
        #expect(Self.line(after, snapshotOf: d.eveOrder).contains("'customer': 'Eve Online'"), "\(after)")
    }
}
