// pgraw: the commit-rate ceiling of one PostgreSQL writer through postgres-nio, the driver
// the store uses. One single-row INSERT per transaction (autocommit), one after another, into a
// table shaped like the events table, for a fixed time; prints one JSON line per mode. Compare
// with pgbench's rate for the same INSERT (libpq): the difference is the driver's round trip.
//
//   swift run -c release pgraw postgres://user:pass@127.0.0.1:5432/db [seconds] [mode ...]
//
// Modes (default: client):
//   client      PostgresClient.query from a detached task (what most code does)
//   conn        one PostgresConnection, async query, from a detached task
//   conn-el     the same, with the task preferring the connection's event loop as executor
//   future      one PostgresConnection, EventLoopFuture API, each query chained on the loop
//   prepared    PostgresClient.execute of the INSERT as a prepared statement
//   prepared-conn-el  the same on one connection, from a task on its event loop
//   select1-*   the same modes with `SELECT 1` instead of the INSERT (round trip without commit)
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

final class LoopExecutor: TaskExecutor {
    let loop: any EventLoop
    init(_ loop: any EventLoop) { self.loop = loop }
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}

/// The probe's INSERT as a named prepared statement: parsed and planned once per connection.
struct PreparedInsert: PostgresPreparedStatement {
    static let sql = "INSERT INTO pgraw_probe (oid, v, topic, state) VALUES ($1, 1, 'Customer.Registered', $2)"
    typealias Row = ()
    let id: UUID
    let state: ByteBuffer
    func makeBindings() throws -> PostgresBindings {
        var b = PostgresBindings(capacity: 2)
        b.append(id)
        b.append(state)
        return b
    }
    func decodeRow(_ row: PostgresRow) throws -> Row {}
}

@main
struct PGRaw {
    static func main() async throws {
        // Off the main actor (which would add a hop to the main thread per query).
        try await Task.detached { try await measure() }.value
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func measure() async throws {
        let args = CommandLine.arguments
        guard args.count >= 2, let url = URLComponents(string: args[1]), let user = url.user else {
            FileHandle.standardError.write(Data("usage: pgraw postgres://user:pass@host:port/db [seconds] [mode ...]\n".utf8))
            exit(64)
        }
        let duration = args.count > 2 ? Double(args[2]) ?? 10 : 10
        let modes = args.count > 3 ? Array(args[3...]) : ["client"]
        let db = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        let host = url.host ?? "127.0.0.1", port = url.port ?? 5432, database = db.isEmpty ? user : db
        var config = PostgresClient.Configuration(host: host, port: port, username: user,
                                                  password: url.password, database: database, tls: .disable)
        config.options.keepAliveBehavior = nil
        config.options.minimumConnections = 1
        config.options.maximumConnections = 2
        let client = PostgresClient(configuration: config)
        let logger = Logger(label: "pgraw")
        let limit = Duration.milliseconds(Int(duration * 1000))
        let state = ByteBuffer(bytes: [UInt8](repeating: 0xAB, count: 280))
        @Sendable func insert() -> PostgresQuery {
            "INSERT INTO pgraw_probe (oid, v, topic, state) VALUES (\(UUID()), 1, 'Customer.Registered', \(state))"
        }
        @Sendable func select1() -> PostgresQuery { "SELECT 1" }

        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            try await client.query("""
                CREATE TABLE IF NOT EXISTS pgraw_probe (id bigserial PRIMARY KEY, oid uuid, v bigint, topic text, state bytea)
                """, logger: logger)
            let connection = try await PostgresConnection.connect(
                configuration: .init(host: host, port: port, username: user, password: url.password,
                                     database: database, tls: .disable),
                id: 1, logger: logger)
            for mode in modes {
                let useSelect = mode.hasPrefix("select1-")
                let base = useSelect ? String(mode.dropFirst("select1-".count)) : mode
                let make: @Sendable () -> PostgresQuery = useSelect ? select1 : insert
                let start = ContinuousClock.now
                var n = 0
                switch base {
                case "client":
                    while ContinuousClock.now - start < limit {
                        _ = try await client.query(make(), logger: logger).collect()
                        n += 1
                    }
                case "prepared":
                    // Through the pool, as the store does.
                    while ContinuousClock.now - start < limit {
                        _ = try await client.execute(PreparedInsert(id: UUID(), state: state), logger: logger)
                        n += 1
                    }
                case "prepared-conn-el":
                    n = try await Task(executorPreference: LoopExecutor(connection.eventLoop)) {
                        var n = 0
                        while ContinuousClock.now - start < limit {
                            _ = try await connection.execute(PreparedInsert(id: UUID(), state: state), logger: logger)
                            n += 1
                        }
                        return n
                    }.value
                case "conn":
                    while ContinuousClock.now - start < limit {
                        _ = try await connection.query(make(), logger: logger).collect()
                        n += 1
                    }
                case "conn-el":
                    n = try await Task(executorPreference: LoopExecutor(connection.eventLoop)) {
                        var n = 0
                        while ContinuousClock.now - start < limit {
                            _ = try await connection.query(make(), logger: logger).collect()
                            n += 1
                        }
                        return n
                    }.value
                case "future":
                    let loop = connection.eventLoop
                    let done = loop.makePromise(of: Int.self)
                    @Sendable func step(_ count: Int) {
                        if ContinuousClock.now - start >= limit { return done.succeed(count) }
                        let f: EventLoopFuture<PostgresQueryResult> = connection.query(make(), logger: logger)
                        f.whenComplete { result in
                            switch result {
                            case .success: step(count + 1)
                            case .failure(let e): done.fail(e)
                            }
                        }
                    }
                    loop.execute { step(0) }
                    n = try await done.futureResult.get()
                default:
                    FileHandle.standardError.write(Data("unknown mode \(mode)\n".utf8))
                    exit(64)
                }
                let s = seconds(ContinuousClock.now - start)
                print("{\"probe\":\"pg_raw_nio\",\"mode\":\"\(mode)\",\"per_s\":\(Int(Double(n) / s)),\"single_row_commits_s\":\(Int(Double(n) / s)),\"us_each\":\(Int(s / Double(n) * 1e6)),\"n\":\(n)}")
            }
            try await connection.close()
            try await client.query("DROP TABLE pgraw_probe", logger: logger)
            group.cancelAll()
        }
    }
}
