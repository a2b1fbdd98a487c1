import EventSourcing
#if PostgreSQL
import EventSourcingPostgres
#endif
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging

/// An encrypted event store, opened and wired: the one obvious way to get an `Application`
/// whose records are encrypted.
///
/// ```swift
/// let store = try await EncryptedStore.open(url: "sqlite:./events.sqlite",
///                                           masterKey: try MasterKey(contentsOfFile: "master.key"))
/// let app = store.application
/// // … app.save(&customer), app.repository.get(…) …
/// await store.close()
/// ```
///
/// The store is the application's event recorder, its snapshot recorder and its key store, so
/// a key scope's first data key is committed in the same transaction as its first events. The
/// application's mapper has a `Keyring` over that store: every record is
/// encrypted, and unencrypted records are refused both ways unless
/// ``Options/allowsPlaintext`` is set for a migration: a read of one throws
/// `EventSourcingError.Code.plaintextRejected`, and so does a write of one by
/// any other application on the same store.
///
/// The store's settings can also come from environment variables
/// (``Configuration/init(environment:applicationName:)``) or from swift-configuration
/// (``Configuration/init(config:)``). The handle conforms to swift-service-lifecycle's
/// `Service`: in a `ServiceGroup`, it closes the store on graceful shutdown.
public final class EncryptedStore: Sendable {
    /// The opened database, with its concrete type.
    public enum Backend: Sendable {
        /// A SQLite file.
        case sqlite(SQLiteStore)
        #if PostgreSQL
        /// A PostgreSQL schema (with the package trait `PostgreSQL`, on by default).
        case postgres(PostgresStore)
        #endif

        /// The store as the protocols it implements: event recorder and process recorder
        /// (tracking records, and events with a tracking record and new data keys in one
        /// transaction), snapshot recorder, key store, scope counting.
        public var store: any KeyCommittingProcessRecorder & SnapshotRecorder & KeyStore & KeyScopeCounting {
            switch self {
            case .sqlite(let s): s
            #if PostgreSQL
            case .postgres(let s): s
            #endif
            }
        }

        /// Opens the database at `location` without a keyring: a SQLite file is created (with
        /// its schema) unless ``Options/sqlite`` says `readOnly`; a PostgreSQL schema is created or
        /// migrated. Unencrypted writes are refused once the store has a master key, unless
        /// ``Options/allowsPlaintext``.
        /// - Throws: what `SQLiteStore.init(path:configuration:logger:)` and
        ///   `PostgresStore.init(configuration:logger:)` throw.
        public static func open(_ location: StoreURL, options: Options = Options()) async throws -> Backend {
            switch location {
            case .sqlite(let path):
                var configuration = options.sqlite
                configuration.allowsPlaintextWrites = options.allowsPlaintext
                return .sqlite(try SQLiteStore(path: path, configuration: configuration,
                                               logger: Logger(label: options.loggerLabel + ".sqlite")))
            #if PostgreSQL
            case .postgres(var configuration):
                configuration.allowsPlaintextWrites = options.allowsPlaintext
                return .postgres(try await PostgresStore(configuration: configuration,
                                                         logger: Logger(label: options.loggerLabel + ".postgres")))
            #endif
            }
        }

        /// Where the database is.
        public var location: StoreURL {
            switch self {
            case .sqlite(let s): .sqlite(path: s.path)
            #if PostgreSQL
            case .postgres(let s): .postgres(s.configuration)
            #endif
            }
        }

        /// Closes the database; later calls on it fail with
        /// `EventSourcingError.Code.databaseUnavailable`.
        public func close() async {
            switch self {
            case .sqlite(let s): await s.close()
            #if PostgreSQL
            case .postgres(let s): await s.close()
            #endif
            }
        }
    }

    /// How the store is opened and the application built.
    public struct Options: Sendable {
        /// For a migration only: read unencrypted records (`Mapper.PlaintextReads.allowed`)
        /// and let the store accept unencrypted writes from other applications. Off by default.
        public var allowsPlaintext: Bool
        /// Automatic snapshots, e.g. `[.every(100, for: Customer.self)]`.
        public var snapshotIntervals: [SnapshotInterval]
        /// The mapper's settings (its `Mapper.Configuration.plaintextReads` is set from
        /// ``allowsPlaintext``).
        public var mapper: Mapper.Configuration
        /// The keyring's cache of unwrapped data keys, in keys.
        public var keyCacheCapacity: Int
        /// Settings for a SQLite store (its `allowsPlaintextWrites` is set from ``allowsPlaintext``).
        public var sqlite: SQLiteStore.Configuration
        /// Where the logs go; each part logs under this label with a suffix.
        public var loggerLabel: String

