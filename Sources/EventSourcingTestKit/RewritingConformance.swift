import EventSourcing
import Foundation
import KeyManagement

/// The behaviour every `RecordRewriting` recorder must show (the primitive under
/// re-encryption): the suite the library runs against its in-memory, SQLite and PostgreSQL
/// recorders, beside ``RecorderConformance``.
///
/// ```swift
/// @Test(arguments: RewritingConformance.Behaviour.allCases.filter { !$0.needsKeyStore })
/// func rewriting(_ behaviour: RewritingConformance.Behaviour) async throws {
///     try await RewritingConformance { let r = MyRecorder(); return .init(recorder: r, rewriting: r, snapshots: r) }
///         .check(behaviour)
/// }
/// ```
public struct RewritingConformance: Sendable {
    /// A store under test and how to release it.
    public struct Subject: Sendable {
        /// The recorder of events and notifications.
        public var recorder: any ApplicationRecorder
        /// The same store as a rewriting recorder.
        public var rewriting: any RecordRewriting
        /// The same store's snapshots.
        public var snapshots: any SnapshotRecorder
        /// The key store that shares the recorder's transactions (tombstones), if it has one.
        public var keyStore: (any KeyStore)?
        /// Releases the store; called once per behaviour.
        public var close: @Sendable () async throws -> Void

        /// Creates a subject.
        public init(recorder: any ApplicationRecorder, rewriting: any RecordRewriting, snapshots: any SnapshotRecorder,
                    keyStore: (any KeyStore)? = nil, close: @escaping @Sendable () async throws -> Void = {}) {
            self.recorder = recorder
            self.rewriting = rewriting
            self.snapshots = snapshots
            self.keyStore = keyStore
            self.close = close
        }
    }

    /// One behaviour the suite checks.
    public enum Behaviour: String, CaseIterable, Sendable, CustomStringConvertible {
        case onlyMatchingRowsChange
        case staleExpectedChangesNothing
        case coordinatesUnchanged
        case hostileBatchRefused
        case batchIsAtomic
        case snapshotsLikewise
        case snapshotPaging

        /// Whether the behaviour needs the subject's ``Subject/keyStore``.
        public var needsKeyStore: Bool { self == .batchIsAtomic }

        /// What the behaviour is, in a sentence.
        public var summary: String {
            switch self {
            case .onlyMatchingRowsChange: "a batch replaces exactly the events whose stored state equals `expected`, and counts them"
            case .staleExpectedChangesNothing: "a batch whose `expected` no longer matches changes nothing and returns 0; a second identical run replaces 0"
            case .coordinatesUnchanged: "notification ids, topics, versions and the log's length are unchanged; the log carries the new state at the old id"
            case .hostileBatchRefused: "a batch naming one record twice, or bigger than maxBatchSize, is refused with invalidArgument and changes nothing"
            case .batchIsAtomic: "a batch with one replacement stamped with a shredded scope fails with shredded and changes nothing"
            case .snapshotsLikewise: "snapshot rewrites replace only matching snapshots, stamp the key-scope column, and leave events alone"
            case .snapshotPaging: "selectSnapshots pages every snapshot once in (originator id bytes, version) order"
            }
        }

        public var description: String { rawValue }
    }

    private let makeStore: @Sendable () async throws -> Subject
    private let hasKeyStore: Bool

    /// Creates the suite.
    /// - Parameters:
    ///   - hasKeyStore: whether subjects have a key store; when false ``run()`` leaves out the
    ///     behaviours that need one.
    ///   - makeStore: makes a fresh, empty store; called once per behaviour.
    public init(hasKeyStore: Bool = true, makeStore: @escaping @Sendable () async throws -> Subject) {
        self.hasKeyStore = hasKeyStore
        self.makeStore = makeStore
    }

    /// The behaviours ``run()`` checks.
    public var behaviours: [Behaviour] { Behaviour.allCases.filter { hasKeyStore || !$0.needsKeyStore } }

