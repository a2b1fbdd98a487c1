import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// A read model of orders that copies the customer's and the courier's names, with their
/// subjects, and erases a subject's copies when the log tells of its shred.
struct PDOrderView: Projection {
    typealias Context = SQLiteViewTransaction
    var name = "pd-order-view"

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("""
            CREATE TABLE IF NOT EXISTS pd_orders (id TEXT PRIMARY KEY, amount INTEGER NOT NULL,
                customer TEXT NOT NULL, customer_subject TEXT NOT NULL, city TEXT NOT NULL,
                courier TEXT NOT NULL, courier_subject TEXT NOT NULL)
            """)
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        guard item.notification.topic == "PDOrder.placed" else { return }
        let e = try item.event(as: PDOrder.self)
        guard case .placed(let customer, let address, let courier, let amount) = e.event else { return }
        try tx.execute("INSERT OR REPLACE INTO pd_orders VALUES (?, ?, ?, ?, ?, ?, ?)",
                       .text(e.originatorID.uuidString), .integer(Int64(amount)), .text(customer.value),
                       .text(customer.subject ?? ""), .text(address.value.city), .text(courier.value), .text(courier.subject ?? ""))
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {
        try tx.execute("UPDATE pd_orders SET customer = '', city = '' WHERE customer_subject = ?", .text(keyScope))
        try tx.execute("UPDATE pd_orders SET courier = '' WHERE courier_subject = ?", .text(keyScope))
    }

    func drop(in tx: SQLiteViewTransaction) async throws { try tx.execute("DROP TABLE IF EXISTS pd_orders") }
}

@Suite("Personal fields on disk (SQLite)")
struct PersonalFieldDiskTests {
    static func files(_ path: String) -> [(suffix: String, bytes: [UInt8])] {
        ["", "-wal", "-shm"].map { ($0, (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path + $0)))) ?? []) }
    }

    static func found(_ needle: String, in path: String) -> [String] {
        files(path).filter { bytes($0.bytes, contain: Array(needle.utf8)) }.map { "events.sqlite" + $0.suffix }
    }

    @Test("shred the customer: the order loads with the customer's fields replaced; their strings are in no database, WAL or SHM bytes, and the read model's copies go; then the courier")
    func shredOnDisk() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pd-disk-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = dir.appendingPathComponent("events.sqlite").path
        let store = try SQLiteStore(path: db)
        let master = try MasterKey.generate()
        let keyring = try await Keyring.open(store: store, masterKeys: [master])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))

        let order = try await PersonalFieldTests.placeOrder(app)
        var other = try AggregateRoot<PDOrder>(PDOrder.place(customer: "Zed Control", customerSubject: "subject-Z",
                                                             street: "9 Control Way", city: "Controlton",
                                                             courier: "Bob Courier", courierSubject: "subject-B", amount: 5))
        try await app.save(&other)
        let runner = try ProjectionRunner(application: app, projection: PDOrderView(), store: store)
        let task = Task { try await runner.run() }
        try await runner.wait(until: try #require(try await app.notificationLog.maxNotificationID), timeout: .seconds(60))
        // Control: the read model holds copies, so the byte search finds what is there.
        #expect(!Self.found("Ada Lovelace", in: db).isEmpty, "control: the view copied the customer's name")
        #expect(!Self.found("Marylebone", in: db).isEmpty)

        _ = try await app.shred(keyScope: "subject-A")
        try await runner.wait(until: try #require(try await app.notificationLog.maxNotificationID), timeout: .seconds(60))
        let rows = try await store.readView { tx in
            try tx.query("SELECT id, amount, customer, city, courier FROM pd_orders ORDER BY amount").map {
                [$0["id"]?.textValue ?? "", $0["customer"]?.textValue ?? "", $0["city"]?.textValue ?? "", $0["courier"]?.textValue ?? ""]
            }
        }
        #expect(rows.count == 2)
        #expect(rows.last == [order.id.uuidString, "", "", "Bob Courier"])
        #expect(rows.first == [other.id.uuidString, "Zed Control", "Controlton", "Bob Courier"])

        let loaded = try await app.repository.get(PDOrder.self, id: order.id)
        #expect(loaded.state.amount == 120 && loaded.state.status == "shipped")
        #expect(loaded.state.customer?.isRedacted == true && loaded.state.address?.isRedacted == true)
        #expect(loaded.state.courier?.value == "Bob Courier")

        task.cancel()
        try? await task.value
        await store.close()
        for s in ["Ada Lovelace", "Analytical Row", "Marylebone"] {
            #expect(Self.found(s, in: db).isEmpty, "\(s) is still in \(Self.found(s, in: db))")
        }
        #expect(!Self.found("Zed Control", in: db).isEmpty, "other customers' copies are intact")

        // The courier too: both replaced, the order still loads.
        let store2 = try SQLiteStore(path: db)
        let keyring2 = try await Keyring.open(store: store2, masterKeys: [master])
        let app2 = Application(recorder: store2, snapshots: store2, mapper: Mapper(keyring: keyring2))
        _ = try await app2.shred(keyScope: "subject-B")
        let both = try await app2.repository.get(PDOrder.self, id: order.id)
        #expect(both.state.amount == 120)
        #expect(both.state.customer?.isRedacted == true && both.state.courier?.isRedacted == true)
        let runner2 = try ProjectionRunner(application: app2, projection: PDOrderView(), store: store2)
        let task2 = Task { try await runner2.run() }
        try await runner2.wait(until: try #require(try await app2.notificationLog.maxNotificationID), timeout: .seconds(60))
        task2.cancel()
        try? await task2.value
        await store2.close()
        #expect(Self.found("Bob Courier", in: db).isEmpty)
    }
}
