import EventSourcing
import EventSourcingPostgres
import Foundation
import PostgresNIO
import Testing

/// URL parsing and redaction: no server needed, so these always run.
@Suite("PostgresStore.Configuration: URL parsing and password redaction")
struct ConfigurationParsingTests {
    static let password = "Pw-9f8e7d6c@5b4a:x/y"
    static let encodedPassword = "Pw-9f8e7d6c%405b4a%3Ax%2Fy"

    @Test("A full URL sets user, password (percent-decoded), host, port, database, sslmode, schema and pool_size")
    func fullURL() throws {
        let c = try PostgresStore.Configuration(
            url: "postgres://app%20user:\(Self.encodedPassword)@db.example.com:6543/shop?sslmode=require&schema=app_events&pool_size=7")
        #expect(c.username == "app user")
        #expect(c.password == Self.password)
        #expect(c.host == "db.example.com")
        #expect(c.port == 6543)
        #expect(c.database == "shop")
        #expect(c.tls == .require)
        #expect(c.schema == "app_events")
        #expect(c.poolSize == 7)
    }

    @Test("Defaults: port 5432, database = user, sslmode prefer, schema eventsourcing, pool of 10, no password; postgresql:// works too")
    func defaults() throws {
        for url in ["postgres://bob@localhost", "postgresql://bob@localhost/"] {
            let c = try PostgresStore.Configuration(url: url)
            #expect(c.username == "bob")
            #expect(c.password == nil)
            #expect(c.host == "localhost")
            #expect(c.port == 5432)
            #expect(c.database == "bob")
            #expect(c.tls == .prefer)
            #expect(c.schema == "eventsourcing")
            #expect(c.poolSize == 10)
            #expect(c.keepAliveInterval == nil, "idle connections are not pinged unless asked")
            #expect(!c.description.contains("***"), "no password, nothing to redact")
        }
        let c = try PostgresStore.Configuration(url: "postgres://bob@localhost/db?connect_timeout=3&keepalive_interval=45")
        #expect(c.connectTimeout == .seconds(3))
        #expect(c.keepAliveInterval == .seconds(45))
    }

    @Test("sslmode maps libpq's names: disable and allow → disable, prefer → prefer, require / verify-ca / verify-full → require",
          arguments: [("disable", PostgresStore.Configuration.TLSMode.disable), ("allow", .disable), ("prefer", .prefer),
                      ("require", .require), ("verify-ca", .require), ("verify-full", .require)])
    func sslModes(_ mode: String, _ expected: PostgresStore.Configuration.TLSMode) throws {
        #expect(try PostgresStore.Configuration(url: "postgres://u:p@h/d?sslmode=\(mode)").tls == expected)
    }

    @Test("Bad URLs are rejected with .invalidArgument, and the error never contains the password",
          arguments: [
              "schema=bad-name", "schema=1starts_with_digit", "schema=has%20space", "schema=a;drop", "schema=%22quoted%22",
              "schema=", "schema=" + String(repeating: "a", count: 64),
              "sslmode=maybe", "sslmode=", "sslmode=REQUIRE",
              "pool_size=0", "pool_size=-1", "pool_size=many",
              "connect_timeout=0", "connect_timeout=soon",
              "keepalive_interval=0", "keepalive_interval=-5", "keepalive_interval=often", "keepalive_interval=",
              "application_name=x", "password=other", "SCHEMA=app",
          ])
    func badParametersRejected(_ query: String) throws {
        let e = #expect(throws: EventSourcingError.self, "?\(query)") {
            try PostgresStore.Configuration(url: "postgres://u:\(Self.encodedPassword)@h:5432/d?\(query)")
        }
        #expect(e?.code == .invalidArgument, "?\(query): \(String(describing: e))")
        #expect(e.map { !$0.description.contains(Self.password) && !$0.description.contains(Self.encodedPassword) } == true,
                "?\(query): \(String(describing: e))")
    }

    @Test("Not a postgres URL, or no user name: .invalidArgument without the password",
          arguments: ["mysql://u:\(encodedPassword)@h/d", "http://u:\(encodedPassword)@h/d", "postgres://h/d",
                      "postgres://:\(encodedPassword)@h/d", "not a url at all \(encodedPassword)"])
    func notAPostgresURL(_ url: String) throws {
        let e = #expect(throws: EventSourcingError.self, "\(url)") { try PostgresStore.Configuration(url: url) }
        #expect(e?.code == .invalidArgument)
        #expect(e.map { !$0.description.contains(Self.password) && !$0.description.contains(Self.encodedPassword) } == true,
                "\(String(describing: e))")
    }

    @Test("The largest plain identifier (63 characters) and mixed case are accepted as schema names")
    func goodSchemaNames() throws {
        for name in ["_x", "A1_b", String(repeating: "s", count: 63)] {
            #expect(try PostgresStore.Configuration(url: "postgres://u@h/d?schema=\(name)").schema == name)
        }
    }

    @Test("description, string interpolation and String(reflecting:) show *** instead of the password")
    func descriptionRedactsPassword() throws {
        let c = try PostgresStore.Configuration(url: "postgres://u:\(Self.encodedPassword)@h:5432/d?schema=s1")
        for text in [c.description, "\(c)", String(describing: c), String(reflecting: c)] {
            #expect(!text.contains(Self.password) && !text.contains(Self.encodedPassword), "\(text)")
            #expect(text.contains("***"))
            #expect(text.contains("u") && text.contains("h:5432") && text.contains("s1"))
        }
        let programmatic = PostgresStore.Configuration(username: "u", password: Self.password, database: "d")
        #expect(!programmatic.description.contains(Self.password))
        let fromEnv = try PostgresStore.Configuration.fromEnvironment(["PGUSER": "u", "PGPASSWORD": Self.password, "PGHOST": "h"])
        #expect(fromEnv.password == Self.password)
        #expect(!fromEnv.description.contains(Self.password))
    }
}

