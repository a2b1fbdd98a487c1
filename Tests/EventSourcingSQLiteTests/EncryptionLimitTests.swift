import ESTestSupport
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

@Suite("SQLite: automatic data-key rotation by encryption count")
struct EncryptionLimitSQLiteTests {
    /// The key version each stored event of `id` is sealed under, in version order.
    static func keyVersions(_ store: SQLiteStore, _ id: UUID) async throws -> [UInt32] {
        try await store.selectEvents(originatorID: id).map { e in
            guard case .success(let (header, _)) = StateHeader.parse(e.state) else {
                throw ChildProcessError(description: "event v\(e.originatorVersion) has no header")
            }
            return header.keyVersion
        }
    }

    @Test("With a limit of 5, the 6th record of a scope is sealed under version 2; every record still reads")
    func sixthRecordIsUnderVersionTwo() async throws {
        let dir = try TempDir("enc-limit")
        let s = try await EncryptedStore.open(dir.path("e.sqlite"), masterKey: MasterKey.generate())
        s.keyring.encryptionLimit = 5
        let id = UUID()
        var root: AggregateRoot<Ledger>? = nil
        for save in 1...7 {
            var r = try ledgerSave(root, id: id, save: save, count: 1)
            try await s.app.save(&r)
            root = r
        }
        #expect(try await Self.keyVersions(s.store, id) == [1, 1, 1, 1, 1, 2, 2])
        let scope = try #require(root?.keyScope)
        #expect(try await s.store.dataKeys(scope: scope).map(\.version) == [1, 2])
        #expect(try await s.app.repository.get(Ledger.self, id: id).state.entries == 7)
        // A save of more records than one key may seal is refused, naming the scope; nothing is stored.
        var big = try ledgerSave(root, id: id, save: 8, count: 6)
        let e = await #expect(throws: EventSourcingError.self) { try await s.app.save(&big) }
        #expect(e?.code == .invalidArgument && e?.message.contains("encryption limit") == true && e?.keyScope == root?.keyScope)
        #expect(try await Self.keyVersions(s.store, id).count == 7)
        await s.store.close()
    }

    @Test("The count survives reopening the store and is shared: a later process continues from it and rotates at the limit")
    func countSurvivesReopening() async throws {
        let dir = try TempDir("enc-limit-reopen")
        let path = dir.path("e.sqlite")
        let master = try MasterKey.generate()
        let id = UUID()
        var scope = ""
        do {
            let s = try await EncryptedStore.open(path, masterKey: master)
            s.keyring.encryptionLimit = 4_200
            s.keyring.encryptionBlock = 100
            // 4,146 records: the first block (4,096, implicit for the key ring that minted v1)
            // and a reserved block of 100.
            var r = try ledgerSave(nil, id: id, save: 1, count: 4_146)
            try await s.app.save(&r)
            scope = r.keyScope
            #expect(try await s.store.reservedEncryptions(scope: scope) == [1: 4_196])
            await s.store.close()
        }
        let s = try await EncryptedStore.open(path, masterKey: master)
        s.keyring.encryptionLimit = 4_200
        s.keyring.encryptionBlock = 100
        #expect(try await s.store.reservedEncryptions(scope: scope) == [1: 4_196])
        var r = try await s.app.repository.get(Ledger.self, id: id)
        try r.record(.entry(save: 2, item: 1, of: 1))
        try await s.app.save(&r)
        // 4,196 + 100 would pass 4,200: the scope was rotated, and the record is under v2.
        #expect(try await Self.keyVersions(s.store, id).last == 2)
        #expect(try await s.store.reservedEncryptions(scope: scope) == [1: 4_196])
        #expect(try await s.app.repository.get(Ledger.self, id: id).state.entries == 4_147)
        await s.store.close()
    }

    @Test("A shred deletes the scope's counts")
    func shredDeletesCounts() async throws {
        let dir = try TempDir("enc-limit-shred")
        let s = try await EncryptedStore.open(dir.path("e.sqlite"), masterKey: MasterKey.generate())
        s.keyring.encryptionBlock = 1
        var r = try ledgerSave(nil, save: 1, count: 1)
        try await s.app.save(&r)
        #expect(try await s.store.reserveEncryptions(scope: r.keyScope, version: 1, count: 1, limit: KeyUsage.defaultLimit) == 4_097)
        _ = try await s.app.shred(aggregateID: r.id)
        #expect(try await s.store.reservedEncryptions(scope: r.keyScope).isEmpty)
        await s.store.close()
    }
}
