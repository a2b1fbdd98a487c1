import ArgumentParser
import EventSourcing
#if PostgreSQL
import EventSourcingPostgres
#endif
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement
import Logging

/// What esctl needs from a store beyond the library protocols.
protocol AdminStore: ApplicationRecorder, SnapshotRecorder, KeyStore, KeyScopeCounting, TrackingRecorder {
    func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent]
    func selectNotifications(keyScope: String, after: Int64, limit: Int) async throws -> [StoredNotification]
    func statisticsJSON() async throws -> StatsReport
    func close() async
    var location: String { get }
}

/// The counts `stats` prints (the library's `StoreStatistics` and the store's location).
struct StatsReport: Encodable {
    var events: Int
    var aggregates: Int
    var snapshots: Int
    var keyScopes: Int
    var dataKeys: Int
    var shreddedScopes: Int
    var bytesOnDisk: Int
    var store: String

    init(_ s: StoreStatistics, store: String) {
        (events, aggregates, snapshots, keyScopes, dataKeys, shreddedScopes, bytesOnDisk, self.store) =
            (s.events, s.aggregates, s.snapshots, s.keyScopes, s.dataKeys, s.shreddedScopes, s.bytesOnDisk, store)
    }

    enum CodingKeys: String, CodingKey {
        case events, aggregates, snapshots, store
        case keyScopes = "key_scopes", dataKeys = "data_keys", shreddedScopes = "shredded_scopes", bytesOnDisk = "bytes_on_disk"
    }
}

extension SQLiteStore: AdminStore {
    func statisticsJSON() async throws -> StatsReport {
        StatsReport(try await statistics(), store: location)
    }

    var location: String { "sqlite:" + path }
}

#if PostgreSQL
extension PostgresStore: AdminStore {
    func statisticsJSON() async throws -> StatsReport {
        StatsReport(try await statistics(), store: location)
    }

    var location: String { configuration.description }
}
#endif

/// An opened store with its keyring and application.
struct Session {
    let store: any AdminStore
    let keyring: Keyring
    let app: Application
}

/// Resolves the store and the master key from the global options and the environment.
struct StoreAccess {
    let options: GlobalOptions
    var environment: [String: String] = ProcessInfo.processInfo.environment

    var storeURL: String { options.store ?? environment["ESCTL_STORE"] ?? "sqlite:./eventstore.sqlite" }

    /// The store URL, parsed by the library (the same parser and errors as ``EncryptedStore``).
    /// - Throws: ``EventSourcingError`` `.invalidArgument` (exit 64) for what is not a store URL.
    func location() throws -> StoreURL { try StoreURL(parsing: storeURL) }

    /// The SQLite path of a `sqlite:` URL, nil for PostgreSQL.
    func sqlitePath() throws -> String? { try location().sqlitePath }

    /// The key file `init` writes when given no key option: `master.key` beside a SQLite
    /// store, or in the working directory for PostgreSQL.
    func defaultKeyPath() throws -> String {
        if let path = try sqlitePath() {
            return URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("master.key").path
        }
        return FileManager.default.currentDirectoryPath + "/master.key"
    }

    /// Opens the store; unless `create`, it must exist already (SQLite) or be initialised (PostgreSQL).
    /// With `readOnly`, a SQLite store is opened read-only: no byte of its database, `-wal` or
    /// `-shm` changes, also when a WAL left by a crash holds commits (PostgreSQL: no difference).
    func openStore(create: Bool = false, readOnly: Bool = false) async throws -> any AdminStore {
        switch try location() {
        #if PostgreSQL
        case .postgres(var config):
            // Keep the password out of argv: PGPASSWORD fills it in when the URL has none.
            if config.password == nil { config.password = environment["PGPASSWORD"] }
            do {
                return try await Self.adminStore(EncryptedStore.Backend.open(.postgres(config), options: Self.options))
            } catch let e as EventSourcingError where e.code == .databaseUnavailable && e.message.contains("connection lost") {
                // At open nothing was in flight: the connection was refused or never made.
                throw EventSourcingError(.databaseUnavailable,
                    "PostgreSQL at \(config.host):\(config.port): cannot connect (connection refused, or nothing reachable there); nothing was changed")
            }
        #endif
        case .sqlite(let path):
            if !create, !FileManager.default.fileExists(atPath: path) {
                throw CLIError(exitCode: Exit.storeUnavailable, message: "no store at \(path) (create one with 'esctl init')")
            }
            var options = Self.options
            options.sqlite = SQLiteStore.Configuration(readOnly: readOnly && !create)
            return try await Self.adminStore(EncryptedStore.Backend.open(.sqlite(path: path), options: options))
        }
    }

    /// How esctl opens stores with the library's factory: encrypted, plaintext refused, logs
    /// under `esctl.*`.
    static let options = EncryptedStore.Options(loggerLabel: "esctl")

