import CSQLite
import EventSourcing
@testable import EventSourcingSQLite
import Testing

/// The store's SQL needs SQLite 3.24.0 (upsert); an older library is refused at open with a
/// clear error, not a syntax error at the first write.
@Suite("SQLite library version")
struct SQLiteLibraryVersionTests {
    @Test("A library older than 3.24.0 is refused naming both versions; 3.24.0 and the linked one are taken")
    func minimumVersion() throws {
        let refused = #expect(throws: EventSourcingError.self) {
            try SQLiteConnection.checkLibraryVersion(3_023_002, path: "/tmp/x.sqlite")
        }
        #expect(refused?.code == .databaseUnavailable)
        #expect(refused?.message.contains("3.23.2") == true && refused?.message.contains("3.24.0") == true, "\(refused?.message ?? "")")
        #expect(refused?.message.contains("/tmp/x.sqlite") == true)
        try SQLiteConnection.checkLibraryVersion(3_024_000, path: "x")
        try SQLiteConnection.checkLibraryVersion(sqlite3_libversion_number(), path: "x")
    }
}
