import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Re-encryption under a scope's newest data-key version and retiring old versions (issue 17),
/// on every backend.
@Suite("Re-encryption and retiring key versions")
struct ReencryptionTests {
    static let encrypted: [AppFactory] = RecorderFactory.all.map { AppFactory(recorder: $0, encrypted: true) }

    /// Every encrypted record of the store (events, then snapshots), with the header's scope and version.
    struct Seen: Equatable {
        var events: [StoredNotification]
        var snapshots: [StoredEvent]
    }

    static func everything(_ t: TestApp) async throws -> Seen {
        let events = try await t.store.recorder.selectNotifications(start: 1, limit: 100_000, stop: nil, topics: [])
        let rewriting = try #require(t.store.recorder as? any RecordRewriting)
        let snapshots = try await rewriting.selectSnapshots(after: nil, limit: 100_000)
        return Seen(events: events, snapshots: snapshots)
    }

    static func header(_ state: [UInt8]) throws -> StateHeader {
        guard case .success(let (h, _)) = StateHeader.parse(state) else { throw EventSourcingError(.integrityFailure, "no header") }
        return h
    }

    /// Saves `count` customers of `person` (two events each) and a snapshot of the first.
    static func customers(_ app: Application, person: String, count: Int) async throws -> [UUID] {
        var ids: [UUID] = []
        for i in 0..<count {
            var c = try AggregateRoot<Customer>(.registered(personID: person, name: "N\(i)", email: "\(i)@x"))
            try c.record(.changedEmail("new\(i)@x"))
            try await app.save(&c)
            ids.append(c.id)
        }
        try await app.takeSnapshot(Customer.self, id: ids[0])
        return ids
    }

    /// A keyring over the same key store with nothing cached: what another process sees.
    static func freshApp(_ t: TestApp, masterKey: MasterKey) async throws -> Application {
        let keyring = try await Keyring.open(store: t.keyring!.store, masterKeys: [masterKey])
        return Application(recorder: t.store.recorder, snapshots: t.store.snapshots, mapper: Mapper(keyring: keyring))
    }