        /// Creates options: encrypted, plaintext refused, no automatic snapshots.
        public init(allowsPlaintext: Bool = false, snapshotIntervals: [SnapshotInterval] = [],
                    mapper: Mapper.Configuration = Mapper.Configuration(), keyCacheCapacity: Int = 4096,
                    sqlite: SQLiteStore.Configuration = SQLiteStore.Configuration(),
                    loggerLabel: String = "eventsourcing") {
            self.allowsPlaintext = allowsPlaintext
            self.snapshotIntervals = snapshotIntervals
            self.mapper = mapper
            self.keyCacheCapacity = keyCacheCapacity
            self.sqlite = sqlite
            self.loggerLabel = loggerLabel
        }
    }

    /// The opened database.
    public let backend: Backend
    /// The keyring over the store (rotate, shred, rotate the master key).
    public let keyring: Keyring
    /// The application: save, get, notification log, snapshots, erasure.
    public let application: Application
    /// Where the store is (a PostgreSQL password shown as `***` in its `description`).
    public var location: StoreURL { backend.location }

    private init(backend: Backend, keyring: Keyring, application: Application) {
        self.backend = backend
        self.keyring = keyring
        self.application = application
    }

    /// Opens the database at `location` (never creating more than a SQLite file and the
    /// schema), opens a keyring over it with `masterKeys`, and builds the application.
    ///
    /// - Parameters:
    ///   - location: the store.
    ///   - masterKeys: the master keys; the first wraps new data keys, the others (during a
    ///     master-key rotation) only read. A new store is initialised with a check record for
    ///     the first; otherwise every key must open the store.
    ///   - options: plaintext, snapshots, mapper and store settings.
    /// - Throws: what the store's initializer throws (`EventSourcingError` with
    ///   `.databaseUnavailable`, `.databaseCorrupt`, `.unsupportedSchema`, …), and
    ///   `KeyManagementError` `.wrongMasterKey` (before anything is written) or
    ///   `.invalidKeyMaterial` for no keys. The database is closed again when opening fails.
    public static func open(_ location: StoreURL, masterKeys: [any KeyEncryptionKey], options: Options = Options()) async throws -> EncryptedStore {
        guard !masterKeys.isEmpty else {
            throw KeyManagementError(.invalidKeyMaterial, "at least one master key is needed to open \(location)")
        }
        let backend = try await Backend.open(location, options: options)
        do {
            return try await open(backend: backend, masterKeys: masterKeys, options: options)
        } catch {
            await backend.close()
            throw error
        }
    }

    /// Wires a keyring and an application over a database opened with ``Backend/open(_:options:)``
    /// (for tools that look at the store before they decide which keys to load, such as `esctl`).
    /// The database is not closed when this throws: the caller opened it.
    /// - Throws: `KeyManagementError` `.wrongMasterKey` (before anything is
    ///   written) or `.invalidKeyMaterial` for no keys; what the store throws.
    public static func open(backend: Backend, masterKeys: [any KeyEncryptionKey],
                            options: Options = Options()) async throws -> EncryptedStore {
        let store = backend.store
        // The store is its own key store: a scope's first key commits with its first events.
        let keyring = try await Keyring.open(store: store, masterKeys: masterKeys, cacheCapacity: options.keyCacheCapacity,
                                             logger: Logger(label: options.loggerLabel + ".keyring"))
        var mapperOptions = options.mapper
        mapperOptions.plaintextReads = options.allowsPlaintext ? .allowed : .rejected
        let application = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring, configuration: mapperOptions),
                                      snapshotIntervals: options.snapshotIntervals,
                                      logger: Logger(label: options.loggerLabel + ".application"))
        return EncryptedStore(backend: backend, keyring: keyring, application: application)
    }

    /// Opens the store at a store URL (`sqlite:PATH`, `postgres://…`) with one master key.
    /// - Throws: `EventSourcingError` `.invalidArgument` for a URL that is not a
    ///   store URL, and what ``open(_:masterKeys:options:)`` throws.
    public static func open(url: String, masterKey: MasterKey, options: Options = Options()) async throws -> EncryptedStore {
        try await open(StoreURL(parsing: url), masterKeys: [masterKey], options: options)
    }

    /// Opens the store a ``Configuration`` describes (from code, the environment or swift-configuration).
    public static func open(_ configuration: Configuration) async throws -> EncryptedStore {
        try await open(configuration.location, masterKeys: configuration.masterKeys, options: configuration.options)
    }

    /// Closes the database. Later calls on the application or the keyring fail with
    /// `EventSourcingError.Code.databaseUnavailable`. Closing twice is harmless.
    public func close() async {
        await backend.close()
    }
}
