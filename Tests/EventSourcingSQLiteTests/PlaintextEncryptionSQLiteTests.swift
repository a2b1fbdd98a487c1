import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Synchronization
import Testing

/// A patient whose records belong to the data subject its admission names.
private struct Ward: Aggregate {
    static let typeName = "Ward"
    enum Event: Codable, Sendable {
        case admitted(subject: String, name: String)
        case noted(String)
    }
    var subject: String?
    var lines: [String] = []
    init() {}
    mutating func apply(_ event: Event) {
        switch event {
        case .admitted(let s, let n): subject = s; lines.append(n)
        case .noted(let t): lines.append(t)
        }
    }
    var dataSubject: String? { subject }
}

/// A memo: no subject, its records belong to its own id.
private struct Memo: Aggregate {
    static let typeName = "Memo"
    enum Event: Codable, Sendable { case written(String), amended(String) }
    var lines: [String] = []
    init() {}
    mutating func apply(_ event: Event) {
        switch event {
        case .written(let t), .amended(let t): lines.append(t)
        }
    }
}

/// What the test expects each aggregate to read as.
private struct Expected: Sendable {
    var wards: [UUID: (subject: String, lines: [String])] = [:]
    var memos: [UUID: [String]] = [:]
    var markers: [String] = []
}

@Suite("Encrypting a plaintext SQLite store", .serialized)
struct PlaintextEncryptionSQLiteTests {
    /// A store written by applications without a keyring: wards of 5 subjects and memos, each
    /// line a unique marker; uncompressed compact and JSON (the markers stand in the file) and
    /// compressed compact payloads; snapshots; a discarded memo.
    private static func writePlaintext(_ db: String, aggregates: Int = 40) async throws -> Expected {
        let store = try SQLiteStore(path: db)
        let mappers = [Mapper(configuration: .init(compressor: nil)), Mapper(configuration: .init(encoding: .json, compressor: nil)), Mapper()]
        let apps = mappers.map { Application(recorder: store, snapshots: store, mapper: $0) }
        var expected = Expected()
        func marker(_ what: String) -> String {
            let m = "PII-\(what)-\(UUID().uuidString.prefix(8))"
            expected.markers.append(m)
            return m
        }
        for i in 0..<aggregates {
            let app = apps[i % apps.count]
            if i % 2 == 0 {
                let subject = "subject-\(i % 5)"
                var w = try AggregateRoot<Ward>(.admitted(subject: subject, name: marker("name\(i)")))
                try w.record(.noted(marker("note\(i)")))
                try await app.save(&w)
                expected.wards[w.id] = (subject, w.lines)
                if i % 4 == 0 { try await app.takeSnapshot(Ward.self, id: w.id) }
            } else {
                var m = try AggregateRoot<Memo>(.written(marker("memo\(i)")))
                try m.record(.amended(marker("amend\(i)")))
                if i == 1 { try m.discard() }
                try await app.save(&m)
                if i != 1 { expected.memos[m.id] = m.lines }
            }
        }
        await store.close()
        return expected
    }

    /// The markers found in the database, -wal and -shm files, by file.
    private static func scan(_ db: String, _ markers: [String]) -> [String: [String]] {
        let needles = NeedleSet(markers.map { Array($0.utf8) })
        var out: [String: [String]] = [:]
        for (suffix, bytes) in databaseFiles(db) {
            let found = needles.found(in: bytes).map { markers[$0] }
            if !found.isEmpty { out["events.sqlite" + suffix] = found.sorted() }
        }
        return out
    }

