import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

// Encrypting a store written without a cipher (Application.encryptPlaintextRecords), through the
// public API only: no @testable import in this file.

/// A patient: its records belong to the data subject its admission names.
struct EncPatient: Aggregate {
    static let typeName = "EncPatient"
    enum Event: Codable, Sendable {
        case admitted(subject: String, name: String)
        case noted(String)
    }
    var subject: String?
    var name = ""
    var notes: [String] = []
    init() {}
    mutating func apply(_ event: Event) {
        switch event {
        case .admitted(let s, let n): (subject, name) = (s, n)
        case .noted(let t): notes.append(t)
        }
    }
    var dataSubject: String? { subject }
}

/// A note: no data subject, so its records belong to its own id.
struct EncNote: Aggregate {
    static let typeName = "EncNote"
    enum Event: Codable, Sendable {
        case written(String)
        case amended(String)
    }
    var lines: [String] = []
    init() {}
    mutating func apply(_ event: Event) {
        switch event {
        case .written(let t), .amended(let t): lines.append(t)
        }
    }
}

/// A recorder a user could write: events, the log and snapshots in lists, record rewriting and
/// the plaintext refusal, all through the library's public protocols.
final class ListRecorder: ApplicationRecorder, SnapshotRecorder, RecordRewriting, PlaintextRefusing {
    private struct State {
        var log: [StoredNotification] = []
        var snapshots: [StoredEvent] = []
        var refused = false
    }
    private let state = Mutex(State())

