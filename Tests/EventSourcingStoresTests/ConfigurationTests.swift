import Configuration
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement
import Testing

typealias StoreConfiguration = EncryptedStore.Configuration

/// The key's base64 text, to prove no error message contains it.
private func secretText(of key: MasterKey) -> String { key.base64EncodedKey() }

@Suite("EncryptedStore.Configuration from environment variables")
struct EnvironmentConfigurationTests {
    @Test("EVENTSOURCING_STORE_URL and EVENTSOURCING_MASTER_KEY_FILE open a working store")
    func ours() async throws {
        let dir = try ScratchDir()
        let (keyPath, key) = try dir.keyFile()
        let env = ["EVENTSOURCING_STORE_URL": "sqlite:" + dir.path("events.sqlite"),
                   "EVENTSOURCING_MASTER_KEY_FILE": keyPath]
        let configuration = try StoreConfiguration(environment: env)
        #expect(configuration.location.sqlitePath == dir.path("events.sqlite"))
        #expect(configuration.masterKeys.map(\.id) == [key.id])
        #expect(configuration.options.allowsPlaintext == false)
        #expect(!"\(configuration)".contains(secretText(of: key)))

        let store = try await EncryptedStore.open(configuration)
        var account = try AggregateRoot<Account>(.opened(subject: "subj-env", owner: "Env"))
        try await store.application.save(&account)
        await store.close()
        // The same key from the same file opens it again.
        let again = try await EncryptedStore.open(try StoreConfiguration(environment: env))
        #expect(try await again.application.repository.get(Account.self, id: account.id).state.owner == "Env")
        await again.close()
    }