extension PostgresTests {
    @Suite("Connecting: typed errors, bounded time, no password")
    struct ConnectionFailureTests {
        /// Checks the error of opening a store with `config`: .databaseUnavailable, within
        /// `bound`, and neither `config`'s password nor the real server's appears in it.
        @discardableResult
        private func expectUnavailable(_ config: PostgresStore.Configuration, within bound: Duration,
                                       _ what: String) async throws -> EventSourcingError? {
            let real = try PostgresTestServer.configuration().password
            let clock = ContinuousClock()
            let started = clock.now
            let outcome = await firstOutcome(within: bound + .seconds(10)) {
                let store = try await PostgresStore(configuration: config)
                await store.close()
            }
            let elapsed = clock.now - started
            guard let outcome else {
                Issue.record("\(what): opening the store hung for \(elapsed) (connect timeout \(config.connectTimeout), operation timeout \(config.operationTimeout))")
                return nil
            }
            let error = #expect(throws: EventSourcingError.self, "\(what)") { try outcome.get() }
            #expect(error?.code == .databaseUnavailable, "\(what)")
            #expect(elapsed < bound, "\(what) took \(elapsed) to fail (bound \(bound))")
            if let error {
                for secret in [config.password, real].compactMap({ $0 }) {
                    #expect(!error.description.contains(secret), "\(what): the error shows the password: \(error)")
                    #expect(!"\(error)".contains(secret) && !String(reflecting: error).contains(secret))
                }
            }
            print("\(what): failed after \(elapsed): \(error.map { "\($0)" } ?? "-")")
            return error
        }

        @Test("A wrong password fails with .databaseUnavailable, promptly, and the error does not contain it")
        func wrongPassword() async throws {
            let config = try freshConfiguration {
                $0.password = "wrong-" + UUID().uuidString
                $0.connectTimeout = .seconds(5)
                $0.operationTimeout = .seconds(30)
            }
            let error = try await expectUnavailable(config, within: .seconds(15), "wrong password")
            #expect(error?.description.contains("28P01") == true, "the error should say why: \(String(describing: error))")
            // Nothing was created.
            let exists = try await withRawClient(try PostgresTestServer.configuration()) { client in
                try await client.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = \(config.schema)")
            }
            #expect(exists == 0)
        }

        @Test("A port nothing listens on fails with .databaseUnavailable within the connect timeout, without the password")
        func refusedPort() async throws {
            let port = try unusedLocalPort()
            let config = try freshConfiguration {
                $0.host = "127.0.0.1"
                $0.port = port
                $0.connectTimeout = .seconds(2)
                $0.operationTimeout = .seconds(60)
            }
            try await expectUnavailable(config, within: .seconds(10), "refused port")
        }

        @Test("An address that never answers fails with .databaseUnavailable within the connect timeout (no hang)")
        func silentAddress() async throws {
            // TEST-NET-1 (RFC 5737): never routed, so the connection attempt either times out or fails at once.
            let config = try freshConfiguration {
                $0.host = "192.0.2.1"
                $0.port = 5432
                $0.connectTimeout = .seconds(2)
                $0.operationTimeout = .seconds(60)
            }
            try await expectUnavailable(config, within: .seconds(10), "silent address")
        }

        @Test("A server that accepts the connection but never answers fails with .databaseUnavailable, never hangs")
        func serverThatNeverAnswers() async throws {
            let listener = try SilentListener()
            defer { listener.close() }
            let config = try freshConfiguration {
                $0.host = "127.0.0.1"
                $0.port = listener.port
                $0.connectTimeout = .seconds(2)
                $0.operationTimeout = .seconds(10)
            }
            try await expectUnavailable(config, within: .seconds(20), "server that never answers")
        }
    }
}