    /// Checks every behaviour of ``behaviours``, each against a fresh store.
    /// - Throws: ``ConformanceFailures`` listing every behaviour that failed.
    public func run() async throws {
        try await runEach(behaviours, check)
    }

    /// Checks one behaviour against a fresh store, which is closed afterwards.
    /// - Throws: ``ConformanceFailure`` naming the behaviour.
    public func check(_ behaviour: Behaviour) async throws(ConformanceFailure) {
        try await checkOnFreshSubject(suite: "RewritingConformance", behaviour: behaviour.rawValue, subject: "store",
                                      make: makeStore, close: { try await $0.close() }) { c, subject in
            try await Self.body(of: behaviour)(c, subject)
        }
    }

    typealias Body = @Sendable (Checker, Subject) async throws -> Void

    private static func body(of behaviour: Behaviour) -> Body {
        switch behaviour {
        case .onlyMatchingRowsChange: onlyMatchingRowsChange
        case .staleExpectedChangesNothing: staleExpectedChangesNothing
        case .coordinatesUnchanged: coordinatesUnchanged
        case .hostileBatchRefused: hostileBatchRefused
        case .batchIsAtomic: batchIsAtomic
        case .snapshotsLikewise: snapshotsLikewise
        case .snapshotPaging: snapshotPaging
        }
    }
}

// MARK: - Helpers

extension RewritingConformance {
    static func sealed(_ scope: String, version: UInt32, seed: UInt8) -> [UInt8] {
        var s = RecorderConformance.handmadeEncryptedState(scope: scope, keyVersion: version)
        s[s.count - 1] = seed
        return s
    }

    static func event(_ id: UUID, _ version: Int, topic: String = "Thing.happened", scope: String, seed: UInt8) -> StoredEvent {
        let state = sealed(scope, version: 1, seed: seed)
        return StoredEvent(originatorID: id, originatorVersion: version, topic: topic, state: state,
                           keyScope: StateHeader.peekKeyScope(state))
    }

    static func rewrite(_ e: StoredEvent, to state: [UInt8], expected: [UInt8]? = nil) -> RecordRewrite {
        RecordRewrite(originatorID: e.originatorID, originatorVersion: e.originatorVersion, expected: expected ?? e.state,
                      state: state, keyScope: StateHeader.peekKeyScope(state))
    }

    static func all(_ r: any ApplicationRecorder) async throws -> [StoredNotification] {
        try await RecorderConformance.allNotifications(r)
    }

    static func states(_ r: any ApplicationRecorder, _ id: UUID) async throws -> [[UInt8]] {
        try await r.selectEvents(originatorID: id).map(\.state)
    }

    static func describe(_ n: [StoredNotification]) -> String {
        n.map { "\($0.id):\($0.originatorVersion):\($0.topic):\($0.state.count)B" }.joined(separator: ",")
    }
}

// MARK: - Events

extension RewritingConformance {
    static let onlyMatchingRowsChange: Body = { c, store in
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        let events = [event(a, 1, scope: "s-a", seed: 1), event(a, 2, scope: "s-a", seed: 2), event(a, 3, scope: "s-a", seed: 3)]
        let other = event(b, 1, scope: "s-b", seed: 4)
        _ = try await r.insertEvents(events)
        _ = try await r.insertEvents([other])
        let newA1 = sealed("s-a", version: 2, seed: 0xA1), newA2 = sealed("s-a", version: 2, seed: 0xA2)
        let replaced = try await store.rewriting.rewriteEvents([
            rewrite(events[0], to: newA1),
            rewrite(events[1], to: newA2, expected: sealed("s-a", version: 1, seed: 0x77)),   // stale
        ])
        try c.equal(replaced, 1, "events replaced (one matching, one stale)")
        try c.equal(try await states(r, a), [newA1, events[1].state, events[2].state], "aggregate a's states after the rewrite",
                    describe: { "\($0.map(\.last))" })
        try c.equal(try await states(r, b), [other.state], "the other aggregate's state", describe: { "\($0.map(\.last))" })
    }

