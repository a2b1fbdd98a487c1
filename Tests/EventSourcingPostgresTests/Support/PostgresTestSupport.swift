// The shared aggregates (Ledger, Customer) and helpers, visible to every file of the target.
@_exported import ESTestSupport
import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import PostgresNIO
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: The server

/// A fresh schema name: `t_` and 16 random hex digits.
func randomSchemaName() -> String {
    "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased()
}

/// The server's configuration with a fresh schema, adjusted by `modify`.
func freshConfiguration(_ modify: (inout PostgresStore.Configuration) -> Void = { _ in }) throws -> PostgresStore.Configuration {
    var c = try PostgresTestServer.configuration()
    c.schema = randomSchemaName()
    modify(&c)
    return c
}

/// Opens a store on `configuration`, runs `body`, and destroys the store's schema afterwards,
/// also when `body` throws.
func withStore<T>(_ configuration: PostgresStore.Configuration, _ body: (PostgresStore) async throws -> T) async throws -> T {
    try await destroying(try await PostgresStore(configuration: configuration), body)
}

/// Opens a store over `client` (which the caller runs) on `configuration`, runs `body`, and
/// destroys the store's schema afterwards, also when `body` throws.
func withStore<T>(_ client: PostgresClient, _ configuration: PostgresStore.Configuration,
                  _ body: (PostgresStore) async throws -> T) async throws -> T {
    try await destroying(try await PostgresStore(client: client, configuration: configuration), body)
}

/// Runs `body` on `store`, then destroys the store's schema, also when `body` throws.
private func destroying<T>(_ store: PostgresStore, _ body: (PostgresStore) async throws -> T) async throws -> T {
    let result: T
    do {
        result = try await body(store)
    } catch {
        await destroy(store)
        throw error
    }
    await destroy(store)
    return result
}

/// Drops the store's schema (through a separate client if the store can no longer do it).
func destroy(_ store: PostgresStore) async {
    do {
        try await store.destroy()
    } catch {
        await store.close()
        try? await dropSchema(store.configuration)
    }
}

/// Drops `configuration.schema` through a client of its own.
func dropSchema(_ configuration: PostgresStore.Configuration) async throws {
    _ = try await withRawClient(configuration) { client in
        // Quoted, as the store writes it (the name is a validated plain identifier).
        try await client.query("DROP SCHEMA IF EXISTS \"\(unescaped: configuration.schema)\" CASCADE")
    }
}

/// Warnings and errors only: the keyring logs every shred and rotation at notice/info level.
let quietLogger: Logger = {
    var l = Logger(label: "eventsourcing.tests")
    l.logLevel = .warning
    return l
}()

/// An encrypted application over a store whose key store is the store itself.
struct EncryptedApp: Sendable {
    let store: PostgresStore
    let keyring: Keyring
    let app: Application

    static func open(_ store: PostgresStore, masterKey: MasterKey, snapshotIntervals: [SnapshotInterval] = [],
                     options: Mapper.Configuration = .init()) async throws -> EncryptedApp {
        let keyring = try await Keyring.open(store: store, masterKeys: [masterKey], logger: quietLogger)
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring, configuration: options),
                              snapshotIntervals: snapshotIntervals, logger: quietLogger)
        return EncryptedApp(store: store, keyring: keyring, app: app)
    }
}

// MARK: Direct SQL

/// Runs `body` with a PostgresNIO client of its own on `configuration`'s server (not through
/// the store), to look at the tables as they are.
func withRawClient<T: Sendable>(_ configuration: PostgresStore.Configuration,
                                _ body: (PostgresClient) async throws -> T) async throws -> T {
    var c = PostgresClient.Configuration(host: configuration.host, port: configuration.port,
                                         username: configuration.username, password: configuration.password,
                                         database: configuration.database, tls: .disable)
    c.options.maximumConnections = 2
    c.options.connectTimeout = .seconds(10)
    let client = PostgresClient(configuration: c)
    let runner = Task { await client.run() }
    do {
        let result = try await body(client)
        runner.cancel()
        await runner.value
        return result
    } catch {
        runner.cancel()
        await runner.value
        throw error
    }
}

