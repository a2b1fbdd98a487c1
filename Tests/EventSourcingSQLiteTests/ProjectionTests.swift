import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Synchronization
import Testing

/// What a projection saw: the aggregates whose events it decoded.
final class Sightings: Sendable {
    let decoded = Mutex<Set<UUID>>([])
    let failAt = Mutex<Set<Int64>>([])
    /// Set: the projection saves to its own store from inside its call (which must be refused).
    let writeInside = Mutex<SQLiteStore?>(nil)
}

struct ProjectionFailure: Error {}

/// The customer directory: name, e-mail and address per customer, in the store's own
/// SQLite file, keyed by customer with the key scope beside it for the erase hook.
struct CustomerDirectory: Projection {
    typealias Context = SQLiteViewTransaction
    var name = "customer-directory"
    let sightings: Sightings

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("""
            CREATE TABLE IF NOT EXISTS customer_directory (
                id TEXT PRIMARY KEY, key_scope TEXT NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL, address TEXT NOT NULL)
            """)
        try tx.execute("CREATE INDEX IF NOT EXISTS customer_directory_scope ON customer_directory (key_scope)")
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        if sightings.failAt.withLock({ $0.contains(item.notification.id) }) {
            // Written, then thrown: the write must not survive.
            try tx.execute("INSERT OR REPLACE INTO customer_directory VALUES ('failing', '', 'x', 'x', 'x')")
            throw ProjectionFailure()
        }
        if let store = sightings.writeInside.withLock({ $0 }) {
            try await store.insertTracking(Tracking(name: "inside", notificationID: item.notification.id))
        }
        let e = try item.event(as: Customer.self)
        sightings.decoded.withLock { _ = $0.insert(e.originatorID) }
        switch e.event {
        case .registered(let n, let m, let a), .updated(let n, let m, let a):
            try tx.execute("INSERT OR REPLACE INTO customer_directory VALUES (?, ?, ?, ?, ?)",
                           .text(e.originatorID.uuidString), .text(item.keyScope ?? ""), .text(n), .text(m), .text(a))
        }
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {
        try tx.execute("DELETE FROM customer_directory WHERE key_scope = ?", .text(keyScope))
    }

    func drop(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("DROP TABLE IF EXISTS customer_directory")
    }
}

/// Counts, in the store's file, how often each notification reached the view.
struct CountingSQLiteProjection: Projection {
    typealias Context = SQLiteViewTransaction
    var name = "counter"

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("CREATE TABLE IF NOT EXISTS seen (notification_id INTEGER PRIMARY KEY, times INTEGER NOT NULL)")
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        try tx.execute("INSERT INTO seen VALUES (?, 1) ON CONFLICT (notification_id) DO UPDATE SET times = times + 1",
                       .integer(tx.notificationID))
        // Some work per item, so cancellations land inside batches.
        try await Task.sleep(for: .microseconds(200))
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {}
    func drop(in tx: SQLiteViewTransaction) async throws { try tx.execute("DROP TABLE IF EXISTS seen") }
}

@Suite("Projections into the SQLite store's own file (exactly once)")
struct SQLiteProjectionTests {
    static func customers(_ s: EncryptedStore, _ n: Int, tag: String) async throws -> [UUID] {
        var ids: [UUID] = []
        for i in 0..<n {
            var c = try AggregateRoot<Customer>(.registered(name: "Name-\(tag)-\(i)-Zebediah", email: "mail-\(tag)-\(i)@example.com",
                                                           address: "\(i) Long Street \(tag), Townsville"))
            try c.record(.updated(name: "Name-\(tag)-\(i)-Zebediah", email: "mail-\(tag)-\(i)@example.org",
                                  address: "\(i) Other Road \(tag), Townsville"))
            try await s.app.save(&c)
            ids.append(c.id)
        }
        return ids
    }

    /// The customer's name, e-mail and address as the view holds them (after the update).
    static func needles(tag: String, _ i: Int) -> [[UInt8]] {
        ["Name-\(tag)-\(i)-Zebediah", "mail-\(tag)-\(i)@example.org", "\(i) Other Road \(tag)"].map { Array($0.utf8) }
    }

    /// The values the update replaced, which secure_delete zeroed already.
    static func oldNeedles(tag: String, _ i: Int) -> [[UInt8]] {
        ["mail-\(tag)-\(i)@example.com", "\(i) Long Street \(tag)"].map { Array($0.utf8) }
    }

