import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Synchronization
import Testing

/// What a projection saw, and where it is told to fail.
final class PostgresSightings: Sendable {
    let decoded = Mutex<Set<UUID>>([])
    let failAt = Mutex<Set<Int64>>([])
}

struct PostgresProjectionFailure: Error {}

/// The customer directory in the store's PostgreSQL schema.
struct PostgresCustomerDirectory: Projection {
    typealias Context = PostgresViewTransaction
    var name = "customer-directory"
    let sightings: PostgresSightings

    func setUp(in tx: PostgresViewTransaction) async throws {
        try await tx.execute("""
            CREATE TABLE IF NOT EXISTS \(unescaped: tx.schema).customer_directory (
                id uuid PRIMARY KEY, key_scope text NOT NULL, name text NOT NULL, email text NOT NULL, address text NOT NULL)
            """)
    }

    func process(_ item: LogItem, in tx: PostgresViewTransaction) async throws {
        if sightings.failAt.withLock({ $0.contains(item.notification.id) }) {
            try await tx.execute("""
                INSERT INTO \(unescaped: tx.schema).customer_directory VALUES (\(UUID()), 'failing', 'x', 'x', 'x')
                """)
            throw PostgresProjectionFailure()
        }
        let e = try item.event(as: Customer.self)
        sightings.decoded.withLock { _ = $0.insert(e.originatorID) }
        switch e.event {
        case .registered(let n, let m, let a), .updated(let n, let m, let a):
            let scope = item.keyScope ?? ""
            try await tx.execute("""
                INSERT INTO \(unescaped: tx.schema).customer_directory VALUES (\(e.originatorID), \(scope), \(n), \(m), \(a))
                ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, address = EXCLUDED.address
                """)
        }
    }

    func erase(keyScope: String, in tx: PostgresViewTransaction) async throws {
        try await tx.execute("DELETE FROM \(unescaped: tx.schema).customer_directory WHERE key_scope = \(keyScope)")
    }

    func drop(in tx: PostgresViewTransaction) async throws {
        try await tx.execute("DROP TABLE IF EXISTS \(unescaped: tx.schema).customer_directory")
    }
}

extension PostgresTests {
@Suite("PostgreSQL projections (view in the store's database: exactly once)")
struct ProjectionTests {
    static func customers(_ s: EncryptedApp, _ n: Int, tag: String) async throws -> [UUID] {
        var ids: [UUID] = []
        for i in 0..<n {
            var c = try AggregateRoot<Customer>(.registered(name: "Name-\(tag)-\(i)", email: "mail-\(tag)-\(i)@example.com",
                                                           address: "\(i) Long Street \(tag)"))
            try c.record(.updated(name: "Name-\(tag)-\(i)", email: "mail-\(tag)-\(i)@example.org", address: "\(i) Other Road \(tag)"))
            try await s.app.save(&c)
            ids.append(c.id)
        }
        return ids
    }

    /// Every name, e-mail and address in the view table, as one text per row.
    static func viewContent(_ config: PostgresStore.Configuration) async throws -> [String] {
        try await withRawClient(config) { client in
            try await client.strings("""
                SELECT id::text || '|' || key_scope || '|' || name || '|' || email || '|' || address
                FROM "\(unescaped: config.schema)".customer_directory ORDER BY id
                """)
        }
    }

