import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("SQLite store survives being killed", .tags(.slow, .multiProcess))
struct CrashConsistencyTests {
    static let aggregates = 7
    static let kills = 16

    @Test("After SIGKILL at random moments, every acknowledged save is there, whole, contiguous and readable")
    func killedWriterLosesNothingAcknowledged() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("crash")
        let (db, keyFile) = try await createStoreAndKeyFile(in: dir)
        let ids = (0..<Self.aggregates).map { fixedAggregateID(seed: 0, index: $0) }
        var acked: [UUID: Int] = [:]   // highest acknowledged version per aggregate, over all runs
        var totalAcks = 0

        for round in 1...Self.kills {
            let child = try ChildProcess(agent, ["save-loop", db, keyFile, String(Self.aggregates)],
                                         stderrPath: dir.path("agent-\(round).stderr"))
            child.closeStdin()
            // Half the rounds kill right after a random number of acknowledgements, half at a
            // random time after the first one: either way the agent is mid-save most of the time.
            var lines: [String] = []
            let byCount = round % 2 == 1
            let target = byCount ? Int.random(in: 1...40) : 1
            while lines.count < target, let line = await child.readLine() { lines.append(line) }
            try #require(lines.count == target, "round \(round): the agent stopped before \(target) saves: \(child.stderr)")
            if !byCount {
                try await Task.sleep(for: .milliseconds(Int.random(in: 5...80)))  // the kill moment itself, not a wait for a state
            }
            child.kill(SIGKILL)
            // Lines already in the pipe were written after their save returned: they count too.
            lines += await child.readRemainingLines()
            let status = await child.waitForExit()
            try #require(status == .signaled(SIGKILL), "round \(round): the agent \(status) before the kill: \(child.stderr)")

            for line in lines {
                let parts = line.split(separator: " ")
                let id = try #require(parts.count == 3 && parts[0] == "ACK" ? UUID(uuidString: String(parts[1])) : nil,
                                      "round \(round): unexpected agent output \(line)")
                let version = try #require(Int(parts[2]))
                #expect(ids.contains(id), "round \(round): ACK for an unknown aggregate \(id)")
                #expect(version > acked[id, default: 0], "round \(round): ACK versions of \(id) must grow")
                acked[id] = max(acked[id, default: 0], version)
            }
            totalAcks += lines.count

            try await verify(db: db, keyFile: keyFile, ids: ids, acked: acked, round: round)
        }
        #expect(totalAcks >= Self.kills)
    }

    /// Opens the killed agent's store and checks every invariant of a crash-consistent store.
    private func verify(db: String, keyFile: String, ids: [UUID], acked: [UUID: Int], round: Int) async throws {
        let opened = try await EncryptedStore.open(db, masterKeyFile: keyFile)
        let app = opened.app

        // The whole log decrypts; ids run 1, 2, 3, … with no gap.
        let log = try await readWholeLog(app)
        #expect(log.map(\.notification.id) == (0..<Int64(log.count)).map { $0 + 1 },
                "round \(round): notification ids are not contiguous from 1")
        var perAggregate: [UUID: [(version: Int, event: Ledger.Event)]] = [:]
        for item in log {
            guard case .decoded = item.outcome else {
                Issue.record("round \(round): notification \(item.notification.id) did not decrypt: \(item.outcome)")
                continue
            }
            let e = try item.event(as: Ledger.self)
            perAggregate[e.originatorID, default: []].append((e.originatorVersion, e.event))
        }
        #expect(Set(perAggregate.keys).isSubset(of: Set(ids)), "round \(round): events of unknown aggregates")

        for id in ids {
            let events = perAggregate[id] ?? []
            // Versions are 1…n in log order.
            #expect(events.map(\.version) == Array(stride(from: 1, through: events.count, by: 1)),
                    "round \(round): versions of \(id) are not contiguous from 1")
            // Saves are whole: items run 1…k within each save, and the last save is complete.
            var expectedItem = 1
            var size = 0
            for (version, event) in events {
                guard case .entry(_, let item, let of) = event else { continue }
                if expectedItem == 1 { size = of }
                #expect(item == expectedItem && of == size && (1...3).contains(of),
                        "round \(round): \(id) version \(version) is item \(item) of \(of), expected \(expectedItem) of \(size)")
                expectedItem = item == of ? 1 : item + 1
            }
            #expect(expectedItem == 1, "round \(round): the last save of \(id) is partial (\(events.count) events)")

            // Every acknowledged save is there; the repository agrees with the log.
            #expect(events.count >= acked[id, default: 0],
                    "round \(round): \(id) acknowledged version \(acked[id, default: 0]) but only \(events.count) events survived")
            if events.isEmpty {
                #expect(acked[id] == nil)
                continue
            }
            let root = try await app.repository.get(Ledger.self, id: id)
            #expect(root.version == events.count && root.entries == events.count,
                    "round \(round): repository has \(id) at version \(root.version), the log has \(events.count)")
        }
        await opened.store.close()
    }
}
