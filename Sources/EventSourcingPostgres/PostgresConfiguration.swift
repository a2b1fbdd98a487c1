import EventSourcing
import Foundation

/// The name this type had before the configuration types were named alike (`X.Configuration`).
@available(*, deprecated, renamed: "PostgresStore.Configuration")
public typealias PostgresConfiguration = PostgresStore.Configuration

extension PostgresStore {
/// Where and how to connect to PostgreSQL. The password never appears in `description`,
/// errors or logs.
public struct Configuration: Sendable, CustomStringConvertible {
    /// TLS use, as libpq's `sslmode`.
    public enum TLSMode: String, Sendable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it.
        case prefer
        /// TLS or fail (the certificate chain and host name are verified, against
        /// ``PostgresStore/Configuration/tlsSettings``: the system trust roots by default).
        case require
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    /// The schema holding the store's tables (created if missing).
    public var schema: String
    public var tls: TLSMode
    /// Trust roots, client certificate and verification for TLS (``TLSSettings/systemDefault``
    /// unless set): a private CA and client certificates pass through to the connections.
    public var tlsSettings: TLSSettings = .systemDefault
    /// Connections in the pool.
    public var poolSize: Int
    /// How long to wait for a new connection.
    public var connectTimeout: Duration
    /// How long a save waits for the table lock held by other writers before failing.
    public var lockTimeout: Duration
    /// How long any single operation may take before it fails with `.databaseUnavailable`
    /// (never hangs on a dead server).
    public var operationTimeout: Duration
    /// How often an idle pooled connection is checked with `SELECT 1`; nil (the default) for
    /// never. A dead connection is then noticed when next used: that operation fails with
    /// `.databaseUnavailable` and the pool opens a new one. Checking costs a timer set and
    /// cancelled on every query (about a sixth of a save's time on a 2-core machine).
    public var keepAliveInterval: Duration?
    /// For migrations only: accept unencrypted events and snapshots although the store has a
    /// master key. Off by default: such a store refuses them with
    /// `EventSourcingError.Code.plaintextRejected`, so an application opened
    /// without its keyring cannot write personal data in the clear.
    public var allowsPlaintextWrites: Bool = false
    /// How often a subscription to the notification log reads again when no notification woke
    /// it: the bound on how late it sees a commit whose NOTIFY was lost (the LISTEN connection
    /// died, or is reconnecting). 1 second by default; values under 10 ms count as 10 ms.
    public var subscriptionPollInterval: Duration = .seconds(1)
    /// The most saves that wait for the next group commit at once; past it a save fails with
    /// `EventSourcingError.Code.storeOverloaded` and writes nothing. 10,000 by default.
    public var maxWaitingWrites: Int = 10_000
    /// The most reads of whole aggregates that wait for the next grouped read at once; past it a
    /// read fails with `EventSourcingError.Code.storeOverloaded`. 10,000 by default.
    public var maxWaitingReads: Int = 10_000

    /// Creates a configuration.
    public init(host: String = "127.0.0.1", port: Int = 5432, username: String, password: String?, database: String,
                schema: String = "eventsourcing", tls: TLSMode = .prefer, poolSize: Int = 10,
                connectTimeout: Duration = .seconds(10), lockTimeout: Duration = .seconds(10),
                operationTimeout: Duration = .seconds(30), keepAliveInterval: Duration? = nil) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.schema = schema
        self.tls = tls
        self.poolSize = max(1, poolSize)
        self.connectTimeout = connectTimeout
        self.lockTimeout = lockTimeout
        self.operationTimeout = operationTimeout
        self.keepAliveInterval = keepAliveInterval
    }

