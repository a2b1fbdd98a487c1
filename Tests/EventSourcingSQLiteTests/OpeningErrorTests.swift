import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Opening a file that is not a usable event store fails clearly and changes nothing")
struct OpeningErrorTests {
    /// Opens `path`, expecting `code`; checks the file and its WAL/SHM siblings are exactly as before.
    private func expectOpenFails(_ path: String, with code: EventSourcingError.Code,
                                 sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let before = databaseFiles(path).map { ($0.suffix, $0.bytes, fileExists(path + $0.suffix)) }
        let error = #expect(throws: EventSourcingError.self, sourceLocation: sourceLocation) { _ = try SQLiteStore(path: path) }
        #expect(error?.code == code, "opening \(path): \(String(describing: error))", sourceLocation: sourceLocation)
        #expect(error?.message.isEmpty == false, sourceLocation: sourceLocation)
        for (suffix, bytes, existed) in before {
            #expect(fileExists(path + suffix) == existed, "\(suffix.isEmpty ? "the file" : suffix) appeared or vanished",
                    sourceLocation: sourceLocation)
            let unchanged = fileBytes(path + suffix) == bytes
            #expect(unchanged, "\(suffix.isEmpty ? "the file" : suffix) changed", sourceLocation: sourceLocation)
        }
    }

    /// A closed encrypted store with a few events.
    private func makeStore(in dir: TempDir, events: Int = 40) async throws -> String {
        let db = dir.path("events.sqlite")
        let s = try await EncryptedStore.open(db, masterKey: MasterKey.generate())
        for i in 0..<events {
            var c = try AggregateRoot<Customer>(.registered(name: "N\(i)", email: "e\(i)", address: String(repeating: "a", count: 200)))
            try await s.app.save(&c)
        }
        await s.store.close()
        return db
    }

    @Test("A file that is not a SQLite database is refused with databaseCorrupt")
    func notADatabase() async throws {
        let dir = try TempDir("open")
        let path = dir.path("notes.sqlite")
        try Data(String(repeating: "These are my notes, not a database.\n", count: 300).utf8).write(to: URL(fileURLWithPath: path))
        try await expectOpenFails(path, with: .databaseCorrupt)
    }

    @Test("A file with the SQLite magic but a page size of 0 is refused with databaseCorrupt (no crash)")
    func zeroPageSize() async throws {
        let dir = try TempDir("open")
        let path = dir.path("zero.sqlite")
        try Data(Array("SQLite format 3\0".utf8) + [UInt8](repeating: 0, count: 4096 - 16)).write(to: URL(fileURLWithPath: path))
        try await expectOpenFails(path, with: .databaseCorrupt)
    }

    @Test("A database truncated to half its size is refused with databaseCorrupt")
    func truncatedDatabase() async throws {
        let dir = try TempDir("open")
        let db = try await makeStore(in: dir)
        #expect(!fileExists(db + "-wal"), "closing should have checkpointed the WAL into the file")
        let whole = fileBytes(db)
        try #require(whole.count >= 4 * 4096, "the store is too small to truncate meaningfully")
        try Data(whole.prefix(whole.count / 2)).write(to: URL(fileURLWithPath: db))
        try await expectOpenFails(db, with: .databaseCorrupt)
    }

    @Test("A store whose schema_version is newer (99) is refused with unsupportedSchema")
    func newerSchema() async throws {
        let dir = try TempDir("open")
        let db = try await makeStore(in: dir, events: 3)
        let out = try await TestEnvironment.python("""
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1])
            c.execute("UPDATE es_meta SET value = 99 WHERE key = 'schema_version'")
            c.commit()
            print(c.execute("SELECT value FROM es_meta WHERE key = 'schema_version'").fetchone()[0])
            c.close()
            """, [db], in: dir)
        try #require(out == "99")
        try await expectOpenFails(db, with: .unsupportedSchema)
    }

    @Test("A SQLite database with other tables (not an event store) is refused with unsupportedSchema")
    func foreignDatabase() async throws {
        let dir = try TempDir("open")
        let db = dir.path("crm.sqlite")
        _ = try await TestEnvironment.python("""
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1])
            c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            c.execute("INSERT INTO customers (name) VALUES ('Ada')")
            c.commit()
            c.close()
            """, [db], in: dir)
        try await expectOpenFails(db, with: .unsupportedSchema)
    }

    @Test("A path that cannot be created is refused with databaseUnavailable")
    func unwritableLocation() async throws {
        let dir = try TempDir("open")
        let path: String
        if getuid() == 0 {
            // root ignores directory permissions, so a read-only directory would still be
            // writable: use a path whose parent directory does not exist instead.
            path = dir.path("no-such-directory/events.sqlite")
        } else {
            let readOnly = dir.path("read-only")
            try FileManager.default.createDirectory(atPath: readOnly, withIntermediateDirectories: false)
            try #require(chmod(readOnly, 0o555) == 0)
            path = readOnly + "/events.sqlite"
        }
        try await expectOpenFails(path, with: .databaseUnavailable)
        #expect(!fileExists(path))
    }
}
