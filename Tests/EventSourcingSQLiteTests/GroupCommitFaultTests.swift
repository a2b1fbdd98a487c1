import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import Synchronization
import Testing

/// Fails the first `times` runs of one transaction statement of the store's group commit.
final class StatementFault: Sendable {
    let statement: String
    private let left: Mutex<Int>
    private let seen = Mutex<[String]>([])

    init(_ statement: String, times: Int = 1) {
        self.statement = statement
        self.left = Mutex(times)
    }

    /// The statements the group commit ran or tried, in order.
    var statements: [String] { seen.withLock { $0 } }
    var unused: Int { left.withLock { $0 } }

    func install(on store: SQLiteStore) {
        store.faultInjection.withLock {
            $0 = { sql in
                self.seen.withLock { $0.append(sql) }
                guard sql == self.statement else { return nil }
                let fail = self.left.withLock { n -> Bool in
                    guard n > 0 else { return false }
                    n -= 1
                    return true
                }
                return fail ? EventSourcingError(.databaseUnavailable, "injected: \(sql) failed", storeCode: "SQLITE_IOERR (10)") : nil
            }
        }
    }
}

/// Whether a flag was raised, shared with the writer thread.
final class WriterFlag: Sendable {
    private let value = Mutex(false)
    func raise() { value.withLock { $0 = true } }
    var isRaised: Bool { value.withLock { $0 } }
}

@Suite("SQLite group commit: a savepoint that cannot be undone or released fails the whole group")
struct GroupCommitFaultTests {
    /// Holds the writer in a write of its own, queues `saves` behind it (in this order, as one
    /// group), then lets them commit together; their outcomes in order.
    private func commitAsOneGroup(_ store: SQLiteStore, _ saves: [[StoredEvent]]) async throws -> [Result<[Int64], any Error>] {
        let inside = WriterFlag()
        let gate = DispatchSemaphore(value: 0)
        let holder = Task { try await store.write { _ in inside.raise(); gate.wait() } }
        try await waitUntil("the holder to reach the writer") { inside.isRaised }
        var tasks: [Task<[Int64], any Error>] = []
        for (i, events) in saves.enumerated() {
            tasks.append(Task { try await store.insertEvents(events) })
            try await waitUntil("save \(i) to queue") { store.queuedWrites == i + 1 }
        }
        gate.signal()
        try await holder.value
        var out: [Result<[Int64], any Error>] = []
        for t in tasks { out.append(await t.result) }
        return out
    }

    private func waitUntil(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcessError(description: "timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    @Test("ROLLBACK TO fails after a save's partial write: no save of the group commits, each caller is told, the writer goes on",
          arguments: [false, true])
    func rollbackToFails(failedSaveFirst: Bool) async throws {
        let dir = try TempDir("fault")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let existing = fixedAggregateID(seed: 320, index: 0)
        let partial = fixedAggregateID(seed: 320, index: 1)
        let other = fixedAggregateID(seed: 320, index: 2)
        _ = try await store.insertEvents([rawEvent(existing, 1)])
        let fault = StatementFault("ROLLBACK TO w")
        fault.install(on: store)

        // The failing save writes `partial` v1, then conflicts on `existing` v1.
        let failing = [rawEvent(partial, 1), rawEvent(existing, 1)]
        let fine = [rawEvent(other, 1)]
        let outcomes = try await commitAsOneGroup(store, failedSaveFirst ? [failing, fine] : [fine, failing])
        let (failed, ok) = failedSaveFirst ? (outcomes[0], outcomes[1]) : (outcomes[1], outcomes[0])
        #expect(fault.unused == 0, "the fault was not reached: \(fault.statements)")
        #expect(fault.statements.filter { $0 == "BEGIN IMMEDIATE" }.count == 2, "not one group: \(fault.statements)")

        let conflict = try #require(failed.failure as? EventSourcingError, "the failing save: \(failed)")
        #expect(conflict.code == .concurrencyConflict && conflict.originatorID == existing)
        let dropped = try #require(ok.failure as? EventSourcingError, "the other save of the group was reported saved: \(ok)")
        #expect(dropped.code == .databaseUnavailable && dropped.message.contains("nothing of this group"), "\(dropped)")
        #expect(dropped.storeCode == "SQLITE_IOERR (10)")

        // Nothing of the group was committed, in particular not the failed save's first event.
        #expect(try await store.selectEvents(originatorID: partial).isEmpty, "the failed save's partial write was committed")
        #expect(try await store.selectEvents(originatorID: other).isEmpty)
        // The writer is usable, with no transaction left open, and the log has no gap.
        #expect(try await store.insertEvents([rawEvent(other, 1)]) == [2])
        await store.close()
    }

    @Test("RELEASE fails (after a failed save's rollback, or after a good save): the whole group fails, later saves included, and nothing commits",
          arguments: [true, false])
    func releaseFails(afterFailedSave: Bool) async throws {
        let dir = try TempDir("fault")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let existing = fixedAggregateID(seed: 321, index: 0)
        let first = fixedAggregateID(seed: 321, index: 1)
        let later = [fixedAggregateID(seed: 321, index: 2), fixedAggregateID(seed: 321, index: 3)]
        _ = try await store.insertEvents([rawEvent(existing, 1)])
        let fault = StatementFault("RELEASE w")
        fault.install(on: store)

        // The group's first RELEASE is that of its first save: one that failed (a partial write,
        // then a conflict) or one that went through.
        let firstSave = afterFailedSave ? [rawEvent(first, 1), rawEvent(existing, 1)] : [rawEvent(first, 1)]
        let outcomes = try await commitAsOneGroup(store, [firstSave] + later.map { [rawEvent($0, 1)] })
        #expect(fault.unused == 0, "the fault was not reached: \(fault.statements)")
        for (i, outcome) in outcomes.enumerated() {
            #expect(outcome.failure != nil, "save \(i) of the group was reported saved: \(outcome)")
        }
        for id in [first] + later {
            #expect(try await store.selectEvents(originatorID: id).isEmpty, "\(id) was committed")
        }
        #expect(try await store.insertEvents([rawEvent(later[0], 1)]) == [2])
        await store.close()
    }

    @Test("A ROLLBACK that fails after a lone save failed leaves no transaction open: its partial write never commits with the next save")
    func rollbackFailsAfterALoneSave() async throws {
        let dir = try TempDir("fault")
        let store = try SQLiteStore(path: dir.path("events.sqlite"))
        let existing = fixedAggregateID(seed: 322, index: 0)
        let partial = fixedAggregateID(seed: 322, index: 1)
        let other = fixedAggregateID(seed: 322, index: 2)
        _ = try await store.insertEvents([rawEvent(existing, 1)])
        let fault = StatementFault("ROLLBACK")
        fault.install(on: store)

        let conflict = await #expect(throws: EventSourcingError.self) { _ = try await store.insertEvents([rawEvent(partial, 1), rawEvent(existing, 1)]) }
        #expect(conflict?.code == .concurrencyConflict)
        #expect(fault.unused == 0)
        // The next save rolls the abandoned transaction back first, then commits alone.
        #expect(try await store.insertEvents([rawEvent(other, 1)]) == [2])
        #expect(try await store.selectEvents(originatorID: partial).isEmpty, "the failed save's partial write was committed")
        await store.close()
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}
