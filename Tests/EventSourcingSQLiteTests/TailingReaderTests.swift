import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Synchronization
import Testing

@Suite("Following the SQLite notification log while it grows")
struct TailingReaderTests {
    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    @Test("A reader following the log during 4 × 200 concurrent saves sees every event once, in order, with no gap")
    func tailingReaderSeesEverythingOnce() async throws {
        let dir = try TempDir("tail")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: MasterKey.generate())
        let app = s.app
        let writers = 4, perWriter = 200
        let done = Flag()

        let reader = Task { () async throws -> (events: [(id: Int64, originator: UUID, version: Int)], whileWriting: Int) in
            var out: [(id: Int64, originator: UUID, version: Int)] = []
            var whileWriting = 0
            var last: Int64 = 0
            var finalPass = false
            while true {
                let writersDone = done.value.load(ordering: .acquiring)
                let page = try await app.notificationLog.read(start: last + 1, limit: 50)
                for item in page {
                    // Decrypts: the data key committed with the event is visible with it.
                    let e = try item.event(as: Ledger.self)
                    out.append((item.notification.id, e.originatorID, e.originatorVersion))
                    last = item.notification.id
                }
                if !writersDone { whileWriting += page.count }
                if page.isEmpty {
                    // Stop only after an empty page read after every writer had finished.
                    if finalPass { break }
                    if writersDone { finalPass = true }
                    await Task.yield()
                }
            }
            return (out, whileWriting)
        }

        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    let id = fixedAggregateID(seed: 70, index: w)
                    var root = try AggregateRoot<Ledger>(id: id, .entry(save: 1, item: 1, of: 1))
                    try await app.save(&root)
                    for save in 2...perWriter {
                        try root.record(.entry(save: save, item: 1, of: 1))
                        try await app.save(&root)
                    }
                }
            }
            try await group.waitForAll()
        }
        done.value.store(true, ordering: .releasing)
        let (events, whileWriting) = try await reader.value
        #expect(whileWriting > 0, "the reader saw nothing until the writers had finished: the test did not tail")

        let total = writers * perWriter
        #expect(events.map(\.id) == (1...Int64(total)).map { $0 }, "the reader missed, repeated or reordered notifications")
        for w in 0..<writers {
            let id = fixedAggregateID(seed: 70, index: w)
            #expect(events.filter { $0.originator == id }.map(\.version) == Array(1...perWriter))
        }
        await s.store.close()
    }
}
