import ESConcurrency
import Synchronization
import Testing

final class Flag: Sendable {
    let value = Atomic(false)
}

@Suite struct BatchingQueueTests {
    @Test func firstRequestDrainsAndLaterOnesJoinTheNextBatch() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        #expect(q.enqueue(1) == .startDraining)
        #expect(q.enqueue(2) == .queued)
        #expect(q.nextBatch() == [1, 2])
        // While that batch is in flight, requests accumulate for the next one.
        #expect(q.enqueue(3) == .queued)
        #expect(q.enqueue(4) == .queued)
        #expect(q.isDraining)
        #expect(q.nextBatch() == [3, 4])
        #expect(q.nextBatch() == [])
        #expect(!q.isDraining)
        #expect(q.enqueue(5) == .startDraining)
    }

    @Test func batchLimitTakesTheOldestFirst() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        for i in 0..<5 { _ = q.enqueue(i) }
        #expect(q.nextBatch(limit: 2) == [0, 1])
        #expect(q.nextBatch(limit: 2) == [2, 3])
        #expect(q.nextBatch(limit: 2) == [4])
        #expect(q.nextBatch(limit: 2) == [])
    }

    @Test func waitingRequestsAreBounded() {
        let q = BatchingQueue<Int>(maxWaiting: 2)
        #expect(q.enqueue(1) == .startDraining)
        #expect(q.enqueue(2) == .queued)
        #expect(q.enqueue(3) == .full)
        #expect(q.waitingCount == 2)
        // The batch in flight does not count against the bound.
        #expect(q.nextBatch() == [1, 2])
        #expect(q.enqueue(3) == .queued)
        #expect(q.enqueue(4) == .queued)
        #expect(q.enqueue(5) == .full)
    }

    @Test func removeWaitingTakesOnlyQueuedRequests() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        _ = q.enqueue(1)
        #expect(q.nextBatch() == [1])
        _ = q.enqueue(2)
        _ = q.enqueue(3)
        #expect(q.removeWaiting { $0 == 1 || $0 == 3 } == [3])
        #expect(q.nextBatch() == [2])
    }

    @Test func closeWaitsForTheBatchInFlightAndRefusesLaterRequests() async {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        #expect(q.enqueue(1) == .startDraining)
        let closed = Flag()
        let closer = Task {
            await q.close()
            closed.value.store(true, ordering: .sequentiallyConsistent)
        }
        // close() refuses new requests at once, but returns only when the drainer is done.
        var before = 0   // requests queued before close() ran are still served
        while q.enqueue(99) != .closed {
            before += 1
            await Task.yield()
        }
        #expect(q.nextBatch() == [1] + Array(repeating: 99, count: before))
        let closedEarly = closed.value.load(ordering: .sequentiallyConsistent)
        #expect(!closedEarly)
        #expect(q.nextBatch() == [])
        await closer.value
        let closedLate = closed.value.load(ordering: .sequentiallyConsistent)
        #expect(closedLate)
    }

    @Test func closeOfAnIdleQueueReturnsAtOnce() async {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        await q.close()
        #expect(q.enqueue(1) == .closed)
    }
}

@Suite struct BatchingQueueWeightTests {
    @Test func aBatchStaysWithinItsWeightButAlwaysTakesOneRequest() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        for w in [3, 3, 3, 10, 1] { _ = q.enqueue(w) }
        // Taken while the total so far is below 5: 3, then 3 (total 6).
        #expect(q.nextBatch(maxWeight: 5) { $0 } == [3, 3])
        // A request heavier than the bound is taken alone at the head of a batch.
        #expect(q.nextBatch(maxWeight: 5) { $0 } == [3, 10])
        #expect(q.nextBatch(maxWeight: 0) { $0 } == [1])
        #expect(q.nextBatch(maxWeight: 5) { $0 } == [])
        #expect(!q.isDraining)
    }

    @Test func aWatcherIsWokenOnceWhenEnoughRequestsWait() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        #expect(q.enqueue(0) == .startDraining)
        _ = q.nextBatch()
        let woken = Atomic(0)
        let token = q.notify(whenWaiting: 2) { woken.add(1, ordering: .relaxed) }
        #expect(token != nil)
        _ = q.enqueue(1)
        #expect(woken.load(ordering: .relaxed) == 0)
        _ = q.enqueue(2)
        #expect(woken.load(ordering: .relaxed) == 1)
        _ = q.enqueue(3)
        #expect(woken.load(ordering: .relaxed) == 1, "woken once")
        // Already woken: cancelling finds nothing, so a timer that races it never resumes twice.
        #expect(token.map { q.cancelNotify($0) } == false)
        // Enough wait already: nothing is registered.
        #expect(q.notify(whenWaiting: 2) { woken.add(1, ordering: .relaxed) } == nil)
    }

    @Test func aCancelledWatcherIsNeverWoken() {
        let q = BatchingQueue<Int>(maxWaiting: 10)
        let woken = Atomic(0)
        let token = q.notify(whenWaiting: 1) { woken.add(1, ordering: .relaxed) }
        #expect(token.map { q.cancelNotify($0) } == true)
        _ = q.enqueue(1)
        #expect(woken.load(ordering: .relaxed) == 0)
    }
}