    @Test("Customer directory, secure_delete: after shred and catch-up none of the subject's strings is in the database, WAL or SHM; others intact; a rebuild never sees them")
    func customerDirectoryErasure() async throws {
        let dir = try TempDir("projection-erasure")
        let db = dir.path("events.sqlite")
        let key = try MasterKey.generate()
        let s = try await EncryptedStore.open(db, masterKey: key)
        let ids = try await Self.customers(s, 40, tag: "T")
        let sightings = Sightings()
        let runner = try ProjectionRunner(application: s.app, projection: CustomerDirectory(sightings: sightings), store: s.store)
        let task = Task { try await runner.run() }
        try await runner.wait(until: 80, timeout: .seconds(120))

        let target = 17
        let scope = ids[target].uuidString.lowercased()
        let subject = NeedleSet(Self.needles(tag: "T", target))
        let others = NeedleSet([5, 30].flatMap { Self.needles(tag: "T", $0) })
        func found(_ set: NeedleSet) -> Set<Int> {
            databaseFiles(db).reduce(into: Set<Int>()) { $0.formUnion(set.found(in: $1.bytes)) }
        }
        #expect(found(subject) == Set(subject.needles.indices), "control: the view holds the subject's data before the shred")
        let replaced = NeedleSet(Self.oldNeedles(tag: "T", target))
        let before = try await s.store.readView { try $0.query("SELECT count(*) FROM customer_directory") }
        #expect(before.first?[0] == .integer(40))

        try await s.app.shred(keyScope: scope)
        let last = try #require(try await s.app.notificationLog.maxNotificationID)
        try await runner.wait(until: last, timeout: .seconds(120))
        let rows = try await s.store.readView { tx in
            try tx.query("SELECT id, name FROM customer_directory ORDER BY id").map { $0["id"]?.textValue ?? "" }
        }
        #expect(rows.count == 39)
        #expect(!rows.contains(ids[target].uuidString))
        task.cancel()
        try await task.value

        #expect(found(subject).isEmpty, "the shredded subject's personal data is still in the files right after the runner caught up")
        await s.store.close()
        for (suffix, bytes) in databaseFiles(db) {
            let left = subject.found(in: bytes).union(replaced.found(in: bytes))
            #expect(left.isEmpty, "events.sqlite\(suffix) still holds \(left.count) of the subject's strings")
        }
        #expect(found(others) == Set(others.needles.indices), "other customers' rows are intact")

        // Rebuilt from zero after the shred: the subject's events read as shredded and never reach the view.
        let s2 = try await EncryptedStore.open(db, masterKey: key)
        let sightings2 = Sightings()
        let rebuilt = try ProjectionRunner(application: s2.app, projection: CustomerDirectory(sightings: sightings2), store: s2.store)
        try await rebuilt.reset()
        #expect(try await rebuilt.position == nil)
        let again = Task { try await rebuilt.run() }
        try await rebuilt.wait(until: last, timeout: .seconds(120))
        again.cancel()
        try await again.value
        #expect(!sightings2.decoded.withLock { $0.contains(ids[target]) })
        #expect(sightings2.decoded.withLock { $0.count } == 39)
        let count = try await s2.store.readView { try $0.query("SELECT count(*) FROM customer_directory") }
        #expect(count.first?[0] == .integer(39))
        await s2.store.close()
        for (suffix, bytes) in databaseFiles(db) {
            #expect(subject.found(in: bytes).isEmpty, "after the rebuild, events.sqlite\(suffix) holds the subject's strings")
        }
    }