    @Test("Python eventsourcing's names: PERSISTENCE_MODULE=eventsourcing.sqlite, SQLITE_DBNAME, SQLITE_LOCK_TIMEOUT")
    func pythonSQLite() throws {
        let dir = try ScratchDir()
        let (keyPath, _) = try dir.keyFile()
        let c = try StoreConfiguration(environment: [
            "PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": dir.path("py.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "2.5", "EVENTSOURCING_MASTER_KEY_FILE": keyPath,
        ])
        #expect(c.location.sqlitePath == dir.path("py.sqlite"))
        #expect(c.options.sqlite.busyTimeout == .milliseconds(2500))
    }

    @Test("Python eventsourcing's names: PERSISTENCE_MODULE=eventsourcing.postgres and POSTGRES_*")
    func pythonPostgres() throws {
        let dir = try ScratchDir()
        let (keyPath, _) = try dir.keyFile()
        let c = try StoreConfiguration(environment: [
            "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "orders", "POSTGRES_HOST": "db.internal",
            "POSTGRES_PORT": "6543", "POSTGRES_USER": "shop", "POSTGRES_PASSWORD": "pw-secret-2", "POSTGRES_SCHEMA": "shop",
            "POSTGRES_CONNECT_TIMEOUT": "3", "POSTGRES_LOCK_TIMEOUT": "4", "POSTGRES_POOL_SIZE": "7",
            "EVENTSOURCING_MASTER_KEY_FILE": keyPath,
        ])
        guard case .postgres(let p) = c.location else {
            Issue.record("not postgres: \(c.location)")
            return
        }
        #expect(p.host == "db.internal" && p.port == 6543 && p.database == "orders" && p.username == "shop")
        #expect(p.password == "pw-secret-2" && p.schema == "shop" && p.poolSize == 7)
        #expect(p.connectTimeout == .seconds(3) && p.lockTimeout == .seconds(4))
        #expect(!"\(c)".contains("pw-secret-2"))
    }

    @Test("A PostgreSQL URL without a password takes EVENTSOURCING_POSTGRES_PASSWORD, else POSTGRES_PASSWORD, else PGPASSWORD")
    func postgresPassword() throws {
        let dir = try ScratchDir()
        let (keyPath, _) = try dir.keyFile()
        let base = ["EVENTSOURCING_STORE_URL": "postgres://shop@db/orders", "EVENTSOURCING_MASTER_KEY_FILE": keyPath]
        func password(_ extra: [String: String]) throws -> String? {
            guard case .postgres(let p) = try StoreConfiguration(environment: base.merging(extra) { $1 }).location else { return "?" }
            return p.password
        }
        #expect(try password([:]) == nil)
        #expect(try password(["PGPASSWORD": "c"]) == "c")
        #expect(try password(["PGPASSWORD": "c", "POSTGRES_PASSWORD": "b"]) == "b")
        #expect(try password(["PGPASSWORD": "c", "POSTGRES_PASSWORD": "b", "EVENTSOURCING_POSTGRES_PASSWORD": "a"]) == "a")
    }

    @Test("The application-name prefix wins over the plain name, as in eventsourcing")
    func prefix() throws {
        let dir = try ScratchDir()
        let (plainKey, _) = try dir.keyFile("plain.key")
        let (shopKey, shop) = try dir.keyFile("shop.key")
        let c = try StoreConfiguration(environment: [
            "EVENTSOURCING_STORE_URL": "sqlite:plain.sqlite", "SHOP_EVENTSOURCING_STORE_URL": "sqlite:shop.sqlite",
            "EVENTSOURCING_MASTER_KEY_FILE": plainKey, "SHOP_EVENTSOURCING_MASTER_KEY_FILE": shopKey,
        ], applicationName: "shop")
        #expect(c.location.sqlitePath == "shop.sqlite")
        #expect(c.masterKeys.map(\.id) == [shop.id])
    }

    @Test("CIPHER_KEY (eventsourcing's key in the environment) is read when no key file is named; both is refused")
    func cipherKey() throws {
        let dir = try ScratchDir()
        let (keyPath, fileKey) = try dir.keyFile()
        let key = try MasterKey.generate()
        let base = ["EVENTSOURCING_STORE_URL": "sqlite:x.sqlite"]
        let c = try StoreConfiguration(environment: base.merging(["CIPHER_KEY": key.base64EncodedKey()]) { $1 })
        #expect(c.masterKeys.map(\.id) == [key.id])

        let both = try #require(throws: EventSourcingError.self) {
            try StoreConfiguration(environment: base.merging(["CIPHER_KEY": key.base64EncodedKey(),
                                                              "EVENTSOURCING_MASTER_KEY_FILE": keyPath]) { $1 })
        }
        #expect(both.code == .invalidArgument)
        #expect(both.message.contains("EVENTSOURCING_MASTER_KEY_FILE") && both.message.contains("CIPHER_KEY"))
        #expect(!both.message.contains(key.base64EncodedKey()) && !both.message.contains(secretText(of: fileKey)))

        let bad = try #require(throws: KeyManagementError.self) {
            try StoreConfiguration(environment: base.merging(["CIPHER_KEY": "c2hvcnQtc2VjcmV0LWtleQ=="]) { $1 })
        }
        #expect(bad.code == .invalidKeyMaterial)
        #expect(bad.message.hasPrefix("CIPHER_KEY: "))
        #expect(!bad.message.contains("c2hvcnQtc2VjcmV0LWtleQ") && !bad.message.contains("short-secret-key"))
    }

    @Test("Bad settings: a typed error naming the variable",
          arguments: [
              (["EVENTSOURCING_STORE_URL": "mysql://db/x"], "EVENTSOURCING_STORE_URL: unknown store URL scheme 'mysql:'"),
              (["EVENTSOURCING_STORE_URL": "events.sqlite"], "EVENTSOURCING_STORE_URL: 'events.sqlite' is not a store URL"),
              (["PERSISTENCE_MODULE": "eventsourcing.popo"], "PERSISTENCE_MODULE: 'eventsourcing.popo' is not supported"),
              (["PERSISTENCE_MODULE": "eventsourcing.sqlite"], "SQLITE_DBNAME: not set"),
              (["PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:"], "SQLITE_DBNAME: ':memory:' is not supported"),
              (["PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": "x", "SQLITE_LOCK_TIMEOUT": "soon"],
               "SQLITE_LOCK_TIMEOUT: 'soon' is not a number of seconds"),
              (["PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "d", "POSTGRES_HOST": "h"], "POSTGRES_USER: not set"),
              (["PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "d", "POSTGRES_HOST": "h", "POSTGRES_USER": "u",
                "POSTGRES_PORT": "99999"], "POSTGRES_PORT: '99999' is not a whole number from 1 to 65535"),
              (["PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "d", "POSTGRES_HOST": "h", "POSTGRES_USER": "u",
                "POSTGRES_SCHEMA": "x;drop"], "POSTGRES_SCHEMA: schema name must be a plain SQL identifier"),
              (["EVENTSOURCING_STORE_URL": "sqlite:x", "EVENTSOURCING_STORE_ALLOWS_PLAINTEXT": "maybe"],
               "EVENTSOURCING_STORE_ALLOWS_PLAINTEXT: 'maybe' is not true or false"),
              ([:], "no store configured: set EVENTSOURCING_STORE_URL"),
              (["EVENTSOURCING_STORE_URL": "sqlite:x"], "no master key: set EVENTSOURCING_MASTER_KEY_FILE"),
          ])
    func bad(env: [String: String], phrase: String) throws {
        let error = try #require(throws: EventSourcingError.self) { try StoreConfiguration(environment: env) }
        #expect(error.code == .invalidArgument)
        #expect(error.message.hasPrefix(phrase) || error.message.contains(phrase), "\(error.message)")
    }

    @Test("Key file missing, unreadable or not a key: KeyManagementError naming the variable, never the file's bytes")
    func badKeyFile() throws {
        let dir = try ScratchDir()
        let notAKey = dir.path("not-a-key")
        try Data("pw-secret-3 is not a key".utf8).write(to: URL(fileURLWithPath: notAKey))
        let aDirectory = dir.path("keys.d")
        try FileManager.default.createDirectory(atPath: aDirectory, withIntermediateDirectories: true)
        let cases: [(String, KeyManagementError.Code)] = [
            (dir.path("missing.key"), .keySourceUnavailable),
            (aDirectory, .keySourceUnavailable),   // unreadable: read(2) fails (EISDIR), also for root
            (notAKey, .invalidKeyMaterial),
        ]
        for (path, code) in cases {
            let error = try #require(throws: KeyManagementError.self) {
                try StoreConfiguration(environment: ["EVENTSOURCING_STORE_URL": "sqlite:x",
                                                     "EVENTSOURCING_MASTER_KEY_FILE": path])
            }
            #expect(error.code == code, "\(path)")
            #expect(error.message.hasPrefix("EVENTSOURCING_MASTER_KEY_FILE: "), "\(error.message)")
            #expect(!error.message.contains("pw-secret-3"))
        }
    }
}

