import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement

/// A recorder under test: the conformance suite runs every behaviour against each of these.
struct RecorderFactory: Sendable, CustomStringConvertible {
    let name: String
    /// Makes a fresh, empty store: an application recorder that also records snapshots.
    let make: @Sendable () async throws -> Store

    var description: String { name }

    /// The store under test and how to release it.
    struct Store: Sendable {
        let recorder: any ApplicationRecorder
        let snapshots: any SnapshotRecorder
        /// The key store that shares the recorder's transactions, if the recorder has one.
        let keyStore: (any KeyStore)?
        let close: @Sendable () async throws -> Void
    }

    static let inMemory = RecorderFactory(name: "in-memory") {
        let r = InMemoryRecorder()
        return Store(recorder: r, snapshots: r, keyStore: nil, close: {})
    }

    /// A SQLite store in a fresh file in a temporary directory (not `:memory:`).
    static let sqliteFile = RecorderFactory(name: "sqlite") {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("es-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        // Two readers (each reader connection holds three descriptors: database, WAL, shared
        // memory): the whole suite runs hundreds of these stores at once in one process (see
        // `postgres` below for what too many descriptors did).
        let store = try SQLiteStore(path: dir.appendingPathComponent("events.sqlite").path,
                                    configuration: .init(readers: 2))
        return Store(recorder: store, snapshots: store, keyStore: store, close: {
            await store.close()
            try? FileManager.default.removeItem(at: dir)
        })
    }

    /// A PostgreSQL store in a fresh schema of the server named by ES_POSTGRES_URL (which
    /// scripts/test.sh starts); the schema is dropped on close.
    static let postgres = RecorderFactory(name: "postgres") {
        var config = try PostgresTestServer.configuration()
        config.schema = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased()
        // A small pool: the whole suite runs hundreds of these stores at once in one process, and
        // past about 1,300 open descriptors Foundation's Process.run (the esctl tests spawn the
        // binary) overflowed a buffer and crashed the test process in two CI runs.
        config.poolSize = 3
        let store = try await PostgresStore(configuration: config)
        return Store(recorder: store, snapshots: store, keyStore: store, close: { try await store.destroy() })
    }

    /// Every recorder the conformance suite runs against.
    static let all: [RecorderFactory] = [.inMemory, .sqliteFile] + (PostgresTestServer.available ? [.postgres] : [])
}

/// An application under test: a recorder plus encryption on or off.
struct AppFactory: Sendable, CustomStringConvertible {
    let recorder: RecorderFactory
    let encrypted: Bool

    var description: String { "\(recorder.name), \(encrypted ? "encrypted" : "plaintext")" }

    /// A fresh application; `masterKey` is generated if not given.
    func make(snapshotIntervals: [SnapshotInterval] = [], masterKey: MasterKey? = nil) async throws -> TestApp {
        let store = try await recorder.make()
        var keyring: Keyring?
        if encrypted {
            let keyStore = store.keyStore ?? InMemoryKeyStore()
            keyring = try await Keyring.open(store: keyStore, masterKeys: [masterKey ?? MasterKey.generate()])
        }
        let app = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring),
                              snapshotIntervals: snapshotIntervals)
        return TestApp(app: app, store: store, keyring: keyring)
    }

    static let all: [AppFactory] = RecorderFactory.all.flatMap { [AppFactory(recorder: $0, encrypted: false),
                                                                   AppFactory(recorder: $0, encrypted: true)] }
}

struct TestApp: Sendable {
    let app: Application
    let store: RecorderFactory.Store
    let keyring: Keyring?
}