    @Test("A re-encryption counts its seals under the new version (SECURITY.md §10): one it fills past the limit is rotated by the next write",
          arguments: encrypted)
    func reencryptionCountsSeals(_ factory: AppFactory) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            let keyring = try #require(t.keyring)
            let ids = try await Self.customers(t.app, person: "p-1", count: 3)   // 6 events and a snapshot
            keyring.encryptionLimit = 5
            #expect(try await keyring.rotate(scope: "p-1") == 2)
            let report = try await t.app.reencrypt(keyScope: "p-1", pageSize: 2)
            #expect(report.eventsRewritten + report.snapshotsRewritten == 7)
            let counts = try await keyring.encryptionCounts(scope: "p-1")
            #expect((counts[2] ?? 0) >= 7, "counted \(counts)")
            var c = try await t.app.repository.get(Customer.self, id: ids[0])
            try c.record(.changedEmail("later@x"))
            try await t.app.save(&c)
            let last = try #require(try await t.store.recorder.selectEvents(originatorID: ids[0], after: c.version - 1, upTo: c.version).first)
            #expect(try Self.header(last.state).keyVersion == 3)
        }
    }

    @Test("rotate, re-encrypt, retire: every record of the scope names the new version, reads back equal; old key rows are gone",
          arguments: encrypted)
    func rotateReencryptRetire(_ factory: AppFactory) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            let ids = try await Self.customers(t.app, person: "p-1", count: 3)
            let others = try await Self.customers(t.app, person: "p-2", count: 2)
            let before = try await Self.everything(t)
            let states = try await ids.asyncMap { try await t.app.repository.get(Customer.self, id: $0).state }
            let oldRecord = try #require(before.events.first { Self.scope($0.state) == "p-1" })

            #expect(try await t.keyring!.rotate(scope: "p-1") == 2)
            let report = try await t.app.reencrypt(keyScope: "p-1", pageSize: 2)
            #expect(report.eventsRewritten == 6)
            #expect(report.snapshotsRewritten == 1)
            #expect(report.targetVersion == 2)
            #expect(report.eventsExamined == before.events.count)
            let after = try await Self.everything(t)
            // Coordinates unchanged: ids, topics, versions; the scope's records name v2; the other scope's bytes are untouched.
            #expect(after.events.map(\.id) == before.events.map(\.id))
            #expect(after.events.map(\.topic) == before.events.map(\.topic))
            #expect(after.events.map(\.originatorVersion) == before.events.map(\.originatorVersion))
            for (b, a) in zip(before.events, after.events) {
                if Self.scope(b.state) == "p-1" {
                    #expect(try Self.header(a.state).keyVersion == 2)
                    #expect(try Self.header(a.state).keyScope == "p-1")
                    #expect(a.state != b.state)
                    #expect(a.state.count == b.state.count)
                } else {
                    #expect(a.state == b.state)
                }
            }
            for s in after.snapshots where Self.scope(s.state) == "p-1" { #expect(try Self.header(s.state).keyVersion == 2) }
            #expect(after.snapshots.filter { Self.scope($0.state) == "p-2" } == before.snapshots.filter { Self.scope($0.state) == "p-2" })

            // Idempotent.
            let again = try await t.app.reencrypt(keyScope: "p-1")
            #expect(again.rewritten == 0)
            #expect(try await Self.everything(t) == after)

            // Retire v1: reads still work, from a keyring with nothing cached too.
            #expect(try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) == [1])
            #expect(try await t.keyring!.store.dataKeys(scope: "p-1").map(\.version) == [2])
            #expect(try await t.keyring!.store.dataKeys(scope: "p-2").map(\.version) == [1])
            let fresh = try await Self.freshApp(t, masterKey: master)
            for (id, state) in zip(ids, states) {
                #expect(try await fresh.repository.get(Customer.self, id: id).state == state)
                #expect(try await t.app.repository.get(Customer.self, id: id).state == state)
            }
            for id in others { _ = try await fresh.repository.get(Customer.self, id: id) }
            // A record still under v1 (a copy from before) now fails as retired, not as corrupt.
            for app in [fresh, t.app] {
                let error = await #expect(throws: EventSourcingError.self) {
                    _ = try await app.mapper.decode(oldRecord.storedEvent, as: Customer.self)
                }
                #expect(error?.code == .keyRetired)
                #expect(error?.keyScope == "p-1")
                #expect(error?.message.contains("v1") == true)
            }
            // New saves to the scope keep working (under v2).
            var more = try AggregateRoot<Customer>(.registered(personID: "p-1", name: "M", email: "m@x"))
            try await t.app.save(&more)
            #expect(try await fresh.repository.get(Customer.self, id: more.id).state.name == "M")
        }
    }

    static func scope(_ state: [UInt8]) -> String? { StateHeader.peekKeyScope(state) }

    @Test("retire is refused, changing nothing, while one record still uses an old version", arguments: encrypted)
    func retireRefusedWhileInUse(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            _ = try await Self.customers(t.app, person: "p-1", count: 2)
            _ = try await t.keyring!.rotate(scope: "p-1")
            var late = try AggregateRoot<Customer>(.registered(personID: "p-1", name: "L", email: "l@x"))
            try await t.app.save(&late)   // under v2
            let before = try await Self.everything(t)
            let keysBefore = try await t.keyring!.store.dataKeys(scope: "p-1")
            let error = await #expect(throws: EventSourcingError.self) {
                try await t.app.retireKeyVersions(keyScope: "p-1", below: 2)
            }
            #expect(error?.code == .keyVersionInUse)
            #expect(error?.keyScope == "p-1")
            #expect(error?.message.contains("v1") == true)
            #expect(error?.originatorID != nil)
            #expect(try await Self.everything(t) == before)
            #expect(try await t.keyring!.store.dataKeys(scope: "p-1") == keysBefore)
            #expect(try await t.app.lowestKeyVersionInUse(keyScope: "p-1") == 1)

            // Above the newest version, or a scope that is not there: refused, nothing changed.
            let above = await #expect(throws: EventSourcingError.self) { try await t.app.retireKeyVersions(keyScope: "p-1", below: 3) }
            #expect(above?.code == .invalidArgument)
            let unknown = await #expect(throws: EventSourcingError.self) { try await t.app.retireKeyVersions(keyScope: "p-404", below: 2) }
            #expect(unknown?.code == .keyScopeNotFound)
            let unknownReencrypt = await #expect(throws: EventSourcingError.self) { try await t.app.reencrypt(keyScope: "p-404") }
            #expect(unknownReencrypt?.code == .keyScopeNotFound)
            _ = try await t.app.shred(keyScope: "p-1")
            let afterShred = try await Self.everything(t)
            let shredded = await #expect(throws: EventSourcingError.self) { try await t.app.reencrypt(keyScope: "p-1") }
            #expect(shredded?.code == .shredded)
            let shreddedRetire = await #expect(throws: EventSourcingError.self) { try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) }
            #expect(shreddedRetire?.code == .shredded)
            let badPage = await #expect(throws: EventSourcingError.self) { try await t.app.reencryptAll(pageSize: 0) }
            #expect(badPage?.code == .invalidArgument)
            #expect(try await Self.everything(t) == afterShred)
            // The whole-store pass skips the shredded scope's records and counts them.
            let all = try await t.app.reencryptAll()
            #expect(all.rewritten == 0)
            #expect(all.skippedShredded == 5)   // p-1's five events (the shred deleted its snapshot)
        }
    }

    @Test("re-encryption runs while another task keeps saving to the same scope", arguments: encrypted)
    func online(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let ids = try await Self.customers(t.app, person: "p-1", count: 10)
            _ = try await t.keyring!.rotate(scope: "p-1")
            let app = t.app
            let writer = Task {
                var saved = 0
                for i in 0..<40 {
                    var c = try await app.repository.get(Customer.self, id: ids[i % ids.count])
                    try c.record(.changedEmail("w\(i)@x"))
                    try await app.save(&c)
                    saved += 1
                }
                return saved
            }
            // Two passes at once as well: each record is rewritten once.
            async let first = t.app.reencrypt(keyScope: "p-1", pageSize: 3)
            async let second = t.app.reencrypt(keyScope: "p-1", pageSize: 5)
            let (a, b) = try await (first, second)
            #expect(try await writer.value == 40)
            #expect(a.conflictsLeft == 0 && b.conflictsLeft == 0)
            #expect(a.eventsRewritten + b.eventsRewritten <= 20)
            // Whatever the writer saved meanwhile was sealed under v2 (the keyring rotated), so
            // the scope is now entirely under v2.
            let final = try await t.app.reencrypt(keyScope: "p-1")
            #expect(a.eventsRewritten + b.eventsRewritten + final.eventsRewritten == 20)
            for n in try await Self.everything(t).events where Self.scope(n.state) == "p-1" {
                #expect(try Self.header(n.state).keyVersion == 2)
            }
            #expect(try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) == [1])
            for id in ids { _ = try await t.app.repository.get(Customer.self, id: id) }
        }
    }

    @Test("a re-encryption cancelled between pages leaves old and new versions; a rerun finishes", arguments: encrypted)
    func interruptedThenRerun(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            let ids = try await Self.customers(t.app, person: "p-1", count: 6)
            _ = try await t.keyring!.rotate(scope: "p-1")
            let app = t.app
            let pages = ReencryptionPageCounter()
            let task = Task {
                try await app.reencrypt(keyScope: "p-1", pageSize: 2) { _ in
                    if pages.increment() == 2 { withUnsafeCurrentTask { $0?.cancel() } }
                }
            }
            await #expect(throws: CancellationError.self) { _ = try await task.value }
            let versions = try await Self.everything(t).events.filter { Self.scope($0.state) == "p-1" }
                .map { try Self.header($0.state).keyVersion }
            #expect(versions.contains(1) && versions.contains(2))
            let rerun = try await t.app.reencrypt(keyScope: "p-1", pageSize: 2)
            #expect(rerun.eventsRewritten == versions.filter { $0 == 1 }.count)
            #expect(try await t.app.reencrypt(keyScope: "p-1").rewritten == 0)
            #expect(try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) == [1])
            for id in ids { _ = try await t.app.repository.get(Customer.self, id: id) }
        }
    }

    @Test("a subject's personal fields in another aggregate's records are re-sealed; retire counts them",
          arguments: encrypted, [Mapper.PayloadEncoding.compact, .json])
    func personalFields(_ factory: AppFactory, _ encoding: Mapper.PayloadEncoding) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            let app = Application(recorder: t.store.recorder, snapshots: t.store.snapshots,
                                  mapper: Mapper(keyring: t.keyring, configuration: .init(encoding: encoding)))
            let order = try await PersonalFieldTests.placeOrder(app)
            try await app.takeSnapshot(PDOrder.self, id: order.id)
            let before = try await Self.everything(t)
            _ = try await t.keyring!.rotate(scope: "subject-A")
            let refused = await #expect(throws: EventSourcingError.self) {
                try await app.retireKeyVersions(keyScope: "subject-A", below: 2)
            }
            #expect(refused?.code == .keyVersionInUse)
            #expect(refused?.message.contains("personal field") == true)
            #expect(refused?.originatorID == order.id)

            let report = try await app.reencrypt(keyScope: "subject-A")
            // The placed event and the snapshot each hold two fields of subject-A (customer, address).
            #expect(report.personalFieldsRewritten == 4)
            #expect(report.eventsRewritten == 1)
            #expect(report.snapshotsRewritten == 1)
            let after = try await Self.everything(t)
            #expect(after.events.map(\.id) == before.events.map(\.id))
            for n in after.events {
                // The order's own header is untouched: same scope, same version.
                #expect(try Self.header(n.state).keyScope == order.id.uuidString.lowercased())
                #expect(try Self.header(n.state).keyVersion == 1)
                for f in try await app.mapper.personalFields(of: n.storedEvent, snapshot: false, notificationID: n.id) {
                    #expect(f.keyVersion == (f.subject == "subject-A" ? 2 : 1))
                }
            }
            for s in after.snapshots {
                for f in try await app.mapper.personalFields(of: s, snapshot: true) {
                    #expect(f.keyVersion == (f.subject == "subject-A" ? 2 : 1))
                }
            }
            #expect(try await app.reencrypt(keyScope: "subject-A").rewritten == 0)
            #expect(try await app.retireKeyVersions(keyScope: "subject-A", below: 2) == [1])
            let fresh = try await Self.freshApp(t, masterKey: master)
            let loaded = try await fresh.repository.get(PDOrder.self, id: order.id)
            #expect(loaded.state == order.state)
            let fromEvents = try await fresh.repository.get(PDOrder.self, id: order.id, version: order.version)
            #expect(fromEvents.state == order.state)
            // The other subject is untouched and still reads.
            #expect(loaded.state.courier?.value == "Bob Courier")
            // Shredding subject-A afterwards still redacts its fields.
            _ = try await fresh.shred(keyScope: "subject-A")
            #expect(try await fresh.repository.get(PDOrder.self, id: order.id).state.customer?.isRedacted == true)
        }
    }

    @Test("a record whose personal fields move but whose own key does not is sealed again under its own key: counted there too (SECURITY.md §10)",
          arguments: encrypted)
    func fieldOnlyResealCounted(_ factory: AppFactory) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            let order = try await PersonalFieldTests.placeOrder(t.app)
            try await t.app.takeSnapshot(PDOrder.self, id: order.id)
            _ = try await t.keyring!.rotate(scope: "subject-A")
            // Another process, nothing reserved yet: what it counts goes to the store as it is.
            let keyring = try await Keyring.open(store: t.keyring!.store, masterKeys: [master])
            let app = Application(recorder: t.store.recorder, snapshots: t.store.snapshots, mapper: Mapper(keyring: keyring))
            let own = order.id.uuidString.lowercased()
            let before = try await keyring.encryptionCounts(scope: own)
            let report = try await app.reencrypt(keyScope: "subject-A")
            #expect(report.personalFieldsRewritten == 4 && report.eventsRewritten == 1 && report.snapshotsRewritten == 1)
            let after = try await keyring.encryptionCounts(scope: own)
            // The placed event and the snapshot: sealed again under the order's own v1 (a
            // version with no stored count holds its creator's first block implicitly).
            let was = before[1] ?? KeyUsage.firstBlock(limit: keyring.encryptionLimit)
            #expect(after[1] == was + 2, "before \(before), after \(after)")
        }
    }

    @Test("a process still sealing under its cached old version: retire refuses until a rerun re-encrypts its records",
          arguments: encrypted)
    func staleWriter(_ factory: AppFactory) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            _ = try await Self.customers(t.app, person: "p-1", count: 2)
            // Another process: its own keyring over the same key store, v1 cached as p-1's current
            // version, and its next look at the key-change feed an hour away.
            let other = try await Self.freshApp(t, masterKey: master)
            other.mapper.keyring?.keyChangeRefreshInterval = .seconds(3600)
            var warm = try AggregateRoot<Customer>(.registered(personID: "p-1", name: "W", email: "w@x"))
            try await other.save(&warm)
            _ = try await t.keyring!.rotate(scope: "p-1")
            #expect(try await t.app.reencrypt(keyScope: "p-1").eventsRewritten == 5)
            // The other process has not learnt of the rotation: it writes under v1 after the pass.
            var stale = try AggregateRoot<Customer>(.registered(personID: "p-1", name: "S", email: "s@x"))
            try await other.save(&stale)
            let written = try #require(try await t.store.recorder.selectEvents(originatorID: stale.id).first)
            #expect(try Self.header(written.state).keyVersion == 1)
            let refused = await #expect(throws: EventSourcingError.self) {
                try await t.app.retireKeyVersions(keyScope: "p-1", below: 2)
            }
            #expect(refused?.code == .keyVersionInUse)
            #expect(refused?.originatorID == stale.id)
            #expect(try await t.keyring!.store.dataKeys(scope: "p-1").map(\.version) == [1, 2])
            // Run again: the late record moves to v2, and retiring succeeds.
            #expect(try await t.app.reencrypt(keyScope: "p-1").eventsRewritten == 1)
            #expect(try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) == [1])
            #expect(try await t.app.repository.get(Customer.self, id: stale.id).state.name == "S")
        }
    }

    @Test("a scope shredded between a page's read and its rewrite: the recorder refuses the batch, the pass skips that scope and rewrites the rest",
          arguments: RecorderFactory.all.filter(\.commitsKeys).map { AppFactory(recorder: $0, encrypted: true) })
    func shredDuringPass(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            _ = try await Self.customers(t.app, person: "p-1", count: 2)
            _ = try await Self.customers(t.app, person: "p-2", count: 2)
            _ = try await t.keyring!.rotate(scope: "p-1")
            _ = try await t.keyring!.rotate(scope: "p-2")
            let before = try await Self.everything(t)
            let inner = try #require(t.store.recorder as? any ApplicationRecorder & SnapshotRecorder & RecordRewriting)
            let keyring = t.keyring!
            let recorder = ShredsBeforeFirstRewrite(inner) { _ = try await keyring.shred(scope: "p-2") }
            let app = Application(recorder: recorder, snapshots: recorder, mapper: t.app.mapper)
            let report = try await app.reencryptAll(pageSize: 100)
            #expect(recorder.shredded)
            #expect(report.eventsRewritten == 4)
            #expect(report.skippedShredded >= 4)
            let after = try await Self.everything(t)
            for b in before.events {
                let a = try #require(after.events.first { $0.id == b.id })
                switch Self.scope(b.state) {
                case "p-1": #expect(try Self.header(a.state).keyVersion == 2)
                case "p-2": #expect(a.state == b.state)
                default: break
                }
            }
        }
    }

    @Test("another process drops a retired version from its cache once it reads the key-change feed", arguments: encrypted)
    func otherProcessDropsRetired(_ factory: AppFactory) async throws {
        let master = try MasterKey.generate()
        try await factory.withFreshApp(masterKey: master) { t in
            let ids = try await Self.customers(t.app, person: "p-1", count: 1)
            let old = try #require(try await t.store.recorder.selectEvents(originatorID: ids[0]).first)
            // Another process reads the record: v1 is in its cache.
            let other = try await Self.freshApp(t, masterKey: master)
            other.mapper.keyring?.keyChangeRefreshInterval = .zero
            _ = try await other.mapper.decode(old, as: Customer.self)
            _ = try await t.keyring!.rotate(scope: "p-1")
            _ = try await t.app.reencrypt(keyScope: "p-1")
            #expect(try await t.app.retireKeyVersions(keyScope: "p-1", below: 2) == [1])
            // A copy of the old record (a backup, say) no longer opens there either.
            let error = await #expect(throws: EventSourcingError.self) { _ = try await other.mapper.decode(old, as: Customer.self) }
            #expect(error?.code == .keyRetired)
            #expect(try await other.repository.get(Customer.self, id: ids[0]).state.personID == "p-1")
        }
    }

    @Test("without a keyring, or over a recorder that cannot rewrite records, both refuse with unsupported and change nothing")
    func unsupported() async throws {
        let memory = InMemoryRecorder()
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [try MasterKey.generate()])
        let app = Application(recorder: memory, snapshots: memory, mapper: Mapper(keyring: keyring))
        _ = try await Self.customers(app, person: "p-1", count: 1)
        _ = try await keyring.rotate(scope: "p-1")
        let before = try await memory.selectNotifications(start: 1, limit: 100, stop: nil, topics: [])
        let plain = Application(recorder: memory, snapshots: memory, mapper: Mapper())
        let wrapped = NotRewriting(memory)
        let notRewriting = Application(recorder: wrapped, snapshots: nil, mapper: Mapper(keyring: keyring))
        for (what, target) in [("no keyring", plain), ("not RecordRewriting", notRewriting)] {
            let error = await #expect(throws: EventSourcingError.self, "\(what)") { _ = try await target.reencrypt(keyScope: "p-1") }
            #expect(error?.code == .unsupported, "\(what)")
        }
        let noKeyring = await #expect(throws: EventSourcingError.self) { try await plain.retireKeyVersions(keyScope: "p-1", below: 2) }
        #expect(noKeyring?.code == .unsupported)
        #expect(try await memory.selectNotifications(start: 1, limit: 100, stop: nil, topics: []) == before)
    }

    @Test("reencryptAll moves every rotated scope, records and fields, and leaves unrotated ones byte for byte", arguments: encrypted)
    func all(_ factory: AppFactory) async throws {
        try await factory.withFreshApp { t in
            _ = try await Self.customers(t.app, person: "p-1", count: 2)
            _ = try await Self.customers(t.app, person: "p-2", count: 2)
            let order = try await PersonalFieldTests.placeOrder(t.app)
            let before = try await Self.everything(t)
            _ = try await t.keyring!.rotate(scope: "p-1")
            _ = try await t.keyring!.rotate(scope: "subject-B")
            _ = try await t.keyring!.rotate(scope: order.id.uuidString.lowercased())
            let report = try await t.app.reencryptAll(pageSize: 3)
            #expect(report.eventsRewritten == 4 + 2)
            #expect(report.personalFieldsRewritten == 1)
            let after = try await Self.everything(t)
            for (b, a) in zip(before.events, after.events) where Self.scope(b.state) == "p-2" { #expect(a.state == b.state) }
            for scope in ["p-1", "subject-B", order.id.uuidString.lowercased()] {
                #expect(try await t.app.retireKeyVersions(keyScope: scope, below: 2) == [1])
            }
            #expect(try await t.app.reencryptAll().rewritten == 0)
            _ = try await t.app.repository.get(PDOrder.self, id: order.id)
        }
    }
}

