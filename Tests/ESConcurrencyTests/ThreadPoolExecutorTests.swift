import ESConcurrency
import Foundation
import Synchronization
import Testing

/// How many run at once, and the most that did.
final class Load: Sendable {
    private let state = Mutex((running: 0, peak: 0))
    func enter() { state.withLock { $0.running += 1; $0.peak = max($0.peak, $0.running) } }
    func leave() { state.withLock { $0.running -= 1 } }
    var peak: Int { state.withLock { $0.peak } }
}

@Suite struct ThreadPoolExecutorTests {
    @Test func jobsRunOnTheExecutorsThreadsAndIsCurrentSaysSo() async {
        let executor = ThreadPoolExecutor(name: "test.pool", maxThreads: 2)
        #expect(!executor.isCurrent)
        let inside = await withTaskExecutorPreference(executor) { executor.isCurrent }
        #expect(inside)
        let other = ThreadPoolExecutor(name: "test.other", maxThreads: 1)
        let crossed = await withTaskExecutorPreference(executor) { other.isCurrent }
        #expect(!crossed, "isCurrent is per executor")
        executor.shutdown()
        other.shutdown()
    }

    @Test func atMostMaxThreadsRunAtOnce() async {
        let executor = ThreadPoolExecutor(name: "test.bounded", maxThreads: 2)
        let load = Load()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    await withTaskExecutorPreference(executor) {
                        load.enter()
                        usleep(20_000)   // blocks the thread, as a database call does
                        load.leave()
                    }
                }
            }
        }
        #expect(load.peak == 2)
        #expect(executor.threadCount <= 2)
        executor.shutdown()
    }

    @Test func idleThreadsExitAndWorkAfterThatStillRuns() async throws {
        let executor = ThreadPoolExecutor(name: "test.idle", maxThreads: 2, idleTimeout: .milliseconds(50))
        _ = await withTaskExecutorPreference(executor) { 1 }
        let deadline = ContinuousClock.now + .seconds(10)
        while executor.threadCount > 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(executor.threadCount == 0, "no thread is kept by an idle executor")
        #expect(await withTaskExecutorPreference(executor) { executor.isCurrent })
        executor.shutdown()
        // After shutdown a job still runs (on a thread started for it) instead of hanging.
        #expect(await withTaskExecutorPreference(executor) { executor.isCurrent })
    }
}
