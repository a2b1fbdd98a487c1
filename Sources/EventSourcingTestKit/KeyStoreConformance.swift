import Foundation
import KeyManagement

/// The behaviour every `KeyStore` must show, runnable against any implementation: the suite
/// the library runs against `InMemoryKeyStore`, `SQLiteStore` and `PostgresStore`.
///
/// Give it a function that makes a fresh, empty key store; each behaviour gets its own, which
/// the suite closes afterwards. Run everything with ``run()``, or one behaviour at a time with
/// ``check(_:)``:
///
/// ```swift
/// @Test(arguments: KeyStoreConformance.Behaviour.allCases)
/// func conformance(_ behaviour: KeyStoreConformance.Behaviour) async throws {
///     try await KeyStoreConformance { .init(keyStore: MyKeyStore()) }.check(behaviour)
/// }
/// ```
///
/// The suite stores made-up wrapped keys (one repeated value; 60 bytes, other lengths for
/// ``Behaviour/wrappedKeysOfAnyLength``), never real key
/// material, and never prints wrapped bytes: a failure names scopes, versions and master-key ids.
/// Scopes are compared by their exact UTF-8 bytes, as `KeyStore` requires.
public struct KeyStoreConformance: Sendable {
    /// A key store under test and how to release it.
    public struct Subject: Sendable {
        /// The key store.
        public var keyStore: any KeyStore
        /// Releases the store; called once per behaviour.
        public var close: @Sendable () async throws -> Void

        /// Creates a subject.
        public init(keyStore: any KeyStore, close: @escaping @Sendable () async throws -> Void = {}) {
            self.keyStore = keyStore
            self.close = close
        }
    }

    /// One behaviour the suite checks.
    public enum Behaviour: String, CaseIterable, Sendable, CustomStringConvertible {
        case emptyStore
        case masterKeyChecks
        case dataKeyVersions
        case duplicateVersionRefused
        case scopesByBytes
        case shredDeletesEveryVersion
        case shredTwiceRefused
        case insertAfterShredRefused
        case shredNeverKeyedScope
        case shredOneSpellingSparesTheOther
        case rewrapOneKey
        case rewrapBatchConditions
        case rewrapBatchRepeatedVersionRefused
        case pagingEachKeyOnce
        case concurrentInsertsOneWinner
        case shredRacingInserts
        case retireOldVersions
        case wrappedKeysOfAnyLength
        case keyChangeFeed
        case encryptionCounts

        /// What the behaviour is, in a sentence.
        public var summary: String {
            switch self {
            case .emptyStore: "an empty store has no checks, keys or tombstones"
            case .masterKeyChecks: "master-key checks are kept oldest first, a second check of one master key is ignored, and delete removes only its own"
            case .dataKeyVersions: "a scope's versions come back lowest first with every field intact, whatever order they were inserted in"
            case .duplicateVersionRefused: "inserting a stored (scope, version) again throws keyExists naming it and keeps the first"
            case .scopesByBytes: "two spellings of one String (canonically equivalent, different UTF-8 bytes) are two scopes"
            case .shredDeletesEveryVersion: "a shred deletes every version of the scope, returns and keeps its tombstone, and spares other scopes"
            case .shredTwiceRefused: "a second shred of a scope throws shredded naming it and keeps the first tombstone"
            case .insertAfterShredRefused: "inserting a key for a shredded scope throws shredded naming it and stores nothing"
            case .shredNeverKeyedScope: "a scope that never had a key can be shredded; its tombstone lists no versions"
            case .shredOneSpellingSparesTheOther: "shredding one spelling of a scope leaves the other's keys and lets it get new ones"
            case .rewrapOneKey: "rewrapDataKey replaces a version only if it is still wrapped by the previous master key"
            case .rewrapBatchConditions: "rewrapDataKeys replaces only versions still under their previous master key, by exact scope, and counts them"
            case .rewrapBatchRepeatedVersionRefused: "a rewrap batch that names a version twice throws invalidArgument and changes nothing"
            case .pagingEachKeyOnce: "dataKeys(after:limit:) pages strictly after the cursor, each key once, a scope's versions together and ascending"
            case .concurrentInsertsOneWinner: "of concurrent inserts of one (scope, version), exactly one wins; the others throw keyExists"
            case .shredRacingInserts: "a shred racing inserts of new versions leaves no key of the scope, and every insert either was destroyed or refused"
            case .wrappedKeysOfAnyLength: "wrapped keys and check records of any length from 1 to 8,192 bytes (a helper command's) and master-key ids such as cmd-… or p11-… come back byte for byte, also after a rewrap to another length"
            case .keyChangeFeed: "a KeyChangeFeed records a rotation, a shred and a retirement (not a first key, not a refused change) at consecutive positions, by exact scope; a store without the feed passes"
            case .encryptionCounts: "a KeyUsageCounter adds reservations atomically from the implicit first block, refuses one past the limit changing nothing, keeps spellings apart and forgets a shredded scope; a store without counts passes"
            case .retireOldVersions: "retireDataKeys destroys only the scope's versions below the one given (and their encryption counts), never the newest, refuses a shredded or unknown scope; or throws unsupported and changes nothing"
            }
        }

