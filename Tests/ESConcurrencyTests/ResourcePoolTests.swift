import ESConcurrency
import Synchronization
import Testing

final class Thing: Sendable {
    let id: Int
    init(_ id: Int) { self.id = id }
}

struct MakeFailed: Error {}

/// A pool of `Thing`s that counts how many it made and dropped.
final class Counted: Sendable {
    let made = Atomic(0)
    let dropped = Atomic(0)
    let failNext = Atomic(false)
    func pool(capacity: Int, maxWaiters: Int, reset: @escaping @Sendable (Thing) -> Bool = { _ in true })
        -> ResourcePool<Thing, MakeFailed> {
        ResourcePool(capacity: capacity, maxWaiters: maxWaiters,
                     make: { () throws(MakeFailed) -> Thing in
                         if self.failNext.exchange(false, ordering: .sequentiallyConsistent) { throw MakeFailed() }
                         return Thing(self.made.add(1, ordering: .sequentiallyConsistent).newValue)
                     },
                     reset: reset,
                     drop: { _ in self.dropped.add(1, ordering: .sequentiallyConsistent) })
    }
}

@Suite struct ResourcePoolTests {
    @Test func acquireReusesAndNeverMakesMoreThanTheCapacity() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 3, maxWaiters: 100)
        let inUse = Counted(), most = Counted()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    let t = try await pool.acquire()
                    let n = inUse.made.add(1, ordering: .sequentiallyConsistent).newValue
                    _ = most.made.max(n, ordering: .sequentiallyConsistent)
                    await Task.yield()
                    inUse.made.subtract(1, ordering: .sequentiallyConsistent)
                    pool.give(t)
                }
            }
            try await group.waitForAll()
        }
        #expect(c.made.load(ordering: .sequentiallyConsistent) <= 3)
        #expect(most.made.load(ordering: .sequentiallyConsistent) <= 3)
        #expect(pool.liveCount <= 3)
        #expect(pool.waiterCount == 0)
    }

    @Test func waitersPastTheBoundAreRefused() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 1, maxWaiters: 1)
        let held = try await pool.acquire()
        let waiter = Task { try await pool.acquire() }
        while pool.waiterCount < 1 { await Task.yield() }
        await #expect(throws: ResourcePoolError.overloaded(capacity: 1, maxWaiters: 1)) {
            _ = try await pool.acquire()
        }
        pool.give(held)
        let handed = try await waiter.value
        #expect(handed === held)
        #expect(c.made.load(ordering: .sequentiallyConsistent) == 1)
    }

    @Test func aCancelledWaiterLeavesTheQueue() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 1, maxWaiters: 4)
        let held = try await pool.acquire()
        let waiter = Task { try await pool.acquire() }
        while pool.waiterCount < 1 { await Task.yield() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { _ = try await waiter.value }
        #expect(pool.waiterCount == 0)
        pool.give(held)
        // The resource went back to the free list, not to the cancelled waiter.
        #expect(try await pool.acquire() === held)
    }

    @Test func takeNeverWaitsAndDropsWhatIsPastTheCapacity() throws {
        let c = Counted()
        let pool = c.pool(capacity: 2, maxWaiters: 0)
        let a = try pool.take(), b = try pool.take(), extra = try pool.take()
        #expect(pool.liveCount == 3)
        pool.give(extra)
        #expect(c.dropped.load(ordering: .sequentiallyConsistent) == 1)
        pool.give(a)
        pool.give(b)
        #expect(pool.liveCount == 2)
        // Reused, not made again.
        _ = try pool.take()
        #expect(c.made.load(ordering: .sequentiallyConsistent) == 3)
    }

    @Test func aResourceTheResetRefusesIsDroppedAndItsPlaceFreed() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 1, maxWaiters: 1, reset: { $0.id != 1 })
        let first = try await pool.acquire()
        let waiter = Task { try await pool.acquire() }
        while pool.waiterCount < 1 { await Task.yield() }
        pool.give(first)
        let second = try await waiter.value
        #expect(second.id == 2)
        #expect(c.dropped.load(ordering: .sequentiallyConsistent) == 1)
        #expect(pool.liveCount == 1)
    }

    @Test func aFailedMakeFreesItsPlace() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 1, maxWaiters: 0)
        c.failNext.store(true, ordering: .sequentiallyConsistent)
        await #expect(throws: MakeFailed.self) { _ = try await pool.acquire() }
        #expect(pool.liveCount == 0)
        _ = try await pool.acquire()
        #expect(pool.liveCount == 1)
    }

    @Test func closeRefusesWaitersAndLaterAcquires() async throws {
        let c = Counted()
        let pool = c.pool(capacity: 1, maxWaiters: 2)
        let held = try await pool.acquire()
        let waiter = Task { try await pool.acquire() }
        while pool.waiterCount < 1 { await Task.yield() }
        pool.close()
        await #expect(throws: ResourcePoolError.closed) { _ = try await waiter.value }
        await #expect(throws: ResourcePoolError.closed) { _ = try await pool.acquire() }
        pool.give(held)
        #expect(c.dropped.load(ordering: .sequentiallyConsistent) == 1)
        #expect(pool.liveCount == 0)
    }
}
