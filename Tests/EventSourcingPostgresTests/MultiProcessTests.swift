import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    @Suite("Two OS processes writing one PostgreSQL schema", .tags(.multiProcess))
    struct MultiProcessTests {
        /// One acknowledged save of a writer process.
        struct Ack {
            let aggregate: UUID
            let version: Int
            let id: Int64
        }

        static let savesPerProcess = 500
        static let aggregatesPerProcess = 5

        @Test("Two processes (es-test-agent pg-writer) saving 500 single events each lose nothing: ids 1…1000 with no gap, each process's in increasing order",
              .timeLimit(.minutes(3)))
        func twoProcessesLoseNothing() async throws {
            let agent = try TestEnvironment.agentPath()
            let url = try PostgresTestServer.urlWithoutTLS()
            let config = try freshConfiguration()
            let dir = try TempDir("multiprocess")
            let keyFile = dir.path("master.key")
            let masterKey = try MasterKey.generate()
            try masterKey.writeKeyFile(to: keyFile)

            try await withStore(config) { store in
                // Creates the schema and the master-key check before the writers start, as a deployment would.
                let checker = try await EncryptedApp.open(store, masterKey: masterKey)

                let seeds = [1, 2]
                let children = try seeds.map { seed in
                    try ChildProcess(agent, ["pg-writer", url, config.schema, String(Self.savesPerProcess), String(seed), keyFile,
                                             String(Self.aggregatesPerProcess)],
                                     stderrPath: dir.path("writer-\(seed).stderr"))
                }
                // Both have connected before either writes, so their writes overlap.
                for c in children {
                    let ready = await c.readLine()
                    try #require(ready == "READY", "writer did not start: \(c.stderr)")
                }
                for c in children {
                    c.writeLine("GO")
                    c.closeStdin()
                }
                var outputs: [[Ack]] = []
                for c in children {
                    let lines = await c.readRemainingLines()
                    let status = await c.waitForExit()
                    try #require(status == .exited(0), "writer \(status): \(c.stderr)")
                    #expect(lines.last == "DONE")
                    outputs.append(try lines.dropLast().map { line in
                        let p = line.split(separator: " ")
                        guard p.count == 4, p[0] == "ACK", let id = UUID(uuidString: String(p[1])), let v = Int(p[2]),
                              let n = Int64(p[3]) else {
                            throw ChildProcessError(description: "unexpected writer output: \(line)")
                        }
                        return Ack(aggregate: id, version: v, id: n)
                    })
                }
                if let password = config.password {
                    #expect(!children.contains { $0.stderr.contains(password) }, "a writer's stderr contains the password")
                }

                let total = Self.savesPerProcess * seeds.count
                for (seed, acks) in zip(seeds, outputs) {
                    #expect(acks.count == Self.savesPerProcess, "writer \(seed) acknowledged \(acks.count) saves")
                    let ids = acks.map(\.id)
                    #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }, "writer \(seed)'s ids are not increasing")
                }
                let all = outputs.joined().map(\.id).sorted()
                #expect(all == Array(1...Int64(total)), "the two processes' ids are not exactly 1…\(total)")
                let a = outputs[0].map(\.id), b = outputs[1].map(\.id)
                #expect(a.min()! < b.max()! && b.min()! < a.max()!, "the writers did not overlap in time (the test proved nothing)")

                // The schema holds exactly what the writers acknowledged, all decryptable with the shared key.
                let log = try await checker.app.notificationLog.read(start: 1, limit: 10_000)
                #expect(log.map(\.notification.id) == Array(1...Int64(total)))
                var reported: [Int64: Ack] = [:]
                for ack in outputs.joined() { reported[ack.id] = ack }
                for item in log {
                    let e = try item.event(as: Ledger.self)
                    let r = reported[item.notification.id]
                    #expect(r?.aggregate == e.originatorID && r?.version == e.originatorVersion,
                            "notification \(item.notification.id) is \(e.originatorID) v\(e.originatorVersion), the writer acknowledged \(String(describing: r))")
                }
                for seed in seeds {
                    for index in 0..<Self.aggregatesPerProcess {
                        let id = fixedAggregateID(seed: seed, index: index)
                        let root = try await checker.app.repository.get(Ledger.self, id: id)
                        #expect(root.version == Self.savesPerProcess / Self.aggregatesPerProcess)
                    }
                }
            }
        }
    }
}