    @Test("Exactly once: a runner cancelled again and again mid-batch and restarted processes every notification exactly once")
    func exactlyOnceUnderCancellation() async throws {
        let dir = try TempDir("projection-exactly-once")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: try MasterKey.generate(),
                                              configuration: .init(synchronous: .normal))
        var ledger = try ledgerSave(nil, save: 1, count: 300)
        try await s.app.save(&ledger)
        var restarts = 0
        while true {
            let runner = try ProjectionRunner(application: s.app, projection: CountingSQLiteProjection(), store: s.store, batchSize: 16)
            if try await runner.position == 300 { break }
            let task = Task { try await runner.run() }
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...15)))
            task.cancel()
            try await task.value
            restarts += 1
            try #require(restarts < 2_000)
        }
        #expect(restarts > 2)
        let rows = try await s.store.readView { tx in
            try tx.query("SELECT count(*), min(notification_id), max(notification_id), max(times), min(times) FROM seen")
        }
        #expect(rows.first?.values == [.integer(300), .integer(1), .integer(300), .integer(1), .integer(1)])
        await s.store.close()
    }

    @Test("A throwing projection: typed error naming it and the notification, its writes for that notification rolled back, the batch before it kept; a restart retries it")
    func throwingProjection() async throws {
        let dir = try TempDir("projection-throws")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: try MasterKey.generate())
        _ = try await Self.customers(s, 5, tag: "F")
        let sightings = Sightings()
        sightings.failAt.withLock { $0 = [7] }
        let runner = try ProjectionRunner(application: s.app, projection: CustomerDirectory(sightings: sightings), store: s.store)
        let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
        #expect(e?.code == .projectionFailed)
        #expect(e?.notificationID == 7)
        #expect(e?.message.contains("\"customer-directory\"") == true)
        #expect(try await runner.position == 6)
        let failing = try await s.store.readView { try $0.query("SELECT count(*) FROM customer_directory WHERE id = 'failing'") }
        #expect(failing.first?[0] == .integer(0), "the failed notification's write was rolled back")
        let three = try await s.store.readView { try $0.query("SELECT count(*) FROM customer_directory") }
        #expect(three.first?[0] == .integer(3))

        sightings.failAt.withLock { $0 = [] }
        let task = Task { try await runner.run() }
        try await runner.wait(until: 10, timeout: .seconds(120))
        task.cancel()
        try await task.value
        let all = try await s.store.readView { try $0.query("SELECT count(*) FROM customer_directory") }
        #expect(all.first?[0] == .integer(5))
        await s.store.close()
    }

    @Test("Bad SQL and misuse of the view transaction get typed errors, never a hang, and change nothing")
    func misuse() async throws {
        let dir = try TempDir("projection-misuse")
        let s = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: try MasterKey.generate())
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
            try tx.execute("CREATE TABLE t (a INTEGER)")
        }
        for (sql, values) in [("COMMIT", [SQLiteValue]()), ("/* x */ rollback", []), ("PRAGMA secure_delete = OFF", []),
                              ("INSERT INTO t VALUES (1); DELETE FROM t", []), ("INSERT INTO t VALUES (?)", []),
                              ("INSERT INTO t VALUES (?)", [1, 2]), ("", [])] {
            let e = await #expect(throws: EventSourcingError.self, "\(sql)") {
                try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
                    try tx.execute("INSERT INTO t VALUES (42)")
                    try tx.execute(sql, values: values)
                }
            }
            #expect(e?.code == .invalidArgument, "\(sql)")
        }
        let leaked = Mutex<SQLiteViewTransaction?>(nil)
        try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in leaked.withLock { $0 = tx } }
        let late = #expect(throws: EventSourcingError.self) { try leaked.withLock { $0 }?.execute("INSERT INTO t VALUES (7)") }
        #expect(late?.code == .invalidArgument)
        let write = await #expect(throws: EventSourcingError.self) {
            try await s.store.readView { tx in try tx.execute("INSERT INTO t VALUES (8)") }
        }
        #expect(write?.code == .invalidArgument)
        let tooMany = await #expect(throws: EventSourcingError.self) {
            try await s.store.projectionTransaction("setup", resettingTracking: false) { tx in
                for i in 0..<3 { try tx.execute("INSERT INTO t VALUES (?)", .integer(Int64(i))) }
                _ = try tx.query("SELECT a FROM t", values: [], maxRows: 2)
            }
        }
        #expect(tooMany?.code == .invalidArgument)
        let rows = try await s.store.readView { try $0.query("SELECT count(*) FROM t") }
        #expect(rows.first?[0] == .integer(0), "nothing of the refused transactions was kept")

        // The view's writes and the tracking record are one transaction: a position another
        // runner moved past first refuses the batch, and its view writes are rolled back.
        try await s.store.insertTracking(Tracking(name: "dup", notificationID: 10))
        let batch = ProjectionBatch<SQLiteViewTransaction>(name: "dup", steps: [.init(notificationID: 9, body: { tx in
            try tx.execute("INSERT INTO t VALUES (9)")
        })])
        let conflict = await #expect(throws: EventSourcingError.self) { _ = try await s.store.applyProjectionBatch(batch) }
        #expect(conflict?.code == .trackingConflict)
        #expect(try await s.store.maxTrackingID("dup") == 10)
        let nine = try await s.store.readView { try $0.query("SELECT count(*) FROM t") }
        #expect(nine.first?[0] == .integer(0), "the refused batch's view write was rolled back")

        // A save to the same store from inside the projection's call is refused, not a deadlock.
        _ = try await Self.customers(s, 1, tag: "W")
        let sightings = Sightings()
        sightings.writeInside.withLock { $0 = s.store }
        let runner = try ProjectionRunner(application: s.app, projection: CustomerDirectory(sightings: sightings), store: s.store)
        let e = try await withThrowingTaskGroup(of: EventSourcingError?.self) { group in
            group.addTask {
                do { try await runner.run() } catch let e as EventSourcingError { return e }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
        #expect(e?.code == .projectionFailed)
        #expect(e?.message.contains("invalidArgument") == true)
        #expect(try await runner.position == nil)
        #expect(try await s.store.maxTrackingID("inside") == nil)
        await s.store.close()
    }
}
