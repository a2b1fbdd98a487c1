import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A deliberately minimal user-written recorder: only `ApplicationRecorder`, no snapshots,
/// no key store, no knowledge of encryption. Encryption must still work over it.
final class MinimalUserRecorder: ApplicationRecorder {
    private let log = Mutex<[StoredNotification]>([])

    var stored: [StoredNotification] { log.withLock { $0 } }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try log.withLock { (log) throws(EventSourcingError) -> [Int64] in
            var taken = Set(log.map { "\($0.originatorID)/\($0.originatorVersion)" })
            for e in events where !taken.insert("\(e.originatorID)/\(e.originatorVersion)").inserted {
                throw EventSourcingError(.concurrencyConflict, "exists", originatorID: e.originatorID,
                                         originatorVersion: e.originatorVersion)
            }
            let first = Int64(log.count + 1)
            for (i, e) in events.enumerated() {
                log.append(StoredNotification(id: first + Int64(i), originatorID: e.originatorID,
                                        originatorVersion: e.originatorVersion, topic: e.topic, state: e.state))
            }
            return events.indices.map { first + Int64($0) }
        }
    }

    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        var out = log.withLock { $0 }
            .filter { $0.originatorID == query.originatorID && query.contains(version: $0.originatorVersion) }
            .sorted { $0.originatorVersion < $1.originatorVersion }
            .map(\.storedEvent)
        if query.order == .descending { out.reverse() }
        return Array(out.prefix(max(0, query.limit ?? .max)))
    }

    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        Array(log.withLock { $0 }
            .filter { $0.id >= start && $0.id <= (stop ?? .max) && (topics.isEmpty || topics.contains($0.topic)) }
            .prefix(limit))
    }

    func maxNotificationID() async throws -> Int64? { log.withLock { $0.last?.id } }
}