        public var description: String { rawValue }
    }

    private let makeStore: @Sendable () async throws -> Subject

    /// Creates the suite; `makeStore` makes a fresh, empty key store and is called once per behaviour.
    public init(makeStore: @escaping @Sendable () async throws -> Subject) {
        self.makeStore = makeStore
    }

    /// Checks every behaviour, each against a fresh store.
    /// - Throws: ``ConformanceFailures`` listing every behaviour that failed.
    public func run() async throws {
        try await runEach(Behaviour.allCases, check)
    }

    /// Checks one behaviour against a fresh store, which is closed afterwards.
    /// - Throws: ``ConformanceFailure`` naming the behaviour.
    public func check(_ behaviour: Behaviour) async throws(ConformanceFailure) {
        try await checkOnFreshSubject(suite: "KeyStoreConformance", behaviour: behaviour.rawValue, subject: "key store",
                                      make: makeStore, close: { try await $0.close() }) { c, subject in
            try await Self.body(of: behaviour)(c, subject.keyStore)
        }
    }

    typealias Body = @Sendable (Checker, any KeyStore) async throws -> Void

    private static func body(of behaviour: Behaviour) -> Body {
        switch behaviour {
        case .emptyStore: emptyStore
        case .masterKeyChecks: masterKeyChecks
        case .dataKeyVersions: dataKeyVersions
        case .duplicateVersionRefused: duplicateVersionRefused
        case .scopesByBytes: scopesByBytes
        case .shredDeletesEveryVersion: shredDeletesEveryVersion
        case .shredTwiceRefused: shredTwiceRefused
        case .insertAfterShredRefused: insertAfterShredRefused
        case .shredNeverKeyedScope: shredNeverKeyedScope
        case .shredOneSpellingSparesTheOther: shredOneSpellingSparesTheOther
        case .rewrapOneKey: rewrapOneKey
        case .rewrapBatchConditions: rewrapBatchConditions
        case .rewrapBatchRepeatedVersionRefused: rewrapBatchRepeatedVersionRefused
        case .pagingEachKeyOnce: pagingEachKeyOnce
        case .concurrentInsertsOneWinner: concurrentInsertsOneWinner
        case .shredRacingInserts: shredRacingInserts
        case .retireOldVersions: retireOldVersions
        case .wrappedKeysOfAnyLength: wrappedKeysOfAnyLength
        case .keyChangeFeed: keyChangeFeed
        case .encryptionCounts: encryptionCounts
        }
    }
}

// MARK: - Helpers

extension KeyStoreConformance {
    /// "José" with é as one scalar (U+00E9) and with e + U+0301: equal Strings, different bytes.
    static let composed = "Jos\u{E9}", decomposed = "Jose\u{301}"
    /// Whole seconds, which every store keeps exactly.
    static let date = Date(timeIntervalSince1970: 1_700_000_000)

    /// A made-up wrapped key: 60 bytes of `byte` (never real key material).
    static func wrapped(_ scope: String, _ version: UInt32, _ kek: String = "old", _ byte: UInt8 = 1,
                        createdAt: Date = date) -> WrappedDataKey {
        WrappedDataKey(scope: scope, version: version, kekID: kek, wrapped: Array(repeating: byte, count: 60), createdAt: createdAt)
    }

