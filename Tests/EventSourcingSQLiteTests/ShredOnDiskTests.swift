import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("Shredding removes the key bytes from the SQLite files")
struct ShredOnDiskTests {
    @Test("After shred, the wrapped data keys of the scope are in none of the .sqlite, -wal, -shm files; the tombstone stays; snapshots are gone",
          arguments: [true, false])
    func shredRemovesWrappedKeyBytes(withSnapshot: Bool) async throws {
        let dir = try TempDir("shred")
        let db = dir.path("events.sqlite")
        let masterKey = try MasterKey.generate()
        var s = try await EncryptedStore.open(db, masterKey: masterKey)

        // Enough customers that the data_keys table spans pages, the target in the middle.
        var ids: [UUID] = []
        for i in 0..<60 {
            var c = try AggregateRoot<Customer>(.registered(name: "Person \(i)", email: "p\(i)@example.com", address: "Street \(i)"))
            try c.record(.updated(name: "Person \(i)", email: "p\(i)@example.org", address: "Road \(i)"))
            try await s.app.save(&c)
            ids.append(c.id)
        }
        let target = ids[30]
        let scope = target.uuidString.lowercased()
        // A second key version, and (in one case) a snapshot, for the target: deleting a
        // snapshot is itself a write that must not leave the key behind, and without one the
        // shred alone must clear the WAL.
        let rotated = try await s.keyring.rotate(scope: scope)
        #expect(rotated == 2)
        var t = try await s.app.repository.get(Customer.self, id: target)
        try t.record(.updated(name: "Person 30", email: "thirty@example.net", address: "Lane 30"))
        try await s.app.save(&t)
        if withSnapshot {
            try await s.app.takeSnapshot(Customer.self, id: target)
            #expect(try await s.store.selectSnapshot(originatorID: target, lte: nil) != nil)
        }

        let keys = try await s.store.dataKeys(scope: scope)
        try #require(keys.map(\.version) == [1, 2])
        // The whole wrapped keys, and a 16-byte slice from the middle of each (inside the ciphertext).
        var needleBytes: [[UInt8]] = []
        for k in keys {
            try #require(k.wrapped.count >= 40)
            needleBytes.append(k.wrapped)
            needleBytes.append(Array(k.wrapped[20..<36]))
        }
        let needles = NeedleSet(needleBytes)
        // Control: another scope's key, which must stay on disk.
        let other = try await s.store.dataKeys(scope: ids[10].uuidString.lowercased())
        let control = NeedleSet(other.map(\.wrapped))
        func found(_ set: NeedleSet) -> Set<Int> {
            databaseFiles(db).reduce(into: Set<Int>()) { $0.formUnion(set.found(in: $1.bytes)) }
        }
        #expect(found(needles) == Set(needles.needles.indices), "the wrapped keys are not on disk before the shred")

        let receipt = try await s.app.shred(keyScope: scope)
        #expect(receipt.destroyedKeyVersions == [1, 2])
        #expect(receipt.snapshotsDeleted == (withSnapshot ? 1 : 0))
        #expect(receipt.eventsAffected == 3)

        #expect(found(needles).isEmpty, "wrapped key bytes of the shredded scope are still on disk right after the shred")
        await s.store.close()
        for (suffix, bytes) in databaseFiles(db) {
            let left = needles.found(in: bytes)
            #expect(left.isEmpty, "events.sqlite\(suffix) still holds \(left.count) of the shredded key byte strings")
        }
        #expect(found(control) == Set(control.needles.indices), "control: another scope's key is no longer found")

        s = try await EncryptedStore.open(db, masterKey: masterKey)
        let tomb = try #require(try await s.store.tombstone(scope: scope))
        #expect(tomb.destroyedVersions == [1, 2])
        #expect(try await s.store.dataKeys(scope: scope).isEmpty)
        #expect(try await s.store.selectSnapshot(originatorID: target, lte: nil) == nil)
        let e = await #expect(throws: EventSourcingError.self) { _ = try await s.app.repository.get(Customer.self, id: target) }
        #expect(e?.code == .shredded)
        #expect(try await s.app.repository.get(Customer.self, id: ids[10]).email == "p10@example.org")
        await s.store.close()
    }
}