    static let staleExpectedChangesNothing: Body = { c, store in
        let r = store.recorder
        let a = UUID()
        let events = [event(a, 1, scope: "s-a", seed: 1), event(a, 2, scope: "s-a", seed: 2)]
        _ = try await r.insertEvents(events)
        let before = try await all(r)
        let stale = events.map { rewrite($0, to: sealed("s-a", version: 3, seed: 9), expected: sealed("s-a", version: 1, seed: 0x55)) }
        try c.equal(try await store.rewriting.rewriteEvents(stale), 0, "events replaced by a batch of stale rewrites")
        try c.equal(try await all(r), before, "the log after a stale batch", describe: describe)
        // Unknown records are no match either.
        let ghost = RecordRewrite(originatorID: UUID(), originatorVersion: 1, expected: events[0].state, state: [1, 2, 3], keyScope: nil)
        try c.equal(try await store.rewriting.rewriteEvents([ghost]), 0, "events replaced by a rewrite of an unknown record")
        // Idempotent: once applied, the same batch is stale.
        let fresh = events.map { rewrite($0, to: sealed("s-a", version: 2, seed: UInt8($0.originatorVersion) + 0x10)) }
        try c.equal(try await store.rewriting.rewriteEvents(fresh), 2, "events replaced by a matching batch")
        try c.equal(try await store.rewriting.rewriteEvents(fresh), 0, "events replaced by the same batch run again")
        try c.equal(try await store.rewriting.rewriteEvents([]), 0, "events replaced by an empty batch")
    }

    static let coordinatesUnchanged: Body = { c, store in
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        let events = [event(a, 1, topic: "A.x", scope: "s-a", seed: 1), event(b, 1, topic: "B.y", scope: "s-b", seed: 2),
                      event(a, 2, topic: "A.z", scope: "s-a", seed: 3)]
        _ = try await r.insertEvents([events[0]])
        _ = try await r.insertEvents([events[1], events[2]])
        let before = try await all(r)
        let maxBefore = try await r.maxNotificationID()
        let new0 = sealed("s-a", version: 2, seed: 0xF0), new2 = sealed("s-new", version: 1, seed: 0xF2)
        try c.equal(try await store.rewriting.rewriteEvents([rewrite(events[0], to: new0), rewrite(events[2], to: new2)]), 2,
                    "events replaced")
        let after = try await all(r)
        try c.equal(after.count, before.count, "notifications in the log")
        try c.equal(try await r.maxNotificationID(), maxBefore, "the max notification id", describe: { "\(String(describing: $0))" })
        try c.equal(after.map(\.id), before.map(\.id), "notification ids", describe: { "\($0)" })
        try c.equal(after.map(\.topic), before.map(\.topic), "topics", describe: { "\($0)" })
        try c.equal(after.map(\.originatorID), before.map(\.originatorID), "originator ids", describe: { "\($0.count) ids" })
        try c.equal(after.map(\.originatorVersion), before.map(\.originatorVersion), "versions", describe: { "\($0)" })
        try c.equal(after.map(\.state), [new0, events[1].state, new2], "the log's states", describe: { "\($0.map(\.last))" })
        let selected = try await r.selectEvents(originatorID: a)
        try c.equal(selected.map(\.topic), ["A.x", "A.z"], "aggregate a's topics", describe: { "\($0)" })
        if let counting = r as? any KeyScopeCounting {
            try c.equal(try await counting.countEvents(keyScope: "s-new"), 1, "events counted under the stamped new scope")
            try c.equal(try await counting.countEvents(keyScope: "s-a"), 1, "events still counted under the old scope")
        }
    }

