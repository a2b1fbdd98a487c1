import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// `SQLiteStore.Configuration(readOnly: true)`: reads a store, also one whose WAL holds
/// commits the database file lacks, without changing a byte of the database, its -wal or -shm,
/// and without leaving a file beside it.
@Suite("SQLite store opened read-only")
struct ReadOnlyStoreTests {
    enum Files: String, CaseIterable, Sendable {
        /// The database, -wal and -shm copied while a writer had it open (a crash, a live backup).
        case copiedWithShm
        /// The database and its -wal only.
        case copiedWithoutShm
        /// The files of a store another connection keeps open.
        case live
    }

    /// Every file of the directory that holds `path`, byte for byte.
    static func directory(_ path: String) -> [String: [UInt8]] {
        let dir = (path as NSString).deletingLastPathComponent
        var out: [String: [UInt8]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            out[name] = fileBytes(dir + "/" + name)
        }
        return out
    }

    static func readOnly(_ path: String) throws -> SQLiteStore {
        try SQLiteStore(path: path, configuration: .init(readOnly: true))
    }

    @Test("Reads the commits that are only in the WAL, with the master key, and changes no byte", arguments: Files.allCases)
    func readsTheWALWithoutChangingIt(_ files: Files) async throws {
        let dir = try TempDir("readonly")
        let key = try MasterKey.generate()
        let original = dir.path("live/events.sqlite")
        try FileManager.default.createDirectory(atPath: dir.path("live"), withIntermediateDirectories: true)
        let writer = try await EncryptedStore.open(original, masterKey: key)
        var roots: [AggregateRoot<Ledger>] = try (0..<3).map { try ledgerSave(nil, save: $0, count: 2) }
        _ = try await writer.app.save(&roots)
        try #require(fileBytes(original + "-wal").count > 0, "the WAL holds no commit")

        var target = original
        if files != .live {
            try FileManager.default.createDirectory(atPath: dir.path("copy"), withIntermediateDirectories: true)
            target = dir.path("copy/events.sqlite")
            for suffix in files == .copiedWithShm ? ["", "-wal", "-shm"] : ["", "-wal"] {
                try FileManager.default.copyItem(atPath: original + suffix, toPath: target + suffix)
            }
            await writer.store.close()
        }
        let before = Self.directory(target)

        let store = try Self.readOnly(target)
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        let log = try await readWholeLog(app)
        #expect(log.count == 6)
        for root in roots {
            #expect(try await app.repository.get(Ledger.self, id: root.id).entries == 2)
        }
        #expect(try await store.statistics().events == 6)
        #expect(try await store.masterKeyChecks().map(\.kekID) == [key.id])
        if files == .live {
            // A commit made meanwhile by the writer is read too (the read-only -shm is shared).
            var more = try ledgerSave(nil, save: 9, count: 1)
            try await writer.app.save(&more)
            #expect(try await store.statistics().events == 7)
        }
        await store.close()
        if files == .live {
            let live = Self.directory(target)
            #expect(Set(live.keys) == Set(before.keys), "\(live.keys.sorted())")
            await writer.store.close()
        } else {
            #expect(Self.directory(target) == before, "\(Self.directory(target).keys.sorted()) vs \(before.keys.sorted())")
        }
    }

