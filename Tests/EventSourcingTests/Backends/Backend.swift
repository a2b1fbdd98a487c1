import ESTestSupport
import EventSourcing
import EventSourcingPostgres
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import PostgresNIO

/// The two database backends, for tests of behaviour they share: one test parameterised over
/// ``all`` instead of a near-identical copy in each store's test target. What differs (the SQL a
/// test runs behind the store's back, an error's database code) is asked of the backend.
enum Backend: String, Sendable, CustomStringConvertible {
    case sqlite
    case postgres

    var description: String { rawValue }

    /// SQLite always; PostgreSQL when `ES_POSTGRES_URL` names a server (or CI=true, where a
    /// missing server fails the test): the rule of every PostgreSQL test.
    static let all: [Backend] = [.sqlite] + (PostgresTestServer.available ? [.postgres] : [])

    /// A fresh, empty store of this backend.
    func open() async throws -> BackendStore {
        switch self {
        case .sqlite:
            let dir = try TempDir("backend")
            let path = dir.path("events.sqlite")
            let store = try SQLiteStore(path: path)
            return BackendStore(backend: self, sqlite: store, postgres: nil, table: { $0 }, execute: { sql in
                let c = try SQLiteConnection(path: path, create: false, busyTimeoutMillis: 5_000)
                defer { c.close() }
                try c.execute(sql)
            }, close: {
                await store.close()
                withExtendedLifetime(dir) {}
            })
        case .postgres:
            var config = try PostgresTestServer.configuration()
            config.schema = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased()
            let store = try await PostgresStore(configuration: config)
            let schema = config.schema, fixed = config
            return BackendStore(backend: self, sqlite: nil, postgres: store, table: { "\(schema).\($0)" }, execute: { sql in
                try await Backend.withRawClient(fixed) { client in _ = try await client.query(PostgresQuery(unsafeSQL: sql)) }
            }, close: { try await store.destroy() })
        }
    }

    /// A client of the test's own on the store's server (not the store's pool).
    private static func withRawClient(_ config: PostgresStore.Configuration, _ body: (PostgresClient) async throws -> Void) async throws {
        var c = PostgresClient.Configuration(host: config.host, port: config.port, username: config.username,
                                             password: config.password, database: config.database, tls: .disable)
        c.options.maximumConnections = 1
        let client = PostgresClient(configuration: c)
        let runner = Task { await client.run() }
        do {
            try await body(client)
        } catch {
            runner.cancel()
            await runner.value
            throw error
        }
        runner.cancel()
        await runner.value
    }
}

/// A store under test, and SQL run behind its back.
struct BackendStore: Sendable {
    let backend: Backend
    let sqlite: SQLiteStore?
    let postgres: PostgresStore?
    /// A table's name as SQL refers to it (schema-qualified on PostgreSQL).
    let table: @Sendable (String) -> String
    /// Runs SQL through a connection of the test's own.
    let execute: @Sendable (String) async throws -> Void
    let close: @Sendable () async throws -> Void

    /// The store as a recorder that commits keys with its events.
    var recorder: any KeyCommittingRecorder & SnapshotRecorder {
        if let sqlite { return sqlite }
        return postgres!
    }

    /// The store as a key store.
    var keyStore: any KeyStore {
        if let sqlite { return sqlite }
        return postgres!
    }

    /// Makes every UPDATE of `scope`'s data-key row fail inside the database (a failure the
    /// store cannot see coming).
    func refuseDataKeyUpdates(scope: String) async throws {
        switch backend {
        case .sqlite:
            try await execute("""
                CREATE TRIGGER refuse_update BEFORE UPDATE ON data_keys WHEN NEW.scope = '\(scope)'
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END
                """)
        case .postgres:
            try await execute("""
                CREATE FUNCTION \(table("refuse_update"))() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.scope = '\(scope)' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$
                """)
            try await execute("""
                CREATE TRIGGER refuse_update BEFORE UPDATE ON \(table("data_keys"))
                FOR EACH ROW EXECUTE FUNCTION \(table("refuse_update"))()
                """)
        }
    }

    /// Undoes ``refuseDataKeyUpdates(scope:)``.
    func allowDataKeyUpdates() async throws {
        switch backend {
        case .sqlite: try await execute("DROP TRIGGER refuse_update")
        case .postgres: try await execute("DROP TRIGGER refuse_update ON \(table("data_keys"))")
        }
    }
}

extension Backend {
    /// Runs `body` with a fresh store and closes it afterwards, also when `body` throws.
    func withFreshStore(_ body: (BackendStore) async throws -> Void) async throws {
        let store = try await open()
        do {
            try await body(store)
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
    }
}