    private static func isPlaintext(_ r: StoredEvent) -> Bool {
        StateHeader.peekKeyScope(r.state) == nil && !ErasureRecord.matches(r)
    }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        try state.withLock { s in
            if s.refused, let e = events.first(where: Self.isPlaintext) {
                throw EventSourcingError(.plaintextRejected, "this store refuses unencrypted records",
                                         originatorID: e.originatorID, originatorVersion: e.originatorVersion, topic: e.topic)
            }
            var taken = Set(s.log.map { "\($0.originatorID)/\($0.originatorVersion)" })
            for e in events where !taken.insert("\(e.originatorID)/\(e.originatorVersion)").inserted {
                throw EventSourcingError(.concurrencyConflict, "exists", originatorID: e.originatorID, originatorVersion: e.originatorVersion)
            }
            var ids: [Int64] = []
            for e in events {
                let id = Int64(s.log.count + 1)
                s.log.append(StoredNotification(id: id, originatorID: e.originatorID, originatorVersion: e.originatorVersion,
                                                topic: e.topic, state: e.state))
                ids.append(id)
            }
            return ids
        }
    }

    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        var out = state.withLock { s in
            s.log.filter { $0.originatorID == query.originatorID && query.contains(version: $0.originatorVersion) }.map(\.storedEvent)
        }
        out.sort { $0.originatorVersion < $1.originatorVersion }
        if query.order == .descending { out.reverse() }
        if let limit = query.limit { out = Array(out.prefix(max(0, limit))) }
        return out
    }

    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        state.withLock { s in
            Array(s.log.filter { n in n.id >= start && (stop.map { n.id <= $0 } ?? true) && (topics.isEmpty || topics.contains(n.topic)) }
                .prefix(max(0, limit)))
        }
    }

    func maxNotificationID() async throws -> Int64? { state.withLock { $0.log.last?.id } }

    func insertSnapshot(_ snapshot: StoredEvent) async throws {
        try state.withLock { s in
            if s.refused, Self.isPlaintext(snapshot) {
                throw EventSourcingError(.plaintextRejected, "this store refuses unencrypted records",
                                         originatorID: snapshot.originatorID, originatorVersion: snapshot.originatorVersion)
            }
            s.snapshots.removeAll { $0.originatorID == snapshot.originatorID && $0.originatorVersion == snapshot.originatorVersion }
            s.snapshots.append(snapshot)
        }
    }

    func selectSnapshot(originatorID: UUID, lte: Int?) async throws -> StoredEvent? {
        state.withLock { s in
            s.snapshots.filter { r in r.originatorID == originatorID && (lte.map { r.originatorVersion <= $0 } ?? true) }
                .max { $0.originatorVersion < $1.originatorVersion }
        }
    }

    func deleteSnapshots(keyScope: String) async throws -> Int {
        state.withLock { s in
            let before = s.snapshots.count
            s.snapshots.removeAll { StateHeader.peekKeyScope($0.state) == keyScope }
            return before - s.snapshots.count
        }
    }

    func rewriteEvents(_ rewrites: [RecordRewrite]) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites)
        return state.withLock { s in
            var n = 0
            for r in rewrites {
                guard let i = s.log.firstIndex(where: { $0.originatorID == r.originatorID && $0.originatorVersion == r.originatorVersion }),
                      s.log[i].state == r.expected else { continue }
                s.log[i].state = r.state
                n += 1
            }
            return n
        }
    }

    func rewriteSnapshots(_ rewrites: [RecordRewrite]) async throws -> Int {
        try RecordRewrite.checkBatch(rewrites)
        return state.withLock { s in
            var n = 0
            for r in rewrites {
                guard let i = s.snapshots.firstIndex(where: { $0.originatorID == r.originatorID && $0.originatorVersion == r.originatorVersion }),
                      s.snapshots[i].state == r.expected else { continue }
                s.snapshots[i].state = r.state
                s.snapshots[i].keyScope = r.keyScope
                n += 1
            }
            return n
        }
    }

    func selectSnapshots(after cursor: SnapshotCursor?, limit: Int) async throws -> [StoredEvent] {
        func key(_ id: UUID, _ v: Int) -> ([UInt8], Int) { (withUnsafeBytes(of: id.uuid) { Array($0) }, v) }
        func less(_ a: ([UInt8], Int), _ b: ([UInt8], Int)) -> Bool {
            a.0 == b.0 ? a.1 < b.1 : a.0.lexicographicallyPrecedes(b.0)
        }
        let all = state.withLock { $0.snapshots }.sorted { less(key($0.originatorID, $0.originatorVersion), key($1.originatorID, $1.originatorVersion)) }
        let after = all.filter { c in cursor.map { less(key($0.originatorID, $0.originatorVersion), key(c.originatorID, c.originatorVersion)) } ?? true }
        return Array(after.prefix(max(0, limit)))
    }

    func refusePlaintextWrites() async throws -> Int {
        state.withLock { s in
            let left = s.log.filter { Self.isPlaintext($0.storedEvent) }.count + s.snapshots.filter(Self.isPlaintext).count
            if left == 0 { s.refused = true }
            return left
        }
    }

    func refusesPlaintextWrites() async throws -> Bool { state.withLock { $0.refused } }

    /// Every stored state, events then snapshots.
    var allRecords: [StoredEvent] { state.withLock { $0.log.map(\.storedEvent) + $0.snapshots } }
}

/// A recorder that cannot rewrite records.
private struct ReadOnlyLog: ApplicationRecorder {
    let inner: ListRecorder
    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] { try await inner.insertEvents(events) }
    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] { try await inner.selectEvents(query) }
    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }
    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}

/// A plaintext history: patients (two of one subject), notes, in both payload encodings,
/// compressed and not, with snapshots and a discarded note.
struct PlaintextHistory {
    var patients: [UUID] = []
    var notes: [UUID] = []
    var events = 0
    var snapshots = 0

    static func write(recorder: any ApplicationRecorder, snapshots: any SnapshotRecorder) async throws -> PlaintextHistory {
        var h = PlaintextHistory()
        let compact = Application(recorder: recorder, snapshots: snapshots)
        let json = Application(recorder: recorder, snapshots: snapshots,
                               mapper: Mapper(configuration: .init(encoding: .json, compressor: nil)))
        for (i, app) in [compact, json, compact].enumerated() {
            var p = try AggregateRoot<EncPatient>(.admitted(subject: i < 2 ? "subject-a" : "subject-b", name: "PII-patient-\(i)-name"))
            try p.record(.noted("PII-patient-\(i)-note"))
            try await app.save(&p)
            h.patients.append(p.id)
            h.events += 2
            var n = try AggregateRoot<EncNote>(.written("PII-note-\(i)-line"))
            try n.record(.amended("PII-note-\(i)-amended"))
            try await app.save(&n)
            h.notes.append(n.id)
            h.events += 2
            try await app.takeSnapshot(EncPatient.self, id: p.id)
            h.snapshots += 1
        }
        var gone = try AggregateRoot<EncNote>(.written("PII-note-discarded"))
        try gone.discard()
        try await json.save(&gone)
        h.notes.append(gone.id)
        h.events += 2
        return h
    }
}

