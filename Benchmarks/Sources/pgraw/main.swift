// pgraw: the commit-rate ceiling of one PostgreSQL writer through postgres-nio, the driver
// the store uses. One single-row INSERT per transaction (autocommit), one after another, into a
// table shaped like the events table, for a fixed time; prints one JSON line. Compare with
// pgbench's rate for the same INSERT (libpq): the difference is the driver's round trip.
//
//   swift run -c release pgraw postgres://user:pass@127.0.0.1:5432/db [seconds]
import Foundation
import Logging
import PostgresNIO

@main
struct PGRaw {
    static func main() async throws {
        // Off the main actor (which would add a hop to the main thread per query).
        try await Task.detached { try await measure() }.value
    }

    static func measure() async throws {
        let args = CommandLine.arguments
        guard args.count >= 2, let url = URLComponents(string: args[1]), let user = url.user else {
            FileHandle.standardError.write(Data("usage: pgraw postgres://user:pass@host:port/db [seconds]\n".utf8))
            exit(64)
        }
        let seconds = args.count > 2 ? Double(args[2]) ?? 10 : 10
        let db = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        var config = PostgresClient.Configuration(host: url.host ?? "127.0.0.1", port: url.port ?? 5432, username: user,
                                                  password: url.password, database: db.isEmpty ? user : db, tls: .disable)
        config.options.keepAliveBehavior = nil
        config.options.minimumConnections = 1
        config.options.maximumConnections = 2
        let client = PostgresClient(configuration: config)
        let logger = Logger(label: "pgraw")
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            try await client.query("""
                CREATE TABLE IF NOT EXISTS pgraw_probe (id bigserial PRIMARY KEY, oid uuid, v bigint, topic text, state bytea)
                """, logger: logger)
            let state = ByteBuffer(bytes: [UInt8](repeating: 0xAB, count: 280))
            let start = ContinuousClock.now
            let limit = Duration.milliseconds(Int(seconds * 1000))
            var n = 0
            while ContinuousClock.now - start < limit {
                let id = UUID()
                _ = try await client.query("""
                    INSERT INTO pgraw_probe (oid, v, topic, state) VALUES (\(id), 1, 'Customer.Registered', \(state))
                    """, logger: logger).collect()
                n += 1
            }
            let elapsed = ContinuousClock.now - start
            let s = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print("{\"probe\":\"pg_raw_nio\",\"single_row_commits_s\":\(Double(n) / s),\"rows\":\(n)}")
            try await client.query("DROP TABLE pgraw_probe", logger: logger)
            group.cancelAll()
        }
    }
}
