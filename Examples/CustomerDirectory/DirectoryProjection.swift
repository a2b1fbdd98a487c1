import EventSourcing
import EventSourcingSQLite
import Foundation

/// The read side: a `customer_directory` table in the event store's own SQLite file, kept by a
/// projection. Its writes and its tracking position commit in one transaction (the runner's
/// `SQLiteViewTransaction`), so every event reaches the table exactly once, whenever the
/// process stops.
///
/// Each row keeps the key scope its data came from: when that scope is shredded, the runner
/// calls ``erase(keyScope:in:)`` (in log order, from the erasure record the shred wrote) and
/// the row goes. The store's `secure_delete` zeroes the deleted bytes, and it checkpoints its
/// WAL after the batch, so the personal data leaves the files too.
struct DirectoryProjection: Projection {
    typealias Context = SQLiteViewTransaction

    var name: String { "customer-directory" }
    var topics: [String] { [] }  // every topic (erasure records come whatever this says)

    func setUp(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("""
            CREATE TABLE IF NOT EXISTS customer_directory (
                customer_id TEXT PRIMARY KEY,
                key_scope TEXT NOT NULL,
                name TEXT NOT NULL,
                email TEXT NOT NULL,
                address TEXT NOT NULL)
            """)
        try tx.execute("CREATE INDEX IF NOT EXISTS customer_directory_by_scope ON customer_directory (key_scope)")
    }

    func process(_ item: LogItem, in tx: SQLiteViewTransaction) async throws {
        guard item.notification.topic.hasPrefix(Customer.typeName + ".") else { return }
        let e = try item.event(as: Customer.self)
        let id = SQLiteValue.text(e.originatorID.uuidString.lowercased())
        switch e.event {
        case .registered(let name, let email, let address):
            try tx.execute("INSERT OR REPLACE INTO customer_directory VALUES (?, ?, ?, ?, ?)",
                           id, .text(item.keyScope ?? ""), .text(name), .text(email), .text(address))
        case .moved(let address):
            try tx.execute("UPDATE customer_directory SET address = ? WHERE customer_id = ?", .text(address), id)
        }
    }

    func erase(keyScope: String, in tx: SQLiteViewTransaction) async throws {
        try tx.execute("DELETE FROM customer_directory WHERE key_scope = ?", .text(keyScope))
    }

    func drop(in tx: SQLiteViewTransaction) async throws {
        try tx.execute("DROP TABLE IF EXISTS customer_directory")
    }
}

/// One row of the read model.
struct DirectoryRow: Sendable, Hashable {
    var customerID: String
    var name: String
    var email: String
    var address: String
}

extension SQLiteStore {
    /// The read model's rows, by name (a read on a reader connection: what the last commit left).
    func directory() async throws -> [DirectoryRow] {
        try await readView { tx in
            try tx.query("SELECT customer_id, name, email, address FROM customer_directory ORDER BY name").map { row in
                DirectoryRow(customerID: row["customer_id"]?.textValue ?? "", name: row["name"]?.textValue ?? "",
                             email: row["email"]?.textValue ?? "", address: row["address"]?.textValue ?? "")
            }
        }
    }
}