    static let hostileBatchRefused: Body = { c, store in
        let r = store.recorder
        let a = UUID()
        let e = event(a, 1, scope: "s-a", seed: 1)
        _ = try await r.insertEvents([e])
        let before = try await all(r)
        let twice = try await c.eventSourcingError(.invalidArgument, "a batch naming one event twice") {
            try await store.rewriting.rewriteEvents([rewrite(e, to: sealed("s-a", version: 2, seed: 5)),
                                                     rewrite(e, to: sealed("s-a", version: 2, seed: 6))])
        }
        try c.equal(twice.originatorID, a, "the refusal's originator id", describe: { "\(String(describing: $0))" })
        try c.equal(try await all(r), before, "the log after a refused batch", describe: describe)
        let big = (0...RecordRewrite.maxBatchSize).map {
            RecordRewrite(originatorID: UUID(), originatorVersion: $0, expected: [1], state: [2], keyScope: nil)
        } + [rewrite(e, to: sealed("s-a", version: 2, seed: 7))]
        _ = try await c.eventSourcingError(.invalidArgument, "a batch of more than maxBatchSize rewrites") {
            try await store.rewriting.rewriteEvents(big)
        }
        _ = try await c.eventSourcingError(.invalidArgument, "a batch of more than maxBatchSize snapshot rewrites") {
            try await store.rewriting.rewriteSnapshots(big)
        }
        _ = try await c.eventSourcingError(.invalidArgument, "a rewrite with an empty replacement") {
            try await store.rewriting.rewriteEvents([rewrite(e, to: [])])
        }
        try c.equal(try await all(r), before, "the log after the refused batches", describe: describe)
    }

    static let batchIsAtomic: Body = { c, store in
        guard let keyStore = store.keyStore else {
            throw c.fail(expected: "a subject with a key store", observed: "none")
        }
        let r = store.recorder
        let (a, b) = (UUID(), UUID())
        let ea = event(a, 1, scope: "s-a", seed: 1), eb = event(b, 1, scope: "s-b", seed: 2)
        _ = try await r.insertEvents([ea, eb])
        let snap = RecorderConformance.snapshot(a, 1, state: sealed("s-a", version: 1, seed: 3))
        try await store.snapshots.insertSnapshot(snap)
        _ = try await keyStore.shred(scope: "s-dead", at: Date(timeIntervalSince1970: 1_700_000_000))
        let before = try await all(r)
        let batch = [rewrite(ea, to: sealed("s-a", version: 2, seed: 9)), rewrite(eb, to: sealed("s-dead", version: 1, seed: 9))]
        let refused = try await c.keyManagementError(.shredded, "a batch with a replacement stamped with a shredded scope") {
            try await store.rewriting.rewriteEvents(batch)
        }
        try c.equal(refused.scope, "s-dead", "the refusal's scope", describe: { "\(String(describing: $0))" })
        let afterLog = try await all(r)
        // The shred itself may have appended its erasure record; nothing else may change.
        try c.equal(Array(afterLog.prefix(before.count)), before, "the log after the refused batch", describe: describe)
        try c.equal(afterLog.count, before.count, "notifications after the refused batch")
        _ = try await c.keyManagementError(.shredded, "a snapshot batch with a replacement stamped with a shredded scope") {
            try await store.rewriting.rewriteSnapshots([rewrite(snap, to: sealed("s-a", version: 2, seed: 1)),
                                                        RecordRewrite(originatorID: UUID(), originatorVersion: 1, expected: [1],
                                                                      state: sealed("s-dead", version: 1, seed: 1), keyScope: "s-dead")])
        }
        try c.equal(try await store.snapshots.selectSnapshot(originatorID: a, lte: nil), snap, "the snapshot after the refused batch",
                    describe: { "\(String(describing: $0?.state.last))" })
    }
}

// MARK: - Snapshots