/// Encryption at rest, tamper detection, crypto-shredding and key rotation, over every recorder.
@Suite("Encryption")
struct EncryptionTests {
    private static func encrypted(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    private static func header(_ state: [UInt8]) throws -> StateHeader {
        switch StateHeader.parse(state) {
        case .success(let (h, _)): return h
        case .failure(let f): throw EventSourcingError(.integrityFailure, "test: header does not parse: \(f)")
        }
    }

    private static let pii = ["Alice Wonderland", "Alice", "Wonderland", "alice.w@example.org", "example.org",
                              "+44 20 7946 0958", "Biscuit the Beagle"]

    private static func savePII(_ app: Application) async throws -> (AggregateRoot<Customer>, AggregateRoot<Dog>) {
        var customer = try AggregateRoot<Customer>(.registered(personID: "subject-0001", name: "Alice Wonderland",
                                                               email: "alice.w@example.org"))
        try customer.record(.changedEmail("+44 20 7946 0958"))
        var dog = try AggregateRoot<Dog>(.registered(name: "Biscuit the Beagle"))
        try dog.record(.addedTrick("Alice Wonderland taught it"))
        try await app.save(&customer, &dog)
        return (customer, dog)
    }

    // MARK: At rest

    @Test("no personal data appears in any stored event or snapshot bytes", arguments: RecorderFactory.all)
    func noPIIAtRest(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            let (customer, dog) = try await Self.savePII(t.app)
            try await t.app.takeSnapshot(Customer.self, id: customer.id)
            try await t.app.takeSnapshot(Dog.self, id: dog.id)

            var blobs = try await t.store.recorder.selectNotifications(start: 1, limit: 100, stop: nil, topics: []).map(\.state)
            #expect(blobs.count == 4)
            blobs += try await t.store.recorder.selectEvents(originatorID: customer.id).map(\.state)
            for id in [customer.id, dog.id] {
                blobs.append(try #require(try await t.store.snapshots.selectSnapshot(originatorID: id, lte: nil)).state)
            }
            for blob in blobs {
                #expect(try Self.header(blob).flags.contains(.encrypted))
                for word in Self.pii {
                    #expect(!bytes(blob, contain: Array(word.utf8)), "\"\(word)\" is readable in a stored record")
                }
            }
            // And it all reads back.
            #expect(try await t.app.repository.get(Customer.self, id: customer.id).email == "+44 20 7946 0958")
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).name == "Biscuit the Beagle")
        }
    }

    @Test("the PII search above can find PII: an unencrypted, uncompressed store shows it", arguments: RecorderFactory.all)
    func piiSearchControl(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let app = Application(recorder: store.recorder, mapper: Mapper(configuration: .init(compressor: nil)))
            _ = try await Self.savePII(app)
            let blobs = try await store.recorder.selectNotifications(start: 1, limit: 100, stop: nil, topics: []).map(\.state)
            #expect(blobs.contains { bytes($0, contain: Array("alice.w@example.org".utf8)) })
            #expect(blobs.contains { bytes($0, contain: Array("Biscuit the Beagle".utf8)) })
        }
    }

    // MARK: Tampering

    /// Flips every byte of one stored record whose index is in `range` (both XOR 0x01 and XOR 0xFF) and
    /// returns a description of every flip that was not an `.integrityFailure` naming the record.
    private static func flips(of stored: StoredEvent, in range: Range<Int>, mapper: Mapper) async -> [String] {
        var wrong: [String] = []
        for i in range {
            for mask: UInt8 in [0x01, 0xFF] {
                var tampered = stored
                tampered.state[i] ^= mask
                do {
                    _ = try await mapper.decode(tampered, as: Dog.self)
                    wrong.append("byte \(i) ^ \(mask): read without error")
                } catch let e as EventSourcingError {
                    if e.code != .integrityFailure || e.originatorID != stored.originatorID
                        || e.originatorVersion != stored.originatorVersion {
                        wrong.append("byte \(i) ^ \(mask): \(e.code)")
                    }
                } catch {
                    wrong.append("byte \(i) ^ \(mask): \(type(of: error)) \(error)")
                }
            }
        }
        return wrong
    }

    /// The stored version-2 event of a fresh dog, and the byte range of its header's key
    /// reference (scope length, scope, key version).
    private static func recordToTamper(_ t: TestApp) async throws -> (StoredEvent, Range<Int>) {
        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try dog.record(.addedTrick("sit"))
        try await t.app.save(&dog)
        let stored = try await t.store.recorder.selectEvents(originatorID: dog.id)[1]
        _ = try await t.app.mapper.decode(stored, as: Dog.self)   // the untouched record reads
        let scopeLength = try #require(try header(stored.state).keyScope?.utf8.count)
        return (stored, 4..<(5 + scopeLength + 4))
    }

    @Test("flipping any byte of magic, format, flags, nonce, ciphertext or tag is an .integrityFailure naming the record",
          arguments: RecorderFactory.all)
    func singleByteFlips(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            let (stored, keyReference) = try await Self.recordToTamper(t)
            var wrong = await Self.flips(of: stored, in: 0..<keyReference.lowerBound, mapper: t.app.mapper)
            wrong += await Self.flips(of: stored, in: keyReference.upperBound..<stored.state.count, mapper: t.app.mapper)
            #expect(wrong.isEmpty, "\(wrong.count) flips: \(wrong.joined(separator: "; "))")
        }
    }

    @Test("flipping any byte of the header's key scope or key version is an .integrityFailure naming the record",
          arguments: RecorderFactory.all)
    func keyReferenceFlips(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            let (stored, keyReference) = try await Self.recordToTamper(t)
            let wrong = await Self.flips(of: stored, in: keyReference, mapper: t.app.mapper)
            #expect(wrong.isEmpty, "\(wrong.count) of \(keyReference.count * 2) flips: \(wrong.joined(separator: "; "))")
        }
    }

    @Test("a tampered record in the notification log does not fail the page; its item says integrityFailure",
          arguments: RecorderFactory.all)
    func tamperedInLog(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try await t.app.save(&dog)
            let original = try await t.store.recorder.selectEvents(originatorID: dog.id)[0]
            // A forged event: another aggregate's coordinates with Fido's ciphertext.
            let forgedID = UUID()
            _ = try await t.store.recorder.insertEvents([StoredEvent(originatorID: forgedID, originatorVersion: 1,
                                                                     topic: "Dog.registered", state: original.state,
                                                                     keyScope: StateHeader.peekKeyScope(original.state))])
            var later = try AggregateRoot<Dog>(.registered(name: "Later"))
            try await t.app.save(&later)

            let items = try await t.app.notificationLog.read(start: 1, limit: 10)
            #expect(items.map(\.notification.id) == [1, 2, 3])
            #expect(try items[0].event(as: Dog.self).event == .registered(name: "Fido"))
            #expect(try items[2].event(as: Dog.self).event == .registered(name: "Later"))
            guard case .failed(let f) = items[1].outcome else {
                Issue.record("the forged record was not reported as failed: \(items[1].outcome)")
                return
            }
            #expect(f.code == .integrityFailure)
            #expect(f.originatorID == forgedID)
            #expect(f.notificationID == 2)
            let e = #expect(throws: EventSourcingError.self) { try items[1].event(as: Dog.self) }
            #expect(e?.code == .integrityFailure)
            #expect(e?.notificationID == 2)
            let integrityFailure = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: forgedID) }
            #expect(integrityFailure?.code == .integrityFailure)
        }
    }

    @Test("truncating or extending a stored record is an .integrityFailure", arguments: RecorderFactory.all)
    func truncation(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try await t.app.save(&dog)
            let stored = try await t.store.recorder.selectEvents(originatorID: dog.id)[0]
            for length in [0, 1, 3, 4, 10, stored.state.count - 17, stored.state.count - 16, stored.state.count - 1] {
                var cut = stored
                cut.state = Array(stored.state.prefix(length))
                let e = await #expect(throws: EventSourcingError.self, "length \(length)") { try await t.app.mapper.decode(cut, as: Dog.self) }
                #expect(e?.code == .integrityFailure, "length \(length)")
                #expect(e?.originatorID == dog.id)
            }
            var longer = stored
            longer.state.append(0)
            let integrityFailure = await #expect(throws: EventSourcingError.self) { try await t.app.mapper.decode(longer, as: Dog.self) }
            #expect(integrityFailure?.code == .integrityFailure)
        }
    }

    @Test("a record's state moved to another aggregate, version or topic fails with .integrityFailure",
          arguments: RecorderFactory.all)
    func swappedRecords(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var a = try AggregateRoot<Dog>(.registered(name: "A"))
            try a.record(.addedTrick("one"))
            try a.record(.addedTrick("two"))
            var b = try AggregateRoot<Dog>(.registered(name: "B"))
            try await t.app.save(&a, &b)
            // Two customers of one person share a data key: only the associated data tells them apart.
            var c1 = try AggregateRoot<Customer>(.registered(personID: "shared", name: "C1", email: "1"))
            var c2 = try AggregateRoot<Customer>(.registered(personID: "shared", name: "C2", email: "2"))
            try await t.app.save(&c1)
            try await t.app.save(&c2)

            let ea = try await t.store.recorder.selectEvents(originatorID: a.id)
            let eb = try await t.store.recorder.selectEvents(originatorID: b.id)
            let ec1 = try await t.store.recorder.selectEvents(originatorID: c1.id)
            let ec2 = try await t.store.recorder.selectEvents(originatorID: c2.id)

            func expectMoved<A: Aggregate>(_ into: StoredEvent, state: [UInt8], as type: A.Type, _ what: String) async {
                var moved = into
                moved.state = state
                let e = await #expect(throws: EventSourcingError.self, "\(what)") { try await t.app.mapper.decode(moved, as: type) }
                #expect(e?.code == .integrityFailure, "\(what)")
                #expect(e?.originatorID == into.originatorID, "\(what)")
                #expect(e?.originatorVersion == into.originatorVersion, "\(what)")
            }
            await expectMoved(eb[0], state: ea[0].state, as: Dog.self, "a v1 into b v1")
            await expectMoved(ea[0], state: eb[0].state, as: Dog.self, "b v1 into a v1")
            await expectMoved(ea[2], state: ea[1].state, as: Dog.self, "a v2 into a v3")
            await expectMoved(ea[1], state: ea[2].state, as: Dog.self, "a v3 into a v2")
            await expectMoved(ec2[0], state: ec1[0].state, as: Customer.self, "c1 into c2 (same key)")
            var relabelled = ea[1]
            relabelled.topic = "Dog.registered"
            let integrityFailure = await #expect(throws: EventSourcingError.self, "topic changed") { try await t.app.mapper.decode(relabelled, as: Dog.self) }
            #expect(integrityFailure?.code == .integrityFailure, "topic changed")

            // A snapshot record passed off as an event is refused too.
            try await t.app.takeSnapshot(Dog.self, id: a.id)
            let snap = try #require(try await t.store.snapshots.selectSnapshot(originatorID: a.id, lte: nil))
            var asEvent = snap
            asEvent.topic = "Dog.addedTrick"
            let integrityFailure2 = await #expect(throws: EventSourcingError.self) { try await t.app.mapper.decode(asEvent, as: Dog.self) }
            #expect(integrityFailure2?.code == .integrityFailure)
            // The originals still read.
            #expect(try await t.app.repository.get(Dog.self, id: a.id).tricks == ["one", "two"])
            #expect(try await t.app.repository.get(Customer.self, id: c2.id).name == "C2")
        }
    }

    // MARK: Shredding

    @Test("shredding a subject makes all its aggregates .shredded, drops its snapshots, refuses writes, spares others",
          arguments: RecorderFactory.all)
    func shred(_ factory: RecorderFactory) async throws {
        let masterKey = try MasterKey.generate()
        try await Self.encrypted(factory).withFreshApp(masterKey: masterKey) { t async throws in
            let subject = "subject-s", other = "subject-t"
            var c1 = try AggregateRoot<Customer>(.registered(personID: subject, name: "S one", email: "s1"))
            try c1.record(.changedEmail("s1b"))
            var c2 = try AggregateRoot<Customer>(.registered(personID: subject, name: "S two", email: "s2"))
            var c3 = try AggregateRoot<Customer>(.registered(personID: other, name: "T", email: "t"))
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try await t.app.save(&c1)
            try await t.app.save(&c2, &c3, &dog)
            // A second key version for S, so the receipt lists both.
            #expect(try await t.keyring?.rotate(scope: subject) == 2)
            try c2.record(.changedEmail("s2b"))
            try await t.app.save(&c2)
            try await t.app.takeSnapshot(Customer.self, id: c1.id)
            try await t.app.takeSnapshot(Customer.self, id: c2.id)
            try await t.app.takeSnapshot(Customer.self, id: c3.id)

            let receipt = try await t.app.shred(keyScope: subject)
            #expect(receipt.keyScope == subject)
            #expect(receipt.eventsAffected == 4)
            #expect(receipt.destroyedKeyVersions.sorted() == [1, 2])
            #expect(receipt.snapshotsDeleted == 2)

            for c in [c1, c2] {
                let e = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Customer.self, id: c.id) }
                #expect(e?.code == .shredded)
                #expect(e?.keyScope == subject)
                #expect(e?.originatorID == c.id)
                #expect(e?.shreddedAt == receipt.shreddedAt)
                #expect(try await t.store.snapshots.selectSnapshot(originatorID: c.id, lte: nil) == nil)
                #expect(try await t.app.repository.contains(c.id), "the events stay; only their key is gone")
            }
            // Writing to the shredded scope never mints a new key.
            try c2.record(.changedEmail("again"))
            let w = await #expect(throws: EventSourcingError.self) { try await t.app.save(&c2) }
            #expect(w?.code == .shredded)
            #expect(w?.keyScope == subject)
            var newcomer = try AggregateRoot<Customer>(.registered(personID: subject, name: "new", email: "n"))
            let shredded = await #expect(throws: EventSourcingError.self) { try await t.app.save(&newcomer) }
            #expect(shredded?.code == .shredded)
            #expect(try await t.app.repository.contains(newcomer.id) == false)
            #expect(try await t.keyring?.store.dataKeys(scope: subject).isEmpty == true)
            // Not even through a fresh keyring (empty cache) over the same key store.
            let freshKeyring = try await Keyring.open(store: try #require(t.keyring?.store), masterKeys: [masterKey])
            let freshApp = Application(recorder: t.store.recorder, snapshots: t.store.snapshots,
                                       mapper: Mapper(keyring: freshKeyring))
            var late = try AggregateRoot<Customer>(.registered(personID: subject, name: "late", email: "l"))
            let shredded2 = await #expect(throws: EventSourcingError.self) { try await freshApp.save(&late) }
            #expect(shredded2?.code == .shredded)
            let fresh = await #expect(throws: EventSourcingError.self) { try await freshApp.repository.get(Customer.self, id: c1.id) }
            #expect(fresh?.code == .shredded)
            #expect(fresh?.keyScope == subject)
            #expect(try await t.keyring?.store.dataKeys(scope: subject).isEmpty == true)

            // Others read fine, including from their snapshot.
            #expect(try await t.app.repository.get(Customer.self, id: c3.id).name == "T")
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: c3.id, lte: nil) != nil)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).name == "Fido")
            var c3more = try await t.app.repository.get(Customer.self, id: c3.id)
            try c3more.record(.changedEmail("t2"))
            try await t.app.save(&c3more)

            // Shredding twice is refused.
            let again = await #expect(throws: EventSourcingError.self) { try await t.app.shred(keyScope: subject) }
            #expect(again?.code == .shredded)
            #expect(again?.keyScope == subject)
        }
    }

    @Test("a shred receipt counts events and snapshots of only its scope", arguments: RecorderFactory.all)
    func shredReceiptCounts(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var dog = try AggregateRoot<Dog>(.registered(name: "Solo"))
            for i in 0..<6 { try dog.record(.addedTrick("t\(i)")) }
            try await t.app.save(&dog)
            var bystander = try AggregateRoot<Dog>(.registered(name: "Other"))
            try await t.app.save(&bystander)
            try await t.app.takeSnapshot(Dog.self, id: dog.id, version: 3)
            try await t.app.takeSnapshot(Dog.self, id: dog.id, version: 6)
            try await t.app.takeSnapshot(Dog.self, id: bystander.id)

            let receipt = try await t.app.shred(keyScope: dog.keyScope)
            #expect(receipt.eventsAffected == 7)
            #expect(receipt.snapshotsDeleted == 2)
            #expect(receipt.destroyedKeyVersions == [1])
            #expect(try await t.app.countEvents(keyScope: bystander.keyScope) == 1)
            #expect(try await t.store.snapshots.selectSnapshot(originatorID: bystander.id, lte: nil) != nil)
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.repository.get(Dog.self, id: dog.id, version: 2) }
            #expect(e?.code == .shredded)
            #expect(e?.keyScope == dog.keyScope)
        }
    }

    @Test("the notification log reads past shredded events, marking them isShredded", arguments: RecorderFactory.all)
    func logOverShredded(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var keep = try AggregateRoot<Customer>(.registered(personID: "keep", name: "K", email: "k"))
            var gone = try AggregateRoot<Customer>(.registered(personID: "gone", name: "G", email: "g"))
            try gone.record(.changedEmail("g2"))
            try await t.app.save(&keep, &gone)
            try keep.record(.changedEmail("k2"))
            try await t.app.save(&keep)
            let receipt = try await t.app.shred(keyScope: "gone")

            let items = try await t.app.notificationLog.read(start: 1, limit: 100)
            #expect(items.map(\.notification.id) == [1, 2, 3, 4, 5])
            #expect(items.map(\.isShredded) == [false, true, true, false, false])
            #expect(items.map(\.isErased) == [false, false, false, false, true], "the shred's erasure record comes last")
            for item in items where item.isShredded {
                if case .shredded(let scope, let at) = item.outcome {
                    #expect(scope == "gone")
                    #expect(at == receipt.shreddedAt)
                }
                let e = #expect(throws: EventSourcingError.self) { try item.event(as: Customer.self) }
                #expect(e?.code == .shredded)
                #expect(e?.originatorID == gone.id)
                #expect(e?.notificationID == item.notification.id)
            }
            #expect(try items[0].event(as: Customer.self).event == .registered(personID: "keep", name: "K", email: "k"))
            #expect(try items[3].event(as: Customer.self).event == .changedEmail("k2"))
            let filtered = try await t.app.notificationLog.read(start: 2, limit: 2, topics: ["Customer.changedEmail"])
            #expect(filtered.map(\.notification.id) == [3, 4])
            #expect(filtered.map(\.isShredded) == [true, false])
        }
    }

    @Test("shredding needs a keyring", arguments: RecorderFactory.all)
    func shredWithoutKeyring(_ factory: RecorderFactory) async throws {
        try await AppFactory(recorder: factory, encrypted: false).withFreshApp { t async throws in
            let invalidArgument = await #expect(throws: EventSourcingError.self) { try await t.app.shred(keyScope: "anyone") }
            #expect(invalidArgument?.code == .invalidArgument)
        }
    }

    // MARK: Rotation

    @Test("after rotating a data key, old and new events read and new records carry key version 2",
          arguments: RecorderFactory.all)
    func dataKeyRotation(_ factory: RecorderFactory) async throws {
        let masterKey = try MasterKey.generate()
        try await Self.encrypted(factory).withFreshApp(masterKey: masterKey) { t async throws in
            let keyring = try #require(t.keyring)
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
            try dog.record(.addedTrick("sit"))
            try await t.app.save(&dog)
            var bystander = try AggregateRoot<Dog>(.registered(name: "Other"))
            try await t.app.save(&bystander)

            #expect(try await keyring.rotate(scope: dog.keyScope) == 2)
            try dog.record(.addedTrick("beg"))
            try await t.app.save(&dog)
            try bystander.record(.addedTrick("paw"))
            try await t.app.save(&bystander)

            let stored = try await t.store.recorder.selectEvents(originatorID: dog.id)
            #expect(try stored.map { try Self.header($0.state).keyVersion } == [1, 1, 2])
            #expect(try stored.map { try Self.header($0.state).keyScope } == Array(repeating: dog.keyScope, count: 3))
            let other = try await t.store.recorder.selectEvents(originatorID: bystander.id)
            #expect(try other.map { try Self.header($0.state).keyVersion } == [1, 1], "other scopes keep their key")
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).tricks == ["sit", "beg"])

            // A fresh keyring (empty cache) over the same key store reads both versions and writes with version 2.
            let fresh = try await Keyring.open(store: keyring.store, masterKeys: [masterKey], cacheCapacity: 1)
            let app = Application(recorder: t.store.recorder, mapper: Mapper(keyring: fresh))
            var again = try await app.repository.get(Dog.self, id: dog.id)
            #expect(again.tricks == ["sit", "beg"])
            try again.record(.addedTrick("roll"))
            try await app.save(&again)
            let last = try #require(try await t.store.recorder.selectEvents(originatorID: dog.id).last)
            #expect(try Self.header(last.state).keyVersion == 2)
            #expect(try await t.app.repository.get(Dog.self, id: dog.id).tricks == ["sit", "beg", "roll"])
        }
    }

    @Test("after rotating the master key, the old key no longer opens the key store and the new one reads everything",
          arguments: RecorderFactory.all)
    func masterKeyRotation(_ factory: RecorderFactory) async throws {
        let oldKey = try MasterKey.generate(), newKey = try MasterKey.generate()
        try await Self.encrypted(factory).withFreshApp(masterKey: oldKey) { t async throws in
            let keyring = try #require(t.keyring)
            var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
            var customer = try AggregateRoot<Customer>(.registered(personID: "p-1", name: "P", email: "p"))
            try await t.app.save(&dog, &customer)
            #expect(try await keyring.rotate(scope: "p-1") == 2)
            try customer.record(.changedEmail("p2"))
            try await t.app.save(&customer)
            let eventsBefore = try await t.store.recorder.selectNotifications(start: 1, limit: 100, stop: nil, topics: [])

            let progress = try await keyring.rotateMasterKey(to: newKey)
            #expect(progress.rewrapped == 3, "dog v1, p-1 v1 and p-1 v2")
            #expect(try await t.store.recorder.selectNotifications(start: 1, limit: 100, stop: nil, topics: []) == eventsBefore,
                    "no event is rewritten")

            do {
                _ = try await Keyring.open(store: keyring.store, masterKeys: [oldKey])
                Issue.record("the old master key still opens the key store")
            } catch let e as KeyManagementError {
                #expect(e.code == .wrongMasterKey)
            }
            do {
                _ = try await Keyring.open(store: keyring.store, masterKeys: [newKey, oldKey])
                Issue.record("the old master key is still accepted next to the new one")
            } catch let e as KeyManagementError {
                #expect(e.code == .wrongMasterKey)
            }

            let reopened = try await Keyring.open(store: keyring.store, masterKeys: [newKey])
            let app = Application(recorder: t.store.recorder, snapshots: t.store.snapshots, mapper: Mapper(keyring: reopened))
            #expect(try await app.repository.get(Dog.self, id: dog.id).name == "Fido")
            #expect(try await app.repository.get(Customer.self, id: customer.id).email == "p2")
            var more = try await app.repository.get(Customer.self, id: customer.id)
            try more.record(.changedEmail("p3"))
            try await app.save(&more)
            // The rotating keyring keeps working too.
            #expect(try await t.app.repository.get(Customer.self, id: customer.id).email == "p3")
        }
    }

    @Test("concurrent first saves to one new data subject agree on a single data key", arguments: RecorderFactory.all)
    func concurrentFirstKey(_ factory: RecorderFactory) async throws {
        let masterKey = try MasterKey.generate()
        try await Self.encrypted(factory).withFreshApp(masterKey: masterKey) { t async throws in
            let app = t.app
            let ids = try await withThrowingTaskGroup(of: UUID.self) { group in
                for i in 0..<8 {
                    group.addTask {
                        var c = try AggregateRoot<Customer>(.registered(personID: "newcomer", name: "N\(i)", email: "\(i)"))
                        try await app.save(&c)
                        return c.id
                    }
                }
                var ids: [UUID] = []
                for try await id in group { ids.append(id) }
                return ids
            }
            let keyStore = try #require(t.keyring?.store)
            #expect(try await keyStore.dataKeys(scope: "newcomer").map(\.version) == [1])
            // A fresh keyring (nothing cached) reads every one of them.
            let fresh = Application(recorder: t.store.recorder,
                                    mapper: Mapper(keyring: try await Keyring.open(store: keyStore, masterKeys: [masterKey])))
            var names: [String] = []
            for id in ids { names.append(try await fresh.repository.get(Customer.self, id: id).name) }
            #expect(names.sorted() == (0..<8).map { "N\($0)" })
        }
    }

    @Test("a new aggregate whose own scope already has a data key (made by another process) is saved under that key",
          arguments: RecorderFactory.all)
    func newAggregateExistingScopeKey(_ factory: RecorderFactory) async throws {
        let masterKey = try MasterKey.generate()
        try await Self.encrypted(factory).withFreshApp(masterKey: masterKey) { t async throws in
            let keyStore = try #require(t.keyring?.store)
            let id = UUID()
            let scope = id.uuidString.lowercased()
            // Another process (its own keyring) creates the scope's key first.
            let other = try await Keyring.open(store: keyStore, masterKeys: [masterKey])
            let theirs = try await other.writeKey(for: scope)
            try await other.persist([theirs])
            // This keyring mints optimistically for a brand-new aggregate; the store refuses that
            // key and the save is re-encoded under the stored one.
            var dog = try AggregateRoot<Dog>(id: id, .registered(name: "Rex"))
            try dog.record(.addedTrick("sit"))
            try await t.app.save(&dog)
            #expect(try await keyStore.dataKeys(scope: scope).map(\.version) == [1])
            let stored = try await t.store.recorder.selectEvents(originatorID: id)
            #expect(stored.count == 2)
            for s in stored { #expect(try Self.header(s.state).keyVersion == 1) }
            // Only the stored key opens them: a fresh keyring reads them back.
            let fresh = Application(recorder: t.store.recorder,
                                    mapper: Mapper(keyring: try await Keyring.open(store: keyStore, masterKeys: [masterKey])))
            #expect(try await fresh.repository.get(Dog.self, id: id).tricks == ["sit"])
            // And the other keyring's key is that same key: records it seals open here.
            let sealedByOther = Mapper(keyring: other)
            let batch = try await sealedByOther.encode([DomainEvent<Dog.Event>(originatorID: id, originatorVersion: 3,
                                                                               timestamp: Date(), event: .addedTrick("down"))],
                                                       of: Dog.self, keyScope: scope)
            #expect(batch.newKeys.isEmpty)
            _ = try await t.store.recorder.insertEvents(batch.events)
            #expect(try await fresh.repository.get(Dog.self, id: id).tricks == ["sit", "down"])
        }
    }

    @Test("a new aggregate whose own scope was shredded is refused, nothing written", arguments: RecorderFactory.all)
    func newAggregateShreddedScope(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            let id = UUID()
            _ = try await t.app.shred(keyScope: id.uuidString.lowercased(), ifAbsent: .tombstone)
            var dog = try AggregateRoot<Dog>(id: id, .registered(name: "Rex"))
            let shredded = await #expect(throws: EventSourcingError.self) { try await t.app.save(&dog) }
            #expect(shredded?.code == .shredded)
            // Only the shred's erasure record is in the log.
            #expect(try await t.store.recorder.maxNotificationID() == 1)
            #expect(try await t.app.notificationLog.read(start: 1, limit: 10).map(\.isErased) == [true])
            #expect(dog.pendingEvents.count == 1)
        }
    }

    @Test("shredding a scope that has no key yet is refused, and with ifAbsent: .tombstone leaves a tombstone that refuses later writes",
          arguments: RecorderFactory.all)
    func preemptiveShred(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            let keyScopeNotFound = await #expect(throws: EventSourcingError.self) { try await t.app.shred(keyScope: "never-written") }
            #expect(keyScopeNotFound?.code == .keyScopeNotFound)
            let receipt = try await t.app.shred(keyScope: "never-written", ifAbsent: .tombstone)
            #expect(receipt.eventsAffected == 0)
            #expect(receipt.snapshotsDeleted == 0)
            #expect(receipt.destroyedKeyVersions.isEmpty)
            var c = try AggregateRoot<Customer>(.registered(personID: "never-written", name: "n", email: "e"))
            let shredded = await #expect(throws: EventSourcingError.self) { try await t.app.save(&c) }
            #expect(shredded?.code == .shredded)
            // Only the shred's erasure record is in the log: a tombstone ahead of time is an erasure too.
            #expect(try await t.store.recorder.maxNotificationID() == 1)
            #expect(try await t.app.notificationLog.read(start: 1, limit: 10).map(\.isErased) == [true])
        }
    }

    @Test("a data subject that is not a valid key scope is refused with .invalidArgument and nothing is written",
          arguments: RecorderFactory.all)
    func invalidScope(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            for bad in [String(repeating: "x", count: 256), "tab\there", "nul\u{0}"] {
                var c = try AggregateRoot<Customer>(.registered(personID: bad, name: "n", email: "e"))
                let invalidArgument = await #expect(throws: EventSourcingError.self, "scope \(bad.debugDescription)") { try await t.app.save(&c) }
                #expect(invalidArgument?.code == .invalidArgument, "scope \(bad.debugDescription)")
                #expect(c.pendingEvents.count == 1)
            }
            #expect(try await t.store.recorder.maxNotificationID() == nil)
            // 255 bytes is the longest scope the header can name, and it works.
            let longest = String(repeating: "é", count: 127) + "x"
            #expect(longest.utf8.count == 255)
            var ok = try AggregateRoot<Customer>(.registered(personID: longest, name: "n", email: "e"))
            try await t.app.save(&ok)
            let stored = try await t.store.recorder.selectEvents(originatorID: ok.id)
            #expect(try Self.header(stored[0].state).keyScope == longest)
            #expect(try await t.app.repository.get(Customer.self, id: ok.id).personID == longest)
        }
    }

    // MARK: Plaintext and custom recorders

    @Test("plaintext records keep reading after encryption is turned on; new records are encrypted",
          arguments: RecorderFactory.all)
    func plaintextMigration(_ factory: RecorderFactory) async throws {
        try await factory.withFreshStore { store async throws in
            let plain = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper())
            var dog = try AggregateRoot<Dog>(.registered(name: "Old"))
            try dog.record(.addedTrick("sit"))
            try await plain.save(&dog)
            let before = try await store.recorder.selectEvents(originatorID: dog.id)
            #expect(try before.allSatisfy { try !Self.header($0.state).flags.contains(.encrypted) })

            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            // A migration opts in to reading the plaintext records written before.
            let secure = Application(recorder: store.recorder, snapshots: store.snapshots,
                                     mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
            var got = try await secure.repository.get(Dog.self, id: dog.id)
            #expect(got.state == Dog(name: "Old", tricks: ["sit"]))
            try got.record(.addedTrick("beg"))
            try await secure.save(&got)
            var fresh = try AggregateRoot<Dog>(.registered(name: "New"))
            try await secure.save(&fresh)

            let after = try await store.recorder.selectEvents(originatorID: dog.id)
            #expect(try after.map { try Self.header($0.state).flags.contains(.encrypted) } == [false, false, true])
            #expect(try Self.header(after[2].state).keyScope == dog.keyScope)
            #expect(try await secure.repository.get(Dog.self, id: dog.id).tricks == ["sit", "beg"])
            #expect(try await secure.repository.get(Dog.self, id: fresh.id).name == "New")

            // The mapper without a keyring cannot read the encrypted record.
            let e = await #expect(throws: EventSourcingError.self) { try await plain.repository.get(Dog.self, id: dog.id) }
            #expect(e?.code == .keyUnavailable)
            #expect(e?.originatorVersion == 3)

            // By default (plaintext reads rejected), the plaintext records are refused; encrypted ones read.
            let strict = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring))
            let r = await #expect(throws: EventSourcingError.self) { try await strict.repository.get(Dog.self, id: dog.id) }
            #expect(r?.code == .plaintextRejected)
            #expect(r?.originatorID == dog.id)
            #expect(r?.originatorVersion == 1)
            #expect(try await strict.repository.get(Dog.self, id: fresh.id).name == "New")
            let plaintextRejected = await #expect(throws: EventSourcingError.self) { try await strict.mapper.decode(before[1], as: Dog.self) }
            #expect(plaintextRejected?.code == .plaintextRejected)
            let items = try await strict.notificationLog.read(start: 1, limit: 10)
            #expect(items.count == 4)
            if case .failed(let f) = items[0].outcome { #expect(f.code == .plaintextRejected) } else {
                Issue.record("a plaintext item read despite .rejected")
            }
        }
    }

    @Test("a minimal user-written recorder gets encryption and shredding with no changes to it",
          arguments: RecorderFactory.all)
    func minimalRecorder(_ factory: RecorderFactory) async throws {
        // The factory is not used for events here; its key store (if any) holds the keys.
        try await factory.withFreshStore { store async throws in
            let recorder = MinimalUserRecorder()
            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
            let (customer, dog) = try await Self.savePII(app)
            var other = try AggregateRoot<Customer>(.registered(personID: "subject-0002", name: "Bob", email: "b"))
            try await app.save(&other)

            #expect(recorder.stored.count == 5)
            for n in recorder.stored {
                #expect(try Self.header(n.state).flags.contains(.encrypted))
                for word in Self.pii { #expect(!bytes(n.state, contain: Array(word.utf8))) }
            }
            #expect(try await app.repository.get(Customer.self, id: customer.id).name == "Alice Wonderland")
            #expect(try await app.repository.get(Dog.self, id: dog.id).tricks == ["Alice Wonderland taught it"])

            var stale = try await app.repository.get(Dog.self, id: dog.id)
            var current = stale
            try current.record(.addedTrick("x"))
            try await app.save(&current)
            try stale.record(.addedTrick("y"))
            let concurrencyConflict = await #expect(throws: EventSourcingError.self) { try await app.save(&stale) }
            #expect(concurrencyConflict?.code == .concurrencyConflict)

            let receipt = try await app.shred(keyScope: "subject-0001")
            #expect(receipt.eventsAffected == 2)
            #expect(receipt.snapshotsDeleted == 0)
            let shredded = await #expect(throws: EventSourcingError.self) { try await app.repository.get(Customer.self, id: customer.id) }
            #expect(shredded?.code == .shredded)
            #expect(try await app.repository.get(Customer.self, id: other.id).name == "Bob")
            let items = try await app.notificationLog.read(start: 1, limit: 10)
            #expect(items.map(\.isShredded) == [true, true, false, false, false, false, false])
            #expect(items.last?.isErased == true, "the shred's erasure record comes last")
        }
    }
}
