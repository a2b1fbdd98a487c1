import ESTestSupport
import EventSourcing
@testable import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// A repository get reads an aggregate's events and, in the same hand-over to a reader thread,
/// the data keys of their scope, which answer the key ring's miss that follows. Kept keys must
/// never be older than the records: any commit of this store drops them.
@Suite("SQLite: data keys read with events")
struct KeyPrefetchTests {
    @Test("Reading an aggregate's events keeps its scope's keys for the key ring's next miss, once")
    func keysComeWithEvents() async throws {
        let dir = try TempDir("prefetch")
        let masterKey = try MasterKey.generate()
        let t = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        var root = try ledgerSave(nil, save: 1, count: 3)
        try await t.app.save(&root)
        #expect(try await t.store.selectEvents(originatorID: root.id).count == 3)
        #expect(t.store.prefetchedKeys.peek(scope: root.keyScope)?.map(\.version) == [1])
        // A fresh application (cold key cache) reads the aggregate through them.
        let reader = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        _ = try await reader.store.selectEvents(originatorID: root.id)
        #expect(try await reader.store.dataKeys(scope: root.keyScope, reading: 1).map(\.version) == [1])
        #expect(reader.store.prefetchedKeys.peek(scope: root.keyScope) == nil, "an entry answers one miss")
        #expect(try await reader.app.repository.get(Ledger.self, id: root.id).entries == root.entries)
        // Reads that are not a whole aggregate's (a page, newest first) keep nothing.
        _ = t.store.prefetchedKeys.take(scope: root.keyScope, version: 1)
        #expect(try await t.store.selectEvents(originatorID: root.id, order: .descending, limit: 1).count == 1)
        #expect(t.store.prefetchedKeys.peek(scope: root.keyScope) == nil)
        await reader.store.close()
        await t.store.close()
    }

    @Test("Keys read with events never outlive a shred by this store: the get after it is .shredded")
    func forgottenOnShred() async throws {
        let dir = try TempDir("prefetch")
        let masterKey = try MasterKey.generate()
        let t = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        var root = try ledgerSave(nil, save: 1, count: 2)
        try await t.app.save(&root)
        #expect(try await t.store.selectEvents(originatorID: root.id).count == 2)
        #expect(t.store.prefetchedKeys.peek(scope: root.keyScope) != nil)
        _ = try await t.keyring.shred(scope: root.keyScope)
        #expect(t.store.prefetchedKeys.peek(scope: root.keyScope) == nil)
        #expect(try await t.store.dataKeys(scope: root.keyScope, reading: 1).isEmpty)
        let fresh = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        let error = await #expect(throws: EventSourcingError.self) { _ = try await fresh.app.repository.get(Ledger.self, id: root.id) }
        #expect(error?.code == .shredded)
        await fresh.store.close()
        await t.store.close()
    }

    @Test("Keys kept are refused for a version they do not hold (a newer version written since): read from the table")
    func versionNotHeld() async throws {
        let dir = try TempDir("prefetch")
        let masterKey = try MasterKey.generate()
        let t = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        var root = try ledgerSave(nil, save: 1, count: 1)
        try await t.app.save(&root)
        _ = try await t.store.selectEvents(originatorID: root.id)
        #expect(t.store.prefetchedKeys.peek(scope: root.keyScope) != nil)
        // Asked for version 2, which the kept entry lacks: the table answers (only version 1 exists).
        #expect(try await t.store.dataKeys(scope: root.keyScope, reading: 2).map(\.version) == [1])
        await t.store.close()
    }
}

@Suite("SQLite: data keys of a page of the log, read at once")
struct LogPageKeyPrefetchTests {
    @Test("prefetchDataKeys reads the scopes' keys in one read; a fresh application's page read consumes them")
    func pageKeys() async throws {
        let dir = try TempDir("prefetch")
        let masterKey = try MasterKey.generate()
        let t = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        var roots: [AggregateRoot<Ledger>] = []
        for k in 1...3 {
            var root = try ledgerSave(nil, save: k, count: 2)
            try await t.app.save(&root)
            roots.append(root)
        }
        try await t.store.prefetchDataKeys(scopes: roots.map(\.keyScope) + ["", "no-such-scope"])
        for r in roots { #expect(t.store.prefetchedKeys.peek(scope: r.keyScope)?.map(\.version) == [1]) }
        #expect(t.store.prefetchedKeys.peek(scope: "no-such-scope") == nil)
        // A fresh application reads the page: its key ring's misses take the kept keys.
        let reader = try await EncryptedStore.open(dir.path("events.sqlite"), masterKey: masterKey)
        let page = try await reader.app.notificationLog.read(start: 1, limit: 100)
        #expect(page.count == 6)
        #expect(page.allSatisfy { if case .decoded = $0.outcome { true } else { false } })
        for r in roots { #expect(reader.store.prefetchedKeys.peek(scope: r.keyScope) == nil, "taken by the key ring") }
        await reader.store.close()
        await t.store.close()
    }
}