    /// Parses `postgres://user:password@host:port/database?sslmode=disable&schema=name&pool_size=10`
    /// (also `connect_timeout` and `keepalive_interval`, in seconds, and libpq's `sslrootcert`,
    /// `sslcert` and `sslkey` PEM file paths; `sslmode=verify-ca` checks the chain but not the
    /// host name).
    /// - Throws: `EventSourcingError` `.invalidArgument` (the message never contains the password).
    public init(url: String) throws {
        guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql" else {
            throw EventSourcingError(.invalidArgument, "not a postgres:// URL")
        }
        guard let user = c.user, !user.isEmpty else {
            throw EventSourcingError(.invalidArgument, "the PostgreSQL URL has no user name")
        }
        let db = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
        self.init(host: c.host ?? "127.0.0.1", port: c.port ?? 5432, username: user.removingPercentEncoding ?? user,
                  password: c.password.map { $0.removingPercentEncoding ?? $0 }, database: db.isEmpty ? user : db)
        var files = TLSFiles()
        for item in c.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                switch item.value ?? "" {
                case "disable", "allow": tls = .disable
                case "prefer": tls = .prefer
                case "require", "verify-full": tls = .require
                case "verify-ca":
                    tls = .require
                    files.verifiesHostname = false
                default: throw EventSourcingError(.invalidArgument, "unknown sslmode '\(item.value ?? "")'")
                }
            case "sslrootcert", "sslcert", "sslkey":
                guard let path = item.value, !path.isEmpty else {
                    throw EventSourcingError(.invalidArgument, "\(item.name) must be a file path")
                }
                switch item.name {
                case "sslrootcert": files.caFile = path
                case "sslcert": files.certificateFile = path
                default: files.privateKeyFile = path
                }
            case "schema":
                schema = item.value ?? schema
            case "pool_size":
                guard let n = item.value.flatMap(Int.init), n > 0 else {
                    throw EventSourcingError(.invalidArgument, "pool_size must be a positive integer")
                }
                poolSize = n
            case "connect_timeout":
                guard let n = item.value.flatMap(Int.init), n > 0 else {
                    throw EventSourcingError(.invalidArgument, "connect_timeout must be a positive number of seconds")
                }
                connectTimeout = .seconds(n)
            case "keepalive_interval":
                guard let n = item.value.flatMap(Int.init), n > 0 else {
                    throw EventSourcingError(.invalidArgument, "keepalive_interval must be a positive number of seconds")
                }
                keepAliveInterval = .seconds(n)
            default:
                throw EventSourcingError(.invalidArgument, "unknown PostgreSQL URL parameter '\(item.name)'")
            }
        }
        if files != TLSFiles() { tlsSettings = .files(files) }
        try PostgresStore.Configuration.validateSchema(schema)
    }

    /// The schema name goes into SQL, so it must be a plain identifier (letters, digits,
    /// underscores; at most 63), whether it comes from a URL or is set in code.
    /// - Throws: `EventSourcingError` `.invalidArgument`.
    static func validateSchema(_ name: String) throws {
        guard name.range(of: "^[A-Za-z_][A-Za-z0-9_]{0,62}$", options: .regularExpression) != nil else {
            throw EventSourcingError(.invalidArgument, "schema name must be a plain SQL identifier")
        }
    }

    /// From `ES_POSTGRES_URL`, else libpq's `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`.
    /// - Throws: `EventSourcingError` `.invalidArgument` when neither is set.
    public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> PostgresStore.Configuration {
        if let url = env["ES_POSTGRES_URL"], !url.isEmpty { return try PostgresStore.Configuration(url: url) }
        guard let user = env["PGUSER"] else {
            throw EventSourcingError(.invalidArgument, "set ES_POSTGRES_URL or PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE")
        }
        return PostgresStore.Configuration(host: env["PGHOST"] ?? "127.0.0.1", port: env["PGPORT"].flatMap(Int.init) ?? 5432,
                                     username: user, password: env["PGPASSWORD"], database: env["PGDATABASE"] ?? user)
    }

    /// The URL with the password replaced by `***`.
    public var description: String {
        "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database)?sslmode=\(tls.rawValue)&schema=\(schema)"
    }
}
}