extension RewritingConformance {
    static let snapshotsLikewise: Body = { c, store in
        let (r, snaps) = (store.recorder, store.snapshots)
        let (a, b) = (UUID(), UUID())
        let ev = event(a, 2, scope: "s-a", seed: 1)
        _ = try await r.insertEvents([event(a, 1, scope: "s-a", seed: 0), ev])
        let s1 = RecorderConformance.snapshot(a, 2, state: sealed("s-a", version: 1, seed: 2))
        let s2 = RecorderConformance.snapshot(b, 1, state: sealed("s-b", version: 1, seed: 3))
        try await snaps.insertSnapshot(s1)
        try await snaps.insertSnapshot(s2)
        let logBefore = try await all(r)
        let new1 = sealed("s-moved", version: 1, seed: 0xE1)
        let replaced = try await store.rewriting.rewriteSnapshots([
            rewrite(s1, to: new1),
            rewrite(s2, to: sealed("s-b", version: 2, seed: 0xE2), expected: sealed("s-b", version: 1, seed: 0x44)),   // stale
        ])
        try c.equal(replaced, 1, "snapshots replaced (one matching, one stale)")
        try c.equal(try await snaps.selectSnapshot(originatorID: a, lte: nil)?.state, new1, "a's snapshot state",
                    describe: { "\(String(describing: $0?.last))" })
        try c.equal(try await snaps.selectSnapshot(originatorID: b, lte: nil)?.state, s2.state, "b's snapshot state",
                    describe: { "\(String(describing: $0?.last))" })
        try c.equal(try await all(r), logBefore, "the log after snapshot rewrites", describe: describe)
        try c.equal(try await store.rewriting.rewriteSnapshots([rewrite(s1, to: new1)]), 0, "the same snapshot rewrite run again")
        // The stamped scope is the one a shred's snapshot deletion finds.
        try c.equal(try await snaps.deleteSnapshots(keyScope: "s-a"), 0, "snapshots deleted under the old scope")
        try c.equal(try await snaps.deleteSnapshots(keyScope: "s-moved"), 1, "snapshots deleted under the stamped scope")
        // An event rewrite never touches snapshots and the other way round.
        try c.equal(try await store.rewriting.rewriteSnapshots([rewrite(ev, to: new1)]), 0,
                    "a snapshot rewrite naming an event's coordinates")
    }

    static let snapshotPaging: Body = { c, store in
        var ids = (0..<5).map { _ in UUID() }
        var counts: [UUID: Int] = [:]
        for (k, id) in ids.enumerated() {
            counts[id] = 1 + k % 3
            for v in [3, 1, 2] where v <= 1 + k % 3 {
                try await store.snapshots.insertSnapshot(RecorderConformance.snapshot(id, v, state: sealed("s", version: 1, seed: UInt8(v))))
            }
        }
        ids.sort { a, b in withUnsafeBytes(of: a.uuid) { x in withUnsafeBytes(of: b.uuid) { y in x.lexicographicallyPrecedes(y) } } }
        let expected = ids.flatMap { id in (1...(counts[id] ?? 1)).map { "\(id.uuidString.lowercased())/\($0)" } }
        var seen: [String] = []
        var cursor: SnapshotCursor?
        var pages = 0
        while pages < 100 {
            pages += 1
            let page = try await store.rewriting.selectSnapshots(after: cursor, limit: 2)
            guard let last = page.last else { break }
            try c.require(page.count <= 2, "a page of at most 2", observed: "\(page.count)")
            seen += page.map { "\($0.originatorID.uuidString.lowercased())/\($0.originatorVersion)" }
            cursor = SnapshotCursor(after: last)
        }
        try c.equal(seen, expected, "snapshots paged in order", describe: { "\($0.count): \($0.map { $0.suffix(4) })" })
        try c.equal(try await store.rewriting.selectSnapshots(after: nil, limit: 0), [], "a page of limit 0",
                    describe: { "\($0.count)" })
        try c.equal(try await store.rewriting.selectSnapshots(after: nil, limit: -1), [], "a page of limit -1",
                    describe: { "\($0.count)" })
    }
}
