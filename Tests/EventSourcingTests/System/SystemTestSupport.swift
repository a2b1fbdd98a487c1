import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Applications of one system on one kind of recorder, each with a store of its own, sharing
/// one keyring (the first store's key store when it has one), or each with its own.
final class SystemFixture: Sendable {
    let stores: [String: RecorderFactory.Store]
    let apps: [String: Application]
    let keyrings: [String: Keyring]

    private init(stores: [String: RecorderFactory.Store], apps: [String: Application], keyrings: [String: Keyring]) {
        self.stores = stores
        self.apps = apps
        self.keyrings = keyrings
    }

    static func make(_ factory: RecorderFactory, names: [String], sharedKeyring: Bool = true,
                     snapshotIntervals: [SnapshotInterval] = [], cache: AggregateCache.Configuration = .off) async throws -> SystemFixture {
        var stores: [String: RecorderFactory.Store] = [:]
        var apps: [String: Application] = [:]
        var keyrings: [String: Keyring] = [:]
        var shared: Keyring?
        for name in names {
            let store = try await factory.make()
            stores[name] = store
            let keyring: Keyring
            if sharedKeyring, let shared {
                keyring = shared
            } else {
                keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
                shared = keyring
            }
            keyrings[name] = keyring
            apps[name] = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring),
                                     snapshotIntervals: snapshotIntervals, cache: cache)
        }
        return SystemFixture(stores: stores, apps: apps, keyrings: keyrings)
    }

    func app(_ name: String) throws -> Application { try #require(apps[name]) }

    func close() async {
        for store in stores.values { try? await store.close() }
    }

    /// Runs `body` with a fresh fixture, closing its stores afterwards (also when it throws).
    static func with(_ factory: RecorderFactory, names: [String], sharedKeyring: Bool = true,
                     snapshotIntervals: [SnapshotInterval] = [], cache: AggregateCache.Configuration = .off,
                     _ body: (SystemFixture) async throws -> Void) async throws {
        let f = try await make(factory, names: names, sharedKeyring: sharedKeyring, snapshotIntervals: snapshotIntervals,
                               cache: cache)
        do { try await body(f) } catch {
            await f.close()
            throw error
        }
        await f.close()
    }
}

/// Saves `count` orders on `app`, alternating between `customers`; returns their recordings.
@discardableResult
func placeOrders(_ app: Application, _ count: Int, customers: [String] = ["customer-a", "customer-b"],
                 item: String = "book") async throws -> [Recording] {
    var out: [Recording] = []
    for i in 0..<count {
        var order = try AggregateRoot<SysOrder>(.placed(customer: customers[i % customers.count], item: "\(item)-\(i)", amount: i + 1))
        out += try await app.save(&order)
    }
    return out
}

/// Runs `runner` until each (follower, leader, notification) wait returns, then stops it
/// (cancellation: `run()` returns normally).
func runUntil(_ runner: SystemRunner, _ waits: [(follower: String, leader: String, id: Int64)],
              timeout: Duration = .seconds(120)) async throws {
    let task = Task { try await runner.run() }
    do {
        for w in waits { try await runner.wait(for: w.follower, toProcess: w.id, of: w.leader, timeout: timeout) }
    } catch {
        task.cancel()
        _ = try? await task.value
        throw error
    }
    task.cancel()
    try await task.value
}

/// A projection that records the erasures it is given (and counts events).
struct ErasureWatcher: Projection {
    typealias Context = ProjectionContext
    let name: String
    let log: ErasureLog

    func process(_ item: LogItem, in context: ProjectionContext) async throws { log.events.withLock { $0 += 1 } }
    func erase(keyScope: String, in context: ProjectionContext) async throws { log.erased.withLock { $0.append(keyScope) } }
    func drop(in context: ProjectionContext) async throws {}
}

final class ErasureLog: Sendable {
    let erased = Mutex<[String]>([])
    let events = Mutex(0)
}
