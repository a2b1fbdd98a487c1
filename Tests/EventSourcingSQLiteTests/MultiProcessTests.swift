import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite store shared by two processes", .tags(.multiProcess))
struct MultiProcessTests {
    /// One writer process's output: per save, the aggregate, its first version and the ids.
    struct Save {
        let aggregate: UUID
        let firstVersion: Int
        let ids: [Int64]
    }

    static let eventsPerProcess = 300
    static let aggregatesPerProcess = 3
    /// Mostly single-event saves, with a five-event save in every six.
    static let pattern = "1,1,1,1,1,5"

    @Test("Two processes writing one file concurrently get ids 1…600 with no gap, each in increasing order, batches contiguous")
    func twoProcessesShareTheLog() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("multiprocess")
        let (db, keyFile) = try await createStoreAndKeyFile(in: dir)

        let seeds = [1, 2]
        let children = try seeds.map { seed in
            try ChildProcess(agent, ["writer", db, keyFile, String(seed), String(Self.eventsPerProcess), Self.pattern,
                                     String(Self.aggregatesPerProcess)],
                             stderrPath: dir.path("writer-\(seed).stderr"))
        }
        // Both have opened the store before either writes, so their writes overlap.
        for c in children {
            let ready = await c.readLine()
            try #require(ready == "READY", "writer did not start: \(c.stderr)")
        }
        for c in children {
            c.writeLine("GO")
            c.closeStdin()
        }
        var outputs: [[Save]] = []
        for c in children {
            let lines = await c.readRemainingLines()
            let status = await c.waitForExit()
            try #require(status == .exited(0), "writer \(status): \(c.stderr)")
            #expect(lines.last == "DONE")
            outputs.append(try lines.dropLast().map { line in
                let p = line.split(separator: " ")
                guard p.count >= 4, p[0] == "IDS", let id = UUID(uuidString: String(p[1])), let v = Int(p[2]) else {
                    throw ChildProcessError(description: "unexpected writer output: \(line)")
                }
                return Save(aggregate: id, firstVersion: v, ids: try p.dropFirst(3).map {
                    guard let n = Int64($0) else { throw ChildProcessError(description: "bad id in \(line)") }
                    return n
                })
            })
        }

        let total = Self.eventsPerProcess * seeds.count
        for (seed, saves) in zip(seeds, outputs) {
            let ids = saves.flatMap(\.ids)
            #expect(ids.count == Self.eventsPerProcess, "writer \(seed) reported \(ids.count) events")
            #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }, "writer \(seed)'s ids are not strictly increasing")
            for s in saves where s.ids.count > 1 {
                #expect(s.ids == (0..<Int64(s.ids.count)).map { s.ids[0] + $0 },
                        "writer \(seed)'s save of \(s.ids.count) events was interleaved: \(s.ids)")
            }
            #expect(saves.contains { $0.ids.count == 5 }, "writer \(seed) made no five-event save")
        }
        let all = outputs.flatMap { $0.flatMap(\.ids) }.sorted()
        #expect(all == (1...Int64(total)).map { $0 }, "the two writers' ids are not exactly 1…\(total)")
        // The two really wrote at the same time (else this test proves nothing about locking).
        let a = outputs[0].flatMap(\.ids), b = outputs[1].flatMap(\.ids)
        #expect(a.min()! < b.max()! && b.min()! < a.max()!, "the writers did not overlap in time")

        // The store holds exactly what the writers reported, all readable.
        let s = try await EncryptedStore.open(db, masterKeyFile: keyFile)
        let log = try await readWholeLog(s.app)
        #expect(log.map(\.notification.id) == (1...Int64(total)).map { $0 })
        var reported: [Int64: (UUID, Int)] = [:]
        for save in outputs.joined() {
            for (i, id) in save.ids.enumerated() { reported[id] = (save.aggregate, save.firstVersion + i) }
        }
        for item in log {
            let e = try item.event(as: Ledger.self)
            let r = reported[item.notification.id]
            #expect(r?.0 == e.originatorID && r?.1 == e.originatorVersion,
                    "notification \(item.notification.id) is \(e.originatorID) v\(e.originatorVersion), the writer reported \(String(describing: r))")
        }
        for seed in seeds {
            for index in 0..<Self.aggregatesPerProcess {
                let id = fixedAggregateID(seed: seed, index: index)
                let expected = outputs.joined().filter { $0.aggregate == id }.reduce(0) { $0 + $1.ids.count }
                let root = try await s.app.repository.get(Ledger.self, id: id)
                #expect(root.version == expected && expected > 0)
            }
        }
        await s.store.close()
    }

    @Test("Several processes creating the same new store at once all open it and share one log")
    func concurrentCreation() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("create")
        let keyFile = dir.path("master.key")
        try MasterKey.generate().writeKeyFile(to: keyFile)
        let processes = 4, events = 3
        // The race is in opening a file that does not exist yet: repeat it to make it likely.
        for round in 0..<8 {
            let db = dir.path("new-\(round).sqlite")
            let children = try (1...processes).map { seed in
                try ChildProcess(agent, ["writer", db, keyFile, String(seed), String(events), "1", "1"],
                                 stderrPath: dir.path("create-\(round)-\(seed).stderr"))
            }
            for c in children {
                c.writeLine("GO")  // waits in the pipe: each writer starts as soon as it has opened
                c.closeStdin()
            }
            for c in children {
                let lines = await c.readRemainingLines()
                let status = await c.waitForExit()
                #expect(status == .exited(0) && lines.last == "DONE", "round \(round): a writer \(status): \(c.stderr)")
            }
            let s = try await EncryptedStore.open(db, masterKeyFile: keyFile)
            let log = try await readWholeLog(s.app)
            #expect(log.map(\.notification.id) == (1...Int64(processes * events)).map { $0 }, "round \(round)")
            #expect(log.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
            await s.store.close()
        }
    }
}
