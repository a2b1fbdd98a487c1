import Configuration
import EventSourcing
#if PostgreSQL
import EventSourcingPostgres
#endif
import EventSourcingSQLite
import Foundation
import KeyManagement

extension EncryptedStore {
    /// Everything needed to open an encrypted store: where it is, its master keys and the options.
    ///
    /// Built in code, from environment variables (``init(environment:applicationName:)``, with the
    /// names Python `eventsourcing` users know), or from swift-configuration (``init(config:)``).
    /// A configuration holds the master keys themselves (zeroized when the last copy goes), never
    /// their text; its `description` names only the location and the keys' ids.
    public struct Configuration: Sendable, CustomStringConvertible {
        /// Where the store is.
        public var location: StoreURL
        /// The master keys; the first wraps new data keys.
        public var masterKeys: [MasterKey]
        /// How the store is opened.
        public var options: Options

        /// Creates a configuration.
        public init(location: StoreURL, masterKeys: [MasterKey], options: Options = Options()) {
            self.location = location
            self.masterKeys = masterKeys
            self.options = options
        }

        public var description: String {
            "EncryptedStore.Configuration(\(location), master keys: \(masterKeys.map(\.id).joined(separator: ", ")))"
        }
    }
}

// MARK: - Environment variables

extension EncryptedStore.Configuration {
    /// The environment variables this library reads, by name.
    public enum Environment {
        /// The store URL (`sqlite:PATH`, `postgres://…`); wins over ``persistenceModule``.
        public static let storeURL = "EVENTSOURCING_STORE_URL"
        /// The path of the master key file (32 raw bytes or their base64 text).
        public static let masterKeyFile = "EVENTSOURCING_MASTER_KEY_FILE"
        /// The PostgreSQL password, when the URL has none (else `POSTGRES_PASSWORD`, then `PGPASSWORD`).
        public static let postgresPassword = "EVENTSOURCING_POSTGRES_PASSWORD"
        /// `true` to allow plaintext for a migration (``EncryptedStore/Options/allowsPlaintext``).
        public static let allowsPlaintext = "EVENTSOURCING_STORE_ALLOWS_PLAINTEXT"

        /// Python `eventsourcing`: `eventsourcing.sqlite` or `eventsourcing.postgres`.
        public static let persistenceModule = "PERSISTENCE_MODULE"
        /// Python `eventsourcing`: the SQLite file (`:memory:` is refused: the store is a file).
        public static let sqliteDatabase = "SQLITE_DBNAME"
        /// Python `eventsourcing`: seconds to wait for another process's lock (SQLite busy timeout).
        public static let sqliteLockTimeout = "SQLITE_LOCK_TIMEOUT"
        /// Python `eventsourcing`: the PostgreSQL database, host, port, user, password, schema.
        public static let postgresDatabase = "POSTGRES_DBNAME"
        public static let postgresHost = "POSTGRES_HOST"
        public static let postgresPort = "POSTGRES_PORT"
        public static let postgresUser = "POSTGRES_USER"
        public static let postgresPythonPassword = "POSTGRES_PASSWORD"
        public static let postgresSchema = "POSTGRES_SCHEMA"
        /// Python `eventsourcing`: seconds, and connections.
        public static let postgresConnectTimeout = "POSTGRES_CONNECT_TIMEOUT"
        public static let postgresLockTimeout = "POSTGRES_LOCK_TIMEOUT"
        public static let postgresPoolSize = "POSTGRES_POOL_SIZE"
        /// Python `eventsourcing`: the base64 cipher key itself, in the environment. Read only when
        /// no key file is named; a key in the environment is visible to everything that can read
        /// the process's environment (`/proc/PID/environ`, crash reports, child processes).
        public static let cipherKey = "CIPHER_KEY"
    }