    private static func adminStore(_ backend: EncryptedStore.Backend) -> any AdminStore {
        switch backend {
        case .sqlite(let store): store
        #if PostgreSQL
        case .postgres(let store): store
        #endif
        }
    }

    /// Whether any master-key source was given.
    var keyGiven: Bool {
        options.masterKeyFile != nil || options.masterKeyStdin || options.passphrase || environment["ESCTL_MASTER_KEY"] != nil
            || options.masterKeyURI != nil || options.masterKeyCommand != nil
            || environment["ESCTL_MASTER_KEY_URI"] != nil || environment["ESCTL_MASTER_KEY_COMMAND"] != nil
    }

    /// The master key from exactly one source.
    func masterKey(kdf: KDFParameters?) throws -> any KeyEncryptionKey {
        let sources = [options.masterKeyFile != nil, options.masterKeyStdin, options.passphrase,
                       options.masterKeyURI != nil, options.masterKeyCommand != nil].filter { $0 }.count
        guard sources <= 1 else {
            throw CLIError(exitCode: Exit.usage, message: """
                give one master key source: --master-key-file, --master-key-stdin, --passphrase, --master-key-uri or --master-key-command
                """)
        }
        if let path = options.masterKeyFile { return try MasterKey(contentsOfFile: path) }
        if let uri = options.masterKeyURI { return try MasterKeySources.pkcs11(uri, environment: environment) }
        if let path = options.masterKeyCommand { return try MasterKeySources.command(path, environment: environment) }
        if options.masterKeyStdin {
            var bytes = Terminal.readAll()
            defer { for i in bytes.indices { bytes[i] = 0 } }
            return try MasterKey(encoded: &bytes, source: "standard input")
        }
        if options.passphrase {
            guard let kdf else {
                throw CLIError(exitCode: Exit.usage, message: "this store's master key is not passphrase-derived")
            }
            return try MasterKey(passphrase: readPassphrase(prompt: "Passphrase: "), parameters: kdf)
        }
        let fromEnvironment = ["ESCTL_MASTER_KEY", "ESCTL_MASTER_KEY_URI", "ESCTL_MASTER_KEY_COMMAND"].filter { environment[$0] != nil }
        guard fromEnvironment.count <= 1 else {
            throw CLIError(exitCode: Exit.usage, message: "set one of \(fromEnvironment.joined(separator: ", ")), not several")
        }
        if environment["ESCTL_MASTER_KEY"] != nil {
            return try MasterKey(environmentVariable: "ESCTL_MASTER_KEY", environment: environment)
        }
        if let uri = environment["ESCTL_MASTER_KEY_URI"] { return try MasterKeySources.pkcs11(uri, environment: environment) }
        if let path = environment["ESCTL_MASTER_KEY_COMMAND"] { return try MasterKeySources.command(path, environment: environment) }
        var message = """
            no master key: pass --master-key-file PATH, --master-key-stdin, --passphrase, --master-key-uri pkcs11:… or \
            --master-key-command PATH, or set ESCTL_MASTER_KEY
            """
        if let beside = try? defaultKeyPath(), FileManager.default.fileExists(atPath: beside) {
            message += "; the key file esctl init writes for this store is \(beside): --master-key-file \(beside)"
        }
        throw CLIError(exitCode: Exit.usage, message: message)
    }