    @Test("Customer directory: after shred and catch-up none of the subject's name, e-mail or address is in the view table, others intact; a rebuild from zero never sees them")
    func customerDirectoryErasure() async throws {
        let config = try freshConfiguration()
        try await withStore(config) { store in
            let s = try await EncryptedApp.open(store, masterKey: try MasterKey.generate())
            let ids = try await Self.customers(s, 12, tag: "P")
            let sightings = PostgresSightings()
            let runner = try ProjectionRunner(application: s.app, projection: PostgresCustomerDirectory(sightings: sightings), store: store)
            let task = Task { try await runner.run() }
            try await runner.wait(until: 24, timeout: .seconds(120))
            let target = 7
            let strings = ["Name-P-\(target)", "mail-P-\(target)@example", "\(target) Other Road P", ids[target].uuidString.lowercased()]
            let before = try await Self.viewContent(config)
            #expect(before.count == 12)
            for needle in strings { #expect(before.contains { $0.contains(needle) }, "control: \(needle) is in the view before the shred") }

            try await s.app.shred(keyScope: ids[target].uuidString.lowercased())
            let last = try #require(try await s.app.notificationLog.maxNotificationID)
            try await runner.wait(until: last, timeout: .seconds(120))
            task.cancel()
            try await task.value
            let after = try await Self.viewContent(config)
            #expect(after.count == 11)
            for needle in strings { #expect(!after.contains { $0.contains(needle) }, "\(needle) is still in the view after the shred") }
            for i in [0, 6, 8, 11] { #expect(after.contains { $0.contains("Name-P-\(i)|mail-P-\(i)@example.org|\(i) Other Road P") }) }

            // Rebuilt from zero after the shred.
            let sightings2 = PostgresSightings()
            let rebuilt = try ProjectionRunner(application: s.app, projection: PostgresCustomerDirectory(sightings: sightings2), store: store)
            try await rebuilt.reset()
            #expect(try await rebuilt.position == nil)
            let again = Task { try await rebuilt.run() }
            try await rebuilt.wait(until: last, timeout: .seconds(120))
            again.cancel()
            try await again.value
            #expect(!sightings2.decoded.withLock { $0.contains(ids[target]) })
            #expect(sightings2.decoded.withLock { $0.count } == 11)
            let rebuiltContent = try await Self.viewContent(config)
            #expect(rebuiltContent == after)
        }
    }

    @Test("A throwing projection: .projectionFailed naming it and the notification, its writes rolled back, the steps before it kept; a restart retries it exactly once")
    func throwingProjection() async throws {
        let config = try freshConfiguration()
        try await withStore(config) { store in
            let s = try await EncryptedApp.open(store, masterKey: try MasterKey.generate())
            _ = try await Self.customers(s, 4, tag: "F")
            let sightings = PostgresSightings()
            sightings.failAt.withLock { $0 = [5] }
            let runner = try ProjectionRunner(application: s.app, projection: PostgresCustomerDirectory(sightings: sightings), store: store)
            let e = await #expect(throws: EventSourcingError.self) { try await runner.run() }
            #expect(e?.code == .projectionFailed)
            #expect(e?.notificationID == 5)
            #expect(e?.message.contains("\"customer-directory\"") == true)
            #expect(try await runner.position == 4)
            let content = try await Self.viewContent(config)
            #expect(content.count == 2)
            #expect(!content.contains { $0.contains("failing") }, "the failed notification's write was rolled back")

            sightings.failAt.withLock { $0 = [] }
            let task = Task { try await runner.run() }
            try await runner.wait(until: 8, timeout: .seconds(120))
            task.cancel()
            try await task.value
            #expect(try await Self.viewContent(config).count == 4)
            #expect(try await runner.position == 8)
        }
    }

    @Test("Transaction control and session changes in a view transaction are refused; a second runner of the same name cannot move the position back")
    func misuse() async throws {
        let config = try freshConfiguration()
        try await withStore(config) { store in
            for sql: PostgresQuery in ["COMMIT", "rollback", "SET search_path = public", "/* x */ BEGIN"] {
                let e = await #expect(throws: EventSourcingError.self) {
                    try await store.projectionTransaction("misuse", resettingTracking: false) { tx in try await tx.execute(sql) }
                }
                #expect(e?.code == .invalidArgument)
            }
            try await store.projectionTransaction("misuse", resettingTracking: false) { tx in
                try await tx.execute("SET LOCAL statement_timeout = 5000")
            }
            try await store.insertTracking(Tracking(name: "dup", notificationID: 10))
            let batch = ProjectionBatch<PostgresViewTransaction>(name: "dup", steps: [.init(notificationID: 9, body: { tx in
                try await tx.execute("CREATE TABLE \(unescaped: tx.schema).should_not_exist (a int)")
            })])
            let e = await #expect(throws: EventSourcingError.self) { _ = try await store.applyProjectionBatch(batch) }
            #expect(e?.code == .trackingConflict)
            #expect(try await store.maxTrackingID("dup") == 10)
            let tables = try await withRawClient(config) { client in
                try await client.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = \(config.schema) AND tablename = 'should_not_exist'")
            }
            #expect(tables == 0, "the refused batch's view writes were rolled back")
        }
    }
}
}