    /// Reads the store's settings from environment variables, and loads the master key.
    ///
    /// The store is `EVENTSOURCING_STORE_URL`, or else what Python `eventsourcing` reads:
    /// `PERSISTENCE_MODULE` = `eventsourcing.sqlite` with `SQLITE_DBNAME` (and
    /// `SQLITE_LOCK_TIMEOUT`), or `eventsourcing.postgres` with `POSTGRES_DBNAME`,
    /// `POSTGRES_HOST`, `POSTGRES_PORT`, `POSTGRES_USER`, `POSTGRES_PASSWORD`, `POSTGRES_SCHEMA`,
    /// `POSTGRES_CONNECT_TIMEOUT`, `POSTGRES_LOCK_TIMEOUT` and `POSTGRES_POOL_SIZE`. The master
    /// key is read from the file `EVENTSOURCING_MASTER_KEY_FILE` names, or else from
    /// `CIPHER_KEY` (base64, as `eventsourcing` keeps it; see the risk in
    /// ``Environment/cipherKey``). Giving both is refused.
    ///
    /// - Parameters:
    ///   - environment: the variables; the process's by default.
    ///   - applicationName: as in `eventsourcing`, a variable prefixed with the application's
    ///     name in upper case and an underscore (`SHOP_EVENTSOURCING_STORE_URL`,
    ///     `SHOP_SQLITE_DBNAME`) wins over the unprefixed one.
    /// - Throws: `EventSourcingError` `.invalidArgument` naming the variable for a
    ///   missing or malformed setting (an unknown scheme or persistence module, a port that is
    ///   not a number, no store, no master key, two master-key sources);
    ///   `KeyManagementError` naming the variable for a key file that is missing
    ///   or unreadable (`.keySourceUnavailable`) or not a key (`.invalidKeyMaterial`). No message
    ///   contains key bytes or a password.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment,
                applicationName: String? = nil) throws {
        let prefix = applicationName.map { $0.uppercased() + "_" }
        /// The variable's name as found (prefixed or not) and its value; empty counts as unset.
        func lookup(_ name: String) -> (name: String, value: String)? {
            if let prefix, let v = environment[prefix + name], !v.isEmpty { return (prefix + name, v) }
            if let v = environment[name], !v.isEmpty { return (name, v) }
            return nil
        }
        func refuse(_ name: String, _ message: String) -> EventSourcingError {
            EventSourcingError(.invalidArgument, "\(name): \(message)")
        }
        func seconds(_ name: String) throws -> Duration? {
            guard let (n, v) = lookup(name) else { return nil }
            guard let s = Double(v), s.isFinite, s >= 0, s <= 86_400 else {
                throw refuse(n, "'\(v)' is not a number of seconds between 0 and 86400")
            }
            return .milliseconds(Int64((s * 1000).rounded()))
        }
        func positive(_ name: String, max: Int) throws -> Int? {
            guard let (n, v) = lookup(name) else { return nil }
            guard let i = Int(v), i > 0, i <= max else { throw refuse(n, "'\(v)' is not a whole number from 1 to \(max)") }
            return i
        }

        var options = EncryptedStore.Options()
        if let (n, v) = lookup(Environment.allowsPlaintext) {
            guard let b = Self.bool(v) else { throw refuse(n, "'\(v)' is not true or false") }
            options.allowsPlaintext = b
        }

        let location: StoreURL
        if let (n, url) = lookup(Environment.storeURL) {
            location = try StoreURL(parsing: url, setting: n)
        } else if let (n, module) = lookup(Environment.persistenceModule) {
            switch module {
            case "eventsourcing.sqlite":
                guard let (dn, db) = lookup(Environment.sqliteDatabase) else {
                    throw refuse(Environment.sqliteDatabase, "not set (\(n)=\(module) needs the SQLite file's path)")
                }
                guard db != ":memory:", !db.hasPrefix("file:") else {
                    throw refuse(dn, "'\(db)' is not supported: the store is a SQLite file, give its path")
                }
                location = .sqlite(path: db)
                if let busy = try seconds(Environment.sqliteLockTimeout) { options.sqlite.busyTimeout = busy }
            case "eventsourcing.postgres":
                #if PostgreSQL
                guard let (_, db) = lookup(Environment.postgresDatabase) else {
                    throw refuse(Environment.postgresDatabase, "not set (\(n)=\(module) needs the database name)")
                }
                guard let (_, host) = lookup(Environment.postgresHost) else {
                    throw refuse(Environment.postgresHost, "not set (\(n)=\(module) needs the server's host)")
                }
                guard let (_, user) = lookup(Environment.postgresUser) else {
                    throw refuse(Environment.postgresUser, "not set (\(n)=\(module) needs the user name)")
                }
                var configuration = PostgresStore.Configuration(host: host, port: try positive(Environment.postgresPort, max: 65535) ?? 5432,
                                                          username: user, password: nil, database: db)
                if let (sn, schema) = lookup(Environment.postgresSchema) {
                    guard schema.range(of: "^[A-Za-z_][A-Za-z0-9_]{0,62}$", options: .regularExpression) != nil else {
                        throw refuse(sn, "schema name must be a plain SQL identifier")
                    }
                    configuration.schema = schema
                }
                if let t = try seconds(Environment.postgresConnectTimeout) { configuration.connectTimeout = t }
                if let t = try seconds(Environment.postgresLockTimeout) { configuration.lockTimeout = t }
                if let p = try positive(Environment.postgresPoolSize, max: 1000) { configuration.poolSize = p }
                location = .postgres(configuration)
                #else
                throw refuse(n, StoreURL.noPostgreSQL)
                #endif
            default:
                throw refuse(n, "'\(module)' is not supported (eventsourcing.sqlite or eventsourcing.postgres; "
                             + "or set \(Environment.storeURL) to sqlite:PATH or postgres://…)")
            }
        } else {
            throw EventSourcingError(.invalidArgument,
                "no store configured: set \(Environment.storeURL) (sqlite:PATH or postgres://USER@HOST:PORT/DB) "
                + "or \(Environment.persistenceModule)")
        }

        #if PostgreSQL
        if case .postgres(var configuration) = location, configuration.password == nil {
            configuration.password = lookup(Environment.postgresPassword)?.value ?? lookup(Environment.postgresPythonPassword)?.value
                ?? environment["PGPASSWORD"]
            self.init(location: .postgres(configuration), masterKeys: [], options: options)
        } else {
            self.init(location: location, masterKeys: [], options: options)
        }
        #else
        self.init(location: location, masterKeys: [], options: options)
        #endif

        let file = lookup(Environment.masterKeyFile)
        let inline = lookup(Environment.cipherKey)
        switch (file, inline) {
        case let ((fileVar, _)?, (keyVar, _)?):
            throw EventSourcingError(.invalidArgument,
                "\(fileVar) and \(keyVar) are both set: give one master key source (prefer the key file)")
        case let ((n, path)?, nil):
            masterKeys = [try Self.loadKeyFile(path, setting: n)]
        case let (nil, (n, _)?):
            do { masterKeys = [try MasterKey(environmentVariable: n, environment: environment)] } catch {
                throw KeyManagementError(error.code, "\(n): \(error.message)")
            }
        case (nil, nil):
            throw EventSourcingError(.invalidArgument,
                "no master key: set \(Environment.masterKeyFile) to the path of the master key file")
        }
    }

    static func bool(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "true", "yes", "y", "on", "1": true
        case "false", "no", "n", "off", "0": false
        default: nil
        }
    }

    /// Loads a key file; an error names the setting the path came from (never the key's bytes).
    static func loadKeyFile(_ path: String, setting: String) throws(KeyManagementError) -> MasterKey {
        do { return try MasterKey(contentsOfFile: path) } catch {
            throw KeyManagementError(error.code, "\(setting): \(error.message)")
        }
    }
}

