import EventSourcing
import EventSourcingPostgres
import Foundation

/// The PostgreSQL server the tests use, from `ES_POSTGRES_URL` (scripts/test.sh starts one and
/// sets it). With CI=true a missing server is a failure: the tests run and throw. Otherwise they
/// are left out, with one loud line on stderr.
public enum PostgresTestServer {
    static let environment = ProcessInfo.processInfo.environment
    public static let url = environment["ES_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
    public static let isCI = environment["CI"] == "true"

    public static let available: Bool = {
        if url != nil || isCI { return true }
        FileHandle.standardError.write(Data(
            "!!! ES_POSTGRES_URL is not set: the PostgreSQL tests are SKIPPED. Run scripts/test.sh to start a server. !!!\n".utf8))
        return false
    }()

    /// The server's configuration (TLS off: the throwaway server has none), schema unset.
    public static func configuration() throws -> PostgresStore.Configuration {
        var c = try PostgresStore.Configuration(url: try requireURL())
        c.tls = .disable
        return c
    }

    /// The URL of the server with `sslmode=disable` (for child processes).
    public static func urlWithoutTLS() throws -> String {
        let url = try requireURL()
        return url + (url.contains("?") ? "&" : "?") + "sslmode=disable"
    }

    private static func requireURL() throws -> String {
        guard let url else {
            throw EventSourcingError(.databaseUnavailable, "CI=true but ES_POSTGRES_URL is not set: PostgreSQL tests cannot run")
        }
        return url
    }
}