    /// A scope written so its bytes show (non-ASCII as `\u{…}`).
    static func show(_ scope: String) -> String {
        scope.unicodeScalars.map { $0.isASCII ? String($0) : "\\u{\(String($0.value, radix: 16, uppercase: true))}" }.joined()
    }

    /// Keys described without their wrapped bytes: scope, version, master-key id, length, created-at.
    static func describe(_ keys: [WrappedDataKey]) -> String {
        "[" + keys.map { "(\(show($0.scope)) v\($0.version) kek=\($0.kekID) \($0.wrapped.count) bytes "
            + "#\($0.wrapped.first.map(String.init) ?? "-") at \($0.createdAt.timeIntervalSince1970))" }
            .joined(separator: ", ") + "]"
    }

    static func describe(_ key: WrappedDataKey?) -> String { key.map { describe([$0]) } ?? "nil" }

    static func describe(_ t: Tombstone?) -> String {
        t.map { "Tombstone(\(show($0.scope)), at \($0.shreddedAt.timeIntervalSince1970), versions \($0.destroyedVersions))" } ?? "nil"
    }

    static func sameBytes(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    /// Every key, paging 100 at a time. The suites store a few dozen keys at most, so more than
    /// ten pages, or a page that does not move the cursor on, is a store that pages forever.
    static func allKeys(_ store: any KeyStore, _ c: Checker) async throws -> [WrappedDataKey] {
        var out: [WrappedDataKey] = []
        var cursor: DataKeyCursor?
        for _ in 0..<10 {
            let page = try await store.dataKeys(after: cursor, limit: 100)
            out += page
            guard let last = page.last, page.count == 100 else { return out }
            let next = DataKeyCursor(scope: last.scope, version: last.version)
            guard next != cursor else {
                throw c.fail(expected: "dataKeys(after:limit:) moves on past its cursor",
                             observed: "the page after (\(show(next.scope)), v\(next.version)) ends with it again")
            }
            cursor = next
        }
        throw c.fail(expected: "the suite's few keys in at most ten pages of 100", observed: "more than 1,000 keys listed")
    }

    /// Keys compared field by field, scopes by their bytes.
    static func same(_ a: [WrappedDataKey], _ b: [WrappedDataKey]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { x, y in
            sameBytes(x.scope, y.scope) && x.version == y.version && x.kekID == y.kekID && x.wrapped == y.wrapped
                && x.createdAt == y.createdAt
        }
    }
}

// MARK: - Master-key checks and data keys

extension KeyStoreConformance {
    static let emptyStore: Body = { c, store in
        try c.equal(try await store.masterKeyChecks().count, 0, "the number of master-key checks")
        try c.equal(try await store.dataKeys(scope: "nobody").count, 0, "the keys of an unknown scope")
        try c.equal(try await store.dataKeys(after: nil, limit: 10).count, 0, "the first page of keys")
        try c.equal(try await store.tombstone(scope: "nobody"), nil, "the tombstone of an unknown scope", describe: describe)
        try c.equal(try await store.tombstones().count, 0, "the number of tombstones")
    }

    static let masterKeyChecks: Body = { c, store in
        let first = MasterKeyCheck(kekID: "kek-a", sealed: Array(repeating: 0xA1, count: 44), kdf: nil, createdAt: date)
        let second = MasterKeyCheck(kekID: "kek-b", sealed: Array(repeating: 0xB2, count: 44),
                                    kdf: KDFParameters(salt: Array(repeating: 7, count: 16), n: 1 << 14, r: 8, p: 2),
                                    createdAt: date.addingTimeInterval(60))
        let ids: ([MasterKeyCheck]) -> String = { "\($0.map(\.kekID))" }
        try await store.insertMasterKeyCheck(first)
        try await store.insertMasterKeyCheck(second)
        try c.equal(try await store.masterKeyChecks(), [first, second], "the checks, oldest first, every field intact", describe: ids)
        // A second check of the same master key is ignored.
        try await store.insertMasterKeyCheck(MasterKeyCheck(kekID: "kek-a", sealed: Array(repeating: 0xFF, count: 44), kdf: nil,
                                                            createdAt: date.addingTimeInterval(120)))
        let again = try await store.masterKeyChecks()
        try c.equal(again, [first, second], "the checks after a second check of kek-a (ignored)", describe: ids)
        try c.require(again.first?.sealed == first.sealed, "kek-a's first sealed value kept")
        try await store.deleteMasterKeyCheck(kekID: "kek-a")
        try c.equal(try await store.masterKeyChecks(), [second], "the checks after deleting kek-a", describe: ids)
        try await store.deleteMasterKeyCheck(kekID: "kek-unknown")
        try c.equal(try await store.masterKeyChecks(), [second], "the checks after deleting an unknown id", describe: ids)
    }

