import Dispatch
import ESConcurrency
import ESTestSupport
import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import Synchronization
import Testing

/// Counts bodies that reached a store's thread, and holds them there until released.
final class Gate: Sendable {
    private let entered = Mutex(0)
    private let semaphore = DispatchSemaphore(value: 0)
    /// Called on the store's thread: counts the arrival, then blocks until ``open(_:)``.
    func pass() {
        entered.withLock { $0 += 1 }
        semaphore.wait()
    }
    var arrived: Int { entered.withLock { $0 } }
    func open(_ n: Int) { for _ in 0..<n { semaphore.signal() } }
}

// A time limit: without the bounds and the cancellation, several of these tests would wait forever.
@Suite("SQLite store concurrency: bounded readers, bounded waiting, cancellation",
       .timeLimit(.minutes(1)))
struct StoreConcurrencyTests {
    private func waitUntil(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcessError(description: "timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    @Test("Concurrent reads never open more than configuration.readers connections: the others wait")
    func readersAreBounded() async throws {
        let dir = try TempDir("readers")
        let store = try SQLiteStore(path: dir.path("events.sqlite"), configuration: .init(readers: 2))
        let id = fixedAggregateID(seed: 400, index: 0)
        _ = try await store.insertEvents([rawEvent(id, 1)])
        let release = WriterFlag(), holding = Counter()
        // Two holders keep both connections (without a thread); the reads must wait for them, not open more.
        let held = (0..<2).map { _ in
            Task {
                try await store.holdingReader {
                    holding.increment()
                    while !release.isRaised { try await Task.sleep(for: .milliseconds(1)) }
                }
            }
        }
        try await waitUntil("two holders to take the readers") { holding.count == 2 }
        let waiting = (0..<20).map { _ in Task { try await store.selectEvents(originatorID: id).count } }
        try await waitUntil("the other reads to wait") { store.waitingReads == 20 }
        #expect(store.readerConnectionsOpened.count == 2)
        release.raise()
        for t in held { try await t.value }
        for t in waiting { #expect(try await t.value == 1) }
        #expect(store.readerConnectionsOpened.count == 2)
        await store.close()
    }

    @Test("Reads run on the store's reader threads: reads blocked in SQLite never starve the cooperative pool")
    func readsRunOffTheCooperativePool() async throws {
        let dir = try TempDir("threads")
        let readers = max(4, ProcessInfo.processInfo.activeProcessorCount + 2)
        let store = try SQLiteStore(path: dir.path("events.sqlite"), configuration: .init(readers: readers))
        let id = fixedAggregateID(seed: 402, index: 0)
        _ = try await store.insertEvents([rawEvent(id, 1)])
        #expect(try await store.read { _ in store.readThreads.isCurrent }, "a read body runs on a reader thread")
        #expect(!store.readThreads.isCurrent)
        // More reads blocked in their bodies than the cooperative pool has threads: were they on
        // it, no other task could run until they were released.
        let gate = Gate()
        let blocked = (0..<readers).map { _ in Task { try await store.read { _ in gate.pass() } } }
        try await waitUntil("the reads to block") { gate.arrived == readers }
        // Opened from a thread of its own after 10 s whatever happens, so a starved pool ends.
        let openedLate = Mutex<ContinuousClock.Instant?>(nil)
        DispatchQueue.global().asyncAfter(deadline: .now() + 10) {
            openedLate.withLock { $0 = .now }
            gate.open(readers)
        }
        let probe = await Task {
            await withTaskGroup(of: Int.self) { group in
                for k in 0..<8 { group.addTask { k } }
                return (await group.reduce(0, +), ContinuousClock.now)
            }
        }.value
        gate.open(readers)
        for t in blocked { try await t.value }
        #expect(probe.0 == 28)
        let late = openedLate.withLock { $0 }
        #expect(late.map { probe.1 < $0 } ?? true, "other tasks ran only after the \(readers) blocked reads were released")
        // A loop run on the store's executor reads inline, on a reader thread.
        #expect(try await withTaskExecutorPreference(store.taskExecutor) {
            try await store.read { _ in store.readThreads.isCurrent }
        })
        await store.close()
    }

    @Test("Reads past the bound on waiting reads fail with storeOverloaded, and the store goes on")
    func waitingReadsAreBounded() async throws {
        let dir = try TempDir("readers")
        var configuration = SQLiteStore.Configuration(readers: 1)
        configuration.maxWaitingReads = 3
        let store = try SQLiteStore(path: dir.path("events.sqlite"), configuration: configuration)
        let id = fixedAggregateID(seed: 401, index: 0)
        _ = try await store.insertEvents([rawEvent(id, 1)])
        let release = WriterFlag(), holding = WriterFlag()
        let held = Task {
            try await store.holdingReader {
                holding.raise()
                while !release.isRaised { try await Task.sleep(for: .milliseconds(1)) }
            }
        }
        try await waitUntil("a holder to take the reader") { holding.isRaised }
        let waiting = (0..<3).map { _ in Task { try await store.selectEvents(originatorID: id).count } }
        try await waitUntil("three reads to wait") { store.waitingReads == 3 }
        let error = await #expect(throws: EventSourcingError.self) { _ = try await store.selectEvents(originatorID: id) }
        #expect(error?.code == .storeOverloaded)
        #expect(error?.message.contains("maxWaitingReads") == true, "\(String(describing: error))")
        release.raise()
        try await held.value
        for t in waiting { #expect(try await t.value == 1) }
        #expect(try await store.selectEvents(originatorID: id).count == 1)
        await store.close()
    }

    @Test("A long read cancelled mid-way stops (sqlite3_interrupt) and throws CancellationError promptly")
    func cancelledReadStops() async throws {
        let dir = try TempDir("cancel")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let started = WriterFlag()
        // A scan over a billion generated rows: minutes if nothing stops it.
        let read = Task {
            try await store.read { conn in
                started.raise()
                let s = try conn.statement(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c")
                defer { s.reset() }
                _ = try s.step()
                return s.int(0)
            }
        }
        try await waitUntil("the read to start") { started.isRaised }
        try await Task.sleep(for: .milliseconds(50))
        let cancelledAt = ContinuousClock.now
        read.cancel()
        await #expect(throws: CancellationError.self) { _ = try await read.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(5))
        // The reader connection is usable again (the interrupt does not stick to it).
        #expect(try await store.read { conn in
            let s = try conn.statement("SELECT 41 + 1")
            defer { s.reset() }
            _ = try s.step()
            return s.int(0)
        } == 42)
        await store.close()
    }

    @Test("A read whose task is already cancelled does not run")
    func cancelledReadDoesNotStart() async throws {
        let dir = try TempDir("cancel")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let ran = WriterFlag()
        let read = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await store.read { _ in ran.raise() }
        }
        await #expect(throws: CancellationError.self) { try await read.value }
        #expect(!ran.isRaised)
        await store.close()
    }

