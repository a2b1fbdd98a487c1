import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

/// Encrypting a plaintext store on every backend (in-memory, SQLite, PostgreSQL): the same pass,
/// with an encrypted application saving meanwhile.
@Suite("Encrypting a plaintext store on every backend")
struct PlaintextEncryptionBackendTests {
    @Test("Every record sealed under its aggregate's scope while the application keeps saving; reads unchanged; a second pass seals nothing",
          arguments: RecorderFactory.all)
    func encryptOnline(_ factory: RecorderFactory) async throws {
        let store = try await factory.make()
        do {
            let history = try await PlaintextHistory.write(recorder: store.recorder, snapshots: store.snapshots)
            let plain = Application(recorder: store.recorder, snapshots: store.snapshots)
            var before: [UUID: [String]] = [:]
            for id in history.patients { before[id] = try await plain.repository.get(EncPatient.self, id: id).notes }

            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            let app = Application(recorder: store.recorder, snapshots: store.snapshots,
                                  mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
            let done = Atomic<Bool>(false)
            let saved = Atomic<Int>(0)
            let writer = Task {
                var n = 0
                while !done.load(ordering: .acquiring) {
                    n += 1
                    let id = history.patients[n % history.patients.count]
                    var p = try await app.repository.get(EncPatient.self, id: id)
                    try p.record(.noted("live-\(n)"))
                    try await app.save(&p)
                    saved.add(1, ordering: .releasing)
                    try await Task.sleep(for: .milliseconds(1))
                }
                return n
            }
            // The pass starts once the application has saved, and runs while it goes on saving.
            while saved.load(ordering: .acquiring) == 0 { try await Task.sleep(for: .milliseconds(1)) }
            let report = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self],
                                                               options: .init(pageSize: 2))
            done.store(true, ordering: .releasing)
            _ = try await writer.value
            #expect(saved.load(ordering: .acquiring) > 0)
            #expect(report.failed == 0, "\(report.failures)")
            #expect(report.eventsEncrypted == history.events && report.snapshotsEncrypted == history.snapshots)
            #expect(report.plaintextRefused == (store.recorder is any PlaintextRefusing))

            // Every event in the log and every snapshot is sealed, patients' under their subject.
            let log = try await store.recorder.selectNotifications(start: 1, limit: 10_000, stop: nil, topics: [])
            for n in log {
                let scope = try #require(StateHeader.peekKeyScope(n.state), "notification \(n.id) is not encrypted")
                if let i = history.patients.firstIndex(of: n.originatorID) {
                    #expect(scope == (i < 2 ? "subject-a" : "subject-b"))
                } else {
                    #expect(scope == n.originatorID.uuidString.lowercased())
                }
            }
            for id in history.patients {
                let snap = try #require(try await store.snapshots.selectSnapshot(originatorID: id, lte: nil))
                #expect(StateHeader.peekKeyScope(snap.state) != nil)
            }
            // Reads refusing plaintext give the history plus the live notes.
            let strict = Application(recorder: store.recorder, snapshots: store.snapshots, mapper: Mapper(keyring: keyring))
            for id in history.patients {
                let notes = try await strict.repository.get(EncPatient.self, id: id).notes
                #expect(Array(notes.prefix(before[id]?.count ?? 0)) == before[id])
                #expect(notes.dropFirst(before[id]?.count ?? 0).allSatisfy { $0.hasPrefix("live-") })
            }
            let again = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self])
            #expect(again.encrypted == 0 && again.failed == 0)
        } catch {
            try await store.close()
            throw error
        }
        try await store.close()
    }

    @Test("The pass reserves its seals under each key before sealing (SECURITY.md §10): no version seals more than the limit, a full one is rotated first",
          arguments: RecorderFactory.all)
    func encryptionCountsSeals(_ factory: RecorderFactory) async throws {
        let store = try await factory.make()
        do {
            let history = try await PlaintextHistory.write(recorder: store.recorder, snapshots: store.snapshots)
            let keyring = try await Keyring.open(store: store.keyStore ?? InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
            keyring.encryptionLimit = 2
            let app = Application(recorder: store.recorder, snapshots: store.snapshots,
                                  mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
            let report = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self])
            #expect(report.failed == 0, "\(report.failures)")
            #expect(report.eventsEncrypted == history.events && report.snapshotsEncrypted == history.snapshots)
            // subject-a holds two patients' records (4 events, 2 snapshots): more than the limit of 2.
            let log = try await store.recorder.selectNotifications(start: 1, limit: 10_000, stop: nil, topics: [])
            var states = log.filter { StateHeader.peekKeyScope($0.state) == "subject-a" }.map(\.state)
            for id in history.patients.prefix(2) {
                states.append(try #require(try await store.snapshots.selectSnapshot(originatorID: id, lte: nil)).state)
            }
            #expect(states.count == 6)
            var perVersion: [UInt32: Int] = [:]
            for state in states {
                guard case .success(let (header, _)) = StateHeader.parse(state) else { Issue.record("no header"); return }
                #expect(header.keyScope == "subject-a")
                perVersion[header.keyVersion, default: 0] += 1
            }
            let counts = try await keyring.encryptionCounts(scope: "subject-a")
            for (v, n) in perVersion {
                #expect(n <= 2, "v\(v) sealed \(n) records under a limit of 2: \(perVersion)")
                // A version with no stored count holds its creator's first block (here the limit).
                #expect((counts[v] ?? KeyUsage.firstBlock(limit: 2)) >= UInt64(n), "v\(v): counted \(counts), sealed \(perVersion)")
            }
            #expect(perVersion.count >= 3, "\(perVersion)")
            // The next write finds the newest version full and rotates.
            var p = try await app.repository.get(EncPatient.self, id: history.patients[0])
            try p.record(.noted("after the pass"))
            try await app.save(&p)
            let last = try #require(try await store.recorder.selectEvents(originatorID: p.id, after: p.version - 1, upTo: p.version).first)
            guard case .success(let (header, _)) = StateHeader.parse(last.state) else { Issue.record("no header"); return }
            #expect(header.keyVersion > perVersion.keys.max() ?? 0)
        } catch {
            try await store.close()
            throw error
        }
        try await store.close()
    }

    @Test("A scope shredded between a page's sealing and its rewrite: its records are reported and left, the rest of the page is sealed, the pass goes on",
          arguments: RecorderFactory.all.filter(\.commitsKeys))
    func shredDuringPass(_ factory: RecorderFactory) async throws {
        let store = try await factory.make()
        do {
            let history = try await PlaintextHistory.write(recorder: store.recorder, snapshots: store.snapshots)
            let keyring = try await Keyring.open(store: try #require(store.keyStore), masterKeys: [MasterKey.generate()])
            let inner = try #require(store.recorder as? any ApplicationRecorder & SnapshotRecorder & RecordRewriting)
            let recorder = ShredsBeforeFirstRewrite(inner) { _ = try await keyring.shred(scope: "subject-a") }
            let app = Application(recorder: recorder, snapshots: recorder,
                                  mapper: Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed)))
            let report = try await app.encryptPlaintextRecords(aggregateTypes: [EncPatient.self, EncNote.self],
                                                               options: .init(pageSize: 100))
            #expect(recorder.shredded)
            // Patients 0 and 1 (subject-a): 2 events each, left; everything else sealed.
            let subjectA = Set(history.patients.prefix(2))
            #expect(report.eventsEncrypted == history.events - 4)
            #expect(report.failures.count == report.failed && report.failed >= 4)
            for f in report.failures {
                #expect(f.code == .shredded && f.originatorID.map(subjectA.contains) == true && f.originatorVersion != nil, "\(f)")
            }
            #expect(!report.plaintextRefused)
            let log = try await store.recorder.selectNotifications(start: 1, limit: 10_000, stop: nil, topics: [])
            for n in log where !ErasureRecord.isErasure(topic: n.topic) {
                #expect((StateHeader.peekKeyScope(n.state) == nil) == subjectA.contains(n.originatorID), "notification \(n.id)")
            }
        } catch {
            try await store.close()
            throw error
        }
        try await store.close()
    }
}
