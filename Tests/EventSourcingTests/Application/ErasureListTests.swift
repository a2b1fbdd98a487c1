import EventSourcing
import Foundation
import KeyManagement
import Testing

/// What a key store and log hold, to see that an operation changed nothing.
private struct Fingerprint: Equatable {
    var dataKeys: [String]
    var tombstones: [String]
    var lastNotification: Int64?

    static func of(_ t: TestApp) async throws -> Fingerprint {
        let store = try #require(t.keyring?.store)
        var keys: [String] = []
        var cursor: DataKeyCursor?
        while true {
            let page = try await store.dataKeys(after: cursor, limit: 100)
            guard let last = page.last else { break }
            keys += page.map { "\($0.scope)/\($0.version)/\($0.kekID)" }
            cursor = DataKeyCursor(scope: last.scope, version: last.version)
        }
        let tombstones = try await store.tombstones().map { "\($0.scope)@\($0.shreddedAt.timeIntervalSince1970)" }.sorted()
        return Fingerprint(dataKeys: keys, tombstones: tombstones, lastNotification: try await t.app.notificationLog.maxNotificationID)
    }
}

@Suite("Erasure lists: export a store's erasures, re-apply them to a restored backup")
struct ErasureListTests {
    private static func encrypted(_ f: RecorderFactory) -> AppFactory { AppFactory(recorder: f, encrypted: true) }

    /// A well-formed document with `entries` (JSON objects) and the given header values.
    static func document(_ entries: [String], format: String = "\"eventsourcing-erasures\"", version: String = "1") -> Data {
        Data("{\"format\": \(format), \"version\": \(version), \"exported_at\": \"2026-11-30T06:40:00.000Z\", \"erasures\": [\(entries.joined(separator: ","))]}".utf8)
    }

    static func entry(_ scope: String, _ at: String = "2026-11-30T06:39:58.123Z") -> String {
        let quoted = String(decoding: try! JSONEncoder().encode(scope), as: UTF8.self)
        return "{\"scope\": \(quoted), \"shredded_at\": \"\(at)\"}"
    }