    @Test("Every write throws databaseUnavailable and changes nothing")
    func writesAreRefused() async throws {
        let dir = try TempDir("readonly")
        let key = try MasterKey.generate()
        let path = dir.path("events.sqlite")
        let writer = try await EncryptedStore.open(path, masterKey: key)
        var root = try ledgerSave(nil, save: 1, count: 2)
        try await writer.app.save(&root)
        await writer.store.close()
        let before = Self.directory(path)

        let store = try Self.readOnly(path)
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        var next = try await app.repository.get(Ledger.self, id: root.id)
        try next.record(.entry(save: 2, item: 1, of: 1))
        var another = try ledgerSave(nil, save: 3, count: 1)
        let attempts: [(String, () async throws -> Void)] = [
            ("save", { try await app.save(&next) }),
            ("save of a new aggregate", { try await app.save(&another) }),
            ("snapshot", { try await app.takeSnapshot(Ledger.self, id: root.id) }),
            ("rotate", { _ = try await keyring.rotate(scope: root.id.uuidString.lowercased()) }),
            ("shred", { _ = try await app.shred(keyScope: root.id.uuidString.lowercased()) }),
            ("master-key check", { try await store.insertMasterKeyCheck(MasterKeyCheck(kekID: "x", sealed: [1], kdf: nil, createdAt: Date())) }),
        ]
        for (name, attempt) in attempts {
            if let error = await #expect(throws: (any Error).self, "\(name) on a read-only store", performing: { try await attempt() }) {
                let code = (error as? EventSourcingError)?.code.description ?? (error as? KeyManagementError)?.code.description
                let message = (error as? EventSourcingError)?.message ?? "\(error)"
                #expect(code == "databaseUnavailable" || message.contains("open read-only"), "\(name): \(error)")
            }
        }
        await store.close()
        #expect(Self.directory(path) == before)
    }

    @Test("A missing database is not created")
    func missingDatabase() throws {
        let dir = try TempDir("readonly")
        let path = dir.path("absent.sqlite")
        let e = #expect(throws: EventSourcingError.self) { _ = try Self.readOnly(path) }
        #expect(e?.code == .databaseUnavailable && e?.message.contains(path) == true, "\(String(describing: e))")
        #expect(Self.directory(path).isEmpty, "\(Self.directory(path).keys.sorted())")
    }

    @Test("A new, empty database reads as an empty store (no checks, zero counts); other reads say it holds no event store; nothing is created")
    func emptyDatabase() async throws {
        let dir = try TempDir("readonly")
        let path = dir.path("empty.sqlite")
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        let store = try Self.readOnly(path)
        #expect(try await store.masterKeyChecks().isEmpty)
        #expect(try await store.statistics().events == 0)
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.selectNotifications(start: 1, limit: 10, stop: nil, topics: []) }
        #expect(e?.code == .databaseUnavailable && e?.message.contains("no event store") == true, "\(String(describing: e))")
        #expect(try await SQLiteStore.masterKeyChecks(readingOnly: path).isEmpty)
        await store.close()
        #expect(Self.directory(path) == ["empty.sqlite": []])
    }

    @Test("A schema written by an earlier version is read as it is, not migrated")
    func olderSchemaIsNotMigrated() async throws {
        let dir = try TempDir("readonly")
        let fixtures = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        let path = dir.path("ledger.sqlite")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("ledger-v1.sqlite.fixture"), to: URL(fileURLWithPath: path))
        let key = try MasterKey(contentsOfFile: fixtures.appendingPathComponent("ledger-v1.key.fixture").path)
        let before = Self.directory(path)
        let store = try Self.readOnly(path)
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: try await Keyring.open(store: store, masterKeys: [key])))
        #expect(try await readWholeLog(app).count == 5)
        #expect(try await store.countPlaintextEvents() == 0)
        await store.close()
        #expect(Self.directory(path) == before, "the schema-1 file was changed")
    }

    @Test("Read without locks (no -shm), a database another connection writes meanwhile fails the next read with databaseLocked")
    func writtenMeanwhile() async throws {
        let dir = try TempDir("readonly")
        let key = try MasterKey.generate()
        let path = dir.path("events.sqlite")
        let first = try await EncryptedStore.open(path, masterKey: key)
        var root = try ledgerSave(nil, save: 1, count: 2)
        try await first.app.save(&root)
        await first.store.close()
        try #require(!fileExists(path + "-shm") && !fileExists(path + "-wal"), "the closed store left a -wal or -shm")

        let store = try Self.readOnly(path)
        #expect(try await store.statistics().events == 2)
        // Another writer opens the store, commits, and closes: its checkpoint writes the database file.
        let other = try await EncryptedStore.open(path, masterKey: key)
        var more = try ledgerSave(nil, save: 2, count: 3)
        try await other.app.save(&more)
        await other.store.close()
        let e = await #expect(throws: EventSourcingError.self) { _ = try await store.statistics() }
        #expect(e?.code == .databaseLocked && e?.message.contains("read it again") == true, "\(String(describing: e))")
        await store.close()
        // Opened again, it reads the new state.
        let again = try Self.readOnly(path)
        #expect(try await again.statistics().events == 5)
        await again.close()
    }
}