    static let dataKeyVersions: Body = { c, store in
        let keys = [wrapped("subject-1", 2, "kek-x", 2, createdAt: date.addingTimeInterval(2)),
                    wrapped("subject-1", 1, "kek-x", 1, createdAt: date.addingTimeInterval(1)),
                    wrapped("subject-1", 3, "kek-y", 3, createdAt: date.addingTimeInterval(3))]
        for k in keys { try await store.insertDataKey(k) }
        try await store.insertDataKey(wrapped("subject-2", 1))
        let sorted = keys.sorted { $0.version < $1.version }
        let back = try await store.dataKeys(scope: "subject-1")
        try c.require(same(back, sorted), "the versions lowest first, every field intact: \(describe(sorted))", observed: describe(back))
        // The look-up made while reading a record of a version answers with that version too.
        for v: UInt32 in [1, 3] {
            let reading = try await store.dataKeys(scope: "subject-1", reading: v)
            try c.require(reading.contains { sameBytes($0.scope, "subject-1") && $0.version == v && $0.wrapped == sorted[Int(v) - 1].wrapped },
                          "dataKeys(scope:reading: \(v)) holds version \(v)", observed: describe(reading))
            try c.require(reading.allSatisfy { sameBytes($0.scope, "subject-1") }, "dataKeys(scope:reading:) holds only the scope's keys",
                          observed: describe(reading))
        }
        try c.equal(try await store.dataKeys(scope: "subject-2").map(\.version), [1], "the other scope's versions")
        try c.equal(try await store.dataKeys(scope: "subject-").count, 0, "the keys of a prefix of the scope")
    }

    static let duplicateVersionRefused: Body = { c, store in
        let original = wrapped("subject-1", 1, "old", 1)
        try await store.insertDataKey(original)
        let e = try await c.keyManagementError(.keyExists, "inserting (subject-1, v1) again") {
            try await store.insertDataKey(wrapped("subject-1", 1, "new", 9))
        }
        try c.equal(e.scope, "subject-1", "the error's scope")
        // The version is named when the store knows it (PostgresStore's refusal names the scope only).
        try c.require(e.keyVersion == nil || e.keyVersion == 1, "the error's keyVersion, if named, = 1",
                      observed: "\(e.keyVersion.map(String.init) ?? "nil")")
        let back = try await store.dataKeys(scope: "subject-1")
        try c.require(same(back, [original]), "the first key kept: \(describe([original]))", observed: describe(back))
        try await store.insertDataKey(wrapped("subject-1", 2))
        try c.equal(try await store.dataKeys(scope: "subject-1").map(\.version), [1, 2], "the versions after inserting v2")
    }

    static let scopesByBytes: Body = { c, store in
        try c.require(composed == decomposed && !sameBytes(composed, decomposed),
                      "the suite's spellings are equal Strings with different bytes (else this behaviour proves nothing)")
        try await store.insertDataKey(wrapped(composed, 1, "old", 1))
        try await store.insertDataKey(wrapped(decomposed, 1, "old", 2))   // no keyExists: another scope
        let a = try await store.dataKeys(scope: composed), b = try await store.dataKeys(scope: decomposed)
        try c.require(same(a, [wrapped(composed, 1, "old", 1)]), "the composed spelling's own key only", observed: describe(a))
        try c.require(same(b, [wrapped(decomposed, 1, "old", 2)]), "the decomposed spelling's own key only", observed: describe(b))
        try c.equal(try await allKeys(store, c).count, 2, "the number of keys listed")
    }
}

// MARK: - Shredding

extension KeyStoreConformance {
    static let shredDeletesEveryVersion: Body = { c, store in
        for v: UInt32 in [1, 2] { try await store.insertDataKey(wrapped("subject-1", v)) }
        try await store.insertDataKey(wrapped("subject-2", 1))
        let at = date.addingTimeInterval(3600)
        let t = try await store.shred(scope: "subject-1", at: at)
        let expected = Tombstone(scope: "subject-1", shreddedAt: at, destroyedVersions: [1, 2])
        try c.equal(t, expected, "the tombstone returned", describe: describe)
        try c.equal(try await store.dataKeys(scope: "subject-1").count, 0, "the shredded scope's keys")
        try c.equal(try await store.tombstone(scope: "subject-1"), expected, "the stored tombstone", describe: describe)
        try c.equal(try await store.tombstones(), [expected], "every tombstone", describe: { "\($0.map { describe($0) })" })
        let listed = try await allKeys(store, c)
        try c.require(same(listed, [wrapped("subject-2", 1)]), "only the other scope's key listed", observed: describe(listed))
        try c.equal(try await store.tombstone(scope: "subject-2"), nil, "the other scope's tombstone", describe: describe)
    }

