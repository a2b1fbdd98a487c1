import EventSourcing
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import KeyManagement
import Testing

@Suite("EncryptedStore: the store factory")
struct EncryptedStoreTests {
    @Test("Opens a SQLite store from a URL: saves encrypted, keys commit with their events, reads back after reopening")
    func roundTrip() async throws {
        let dir = try ScratchDir()
        let key = try MasterKey.generate()
        let url = "sqlite:" + dir.path("events.sqlite")
        let store = try await EncryptedStore.open(url: url, masterKey: key)
        guard case .sqlite(let sqlite) = store.backend else {
            Issue.record("a sqlite: URL opened \(store.backend)")
            return
        }
        // The store is its own key store: the application's recorder commits the keys.
        let committing = try #require(store.application.recorder as? any KeyCommittingRecorder)
        #expect(committing.keyStore as AnyObject === sqlite)
        #expect(store.application.snapshotRecorder as AnyObject === sqlite)
        #expect(store.application.mapper.keyring === store.keyring)

        var account = try AggregateRoot<Account>(.opened(subject: "subj-1", owner: "Ada Lovelace"))
        try await store.application.save(&account)
        try account.record(.renamed("Ada King"))
        try await store.application.save(&account)
        #expect(try await sqlite.dataKeys(scope: "subj-1").count == 1)
        let stored = try await sqlite.selectEvents(originatorID: account.id)
        #expect(stored.count == 2)
        #expect(try await sqlite.countEvents(keyScope: "subj-1") == 2)
        // Encrypted: the owner's name is nowhere in the stored bytes.
        for record in stored { #expect(!String(decoding: record.state, as: UTF8.self).contains("Ada")) }
        await store.close()

        let again = try await EncryptedStore.open(url: url, masterKey: key)
        let read = try await again.application.repository.get(Account.self, id: account.id)
        #expect(read.version == 2 && read.state.owner == "Ada King")
        await again.close()
    }

    @Test("A wrong master key is refused at open, and the store is closed again")
    func wrongKey() async throws {
        let dir = try ScratchDir()
        let url = "sqlite:" + dir.path("events.sqlite")
        let store = try await EncryptedStore.open(url: url, masterKey: try MasterKey.generate())
        var account = try AggregateRoot<Account>(.opened(subject: "subj-2", owner: "Grace"))
        try await store.application.save(&account)
        await store.close()

        let error = try await #require(throws: KeyManagementError.self) {
            try await EncryptedStore.open(url: url, masterKey: try MasterKey.generate())
        }
        #expect(error.code == .wrongMasterKey)
        // Nothing was written by the refused open: the file holds the one event it had.
        let probe = try SQLiteStore(path: dir.path("events.sqlite"))
        #expect(try await probe.selectEvents(originatorID: account.id).count == 1)
        await probe.close()
    }

    @Test("No master key: a typed error, nothing opened")
    func noKey() async throws {
        let dir = try ScratchDir()
        let path = dir.path("events.sqlite")
        let error = try await #require(throws: KeyManagementError.self) {
            try await EncryptedStore.open(StoreURL(parsing: "sqlite:" + path), masterKeys: [])
        }
        #expect(error.code == .invalidKeyMaterial)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("Plaintext is refused by default: an unencrypted record is not read, and another application cannot write one")
    func plaintextRefused() async throws {
        let dir = try ScratchDir()
        let path = dir.path("events.sqlite")
        // A store written before encryption was turned on holds a plaintext record.
        let legacy = try SQLiteStore(path: path)
        var old = try AggregateRoot<Account>(.opened(subject: "", owner: "Plain Person"))
        try await Application(recorder: legacy).save(&old)
        await legacy.close()

        let key = try MasterKey.generate()
        let store = try await EncryptedStore.open(url: "sqlite:" + path, masterKey: key)
        let readError = try await #require(throws: EventSourcingError.self) {
            try await store.application.repository.get(Account.self, id: old.id)
        }
        #expect(readError.code == .plaintextRejected)
        #expect(readError.originatorID == old.id)

        // The store now has a master key: an application without a keyring is refused.
        guard case .sqlite(let sqlite) = store.backend else { throw EventSourcingError(.invalidArgument, "not sqlite") }
        var leak = try AggregateRoot<Account>(.opened(subject: "", owner: "Leaked Person"))
        let writeError = try await #require(throws: EventSourcingError.self) {
            try await Application(recorder: sqlite).save(&leak)
        }
        #expect(writeError.code == .plaintextRejected)
        #expect(try await sqlite.selectEvents(originatorID: leak.id).isEmpty)
        await store.close()

        // For a migration, allowsPlaintext reads it.
        let migrating = try await EncryptedStore.open(url: "sqlite:" + path, masterKey: key,
                                                      options: .init(allowsPlaintext: true))
        #expect(try await migrating.application.repository.get(Account.self, id: old.id).state.owner == "Plain Person")
        await migrating.close()
    }

    @Test("After close, the application's calls fail with databaseUnavailable")
    func closed() async throws {
        let dir = try ScratchDir()
        let store = try await EncryptedStore.open(url: "sqlite:" + dir.path("events.sqlite"), masterKey: try MasterKey.generate())
        await store.close()
        var account = try AggregateRoot<Account>(.opened(subject: "subj-3", owner: "Closed"))
        let error = try await #require(throws: EventSourcingError.self) { try await store.application.save(&account) }
        #expect(error.code == .databaseUnavailable)
        await store.close()   // twice is harmless
    }

    @Test("Options reach the store and the application: snapshot intervals, SQLite settings")
    func options() async throws {
        let dir = try ScratchDir()
        var options = EncryptedStore.Options(snapshotIntervals: [.every(2, for: Account.self)])
        options.sqlite.busyTimeout = .seconds(2)
        let store = try await EncryptedStore.open(url: "sqlite:" + dir.path("events.sqlite"), masterKey: try MasterKey.generate(),
                                                  options: options)
        #expect(store.application.snapshotIntervals == [.every(2, for: Account.self)])
        guard case .sqlite(let sqlite) = store.backend else { throw EventSourcingError(.invalidArgument, "not sqlite") }
        #expect(sqlite.configuration.busyTimeout == .seconds(2))
        #expect(sqlite.configuration.allowsPlaintextWrites == false)
        await store.close()
    }
}