    @Test("Encrypted while an encrypted application keeps saving: no marker left in the files, the same aggregates read back, plaintext refused after, a second pass seals nothing")
    func encryptOnline() async throws {
        let dir = try TempDir("encrypt-online")
        let db = dir.path("events.sqlite")
        var expected = try await Self.writePlaintext(db)
        // The search finds what is there: the uncompressed plaintext records' markers.
        #expect(!Self.scan(db, expected.markers).isEmpty)

        // The store as a migration opens it: plaintext saves still allowed, plaintext reads allowed.
        let key = try MasterKey.generate()
        let store = try SQLiteStore(path: db, configuration: .init(allowsPlaintextWrites: true))
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store,
                              mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))

        // Another task keeps saving encrypted events, to old aggregates and new ones, during the pass.
        let done = Atomic<Bool>(false)
        let live = Mutex(Expected())
        let wardIDs = Array(expected.wards.keys), memoIDs = Array(expected.memos.keys)
        let writer = Task {
            var n = 0
            while !done.load(ordering: .acquiring) {
                n += 1
                let m = "PII-live\(n)-\(UUID().uuidString.prefix(8))"
                if n % 3 == 0 {
                    var w = try AggregateRoot<Ward>(.admitted(subject: "subject-\(n % 5)", name: m))
                    try await app.save(&w)
                    live.withLock { $0.wards[w.id] = ("subject-\(n % 5)", w.lines); $0.markers.append(m) }
                } else if n % 3 == 1 {
                    var w = try await app.repository.get(Ward.self, id: wardIDs[n % wardIDs.count])
                    try w.record(.noted(m))
                    try await app.save(&w)
                    live.withLock { $0.wards[w.id] = (w.subject ?? "", w.lines); $0.markers.append(m) }
                } else {
                    var memo = try await app.repository.get(Memo.self, id: memoIDs[n % memoIDs.count])
                    try memo.record(.amended(m))
                    try await app.save(&memo)
                    live.withLock { $0.memos[memo.id] = memo.lines; $0.markers.append(m) }
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            return n
        }
        let report = try await app.encryptPlaintextRecords(aggregateTypes: [Ward.self, Memo.self], options: .init(pageSize: 5))
        done.store(true, ordering: .releasing)
        let saves = try await writer.value
        #expect(saves > 1, "the writer saved during the pass")
        #expect(report.failed == 0, "\(report.failures)")
        #expect(report.eventsEncrypted > 0 && report.snapshotsEncrypted == 10)
        #expect(report.plaintextLeft == 0 && report.plaintextRefused)
        #expect(report.residue?.pending == false)

        let l = live.withLock { $0 }
        for (id, w) in l.wards { expected.wards[id] = w }
        for (id, m) in l.memos { expected.memos[id] = m }
        expected.markers += l.markers
        let found = Self.scan(db, expected.markers)
        #expect(found.isEmpty, "markers left in the files while open: \(found.mapValues(\.count))")

        // Plaintext is refused now, even by a store opened to allow it.
        var late = try AggregateRoot<Memo>(.written("late"))
        await #expect { try await Application(recorder: store).save(&late) } throws: {
            ($0 as? EventSourcingError)?.code == .plaintextRejected
        }
        #expect(try await store.refusesPlaintextWrites())
        let again = try await app.encryptPlaintextRecords(aggregateTypes: [Ward.self, Memo.self])
        #expect(again.encrypted == 0 && again.failed == 0)
        await store.close()
        #expect(Self.scan(db, expected.markers).isEmpty)

        // Read back by an application that refuses plaintext: the same aggregates, wards under their subjects.
        let reopened = try SQLiteStore(path: db)
        let strict = Application(recorder: reopened, snapshots: reopened, mapper: Mapper(keyring: try await Keyring.open(store: reopened, masterKeys: [key])))
        for (id, w) in expected.wards {
            let root = try await strict.repository.get(Ward.self, id: id)
            #expect(root.lines == w.lines && root.keyScope == w.subject)
            for e in try await reopened.selectEvents(originatorID: id) { #expect(StateHeader.peekKeyScope(e.state) == w.subject) }
        }
        for (id, lines) in expected.memos {
            #expect(try await strict.repository.get(Memo.self, id: id).lines == lines)
        }
        #expect(try await reopened.countPlaintextEvents() == 0)
        await reopened.close()
    }

    @Test("A pass cancelled after its first page leaves whole records; running it again finishes the job")
    func cancelThenResume() async throws {
        let dir = try TempDir("encrypt-resume")
        let db = dir.path("events.sqlite")
        let expected = try await Self.writePlaintext(db, aggregates: 30)
        let store = try SQLiteStore(path: db)
        let total = try await store.countPlaintextEvents()
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        let pass = Task {
            try await app.encryptPlaintextRecords(aggregateTypes: [Ward.self, Memo.self], options: .init(pageSize: 10)) { _ in
                withUnsafeCurrentTask { $0?.cancel() }
            }
        }
        await #expect(throws: CancellationError.self) { _ = try await pass.value }
        let left = try await store.countPlaintextEvents()
        #expect(left > 0 && left < total, "one page of \(total) events was sealed")
        #expect(try await store.refusesPlaintextWrites() == false)

        let rerun = try await app.encryptPlaintextRecords(aggregateTypes: [Ward.self, Memo.self])
        #expect(rerun.eventsEncrypted == left && rerun.eventsAlreadyEncrypted == total - left)
        #expect(rerun.plaintextRefused && rerun.plaintextLeft == 0)
        for (id, lines) in expected.memos { #expect(try await app.repository.get(Memo.self, id: id).lines == lines) }
        for (id, w) in expected.wards {
            #expect(Set(try await store.selectEvents(originatorID: id).map { StateHeader.peekKeyScope($0.state) }) == [w.subject])
        }
        await store.close()
    }

    @Test("A store that refuses plaintext refuses a rewrite back to plaintext, also when opened with allowsPlaintextWrites; nothing changes")
    func rewriteToPlaintextRefused() async throws {
        let dir = try TempDir("encrypt-rewrite-refused")
        let db = dir.path("events.sqlite")
        _ = try await Self.writePlaintext(db, aggregates: 6)
        let store = try SQLiteStore(path: db, configuration: .init(allowsPlaintextWrites: true))
        let keyring = try await Keyring.open(store: store, masterKeys: [MasterKey.generate()])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        let report = try await app.encryptPlaintextRecords(aggregateTypes: [Ward.self, Memo.self])
        #expect(report.plaintextRefused && report.failed == 0)
        let all = try await store.selectNotifications(start: 1, limit: 100, stop: nil, topics: [])
        let event = try #require(all.first)
        var found: StoredEvent?
        for n in all where found == nil { found = try await store.selectSnapshot(originatorID: n.originatorID, lte: nil) }
        let snapshot = try #require(found)
        let before = try await store.selectEvents(originatorID: event.originatorID)

        let plain = [UInt8]("plaintext again".utf8)
        await #expect { _ = try await store.rewriteEvents([RecordRewrite(
            originatorID: event.originatorID, originatorVersion: event.originatorVersion,
            expected: event.state, state: plain, keyScope: nil)]) } throws: {
            let e = $0 as? EventSourcingError
            return e?.code == .plaintextRejected && e?.originatorID == event.originatorID
                && e?.originatorVersion == event.originatorVersion
        }
        await #expect { _ = try await store.rewriteSnapshots([RecordRewrite(
            originatorID: snapshot.originatorID, originatorVersion: snapshot.originatorVersion,
            expected: snapshot.state, state: plain, keyScope: nil)]) } throws: {
            ($0 as? EventSourcingError)?.code == .plaintextRejected
        }
        #expect(try await store.selectEvents(originatorID: event.originatorID) == before)
        #expect(try await store.selectSnapshot(originatorID: snapshot.originatorID, lte: nil) == snapshot)
        #expect(try await store.countPlaintextEvents() == 0)
        await store.close()
    }
}