    static let shredTwiceRefused: Body = { c, store in
        try await store.insertDataKey(wrapped("subject-1", 1))
        let first = try await store.shred(scope: "subject-1", at: date)
        let e = try await c.keyManagementError(.shredded, "shredding subject-1 again") {
            try await store.shred(scope: "subject-1", at: date.addingTimeInterval(60))
        }
        try c.equal(e.scope, "subject-1", "the error's scope")
        try c.equal(try await store.tombstone(scope: "subject-1"), first, "the first tombstone, kept", describe: describe)
        try c.equal(try await store.tombstones().count, 1, "the number of tombstones")
    }

    static let insertAfterShredRefused: Body = { c, store in
        try await store.insertDataKey(wrapped("subject-1", 1))
        _ = try await store.shred(scope: "subject-1", at: date)
        for v: UInt32 in [1, 2] {
            let e = try await c.keyManagementError(.shredded, "inserting v\(v) of a shredded scope") {
                try await store.insertDataKey(wrapped("subject-1", v, "old", 5))
            }
            try c.equal(e.scope, "subject-1", "the error's scope")
        }
        try c.equal(try await store.dataKeys(scope: "subject-1").count, 0, "the shredded scope's keys")
        try c.equal(try await allKeys(store, c).count, 0, "the number of keys listed")
    }

    static let shredNeverKeyedScope: Body = { c, store in
        let t = try await store.shred(scope: "never-keyed", at: date)
        let expected = Tombstone(scope: "never-keyed", shreddedAt: date, destroyedVersions: [])
        try c.equal(t, expected, "the tombstone returned", describe: describe)
        try c.equal(try await store.tombstone(scope: "never-keyed"), expected, "the stored tombstone", describe: describe)
        _ = try await c.keyManagementError(.shredded, "inserting a key for the shredded scope") {
            try await store.insertDataKey(wrapped("never-keyed", 1))
        }
    }