    @Test("A save cancelled while it waits for the writer is never stored; the saves queued with it are")
    func cancelledQueuedSaveIsNotStored() async throws {
        let dir = try TempDir("cancel")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let gate = Gate()
        let holder = Task { try await store.write { _ in gate.pass() } }
        try await waitUntil("the holder to reach the writer") { gate.arrived == 1 }
        let cancelled = fixedAggregateID(seed: 402, index: 0), kept = fixedAggregateID(seed: 402, index: 1)
        let doomed = Task { try await store.insertEvents([rawEvent(cancelled, 1)]) }
        try await waitUntil("the save to queue") { store.queuedWrites == 1 }
        let fine = Task { try await store.insertEvents([rawEvent(kept, 1)]) }
        try await waitUntil("the second save to queue") { store.queuedWrites == 2 }
        doomed.cancel()
        await #expect(throws: CancellationError.self) { _ = try await doomed.value }
        // Answered at once, and out of the queue, while the writer is still held.
        #expect(store.queuedWrites == 1)
        gate.open(1)
        try await holder.value
        #expect(try await fine.value == [1])
        #expect(try await store.selectEvents(originatorID: cancelled).isEmpty)
        #expect(try await store.selectEvents(originatorID: kept).count == 1)
        await store.close()
    }

    @Test("A save cancelled while its body runs in a group is rolled back to its savepoint; the rest of the group commits")
    func cancelledRunningSaveIsRolledBack() async throws {
        let dir = try TempDir("cancel")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let holdWriter = Gate(), holdSave = Gate()
        let holder = Task { try await store.write { _ in holdWriter.pass() } }
        try await waitUntil("the holder to reach the writer") { holdWriter.arrived == 1 }
        let before = fixedAggregateID(seed: 403, index: 0), cancelled = fixedAggregateID(seed: 403, index: 1)
        let after = fixedAggregateID(seed: 403, index: 2)
        let first = Task { try await store.insertEvents([rawEvent(before, 1)]) }
        try await waitUntil("the first save to queue") { store.queuedWrites == 1 }
        // Writes its event, then stays in its body until released.
        let doomed = Task {
            try await store.write { conn in
                let s = try conn.statement(
                    "INSERT INTO events (originator_id, originator_version, topic, state, key_scope) VALUES (?, 1, 'T', x'00', NULL)")
                s.bind(1, cancelled)
                try s.run()
                holdSave.pass()
            }
        }
        try await waitUntil("the second save to queue") { store.queuedWrites == 2 }
        let last = Task { try await store.insertEvents([rawEvent(after, 1)]) }
        try await waitUntil("the third save to queue") { store.queuedWrites == 3 }
        holdWriter.open(1)
        try await holder.value
        try await waitUntil("the second save's body to run") { holdSave.arrived == 1 }
        doomed.cancel()
        holdSave.open(1)
        await #expect(throws: CancellationError.self) { try await doomed.value }
        #expect(try await first.value.count == 1)
        #expect(try await last.value.count == 1)
        #expect(try await store.selectEvents(originatorID: cancelled).isEmpty, "the cancelled save's write was committed")
        #expect(try await store.selectEvents(originatorID: before).count == 1)
        #expect(try await store.selectEvents(originatorID: after).count == 1)
        await store.close()
    }

