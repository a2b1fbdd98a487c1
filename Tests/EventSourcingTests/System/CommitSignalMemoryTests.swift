import ESTestSupport
import ESTestTags
import EventSourcing
import Foundation
import Testing

/// What a commit-signal wait leaves behind once it returns must not pile up: runners wait once
/// per batch with long timeouts (``ProjectionRunner/wait(for:timeout:)`` of hours), and each
/// wait ended early by a commit had left its one-hour timer behind (~0.7 kB) until the hour
/// was over. Measured in a child process of its own (es-test-agent signal-waits), so no other
/// test's memory is counted.
@Suite("Commit signal: waits leave nothing behind", .tags(.multiProcess))
struct CommitSignalMemoryTests {
    @Test("a second phase of waits with one-hour timeouts, each ended at once by a commit, leaves the resident set where the first left it")
    func waitsDoNotAccumulate() async throws {
        let agent = try TestEnvironment.agentPath()
        let dir = try TempDir("signal-waits")
        // Each phase lasts 2 s: past the 1 s slice, so what the first phase left is what a
        // steady state leaves, and the second adds only what accumulates.
        let child = try ChildProcess(agent, ["signal-waits", "2"], stderrPath: dir.path("agent.stderr"))
        let line = await child.readLine()
        let status = await child.waitForExit()
        try #require(status == .exited(0), "signal-waits \(status): \(child.stderr)")
        let fields = try #require(line?.split(separator: " ").map(String.init))
        try #require(fields.count == 4 && fields[0] == "RSS", "unexpected output \(line ?? "nil")")
        let first = try #require(Int(fields[1])), second = try #require(Int(fields[2])), waits = try #require(Int(fields[3]))
        try #require(waits >= 5_000, "only \(waits) waits in 2 s: too few to measure")
        // Before the fix each wait kept ~0.7 kB for the hour: ≥ 3.5 MB over 5,000 waits, and
        // tens of MB at the usual rate. A bound of 2 MB, or 0.2 kB a wait if more.
        let grown = second - first
        #expect(grown < max(2_048, waits / 5), "the resident set grew by \(grown) kB over \(waits) waits")
    }
}