    static let shredOneSpellingSparesTheOther: Body = { c, store in
        try await store.insertDataKey(wrapped(composed, 1, "old", 1))
        try await store.insertDataKey(wrapped(decomposed, 1, "old", 2))
        let t = try await store.shred(scope: composed, at: date)
        try c.require(sameBytes(t.scope, composed) && t.destroyedVersions == [1],
                      "a tombstone of the composed spelling's bytes destroying v1", observed: describe(t))
        let kept = try await store.dataKeys(scope: decomposed)
        try c.require(same(kept, [wrapped(decomposed, 1, "old", 2)]), "the other spelling's key kept", observed: describe(kept))
        try c.equal(try await store.tombstone(scope: decomposed), nil, "the other spelling's tombstone", describe: describe)
        try await store.insertDataKey(wrapped(decomposed, 2, "old", 3))
        try c.equal(try await store.dataKeys(scope: decomposed).map(\.version), [1, 2], "the other spelling's versions after a new one")
        try c.equal(try await store.tombstones().count, 1, "the number of tombstones")
    }
}

// MARK: - Rewrapping

extension KeyStoreConformance {
    /// A master key held by a helper command (CommandMasterKey) returns wrapped keys of its own
    /// length, up to 8,192 bytes; ids of tokens and helpers are `p11-…` and `cmd-…`.
    static let wrappedKeysOfAnyLength: Body = { c, store in
        let lengths = [1, 59, 61, 89, 255, 4096, 8192]
        for (i, n) in lengths.enumerated() {
            let key = WrappedDataKey(scope: "subject-\(i)", version: 1, kekID: "cmd-0123456789ab",
                                     wrapped: Array(repeating: UInt8(truncatingIfNeeded: n), count: n), createdAt: date)
            try await store.insertDataKey(key)
            let back = try await store.dataKeys(scope: key.scope)
            try c.require(same(back, [key]), "a wrapped key of \(n) bytes stored and returned byte for byte", observed: describe(back))
        }
        // A rewrap from a helper's 89 bytes to a token's 60, and from 60 to 8,192.
        try c.equal(try await store.rewrapDataKey(wrapped("subject-3", 1, "p11-0123456789ab", 7), previousKEKID: "cmd-0123456789ab"), true,
                    "a rewrap to a wrapped key of another length")
        let rewrapped = try await store.dataKeys(scope: "subject-3")
        try c.require(same(rewrapped, [wrapped("subject-3", 1, "p11-0123456789ab", 7)]), "the 60-byte wrapping stored", observed: describe(rewrapped))
        let long = WrappedDataKey(scope: "subject-3", version: 1, kekID: "cmd-ba9876543210",
                                  wrapped: Array(repeating: 9, count: 8192), createdAt: date)
        try c.equal(try await store.rewrapDataKeys([DataKeyRewrap(long, previousKEKID: "p11-0123456789ab")]), 1,
                    "a batch rewrap to a wrapped key of 8,192 bytes")
        let longBack = try await store.dataKeys(scope: "subject-3")
        try c.require(same(longBack, [long]), "the 8,192-byte wrapping stored", observed: describe(longBack))
        let check = MasterKeyCheck(kekID: "cmd-0123456789ab", sealed: Array(repeating: 3, count: 4000), kdf: nil, createdAt: date)
        try await store.insertMasterKeyCheck(check)
        let checks = try await store.masterKeyChecks()
        try c.require(checks.count == 1 && checks[0].kekID == check.kekID && checks[0].sealed == check.sealed,
                      "a check record of 4,000 bytes under a cmd-… id returned byte for byte",
                      observed: checks.map { "\($0.kekID) \($0.sealed.count) bytes" }.joined(separator: ", "))
        try c.equal(try await allKeys(store, c).count, lengths.count, "the number of keys")
    }

    static let rewrapOneKey: Body = { c, store in
        try await store.insertDataKey(wrapped("subject-1", 1, "old", 1))
        try c.equal(try await store.rewrapDataKey(wrapped("subject-1", 1, "new", 2), previousKEKID: "other"), false,
                    "a rewrap whose previous master key is not the stored one")
        try c.equal(try await store.rewrapDataKey(wrapped("subject-1", 2, "new", 2), previousKEKID: "old"), false,
                    "a rewrap of a version that does not exist")
        try c.equal(try await store.rewrapDataKey(wrapped("nobody", 1, "new", 2), previousKEKID: "old"), false,
                    "a rewrap of a scope that does not exist")
        let unchanged = try await store.dataKeys(scope: "subject-1")
        try c.require(same(unchanged, [wrapped("subject-1", 1, "old", 1)]), "the key unchanged by refused rewraps", observed: describe(unchanged))
        try c.equal(try await store.rewrapDataKey(wrapped("subject-1", 1, "new", 2), previousKEKID: "old"), true,
                    "a rewrap of the stored version under its master key")
        let back = try await store.dataKeys(scope: "subject-1")
        try c.require(same(back, [wrapped("subject-1", 1, "new", 2)]), "the new wrapping stored", observed: describe(back))
        try c.equal(try await store.rewrapDataKey(wrapped("subject-1", 1, "newer", 3), previousKEKID: "old"), false,
                    "a second rewrap from the old master key")
        try c.equal(try await allKeys(store, c).count, 1, "the number of keys (a rewrap adds none)")
    }