/// A thread-safe counter for callbacks.
final class ReencryptionPageCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() -> Int { lock.lock(); defer { lock.unlock() }; n += 1; return n }
}

extension Sequence where Element: Sendable {
    func asyncMap<T>(_ body: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await body(e)) }
        return out
    }
}

/// A recorder that runs `action` (a shred) once, just before its first rewrite: a shred that
/// lands between a re-encryption page's read and its rewrite.
final class ShredsBeforeFirstRewrite: ApplicationRecorder, SnapshotRecorder, RecordRewriting, @unchecked Sendable {
    let inner: any ApplicationRecorder & SnapshotRecorder & RecordRewriting
    let action: @Sendable () async throws -> Void
    private let lock = NSLock()
    private var fired = false
    var shredded: Bool { lock.lock(); defer { lock.unlock() }; return fired }

    init(_ inner: any ApplicationRecorder & SnapshotRecorder & RecordRewriting, action: @escaping @Sendable () async throws -> Void) {
        self.inner = inner
        self.action = action
    }

    private func fireOnce() async throws {
        let first: Bool = { lock.lock(); defer { lock.unlock() }; defer { fired = true }; return !fired }()
        if first { try await action() }
    }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
    func insertSnapshot(_ snapshot: StoredEvent) async throws { try await inner.insertSnapshot(snapshot) }
    func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        try await inner.selectSnapshot(originatorID: originatorID, lte: lte)
    }
    func deleteSnapshots(keyScope: String) async throws -> Int { try await inner.deleteSnapshots(keyScope: keyScope) }
    func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await fireOnce()
        return try await inner.rewriteEvents(rewrites)
    }
    func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int {
        try await fireOnce()
        return try await inner.rewriteSnapshots(rewrites)
    }
    func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent] {
        try await inner.selectSnapshots(after: cursor, limit: limit)
    }
}

/// An application recorder that is not `RecordRewriting`.
final class NotRewriting: ApplicationRecorder {
    let inner: InMemoryRecorder
    init(_ inner: InMemoryRecorder) { self.inner = inner }
    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}