    @Test("The JSON form is exactly the documented one, one entry per line, and reads back")
    func format() throws {
        let list = ErasureList(erasures: [.init(keyScope: "subject-alice", shreddedAt: Date(timeIntervalSince1970: 1_764_484_798.1239)),
                                          .init(keyScope: #"p "7" ü/x"#, shreddedAt: Date(timeIntervalSince1970: 1_764_484_799))],
                               exportedAt: Date(timeIntervalSince1970: 1_764_484_800.5))
        let text = String(decoding: try list.encoded(), as: UTF8.self)
        #expect(text == """
            {
              "erasures": [
                {"scope":"subject-alice","shredded_at":"2025-11-30T06:39:58.124Z"},
                {"scope":"p \\"7\\" ü/x","shredded_at":"2025-11-30T06:39:59.000Z"}
              ],
              "exported_at": "2025-11-30T06:40:00.500Z",
              "format": "eventsourcing-erasures",
              "version": 1
            }

            """)
        let back = try ErasureList(decoding: Data(text.utf8))
        #expect(back.erasures.map(\.keyScope) == ["subject-alice", #"p "7" ü/x"#])
        #expect(back.erasures.map { $0.shreddedAt.timeIntervalSince1970 } == [1_764_484_798.124, 1_764_484_799])
        // Written again, every time reads as it was: a list survives any number of round trips.
        #expect(String(decoding: try back.encoded(), as: UTF8.self) == text)
        #expect(ErasureList.timestamp(Date(timeIntervalSince1970: 1_764_484_798.208)) == "2025-11-30T06:39:58.208Z")
        #expect(back.exportedAt.timeIntervalSince1970 == 1_764_484_800.5)
        // An empty list too; times without milliseconds are read.
        #expect(try ErasureList(decoding: try ErasureList(erasures: []).encoded()).erasures.isEmpty)
        #expect(try ErasureList(decoding: Self.document([Self.entry("a", "2026-11-30T06:39:58Z")])).erasures.count == 1)
    }

    @Test("Anything but a valid list is refused with a typed error that quotes none of its content",
          arguments: [
            ("not JSON", Data("hello, this is not json".utf8), "not a JSON object"),
            ("a JSON array", Data("[1, 2]".utf8), "not a JSON object"),
            ("another format", ErasureListTests.document([], format: "\"secret-format\""), "\"format\""),
            ("no format", Data("{\"version\": 1, \"erasures\": []}".utf8), "\"format\""),
            ("a newer version", ErasureListTests.document([], version: "2"), "newer version"),
            ("version 0", ErasureListTests.document([], version: "0"), "\"version\""),
            ("a string version", ErasureListTests.document([], version: "\"1\""), "\"version\""),
            ("no erasures", Data("{\"format\": \"eventsourcing-erasures\", \"version\": 1, \"exported_at\": \"2026-11-30T06:40:00Z\"}".utf8), "erasures"),
            ("an entry without a scope", ErasureListTests.document(["{\"shredded_at\": \"2026-11-30T06:40:00Z\"}"]), "scope"),
            ("a numeric scope", ErasureListTests.document(["{\"scope\": 12, \"shredded_at\": \"2026-11-30T06:40:00Z\"}"]), "wrong type"),
            ("an empty scope", ErasureListTests.document([ErasureListTests.entry("")]), "erasure 1 of the list does not name a valid key scope"),
            ("a scope of 256 bytes", ErasureListTests.document([ErasureListTests.entry("a"), ErasureListTests.entry(String(repeating: "s", count: 256))]),
             "erasure 2 of the list does not name a valid key scope"),
            ("a scope with a newline", ErasureListTests.document([ErasureListTests.entry("secret\nscope")]), "erasure 1 of the list does not name a valid key scope"),
            ("a time that is not ISO 8601", ErasureListTests.document([ErasureListTests.entry("a", "yesterday")]), "\"shredded_at\" is not an ISO 8601 time"),
            ("a repeated scope", ErasureListTests.document([ErasureListTests.entry("a"), ErasureListTests.entry("b"), ErasureListTests.entry("a")]),
             "erasures 1 and 3 of the list name the same key scope"),
          ])
    func badInput(_ name: String, _ data: Data, _ expected: String) throws {
        let e = #expect(throws: EventSourcingError.self, "\(name)") { try ErasureList(decoding: data) }
        #expect(e?.code == .invalidArgument, "\(name)")
        #expect(e?.message.contains(expected) == true, "\(name): \(e?.message ?? "")")
        for secret in ["hello", "secret", "yesterday", "sssssssss"] {
            #expect(e?.description.contains(secret) == false, "\(name): the error quotes the input")
        }
    }

    @Test("A file over the size bound is refused by its size before it is parsed; a list over the count bound too")
    func bounds() throws {
        var big = Data(count: ErasureList.maxBytes + 1)
        big.replaceSubrange(0..<1, with: Data("{".utf8))
        let e = #expect(throws: EventSourcingError.self) { try ErasureList(decoding: big) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("more than the \(ErasureList.maxBytes)") == true, "\(e?.message ?? "")")

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("erasure-list-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("huge.json").path
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.truncate(atOffset: UInt64(ErasureList.maxBytes) * 4)  // sparse: 256 MiB of zeros
        try handle.close()
        let f = #expect(throws: EventSourcingError.self) { try ErasureList(contentsOfFile: path) }
        #expect(f?.code == .invalidArgument)
        #expect(f?.message.contains("larger than") == true, "\(f?.message ?? "")")
        let missing = #expect(throws: EventSourcingError.self) { try ErasureList(contentsOfFile: dir.appendingPathComponent("nope.json").path) }
        #expect(missing?.code == .invalidArgument)

        let at = Date(timeIntervalSince1970: 1_764_484_800)
        let many = ErasureList(erasures: (0...ErasureList.maxErasures).map { .init(keyScope: "s\($0)", shreddedAt: at) })
        let g = #expect(throws: EventSourcingError.self) { try many.validate() }
        #expect(g?.code == .invalidArgument)
        #expect(throws: EventSourcingError.self) { try many.encoded() }
    }

    @Test("Back up, shred, restore, apply: the scope the backup had is shredded, one it never had is tombstoned ahead, others stay; a second apply changes nothing",
          arguments: RecorderFactory.all)
    func restoreAndApply(_ factory: RecorderFactory) async throws {
        // `live` and `backup` hold the same customers (the backup as it was before the shreds).
        try await Self.encrypted(factory).withFreshApp { live async throws in
            try await Self.encrypted(factory).withFreshApp { backup async throws in
                var ids: [UUID] = []
                for t in [live, backup] {
                    var alice = try AggregateRoot<Customer>(.registered(personID: "alice", name: "Alice Ames", email: "a@example.org"))
                    var bob = try AggregateRoot<Customer>(.registered(personID: "bob", name: "Bob Burns", email: "b@example.org"))
                    try await t.app.save(&alice, &bob)
                    ids = [alice.id, bob.id]
                }
                #expect(try await live.app.erasures().erasures.isEmpty)
                _ = try await live.app.shred(keyScope: "alice")
                _ = try await live.app.shred(keyScope: "carol", ifAbsent: .tombstone)
                let exported = try await live.app.erasures()
                #expect(exported.erasures.map(\.keyScope) == ["alice", "carol"])
                let list = try ErasureList(decoding: try exported.encoded())

                let before = try await Fingerprint.of(backup)
                let dry = try await backup.app.applyErasures(list, dryRun: true)
                #expect(dry.map(\.action) == [.shredded, .tombstonedAhead])
                #expect(dry.allSatisfy { $0.receipt == nil })
                #expect(try await Fingerprint.of(backup) == before, "a dry run changes nothing")

                let applied = try await backup.app.applyErasures(list)
                #expect(applied.map(\.keyScope) == ["alice", "carol"])
                #expect(applied.map(\.action) == [.shredded, .tombstonedAhead])
                #expect(applied[0].receipt?.eventsAffected == 1)
                #expect(applied[0].receipt?.destroyedKeyVersions == [1])
                #expect(applied[1].receipt?.destroyedKeyVersions == [])
                #expect(applied.map(\.listedShreddedAt) == list.erasures.map(\.shreddedAt))

                // alice's records read as shredded, bob's are intact, carol can never get a key.
                let (aliceID, bobID) = (ids[0], ids[1])
                let gone = await #expect(throws: EventSourcingError.self) { try await backup.app.repository.get(Customer.self, id: aliceID) }
                #expect(gone?.code == .shredded)
                #expect(try await backup.app.repository.get(Customer.self, id: bobID).state.name == "Bob Burns")
                var carol = try AggregateRoot<Customer>(.registered(personID: "carol", name: "Carol", email: "c@example.org"))
                let refused = await #expect(throws: EventSourcingError.self) { try await backup.app.save(&carol) }
                #expect(refused?.code == .shredded)
                // Each has its erasure record in the log.
                let erased = try await Self.erasedScopes(backup.app)
                #expect(erased == ["alice", "carol"])

                let after = try await Fingerprint.of(backup)
                let again = try await backup.app.applyErasures(list)
                #expect(again.map(\.action) == [.alreadyShredded, .alreadyShredded])
                #expect(again.allSatisfy { $0.receipt == nil && $0.shreddedAt != nil })
                #expect(try await Fingerprint.of(backup) == after, "a second apply changes nothing")
                // The restored store's list now names the same scopes.
                #expect(try await backup.app.erasures().erasures.map(\.keyScope) == ["alice", "carol"])
            }
        }
    }

    @Test("A bad list changes nothing: its bad entry is found before the first shred, however late it comes",
          arguments: RecorderFactory.all)
    func badListChangesNothing(_ factory: RecorderFactory) async throws {
        try await Self.encrypted(factory).withFreshApp { t async throws in
            var alice = try AggregateRoot<Customer>(.registered(personID: "alice", name: "Alice Ames", email: "a@example.org"))
            try await t.app.save(&alice)
            let at = Date(timeIntervalSince1970: 1_764_484_800)
            let before = try await Fingerprint.of(t)
            for bad in [[ErasureList.Entry(keyScope: "alice", shreddedAt: at), .init(keyScope: "carol", shreddedAt: at), .init(keyScope: "alice", shreddedAt: at)],
                        [.init(keyScope: "alice", shreddedAt: at), .init(keyScope: "", shreddedAt: at)],
                        [.init(keyScope: "alice", shreddedAt: at), .init(keyScope: "x\u{7}", shreddedAt: at)],
                        [.init(keyScope: "alice", shreddedAt: at), .init(keyScope: "carol", shreddedAt: Date(timeIntervalSince1970: .infinity))]] {
                let e = await #expect(throws: EventSourcingError.self) { try await t.app.applyErasures(ErasureList(erasures: bad)) }
                #expect(e?.code == .invalidArgument)
                #expect(try await Fingerprint.of(t) == before, "a refused list changed the store")
            }
            #expect(try await t.app.repository.get(Customer.self, id: alice.id).state.name == "Alice Ames")
        }
    }

    @Test("Without a keyring there is nothing to export or apply: a typed error")
    func noKeyring() async throws {
        try await AppFactory(recorder: .inMemory, encrypted: false).withFreshApp { t async throws in
            let e = await #expect(throws: EventSourcingError.self) { try await t.app.erasures() }
            #expect(e?.code == .invalidArgument)
            let list = ErasureList(erasures: [.init(keyScope: "alice", shreddedAt: Date())])
            let f = await #expect(throws: EventSourcingError.self) { try await t.app.applyErasures(list) }
            #expect(f?.code == .invalidArgument)
        }
    }

    /// The scopes of the log's erasure records, in log order.
    static func erasedScopes(_ app: Application) async throws -> [String] {
        try await ErasureRecordTests.wholeLog(app).compactMap { item in
            if case .erased(let scope, _) = item.outcome { return scope }
            return nil
        }
    }
}