@Suite("EncryptedStore.Configuration from swift-configuration")
struct ConfigReaderConfigurationTests {
    @Test("In-memory provider: eventsourcing.store.url and eventsourcing.masterKey.file")
    func inMemory() async throws {
        let dir = try ScratchDir()
        let (keyPath, key) = try dir.keyFile()
        let reader = ConfigReader(provider: InMemoryProvider(values: [
            "eventsourcing.store.url": .init(.string("sqlite:" + dir.path("events.sqlite")), isSecret: false),
            "eventsourcing.masterKey.file": .init(.string(keyPath), isSecret: false),
            "eventsourcing.store.allowsPlaintext": .init(.bool(true), isSecret: false),
        ]))
        let c = try StoreConfiguration(config: reader)
        #expect(c.location.sqlitePath == dir.path("events.sqlite"))
        #expect(c.masterKeys.map(\.id) == [key.id])
        #expect(c.options.allowsPlaintext)
        let store = try await EncryptedStore.open(c)
        var account = try AggregateRoot<Account>(.opened(subject: "subj-cfg", owner: "Config"))
        try await store.application.save(&account)
        await store.close()
    }

    @Test("Environment provider: the keys are the variables init(environment:) reads")
    func environmentProvider() throws {
        let dir = try ScratchDir()
        let (keyPath, key) = try dir.keyFile()
        let reader = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: [
            "EVENTSOURCING_STORE_URL": "postgres://shop@db/orders",
            "EVENTSOURCING_MASTER_KEY_FILE": keyPath,
            "EVENTSOURCING_POSTGRES_PASSWORD": "pw-secret-4",
            "EVENTSOURCING_STORE_ALLOWS_PLAINTEXT": "false",
        ]))
        let c = try StoreConfiguration(config: reader)
        guard case .postgres(let p) = c.location else {
            Issue.record("not postgres: \(c.location)")
            return
        }
        #expect(p.password == "pw-secret-4" && p.username == "shop" && p.database == "orders")
        #expect(c.masterKeys.map(\.id) == [key.id])
        #expect(!c.options.allowsPlaintext)
    }

    @Test("JSON file provider, scoped reader")
    func jsonFile() async throws {
        let dir = try ScratchDir()
        let (keyPath, key) = try dir.keyFile()
        let json = dir.path("config.json")
        let body: [String: Any] = ["app": ["eventsourcing": ["store": ["url": "sqlite:" + dir.path("events.sqlite")],
                                                             "masterKey": ["file": keyPath]]]]
        try JSONSerialization.data(withJSONObject: body).write(to: URL(fileURLWithPath: json))
        // The provider's own settings come from configuration too (its filePath key).
        let fileSettings = ConfigReader(provider: InMemoryProvider(values: ["filePath": .init(.string(json), isSecret: false)]))
        let reader = ConfigReader(provider: try await FileProvider<JSONSnapshot>(config: fileSettings))
        let c = try StoreConfiguration(config: reader.scoped(to: "app"))
        #expect(c.location.sqlitePath == dir.path("events.sqlite"))
        #expect(c.masterKeys.map(\.id) == [key.id])
    }

    @Test("Bad configuration: typed errors naming the key")
    func bad() throws {
        let dir = try ScratchDir()
        let (keyPath, _) = try dir.keyFile()
        let notAKey = dir.path("not-a-key")
        try Data("pw-secret-5 is not a key".utf8).write(to: URL(fileURLWithPath: notAKey))
        func reader(_ values: [String: String]) -> ConfigReader {
            var v: [AbsoluteConfigKey: ConfigValue] = [:]
            for (k, s) in values { v[AbsoluteConfigKey(stringLiteral: k)] = .init(.string(s), isSecret: false) }
            return ConfigReader(provider: InMemoryProvider(values: v))
        }
        let cases: [([String: String], String)] = [
            ([:], "eventsourcing.store.url: not set"),
            (["eventsourcing.store.url": "redis://x"], "eventsourcing.store.url: unknown store URL scheme 'redis:'"),
            (["eventsourcing.store.url": "sqlite:x"], "eventsourcing.masterKey.file: not set"),
            (["eventsourcing.store.url": "sqlite:x", "eventsourcing.masterKey.file": keyPath,
              "eventsourcing.store.allowsPlaintext": "perhaps"], "eventsourcing.store.allowsPlaintext: 'perhaps' is not true or false"),
        ]
        for (values, phrase) in cases {
            let error = try #require(throws: EventSourcingError.self) { try StoreConfiguration(config: reader(values)) }
            #expect(error.code == .invalidArgument)
            #expect(error.message.hasPrefix(phrase), "\(error.message)")
        }
        for (path, code) in [(dir.path("missing.key"), KeyManagementError.Code.keySourceUnavailable), (notAKey, .invalidKeyMaterial)] {
            let error = try #require(throws: KeyManagementError.self) {
                try StoreConfiguration(config: reader(["eventsourcing.store.url": "sqlite:x", "eventsourcing.masterKey.file": path]))
            }
            #expect(error.code == code)
            #expect(error.message.hasPrefix("eventsourcing.masterKey.file: "), "\(error.message)")
            #expect(!error.message.contains("pw-secret-5"))
        }
    }
}
