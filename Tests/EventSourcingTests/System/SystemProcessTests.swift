import ESTestSupport
import ESTestTags
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A follower in another OS process (the es-test-agent's `sys-follower`), killed with SIGKILL
/// while it processes and restarted: it resumes from its tracking records, with no event
/// processed twice or skipped.
@Suite("System runner: follower processes killed and restarted", .tags(.slow, .multiProcess))
struct SystemProcessTests {
    /// Orders and invoices applications over `orders` and `invoices`, sharing the keyring of the
    /// orders store.
    static func system(orders ordersStore: any ApplicationRecorder & SnapshotRecorder & KeyStore,
                       invoices invoicesStore: any ApplicationRecorder & SnapshotRecorder,
                       masterKey: MasterKey) async throws -> (System, Application, Application) {
        let keyring = try await Keyring.open(store: ordersStore, masterKeys: [masterKey])
        let orders = Application(recorder: ordersStore, snapshots: ordersStore, mapper: Mapper(keyring: keyring))
        let invoicesApp = Application(recorder: invoicesStore, snapshots: invoicesStore, mapper: Mapper(keyring: keyring))
        let invoices = try ProcessApplication(name: "invoices", application: invoicesApp, policy: InvoicingPolicy(probe: PolicyProbe()))
        let system = try System(members: [.application("orders", orders), .process(invoices)], pipes: [["orders", "invoices"]])
        return (system, orders, invoicesApp)
    }

    /// Starts the agent, waits until it has started processing `events` orders (plus a random
    /// moment), kills it with SIGKILL; returns the notification ids it started on.
    static func killWhileProcessing(_ agent: String, _ arguments: [String], stderr: String, events: Int) async throws -> [Int64] {
        let child = try ChildProcess(agent, arguments, stderrPath: stderr)
        child.closeStdin()
        let ready = await child.readLine()
        try #require(ready == "READY", "the follower did not start: \(child.stderr)")
        var started: [Int64] = []
        while started.count < events, let line = await child.readLine() {
            let parts = line.split(separator: " ")
            let id = try #require(parts.count == 2 && parts[0] == "P" ? Int64(parts[1]) : nil, "unexpected agent output \(line)")
            started.append(id)
        }
        try #require(started.count == events, "the follower stopped before \(events) events: \(child.stderr)")
        try await Task.sleep(for: .microseconds(Int.random(in: 0...3_000)))  // the kill moment itself
        child.kill(SIGKILL)
        _ = await child.readRemainingLines()
        let status = await child.waitForExit()
        try #require(status == .signaled(SIGKILL), "the follower \(status) before the kill: \(child.stderr)")
        return started
    }

    @Test("SQLite: kill -9 the follower process at random moments while it processes, restart, repeat: exactly one invoice per order",
          .timeLimit(.minutes(5)))
    func sqliteFollowerKilled() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("system-crash")
        let (ordersDB, invoicesDB, keyFile) = (dir.path("orders.sqlite"), dir.path("invoices.sqlite"), dir.path("master.key"))
        let masterKey = try MasterKey.generate()
        try masterKey.writeKeyFile(to: keyFile)
        let ordersStore = try SQLiteStore(path: ordersDB)
        let invoicesStore = try SQLiteStore(path: invoicesDB)
        let (system, orders, invoicesApp) = try await Self.system(orders: ordersStore, invoices: invoicesStore, masterKey: masterKey)
        var placed = try await placeOrders(orders, 120)
        let runner = try SystemRunner(system: system)
        var positions: [Int64] = []
        for round in 1...8 {
            let started = try await Self.killWhileProcessing(agent, ["sys-follower", "sqlite", ordersDB, invoicesDB, keyFile],
                                                             stderr: dir.path("follower-\(round).stderr"),
                                                             events: Int.random(in: 1...12))
            let position = try await runner.position(of: "invoices", leader: "orders") ?? 0
            // The restarted process began right after the position the last one left.
            if let last = positions.last, let first = started.first {
                #expect(first == last + 1, "round \(round): resumed at \(first), the position was \(last)")
            }
            positions.append(position)
            if round % 2 == 0 { placed += try await placeOrders(orders, 5, item: "round-\(round)") }
        }
        #expect(positions.last ?? 0 > 0, "the follower processed something between kills")
        // Finish in this process, then count.
        let last = try #require(placed.last?.notificationID)
        try await runUntil(runner, [("invoices", "orders", last)])
        try await SystemRunnerTests.expectOneInvoicePerOrder(invoicesApp, placed)
        await ordersStore.close()
        await invoicesStore.close()
    }

    @Test("PostgreSQL: a leader process saves orders while a follower process runs only \"invoices\"; killed and restarted, it resumes from its tracking",
          .tags(.postgres), .enabled(if: PostgresTestServer.available), .timeLimit(.minutes(5)))
    func postgresFollowerProcess() async throws {
        let agent = try TestEnvironment.agentPath()
        let url = try PostgresTestServer.urlWithoutTLS()
        let dir = try TempDir("system-pg")
        let keyFile = dir.path("master.key")
        let masterKey = try MasterKey.generate()
        try masterKey.writeKeyFile(to: keyFile)
        var ordersConfig = try PostgresTestServer.configuration()
        let suffix = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        ordersConfig.schema = "sys_o_\(suffix)"
        var invoicesConfig = ordersConfig
        invoicesConfig.schema = "sys_i_\(suffix)"
        let ordersStore = try await PostgresStore(configuration: ordersConfig)
        let invoicesStore = try await PostgresStore(configuration: invoicesConfig)
        do {
            let (system, orders, invoicesApp) = try await Self.system(orders: ordersStore, invoices: invoicesStore, masterKey: masterKey)
            let arguments = ["sys-follower", "postgres", url, ordersConfig.schema, invoicesConfig.schema, keyFile]
            let runner = try SystemRunner(system: system)   // not run here: position and wait only

            // The follower runs while this (leader) process saves.
            let child = try ChildProcess(agent, arguments, stderrPath: dir.path("follower-1.stderr"))
            child.closeStdin()
            let ready = await child.readLine()
            try #require(ready == "READY", "the follower did not start: \(child.stderr)")
            var placed = try await placeOrders(orders, 20)
            try await runner.wait(for: "invoices", toProcess: placed[19].notificationID, of: "orders", timeout: .seconds(120))
            child.kill(SIGKILL)
            _ = await child.waitForExit()

            // Killed while it processes a backlog, then restarted.
            placed += try await placeOrders(orders, 30, item: "backlog")
            let started = try await Self.killWhileProcessing(agent, arguments, stderr: dir.path("follower-2.stderr"), events: 8)
            #expect(started.first == placed[19].notificationID + 1, "the second process resumed after the first one's position")
            // A COMMIT the killed process had sent can still complete on the server just after its
            // exit, moving the position by one: read it until it holds still (no follower runs now).
            var position = try #require(try await runner.position(of: "invoices", leader: "orders"))
            for _ in 0..<50 {
                try await Task.sleep(for: .milliseconds(300))
                let again = try #require(try await runner.position(of: "invoices", leader: "orders"))
                if again == position { break }
                position = again
            }

            let third = try ChildProcess(agent, arguments, stderrPath: dir.path("follower-3.stderr"))
            third.closeStdin()
            let ready3 = await third.readLine()
            try #require(ready3 == "READY", "the follower did not start: \(third.stderr)")
            let first = await third.readLine()
            #expect(first == "P \(position + 1)", "the third process resumed at its tracking position \(position)")
            placed += try await placeOrders(orders, 5, item: "live")
            try await runner.wait(for: "invoices", toProcess: try #require(placed.last).notificationID, of: "orders", timeout: .seconds(120))
            third.kill(SIGKILL)
            _ = await third.waitForExit()
            try await SystemRunnerTests.expectOneInvoicePerOrder(invoicesApp, placed)
        } catch {
            try? await ordersStore.destroy()
            try? await invoicesStore.destroy()
            throw error
        }
        try await ordersStore.destroy()
        try await invoicesStore.destroy()
    }
}
