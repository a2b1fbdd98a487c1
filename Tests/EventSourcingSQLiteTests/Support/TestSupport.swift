// The shared aggregates (Ledger, Customer) and helpers, visible to every file of the target.
@_exported import ESTestSupport
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

// MARK: Files

/// The whole content of `path`, or empty when it does not exist.
func fileBytes(_ path: String) -> [UInt8] {
    FileManager.default.contents(atPath: path).map { [UInt8]($0) } ?? []
}

func fileExists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

/// The database file and its WAL and shared-memory files, by suffix ("", "-wal", "-shm").
func databaseFiles(_ path: String) -> [(suffix: String, bytes: [UInt8])] {
    ["", "-wal", "-shm"].map { ($0, fileBytes(path + $0)) }
}


// MARK: Stores

/// An encrypted application over a SQLite store whose key store is the same file.
struct EncryptedStore: Sendable {
    let store: SQLiteStore
    let keyring: Keyring
    let app: Application

    static func open(_ path: String, masterKey: MasterKey,
                     configuration: SQLiteStore.Configuration = .init(), mapperOptions: Mapper.Configuration = .init()) async throws -> EncryptedStore {
        let store = try SQLiteStore(path: path, configuration: configuration)
        let keyring = try await Keyring.open(store: store, masterKeys: [masterKey])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring, configuration: mapperOptions))
        return EncryptedStore(store: store, keyring: keyring, app: app)
    }

    static func open(_ path: String, masterKeyFile: String) async throws -> EncryptedStore {
        try await open(path, masterKey: MasterKey(contentsOfFile: masterKeyFile))
    }
}

/// Creates a store and a master key file (initialising the key store with its check record),
/// as the agents expect to find them.
func createStoreAndKeyFile(in dir: TempDir) async throws -> (db: String, keyFile: String) {
    let db = dir.path("events.sqlite")
    let keyFile = dir.path("master.key")
    let key = try MasterKey.generate()
    try key.writeKeyFile(to: keyFile)
    let s = try await EncryptedStore.open(db, masterKey: key)
    await s.store.close()
    return (db, keyFile)
}

/// Every notification of the application's log, decrypted, in pages of `page`.
func readWholeLog(_ app: Application, page: Int = 500) async throws -> [LogItem] {
    var out: [LogItem] = []
    var start: Int64 = 1
    while true {
        let items = try await app.notificationLog.read(start: start, limit: page)
        guard let last = items.last else { return out }
        out += items
        start = last.notification.id + 1
    }
}

// MARK: Helpers outside the test process

extension TestEnvironment {
    /// Runs a Python 3 script (with the sqlite3 module) and returns its stdout.
    static func python(_ script: String, _ arguments: [String], in dir: TempDir) async throws -> String {
        do {
            return try await ChildProcess.run("python3", ["-c", script] + arguments, in: dir)
        } catch {
            throw ChildProcessError(description: "python3 (needed to inspect SQLite files) failed: \(error)")
        }
    }
}