    static let rewrapBatchConditions: Body = { c, store in
        for (scope, version) in [("a", UInt32(1)), ("a", 2), ("b", 1), (composed, 1), (decomposed, 1)] {
            try await store.insertDataKey(wrapped(scope, version, "old", 1))
        }
        try await store.insertDataKey(wrapped("c", 1, "other", 1))
        let replaced = try await store.rewrapDataKeys([
            DataKeyRewrap(wrapped("a", 1, "new", 2), previousKEKID: "old"),             // replaced
            DataKeyRewrap(wrapped("a", 2, "new", 2), previousKEKID: "other"),           // not: under "old"
            DataKeyRewrap(wrapped("b", 1, "new", 2), previousKEKID: "old"),             // replaced
            DataKeyRewrap(wrapped("b", 9, "new", 2), previousKEKID: "old"),             // not: no such version
            DataKeyRewrap(wrapped("missing", 1, "new", 2), previousKEKID: "old"),       // not: no such scope
            DataKeyRewrap(wrapped(composed, 1, "new", 2), previousKEKID: "old"),        // replaced, not its twin
            DataKeyRewrap(wrapped("c", 1, "new", 2), previousKEKID: "other"),           // replaced
        ])
        try c.equal(replaced, 4, "the count of replaced versions")
        let rows = try await allKeys(store, c)
        func row(_ scope: String, _ version: UInt32) -> WrappedDataKey? {
            rows.first { sameBytes($0.scope, scope) && $0.version == version }
        }
        try c.equal(rows.count, 6, "the number of keys")
        let expected: [(String, UInt32, WrappedDataKey)] = [
            ("a", 1, wrapped("a", 1, "new", 2)), ("a", 2, wrapped("a", 2, "old", 1)), ("b", 1, wrapped("b", 1, "new", 2)),
            (composed, 1, wrapped(composed, 1, "new", 2)), (decomposed, 1, wrapped(decomposed, 1, "old", 1)),
            ("c", 1, wrapped("c", 1, "new", 2)),
        ]
        for (scope, version, key) in expected {
            let r = row(scope, version)
            try c.require(r.map { same([$0], [key]) } ?? false, "\(show(scope)) v\(version) = \(describe(key))", observed: describe(r))
        }
        try c.equal(try await store.rewrapDataKeys([]), 0, "the count of an empty batch")
    }

    static let rewrapBatchRepeatedVersionRefused: Body = { c, store in
        for scope in ["a", "b", composed, decomposed] { try await store.insertDataKey(wrapped(scope, 1, "old", 1)) }
        let before = try await allKeys(store, c)
        let e = try await c.keyManagementError(.invalidArgument, "a batch naming (b, v1) twice") {
            try await store.rewrapDataKeys([DataKeyRewrap(wrapped("a", 1, "new", 2), previousKEKID: "old"),
                                            DataKeyRewrap(wrapped("b", 1, "new", 2), previousKEKID: "old"),
                                            DataKeyRewrap(wrapped("b", 1, "newer", 3), previousKEKID: "new")])
        }
        try c.equal(e.scope, "b", "the error's scope")
        try c.equal(e.keyVersion, 1, "the error's keyVersion")
        let after = try await allKeys(store, c)
        try c.require(same(after, before), "no key changed: \(describe(before))", observed: describe(after))
        // The two spellings are two versions, not one named twice.
        try c.equal(try await store.rewrapDataKeys([DataKeyRewrap(wrapped(composed, 1, "new", 2), previousKEKID: "old"),
                                                    DataKeyRewrap(wrapped(decomposed, 1, "new", 2), previousKEKID: "old")]), 2,
                    "the count of a batch rewrapping both spellings")
    }
}

// MARK: - Paging and concurrency

extension KeyStoreConformance {
    static let pagingEachKeyOnce: Body = { c, store in
        let scopes = ["b", "a", "ab", "B", "\u{E9}", "e\u{301}", "\u{212A}", "K", "subject-10", "subject-9"]
        var inserted: [WrappedDataKey] = []
        for (i, scope) in scopes.enumerated() {
            for v in 1...UInt32(1 + i % 3) {
                let k = wrapped(scope, v, "old", UInt8(i))
                try await store.insertDataKey(k)
                inserted.append(k)
            }
        }
        // The store's order of scopes is its own (SQLite and the in-memory store order by bytes, a
        // PostgreSQL database by its collation); the first page of everything is the reference.
        let full = try await store.dataKeys(after: nil, limit: inserted.count + 10)
        try c.equal(full.count, inserted.count, "the number of keys in one page of everything")
        for k in inserted {
            try c.equal(full.filter { sameBytes($0.scope, k.scope) && $0.version == k.version }.count, 1,
                        "the number of times \(show(k.scope)) v\(k.version) is listed")
        }
        var runs: [String] = []
        for (i, k) in full.enumerated() {
            if i > 0, sameBytes(full[i - 1].scope, k.scope) {
                try c.require(full[i - 1].version < k.version, "versions ascending within a scope", observed: describe(full))
            } else {
                try c.require(!runs.contains { sameBytes($0, k.scope) }, "each scope's keys listed together", observed: describe(full))
                runs.append(k.scope)
            }
        }
        for limit in [1, 2, 3, 7] {
            var seen: [WrappedDataKey] = []
            var cursor: DataKeyCursor?
            var pages = 0
            while pages <= full.count {
                let page = try await store.dataKeys(after: cursor, limit: limit)
                try c.require(page.count <= limit, "a page of at most \(limit) keys", observed: "\(page.count)")
                seen += page
                pages += 1
                guard let last = page.last, page.count == limit else { break }
                cursor = DataKeyCursor(scope: last.scope, version: last.version)
            }
            try c.require(same(seen, full), "pages of \(limit) list every key once, in the order of one page of everything: "
                          + describe(full), observed: describe(seen))
        }
        try c.equal(try await store.dataKeys(after: nil, limit: 0).count, 0, "a page of limit 0")
        // Strictly after the cursor, also in the middle of a scope.
        let i = try requireIndex(full.firstIndex { sameBytes($0.scope, "ab") && $0.version == 1 }, c)
        let afterAb1 = try await store.dataKeys(after: DataKeyCursor(scope: "ab", version: 1), limit: 3)
        try c.require(same(afterAb1, Array(full[(i + 1)...].prefix(3))), "the three keys after (ab, v1)", observed: describe(afterAb1))
        let last = full[full.count - 1]
        try c.equal(try await store.dataKeys(after: DataKeyCursor(scope: last.scope, version: last.version), limit: 10).count, 0,
                    "a page after the last key")
    }

