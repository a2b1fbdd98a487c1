import EventSourcing
import Foundation
import KeyManagement
import Testing

/// The optional aggregate cache: fast-forward, shreds, version reads, the LRU bound, saves,
/// discards and concurrent gets, on every recorder, encrypted.
@Suite("Aggregate cache")
struct AggregateCacheTests {
    /// A store, a master key, and applications over it (each its own keyring unless shared).
    private struct Fixture {
        let store: RecorderFactory.Store
        let masterKey: MasterKey
        let keyStore: any KeyStore

        func keyring() async throws -> Keyring { try await Keyring.open(store: keyStore, masterKeys: [masterKey]) }

        func app(cache: Int, keyring: Keyring? = nil, spy: SpyRecorder? = nil) async throws -> Application {
            var k = keyring
            if k == nil { k = try await self.keyring() }
            return Application(recorder: spy ?? store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: k),
                               cache: .lru(maxEntries: cache))
        }
    }

    private static func withFixture(_ factory: RecorderFactory, _ body: (Fixture) async throws -> Void) async throws {
        try await factory.withFreshStore { store in
            try await body(Fixture(store: store, masterKey: MasterKey.generate(), keyStore: store.keyStore ?? InMemoryKeyStore()))
        }
    }

    @Test("off by default; .off and a bound below 1 are off")
    func offByDefault() async throws {
        let r = InMemoryRecorder()
        #expect(Application(recorder: r).aggregateCache == nil)
        #expect(Application(recorder: r, cache: .off).aggregateCache == nil)
        #expect(Application(recorder: r, cache: .lru(maxEntries: 0)).aggregateCache == nil)
        #expect(Application(recorder: r, cache: .lru(maxEntries: 5)).aggregateCache?.maxEntries == 5)
    }

    @Test("a hit reads only the records from its version on, and picks up another writer's events",
          arguments: RecorderFactory.all)
    func fastForward(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let spy = SpyRecorder(f.store.recorder)
            let cached = try await f.app(cache: 10, spy: spy)
            let writer = try await f.app(cache: 0)   // another application (its own keyring): another writer
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            for i in 0..<5 { try dog.record(.addedTrick("t\(i)")) }
            try await writer.save(&dog)   // version 6

            #expect(try await cached.repository.get(Dog.self, id: dog.id).version == 6)   // miss: loaded, cached
            #expect(cached.aggregateCache?.contains(dog.id) == true)
            spy.reset()
            #expect(try await cached.repository.get(Dog.self, id: dog.id).tricks.count == 5)   // hit
            #expect(spy.queries.map(\.after) == [5])

            var again = try await writer.repository.get(Dog.self, id: dog.id)
            try again.record(.addedTrick("late-1"))
            try again.record(.addedTrick("late-2"))
            try await writer.save(&again)   // versions 7, 8 by the other writer
            spy.reset()
            let got = try await cached.repository.get(Dog.self, id: dog.id)
            #expect(got.version == 8)
            #expect(got.tricks == ["t0", "t1", "t2", "t3", "t4", "late-1", "late-2"])
            #expect(spy.queries.map(\.after) == [5])
            // The fast-forwarded root is the one cached now.
            spy.reset()
            #expect(try await cached.repository.get(Dog.self, id: dog.id).version == 8)
            #expect(spy.queries.map(\.after) == [7])
        }
    }

    @Test("a shred evicts every cached aggregate of its scope at once; get then throws .shredded, not the cached state",
          arguments: RecorderFactory.all)
    func shredEvicts(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let app = try await f.app(cache: 10)
            var a = try AggregateRoot<Customer>(.registered(personID: "person-1", name: "Ann", email: "ann@example.com"))
            var b = try AggregateRoot<Customer>(.registered(personID: "person-1", name: "Ann B", email: "ann.b@example.com"))
            var c = try AggregateRoot<Customer>(.registered(personID: "person-2", name: "Bob", email: "bob@example.com"))
            var d = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await app.save(&a, &b, &c)
            try await app.save(&d)
            for id in [a.id, b.id, c.id] { _ = try await app.repository.get(Customer.self, id: id) }
            _ = try await app.repository.get(Dog.self, id: d.id)
            #expect(app.aggregateCache?.count == 4)

            _ = try await app.shred(keyScope: "person-1")
            #expect(app.aggregateCache?.contains(a.id) == false)
            #expect(app.aggregateCache?.contains(b.id) == false)
            #expect(app.aggregateCache?.count == 2)
            for id in [a.id, b.id] {
                do {
                    let leaked = try await app.repository.get(Customer.self, id: id)
                    Issue.record("a shredded customer was returned: \(leaked.version)")
                } catch let e as EventSourcingError {
                    #expect(e.code == .shredded)
                }
            }
            #expect(try await app.repository.get(Customer.self, id: c.id).name == "Bob")

            // By aggregate id: the aggregate's own scope.
            _ = try await app.shred(aggregateID: d.id)
            #expect(app.aggregateCache?.contains(d.id) == false)
            await #expect(throws: EventSourcingError.self) { _ = try await app.repository.get(Dog.self, id: d.id) }
        }
    }

    @Test("a shred through another application sharing the keyring: the cached aggregate is not returned",
          arguments: RecorderFactory.all)
    func shredElsewhere(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let keyring = try await f.keyring()
            let app = try await f.app(cache: 10, keyring: keyring)
            let other = try await f.app(cache: 0, keyring: keyring)
            var a = try AggregateRoot<Customer>(.registered(personID: "person-9", name: "Ann", email: "ann@example.com"))
            try await app.save(&a)
            _ = try await app.repository.get(Customer.self, id: a.id)
            #expect(app.aggregateCache?.contains(a.id) == true)
            _ = try await other.shred(keyScope: "person-9")
            do {
                let leaked = try await app.repository.get(Customer.self, id: a.id)
                Issue.record("a shredded customer was returned from the cache: \(leaked.email)")
            } catch let e as EventSourcingError {
                #expect(e.code == .shredded)
                #expect(e.originatorID == a.id)
            }
            #expect(app.aggregateCache?.contains(a.id) == false)
        }
    }

    @Test("a get with a version bypasses the cache and leaves it as it was", arguments: RecorderFactory.all)
    func versionBypass(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let app = try await f.app(cache: 10)
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try dog.record(.addedTrick("sit"))
            try dog.record(.addedTrick("roll"))
            try await app.save(&dog)
            _ = try await app.repository.get(Dog.self, id: dog.id)
            let v1 = try await app.repository.get(Dog.self, id: dog.id, version: 1)
            #expect(v1.version == 1 && v1.tricks.isEmpty)
            let v2 = try await app.repository.get(Dog.self, id: dog.id, version: 2)
            #expect(v2.tricks == ["sit"])
            let latest = try await app.repository.get(Dog.self, id: dog.id)
            #expect(latest.version == 3 && latest.tricks == ["sit", "roll"])
            // Not cached: a version read of an aggregate the cache does not hold.
            var cat = try AggregateRoot<Dog>(.registered(name: "Tom"))
            try await app.save(&cat)
            app.aggregateCache?.remove(cat.id)
            _ = try await app.repository.get(Dog.self, id: cat.id, version: 1)
            #expect(app.aggregateCache?.contains(cat.id) == false)
        }
    }

    @Test("bounded: at most maxEntries, the least recently used goes first", arguments: RecorderFactory.all)
    func lruBound(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let app = try await f.app(cache: 3)
            var ids: [UUID] = []
            for name in ["a", "b", "c", "d", "e"] {
                var dog = try AggregateRoot<Dog>(.registered(name: name))
                try await app.save(&dog)
                ids.append(dog.id)
            }
            app.aggregateCache?.removeAll()
            let (a, b, c, d, e) = (ids[0], ids[1], ids[2], ids[3], ids[4])
            for id in [a, b, c] { _ = try await app.repository.get(Dog.self, id: id) }
            #expect(app.aggregateCache?.count == 3)
            _ = try await app.repository.get(Dog.self, id: a)   // a is now the most recently used
            _ = try await app.repository.get(Dog.self, id: d)   // evicts b, the least recently used
            #expect(app.aggregateCache?.count == 3)
            #expect(app.aggregateCache?.contains(b) == false)
            for id in [a, c, d] { #expect(app.aggregateCache?.contains(id) == true) }
            _ = try await app.repository.get(Dog.self, id: e)   // evicts c
            #expect(app.aggregateCache?.contains(c) == false)
            for id in [a, d, e] { #expect(app.aggregateCache?.contains(id) == true) }
            // An evicted aggregate still reads, from the store.
            #expect(try await app.repository.get(Dog.self, id: b).name == "b")
            #expect(app.aggregateCache?.count == 3)
        }
    }

    @Test("a save puts the saved aggregate in the cache; a discard removes it; returned roots are copies",
          arguments: RecorderFactory.all)
    func savesAndDiscards(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let spy = SpyRecorder(f.store.recorder)
            let app = try await f.app(cache: 10, spy: spy)
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try dog.record(.addedTrick("sit"))
            try await app.save(&dog)
            #expect(app.aggregateCache?.contains(dog.id) == true)
            spy.reset()
            var got = try await app.repository.get(Dog.self, id: dog.id)
            #expect(spy.queries.map(\.after) == [1])   // a hit: only the latest record was read
            #expect(got.version == 2 && got.tricks == ["sit"] && got.pendingEvents.isEmpty)
            #expect(got.modifiedOn == dog.modifiedOn || abs(got.modifiedOn.timeIntervalSince(dog.modifiedOn)) < 0.000_001)

            // A returned root is a copy: recording on it changes nothing cached.
            try got.record(.addedTrick("unsaved"))
            #expect(try await app.repository.get(Dog.self, id: dog.id).tricks == ["sit"])

            try dog.discard()
            try await app.save(&dog)
            #expect(app.aggregateCache?.contains(dog.id) == false)
            do {
                _ = try await app.repository.get(Dog.self, id: dog.id)
                Issue.record("a discarded aggregate was returned")
            } catch let e as EventSourcingError {
                #expect(e.code == .aggregateNotFound && e.message.contains("discarded"))
            }
            #expect(app.aggregateCache?.contains(dog.id) == false)
        }
    }

    @Test("a discard saved by another writer: the cached aggregate is fast-forwarded into 'discarded' and evicted",
          arguments: RecorderFactory.all)
    func discardElsewhere(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let app = try await f.app(cache: 10)
            let writer = try await f.app(cache: 0)
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await app.save(&dog)
            var theirs = try await writer.repository.get(Dog.self, id: dog.id)
            try theirs.discard()
            try await writer.save(&theirs)
            do {
                _ = try await app.repository.get(Dog.self, id: dog.id)
                Issue.record("the cached aggregate was returned after another writer discarded it")
            } catch let e as EventSourcingError {
                #expect(e.code == .aggregateNotFound && e.originatorVersion == 2)
            }
            #expect(app.aggregateCache?.contains(dog.id) == false)
        }
    }

    @Test("concurrent gets of one id while a writer appends: every result is a consistent state at or after the writes before it",
          arguments: RecorderFactory.all)
    func concurrentGets(_ factory: RecorderFactory) async throws {
        try await Self.withFixture(factory) { f in
            let app = try await f.app(cache: 10)
            let writer = try await f.app(cache: 0)
            var dog = try AggregateRoot<Dog>(.registered(name: "Rex"))
            try await writer.save(&dog)
            let id = dog.id
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for i in 0..<20 {
                        var d = try await writer.repository.get(Dog.self, id: id)
                        try d.record(.addedTrick("t\(i)"))
                        try await writer.save(&d)
                    }
                }
                for _ in 0..<6 {
                    group.addTask {
                        var last = 0
                        for _ in 0..<30 {
                            let before = try await writer.repository.get(Dog.self, id: id).version
                            let got = try await app.repository.get(Dog.self, id: id)
                            #expect(got.version >= before)
                            #expect(got.version >= last)
                            #expect(got.tricks == (0..<(got.version - 1)).map { "t\($0)" })
                            last = got.version
                        }
                    }
                }
                try await group.waitForAll()
            }
            let final = try await app.repository.get(Dog.self, id: id)
            #expect(final.version == 21)
        }
    }
}