    func readPassphrase(prompt: String) throws -> String {
        guard var bytes = Terminal.readLine(prompt: prompt, silent: true), !bytes.isEmpty else {
            throw CLIError(exitCode: Exit.usage, message: "no passphrase given")
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The store's master-key checks, read without changing the store: `store` is opened
    /// read-only (SQLite), or opened by `storedChecks` itself read-only and closed again.
    /// - Throws: exit 66 when the store has no check yet (not initialised).
    func storedChecks(_ store: (any AdminStore)? = nil) async throws -> [MasterKeyCheck] {
        let checks: [MasterKeyCheck]
        if let store {
            checks = try await store.masterKeyChecks()
        } else {
            let opened = try await openStore(readOnly: true)
            do {
                checks = try await opened.masterKeyChecks()
            } catch {
                await opened.close()
                throw error
            }
            await opened.close()
        }
        guard !checks.isEmpty else {
            let location = store?.location ?? storeURL
            throw CLIError(exitCode: Exit.storeUnavailable, message: "\(location) has no master key yet (run 'esctl init')")
        }
        return checks
    }

    /// Throws `wrongMasterKey` unless every key matches one of `checks`; writes nothing.
    static func verify(_ keys: [any KeyEncryptionKey], against checks: [MasterKeyCheck]) async throws {
        let probe = InMemoryKeyStore()
        for c in checks { try await probe.insertMasterKeyCheck(c) }
        _ = try await Keyring.open(store: probe, masterKeys: keys, logger: Logger(label: "esctl.keycheck"))
    }

    /// What a command does to the store.
    enum Access {
        /// Reads only: `keys list`, `keys show`, `verify`, `export`.
        case readOnly
        /// Writes: `keys rotate`, `keys shred`, `keys rotate-master`.
        case readWrite
    }

    /// Runs `body` with an open session and closes the store afterwards, also on failure.
    ///
    /// The master key is checked, and `beforeWriting` runs, on a session over the store opened
    /// read-only: for SQLite, no byte of the database, its `-wal` or `-shm` changes, even when a
    /// WAL left by a crash holds commits the database file lacks (opening it for writing would
    /// checkpoint them into the database and delete the WAL). Only for `.readWrite`, and only
    /// once `beforeWriting` has returned, is a SQLite store opened for writing, for `body`. So
    /// a read-only command never changes the files, and neither does any refusal that can be
    /// made before writing: a wrong, retired, malformed or missing master key, an unknown or
    /// shredded scope, a missing confirmation. (PostgreSQL: one connection pool throughout.)
    /// - Parameter beforeWriting: sees the read-only session, the verified key and the store's
    ///   checks; throws to refuse. Only for `.readWrite`.
    func withSession(_ access: Access, extraKeys: [any KeyEncryptionKey] = [],
                     beforeWriting: ((Session, any KeyEncryptionKey, [MasterKeyCheck]) async throws -> Void)? = nil,
                     _ body: (Session) async throws -> Void) async throws {
        let postgres = try sqlitePath() == nil
        let dictionaries = try compressionDictionaries()
        let reading = try await openStore(readOnly: true)
        var writing: (any AdminStore)?
        do {
            let checks = try await storedChecks(reading)
            let key = try masterKey(kdf: checks.last(where: { $0.kdf != nil })?.kdf)
            let keys = [key] + extraKeys
            try await Self.verify(keys, against: checks)
            let session = try await Self.session(on: reading, keys: keys, dictionaries: dictionaries)
            switch access {
            case .readOnly:
                try await body(session)
            case .readWrite:
                if let beforeWriting { try await beforeWriting(session, key, checks) }
                if postgres {
                    try await body(session)
                } else {
                    await reading.close()
                    let store = try await openStore()
                    writing = store
                    try await body(try await Self.session(on: store, keys: keys, dictionaries: dictionaries))
                }
            }
        } catch {
            await reading.close()
            await writing?.close()
            throw error
        }
        await reading.close()
        await writing?.close()
    }

    /// The dictionaries of `--compression-dictionary`, read from their files.
    /// - Throws: ``CLIError`` (exit 64) naming the file that cannot be read or is not a dictionary.
    func compressionDictionaries() throws -> [CompressionDictionary] {
        try options.compressionDictionary.map { path in
            // A regular file (after symlinks), read no further than one byte past the largest
            // dictionary: the path could name a device, a FIFO or a huge file.
            let url = URL(fileURLWithPath: path)
            guard (try? url.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true,
                  let handle = try? FileHandle(forReadingFrom: url) else {
                throw CLIError(exitCode: Exit.usage, message: "compression dictionary \(path): cannot be read (not a readable regular file)")
            }
            defer { try? handle.close() }
            guard let data = try? handle.read(upToCount: CompressionDictionary.maxSize + 1) ?? Data() else {
                throw CLIError(exitCode: Exit.usage, message: "compression dictionary \(path): cannot be read")
            }
            guard !data.isEmpty, data.count <= CompressionDictionary.maxSize else {
                throw CLIError(exitCode: Exit.usage, message: "compression dictionary \(path): a dictionary holds 1 to "
                               + "\(CompressionDictionary.maxSize) bytes; the file is " + (data.isEmpty ? "empty" : "larger"))
            }
            do { return try CompressionDictionary([UInt8](data)) } catch {
                throw CLIError(exitCode: Exit.usage, message: "compression dictionary \(path): not a dictionary")
            }
        }
    }

    /// A session over `store`, opened with `keys` (already verified against its checks).
    private static func session(on store: any AdminStore, keys: [any KeyEncryptionKey],
                                dictionaries: [CompressionDictionary]) async throws -> Session {
        let backend: EncryptedStore.Backend
        switch store {
        case let s as SQLiteStore: backend = .sqlite(s)
        #if PostgreSQL
        case let s as PostgresStore: backend = .postgres(s)
        #endif
        default: throw EventSourcingError(.invalidArgument, "esctl opened a store of an unknown kind")
        }
        var options = options
        options.mapper.retiredCompressionDictionaries = dictionaries
        let opened = try await EncryptedStore.open(backend: backend, masterKeys: keys, options: options)
        return Session(store: store, keyring: opened.keyring, app: opened.application)
    }
}