    static let concurrentInsertsOneWinner: Body = { c, store in
        let writers = 8
        let outcomes = try await withThrowingTaskGroup(of: (writer: Int, won: Bool).self) { group in
            for w in 0..<writers {
                group.addTask {
                    do {
                        try await store.insertDataKey(wrapped("contended", 1, "old", UInt8(w)))
                        return (w, true)
                    } catch let e as KeyManagementError where e.code == .keyExists {
                        try c.equal(e.scope, "contended", "the losing insert's error scope")
                        return (w, false)
                    }
                }
            }
            var all: [(writer: Int, won: Bool)] = []
            for try await o in group { all.append(o) }
            return all
        }
        let winners = outcomes.filter(\.won).map(\.writer)
        try c.equal(winners.count, 1, "the number of winning inserts")
        let stored = try await store.dataKeys(scope: "contended")
        try c.require(same(stored, [wrapped("contended", 1, "old", UInt8(winners[0]))]), "the winner's key stored",
                      observed: describe(stored))
    }

    static let shredRacingInserts: Body = { c, store in
        try await store.insertDataKey(wrapped("subject-1", 1))
        let versions = Array(UInt32(2)...UInt32(21))
        async let shredding = store.shred(scope: "subject-1", at: date)
        let inserted = try await withThrowingTaskGroup(of: UInt32?.self) { group in
            for v in versions {
                group.addTask {
                    do {
                        try await store.insertDataKey(wrapped("subject-1", v))
                        return v
                    } catch let e as KeyManagementError where e.code == .shredded {
                        return nil
                    }
                }
            }
            var out: [UInt32] = []
            for try await v in group { if let v { out.append(v) } }
            return out
        }
        let t = try await shredding
        try c.equal(try await store.dataKeys(scope: "subject-1").count, 0, "the scope's keys after the shred")
        try c.equal(t.destroyedVersions.sorted(), ([1] + inserted).sorted(),
                    "the destroyed versions: v1 and every insert that succeeded (the rest were refused)")
    }
}

private func requireIndex(_ i: Int?, _ c: Checker) throws(ConformanceFailure) -> Int {
    guard let i else { throw c.fail(expected: "(ab, v1) in the listing", observed: "it is missing") }
    return i
}