    @Test("Saves past the bound on waiting writes fail with storeOverloaded and write nothing")
    func waitingWritesAreBounded() async throws {
        let dir = try TempDir("writes")
        var configuration = SQLiteStore.Configuration()
        configuration.maxWaitingWrites = 2
        let store = try SQLiteStore(path: dir.path("events.sqlite"), configuration: configuration)
        let gate = Gate()
        let holder = Task { try await store.write { _ in gate.pass() } }
        try await waitUntil("the holder to reach the writer") { gate.arrived == 1 }
        let ids = (0..<3).map { fixedAggregateID(seed: 404, index: $0) }
        let queued = [Task { try await store.insertEvents([rawEvent(ids[0], 1)]) }]
        try await waitUntil("the first save to queue") { store.queuedWrites == 1 }
        let second = Task { try await store.insertEvents([rawEvent(ids[1], 1)]) }
        try await waitUntil("the second save to queue") { store.queuedWrites == 2 }
        let error = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(ids[2], 1)]) }
        #expect(error?.code == .storeOverloaded)
        gate.open(1)
        try await holder.value
        _ = try await queued[0].value
        _ = try await second.value
        #expect(try await store.selectEvents(originatorID: ids[2]).isEmpty)
        #expect(try await store.maxNotificationID() == 2)
        await store.close()
    }

    @Test("close() waits for the group in flight (without polling), then refuses writes")
    func closeWaitsForTheWriter() async throws {
        let dir = try TempDir("close")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let gate = Gate()
        let id = fixedAggregateID(seed: 405, index: 0)
        let holder = Task {
            try await store.write { conn in
                gate.pass()
                return try SQLiteStore.maxNotificationID(conn)
            }
        }
        try await waitUntil("the holder to reach the writer") { gate.arrived == 1 }
        let queued = Task { try await store.insertEvents([rawEvent(id, 1)]) }
        try await waitUntil("the save to queue") { store.queuedWrites == 1 }
        let closed = WriterFlag()
        let closer = Task {
            await store.close()
            closed.raise()
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(!closed.isRaised, "close() returned while a write was in flight")
        gate.open(1)
        await closer.value
        _ = try await holder.value
        // Queued before close(): committed before it returned.
        #expect(try await queued.value == [1])
        let error = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(id, 2)]) }
        #expect(error?.code == .databaseUnavailable)
    }
}