extension PostgresClient {
    /// The single Int64 value of `query`.
    func scalar(_ query: PostgresQuery) async throws -> Int64 {
        var out: Int64?
        for try await v in try await self.query(query).decode(Int64.self) { out = v }
        guard let out else { throw EventSourcingError(.recorderFailure, "no row") }
        return out
    }

    /// The text rows of `query` (one text column).
    func strings(_ query: PostgresQuery) async throws -> [String] {
        var out: [String] = []
        for try await v in try await self.query(query).decode(String.self) { out.append(v) }
        return out
    }
}

// MARK: Checks

/// Whether `ids` are consecutive integers.
func isContiguous(_ ids: [Int64]) -> Bool {
    zip(ids, ids.dropFirst()).allSatisfy { $1 == $0 + 1 }
}

/// Races `body` against a deadline: throws if it has not finished after `limit`.
func withDeadline<T: Sendable>(_ limit: Duration, _ what: String,
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw ChildProcessError(description: "\(what) did not finish within \(limit)")
        }
        return value
    }
}

// MARK: Outside the test process



/// A TCP port on 127.0.0.1 that nothing listens on right now.
func unusedLocalPort() throws -> Int {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw ChildProcessError(description: "socket failed: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw ChildProcessError(description: "bind failed: errno \(errno)") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard named == 0 else { throw ChildProcessError(description: "getsockname failed: errno \(errno)") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A thread-safe list.
final class Collected<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }
}

/// A shared counter (an `Atomic` cannot be captured by an escaping closure).
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    init(_ initial: Int = 0) { value.store(initial, ordering: .sequentiallyConsistent) }
    @discardableResult func add(_ n: Int = 1) -> Int { value.add(n, ordering: .sequentiallyConsistent).newValue }
    var current: Int { value.load(ordering: .sequentiallyConsistent) }
}

/// A shared flag.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// The outcome of `body`, or nil if it has not finished within `limit` (then it is cancelled
/// and left behind: a hung operation fails the test instead of hanging the run).
func firstOutcome<T: Sendable>(within limit: Duration,
                               _ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error>? {
    let slot = OnceSlot<Result<T, any Error>?>()
    return await withCheckedContinuation { (c: CheckedContinuation<Result<T, any Error>?, Never>) in
        slot.set(c)
        let work = Task {
            let r: Result<T, any Error>
            do { r = .success(try await body()) } catch { r = .failure(error) }
            slot.resume(r)
        }
        Task {
            try? await Task.sleep(for: limit)
            if slot.resume(nil) { work.cancel() }
        }
    }
}

/// A continuation resumed once, by whichever comes first.
final class OnceSlot<T: Sendable>: Sendable {
    private let slot = Mutex<CheckedContinuation<T, Never>?>(nil)
    func set(_ c: CheckedContinuation<T, Never>) { slot.withLock { $0 = c } }
    @discardableResult func resume(_ value: T) -> Bool {
        guard let c = slot.withLock({ $0.take() }) else { return false }
        c.resume(returning: value)
        return true
    }
}

/// A TCP socket on 127.0.0.1 that listens but never accepts or answers: the kernel completes
/// the handshake, then the client waits for PostgreSQL's reply forever.
final class SilentListener: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw ChildProcessError(description: "socket failed: errno \(errno)") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard bound == 0, named == 0, listen(fd, 16) == 0 else {
            closeDescriptor(fd)
            throw ChildProcessError(description: "cannot listen on 127.0.0.1: errno \(errno)")
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: addr.sin_port))
    }

    func close() { closeDescriptor(fd) }
}

private func closeDescriptor(_ fd: Int32) { _ = close(fd) }
