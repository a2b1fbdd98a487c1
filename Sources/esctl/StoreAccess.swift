import ArgumentParser
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging

/// What esctl needs from a store beyond the library protocols.
protocol AdminStore: ApplicationRecorder, SnapshotRecorder, KeyStore, KeyScopeCounting {
    func selectSnapshots(after cursor: (UUID, Int)?, limit: Int) async throws -> [StoredEvent]
    func selectNotifications(keyScope: String, after: Int64, limit: Int) async throws -> [StoredNotification]
    func statisticsJSON() async throws -> [String: Any]
    func close() async
    var location: String { get }
}

extension SQLiteStore: AdminStore {
    func statisticsJSON() async throws -> [String: Any] {
        let s = try await statistics()
        return ["events": s.events, "aggregates": s.aggregates, "snapshots": s.snapshots, "key_scopes": s.keyScopes,
                "data_keys": s.dataKeys, "shredded_scopes": s.shreddedScopes, "bytes_on_disk": s.bytesOnDisk]
    }

    var location: String { "sqlite:" + path }
}

extension PostgresStore: AdminStore {
    func statisticsJSON() async throws -> [String: Any] { try await statistics() }

    var location: String { configuration.description }
}

/// An opened store with its keyring and application.
struct Session {
    let store: any AdminStore
    let keyring: Keyring
    let app: Application
}

/// Resolves the store and the master key from the global options and the environment.
struct StoreAccess {
    let options: Esctl
    var environment: [String: String] = ProcessInfo.processInfo.environment

    var storeURL: String { options.store ?? environment["ESCTL_STORE"] ?? "sqlite:./eventstore.sqlite" }

    /// The SQLite path of a `sqlite:` URL.
    func sqlitePath() throws -> String? {
        let url = storeURL
        if url.hasPrefix("sqlite://") { return String(url.dropFirst("sqlite://".count)) }
        if url.hasPrefix("sqlite:") { return String(url.dropFirst("sqlite:".count)) }
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") { return nil }
        throw CLIError(exitCode: Exit.usage, message: "unknown store URL scheme: use sqlite:PATH or postgres://USER@HOST:PORT/DB")
    }

    /// Opens the store; unless `create`, it must exist already (SQLite) or be initialised (PostgreSQL).
    func openStore(create: Bool = false) async throws -> any AdminStore {
        guard let path = try sqlitePath() else {
            var config = try PostgresConfiguration(url: storeURL)
            // Keep the password out of argv: PGPASSWORD fills it in when the URL has none.
            if config.password == nil { config.password = environment["PGPASSWORD"] }
            return try await PostgresStore(configuration: config, logger: Logger(label: "esctl.postgres"))
        }
        guard !path.isEmpty else { throw CLIError(exitCode: Exit.usage, message: "empty store path") }
        if !create, !FileManager.default.fileExists(atPath: path) {
            throw CLIError(exitCode: Exit.storeUnavailable, message: "no store at \(path) (create one with 'esctl init')")
        }
        return try SQLiteStore(path: path, logger: Logger(label: "esctl.sqlite"))
    }

    /// The master key from exactly one source.
    func masterKey(kdf: KDFParameters?) throws -> MasterKey {
        let sources = [options.masterKeyFile != nil, options.masterKeyStdin, options.passphrase].filter { $0 }.count
        guard sources <= 1 else {
            throw CLIError(exitCode: Exit.usage, message: "give one master key source: --master-key-file, --master-key-stdin or --passphrase")
        }
        if let path = options.masterKeyFile { return try MasterKey(contentsOfFile: path) }
        if options.masterKeyStdin {
            var bytes = Terminal.readAll()
            return try MasterKey(encoded: &bytes, source: "standard input")
        }
        if options.passphrase {
            guard let kdf else {
                throw CLIError(exitCode: Exit.usage, message: "this store's master key is not passphrase-derived")
            }
            return try MasterKey(passphrase: readPassphrase(prompt: "Passphrase: "), parameters: kdf)
        }
        if environment["ESCTL_MASTER_KEY"] != nil {
            return try MasterKey(environmentVariable: "ESCTL_MASTER_KEY", environment: environment)
        }
        throw CLIError(exitCode: Exit.usage,
                       message: "no master key: pass --master-key-file PATH, --master-key-stdin or --passphrase, or set ESCTL_MASTER_KEY")
    }

    func readPassphrase(prompt: String) throws -> String {
        guard var bytes = Terminal.readLine(prompt: prompt, silent: true), !bytes.isEmpty else {
            throw CLIError(exitCode: Exit.usage, message: "no passphrase given")
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Runs `body` with an open session and closes the store afterwards, also on failure.
    func withSession(extraKeys: [MasterKey] = [], _ body: (Session) async throws -> Void) async throws {
        let s = try await session(extraKeys: extraKeys)
        do {
            try await body(s)
        } catch {
            await s.store.close()
            throw error
        }
        await s.store.close()
    }

    /// Opens the store and its keyring with the master key; the store must be initialised.
    func session(extraKeys: [MasterKey] = []) async throws -> Session {
        let store = try await openStore()
        do {
            let checks = try await store.masterKeyChecks()
            guard !checks.isEmpty else {
                throw CLIError(exitCode: Exit.storeUnavailable, message: "\(store.location) has no master key yet (run 'esctl init')")
            }
            let key = try masterKey(kdf: checks.last(where: { $0.kdf != nil })?.kdf)
            let keyring = try await Keyring.open(store: store, masterKeys: [key] + extraKeys,
                                                 logger: Logger(label: "esctl.keyring"))
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring),
                                  logger: Logger(label: "esctl.app"))
            return Session(store: store, keyring: keyring, app: app)
        } catch {
            await store.close()
            throw error
        }
    }
}