@Suite("Encrypting a plaintext store (public API, a user-written recorder)")
struct PlaintextEncryptionTests {
    @Test("A user-written recorder's plaintext store is encrypted under each aggregate's scope, reads the same, then refuses plaintext")
    func customRecorder() async throws {
        let recorder = ListRecorder()
        let history = try await PlaintextHistory.write(recorder: recorder, snapshots: recorder)
        let plain = Application(recorder: recorder, snapshots: recorder)
        let before = try await (plain.repository.get(EncPatient.self, id: history.patients[0]),
                                plain.repository.get(EncNote.self, id: history.notes[1]))

        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring))
        await #expect(throws: EventSourcingError.self) { _ = try await app.repository.get(EncPatient.self, id: history.patients[0]) }

        let report = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self],
                                                           options: .init(pageSize: 3))
        #expect(report.eventsEncrypted == history.events)
        #expect(report.snapshotsEncrypted == history.snapshots)
        #expect(report.failed == 0, "\(report.failures)")
        #expect(report.keysCreated == 2 + history.notes.count)   // two subjects, each note its own
        #expect(report.plaintextLeft == 0)
        #expect(report.plaintextRefused)
        #expect(report.encryptedByScope["subject-a"] == 2 * 2 + 2)   // two patients' events and snapshots

        // Every record is sealed, patients' under their subject, notes' under their own id.
        for r in recorder.allRecords {
            let scope = try #require(StateHeader.peekKeyScope(r.state), "record \(r.originatorID) v\(r.originatorVersion) is not encrypted")
            if let i = history.patients.firstIndex(of: r.originatorID) {
                #expect(scope == (i < 2 ? "subject-a" : "subject-b"))
            } else {
                #expect(scope == r.originatorID.uuidString.lowercased())
            }
        }
        // Reads with plaintext refused give what the plaintext application read.
        let p = try await app.repository.get(EncPatient.self, id: history.patients[0])
        let n = try await app.repository.get(EncNote.self, id: history.notes[1])
        #expect(p.name == before.0.name && p.notes == before.0.notes && p.version == before.0.version)
        #expect(n.lines == before.1.lines && n.version == before.1.version)
        #expect(try await app.repository.contains(history.notes[3]) == false)   // the discard marker still reads

        // Plaintext is refused now; a second pass seals nothing.
        var late = try AggregateRoot<EncNote>(.written("late"))
        await #expect(throws: EventSourcingError.self) { try await plain.save(&late) }
        let again = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self])
        #expect(again.encrypted == 0)
        #expect(again.eventsAlreadyEncrypted == history.events && again.snapshotsAlreadyEncrypted == history.snapshots)

        // One shred of the subject erases both of its patients.
        try await app.shred(keyScope: "subject-a")
        for id in history.patients.prefix(2) {
            await #expect { _ = try await app.repository.get(EncPatient.self, id: id) } throws: {
                ($0 as? EventSourcingError)?.code == .shredded
            }
        }
        #expect(try await app.repository.get(EncPatient.self, id: history.patients[2]).name == "PII-patient-2-name")
    }

    @Test("Without types, a scopes map puts an aggregate under its subject; a map that contradicts a sealed record fails only that aggregate")
    func scopesMap() async throws {
        let recorder = ListRecorder()
        let history = try await PlaintextHistory.write(recorder: recorder, snapshots: recorder)
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, snapshots: recorder,
                              mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
        // The application appends to a plaintext patient: its new event is sealed under its subject.
        var p0 = try await app.repository.get(EncPatient.self, id: history.patients[0])
        try p0.record(.noted("sealed"))
        try await app.save(&p0)

        let scopes = [history.patients[0]: "someone-else", history.patients[1]: "subject-a", history.patients[2]: "subject-b"]
        let report = try await app.encryptPlaintextRecords(options: .init(scopes: scopes))
        // Patient 0's two plaintext events and snapshot are left, named; everything else is sealed.
        #expect(report.failed == 3)
        #expect(report.failures.allSatisfy { $0.code == .invalidArgument && $0.originatorID == history.patients[0] })
        #expect(report.plaintextRefused == false && report.plaintextLeft == 3)
        #expect(report.eventsEncrypted == history.events - 2)
        for r in recorder.allRecords where r.originatorID != history.patients[0] {
            let scope = StateHeader.peekKeyScope(r.state)
            #expect(scope == (history.patients.contains(r.originatorID) ? (r.originatorID == history.patients[1] ? "subject-a" : "subject-b")
                                                                          : r.originatorID.uuidString.lowercased()))
        }
        // Without the contradicting entry, the rerun joins patient 0's records to its sealed one's scope.
        let rerun = try await app.encryptPlaintextRecords()
        #expect(rerun.failed == 0 && rerun.encrypted == 3 && rerun.plaintextRefused)
        for r in recorder.allRecords where r.originatorID == history.patients[0] {
            #expect(StateHeader.peekKeyScope(r.state) == "subject-a")
        }
    }

    @Test("A recorder that cannot rewrite, no cipher, or a page size out of range: refused, nothing changed")
    func refusals() async throws {
        let recorder = ListRecorder()
        _ = try await PlaintextHistory.write(recorder: recorder, snapshots: recorder)
        let before = recorder.allRecords
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let cases: [(Application, PlaintextEncryption.Options)] = [
            (Application(recorder: ReadOnlyLog(inner: recorder), mapper: Mapper(keyring: keyring)), .init()),
            (Application(recorder: recorder, snapshots: recorder), .init()),
            (Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring)), .init(pageSize: 0)),
            (Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring)), .init(pageSize: RecordRewrite.maxBatchSize + 1)),
        ]
        for (app, options) in cases {
            await #expect { _ = try await app.encryptPlaintextRecords(options: options) } throws: {
                ($0 as? EventSourcingError)?.code == .invalidArgument
            }
        }
        #expect(recorder.allRecords == before)
        #expect(try await recorder.refusesPlaintextWrites() == false)
    }

    @Test("A forged plaintext record (a personal-field container, a corrupt payload) is reported and left; the rest is sealed")
    func forgedRecords() async throws {
        let recorder = ListRecorder()
        let plain = Application(recorder: recorder)
        var n = try AggregateRoot<EncNote>(.written("fine"))
        try await plain.save(&n)
        let good = try #require(try await recorder.selectEvents(originatorID: n.id).first)
        // The same plaintext header, with a payload holding a personal-field container, then one that is not JSON.
        let header = Array(good.state.prefix(4))
        let container = Array(#"{"v":1,"t":0,"e":{"written":{"_0":{"$pf":1,"s":"x","k":1,"p":["a"],"c":"AAAA"}}}}"#.utf8)
        let forgedID = UUID(), junkID = UUID()
        _ = try await recorder.insertEvents([
            StoredEvent(originatorID: forgedID, originatorVersion: 1, topic: "EncNote.written", state: [header[0], header[1], header[2], 0] + container),
            StoredEvent(originatorID: junkID, originatorVersion: 1, topic: "EncNote.written", state: [header[0], header[1], header[2], 0] + Array("not json".utf8)),
        ])
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
        let report = try await app.encryptPlaintextRecords()
        #expect(report.eventsEncrypted == 1)
        #expect(report.failed == 2)
        #expect(Set(report.failures.map(\.originatorID)) == [forgedID, junkID])
        #expect(report.failures.allSatisfy { !$0.message.contains("AAAA") && !$0.message.contains("not json") })
        #expect(report.plaintextRefused == false)
        #expect(try await recorder.selectEvents(originatorID: forgedID).first?.state == [header[0], header[1], header[2], 0] + container)
    }
}
