// Fuzzes opening and reading a SQLite store file: the input is a whole database file, written
// to a scratch directory, opened with SQLiteStore, its key store opened with the test master
// key, and its events, notifications and snapshots read and decoded.
// Invariants: nothing traps or hangs; every failure is an EventSourcingError or a
// KeyManagementError (decoding failures name their record); a refused open changes no byte
// of the file.
import EventSourcing
import EventSourcingSQLite
import Foundation
import FuzzSupport
import KeyManagement

let configuration = SQLiteStore.Configuration(synchronous: .normal, busyTimeout: .milliseconds(50), readers: 1)

/// The seed corpus, written by the library's own encoder (see Fuzz.main).
@Sendable func seeds() async throws -> [[UInt8]] {
    var seeds: [[UInt8]] = []
    for kind in ["encrypted", "plaintext", "empty"] {
        let path = (Fuzz.scratchDirectory as NSString).appendingPathComponent("seed-\(kind).sqlite")
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        let store = try SQLiteStore(path: path, configuration: configuration)
        if kind != "empty" {
            let keyring = kind == "encrypted" ? try await Keyring.open(store: store, masterKeys: [Fuzz.masterKey()]) : nil
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
            let at = Date(timeIntervalSince1970: 1_700_000_000)
            var root = try AggregateRoot<FuzzAggregate>(id: Fuzz.originatorID, FuzzAggregate.samples[0], at: at)
            for e in FuzzAggregate.samples.dropFirst() { try root.record(e, at: at) }
            _ = try await app.save(&root)
            try await app.takeSnapshot(FuzzAggregate.self, id: Fuzz.originatorID)
        }
        await store.close()
        seeds.append(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))))
    }
    return seeds
}

let path = (Fuzz.scratchDirectory as NSString).appendingPathComponent("store.sqlite")
/// `FUZZ_ALLOW_REFUSED_OPEN_WRITES=1` skips the unchanged-file check, to keep fuzzing past the
/// open finding in Fuzz/findings/ until it is fixed.
let checkRefusedOpen = ProcessInfo.processInfo.environment["FUZZ_ALLOW_REFUSED_OPEN_WRITES"] != "1"

/// Fails unless `error` is one of the library's typed errors.
func typed(_ error: any Error, _ what: String) {
    guard error is EventSourcingError || error is KeyManagementError else {
        Fuzz.fail("\(what) threw \(type(of: error)): \(error)")
    }
}

/// Fails unless a decoding failure is typed and names the record it was reading.
func named(_ error: any Error, _ id: UUID, _ version: Int, _ what: String) {
    guard let e = error as? EventSourcingError else { Fuzz.fail("\(what) threw \(type(of: error)): \(error)") }
    guard e.originatorID == id, e.originatorVersion == version else { Fuzz.fail("\(what) failed without naming the record: \(e)") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Data(Fuzz.bytes(data, size))
    for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    guard FileManager.default.createFile(atPath: path, contents: input) else { Fuzz.fail("cannot write \(path)") }
    let store: SQLiteStore
    do { store = try SQLiteStore(path: path, configuration: configuration) } catch {
        typed(error, "SQLiteStore(path:)")
        guard !checkRefusedOpen || FileManager.default.contents(atPath: path) == input else {
            Fuzz.fail("a refused open changed the file")
        }
        return 0
    }
    let outcome = Fuzz.run { () async -> Void in
        var keyring: Keyring?
        do { keyring = try await Keyring.open(store: store, masterKeys: [Fuzz.masterKey()]) } catch { typed(error, "Keyring.open") }
        let mapper = Mapper(keyring: keyring, configuration: .init(plaintextReads: .allowed))
        do { _ = try await store.maxNotificationID() } catch { typed(error, "maxNotificationID") }
        do {
            for n in try await store.selectNotifications(start: 1, limit: 50, stop: nil, topics: []) {
                let stored = StoredEvent(originatorID: n.originatorID, originatorVersion: n.originatorVersion, topic: n.topic, state: n.state)
                do { _ = try await mapper.decode(stored, as: FuzzAggregate.self, notificationID: n.id) } catch {
                    named(error, n.originatorID, n.originatorVersion, "decode")
                }
                do { _ = try await mapper.open(stored, snapshot: false, notificationID: n.id) } catch {
                    named(error, n.originatorID, n.originatorVersion, "open")
                }
            }
        } catch { typed(error, "selectNotifications") }
        do { _ = try await store.selectEvents(originatorID: Fuzz.originatorID) } catch { typed(error, "selectEvents") }
        do {
            if let s = try await store.selectSnapshot(originatorID: Fuzz.originatorID, lte: nil) {
                do { _ = try await mapper.decodeSnapshot(s, as: FuzzAggregate.self) } catch {
                    named(error, s.originatorID, s.originatorVersion, "decodeSnapshot")
                }
            }
        } catch { typed(error, "selectSnapshot") }
        do { _ = try await store.dataKeys(scope: Fuzz.originatorID.uuidString.lowercased()) } catch { typed(error, "dataKeys") }
        await store.close()
    }
    if case .failure(let error) = outcome { Fuzz.fail("unexpected: \(error)") }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