// MARK: - swift-configuration

extension EncryptedStore.Configuration {
    /// The swift-configuration keys this library reads (under the reader's scope).
    ///
    /// With `EnvironmentVariablesProvider` they are the variables `EVENTSOURCING_STORE_URL`,
    /// `EVENTSOURCING_MASTER_KEY_FILE`, `EVENTSOURCING_POSTGRES_PASSWORD` and
    /// `EVENTSOURCING_STORE_ALLOWS_PLAINTEXT`: the same names ``init(environment:applicationName:)`` reads.
    public enum Keys {
        /// The store URL (string, required).
        public static let storeURL = "eventsourcing.store.url"
        /// The master key file's path (string, required).
        public static let masterKeyFile = "eventsourcing.masterKey.file"
        /// The PostgreSQL password when the URL has none (string, secret, optional).
        public static let postgresPassword = "eventsourcing.postgres.password"
        /// Allow plaintext for a migration (bool, optional, false by default).
        public static let allowsPlaintext = "eventsourcing.store.allowsPlaintext"
    }

    /// Reads the store's settings from swift-configuration, and loads the master key.
    ///
    /// The keys are listed in ``Keys``: `eventsourcing.store.url`, `eventsourcing.masterKey.file`,
    /// `eventsourcing.postgres.password` (secret) and `eventsourcing.store.allowsPlaintext`.
    /// The master key itself is never read from configuration: only the path of its file.
    /// - Throws: `EventSourcingError` `.invalidArgument` naming the key for a
    ///   missing or malformed value; `KeyManagementError` naming the key for a
    ///   key file that is missing, unreadable or not a key. No message contains key bytes or
    ///   a password.
    public init(config: ConfigReader) throws {
        func refuse(_ key: String, _ message: String) -> EventSourcingError {
            EventSourcingError(.invalidArgument, "\(key): \(message)")
        }
        guard let url = config.string(forKey: ConfigKey(stringLiteral: Keys.storeURL)), !url.isEmpty else {
            throw refuse(Keys.storeURL, "not set (sqlite:PATH or postgres://USER@HOST:PORT/DB)")
        }
        #if PostgreSQL
        var location = try StoreURL(parsing: url, setting: Keys.storeURL)
        #else
        let location = try StoreURL(parsing: url, setting: Keys.storeURL)
        #endif
        var options = EncryptedStore.Options()
        if let text = config.string(forKey: ConfigKey(stringLiteral: Keys.allowsPlaintext)) {
            guard let b = Self.bool(text) else { throw refuse(Keys.allowsPlaintext, "'\(text)' is not true or false") }
            options.allowsPlaintext = b
        } else if let b = config.bool(forKey: ConfigKey(stringLiteral: Keys.allowsPlaintext)) {
            options.allowsPlaintext = b
        }
        #if PostgreSQL
        if case .postgres(var configuration) = location, configuration.password == nil,
           let password = config.string(forKey: ConfigKey(stringLiteral: Keys.postgresPassword), isSecret: true) {
            configuration.password = password
            location = .postgres(configuration)
        }
        #endif
        guard let path = config.string(forKey: ConfigKey(stringLiteral: Keys.masterKeyFile)), !path.isEmpty else {
            throw refuse(Keys.masterKeyFile, "not set (the path of the master key file)")
        }
        self.init(location: location, masterKeys: [try Self.loadKeyFile(path, setting: Keys.masterKeyFile)], options: options)
    }
}
