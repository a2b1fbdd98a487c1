import Foundation
import KeyManagement

/// A store that can be told to refuse unencrypted records from now on: the last step of
/// encrypting a store written without a cipher
/// (``Application/encryptPlaintextRecords(options:progress:)``).
///
/// Once set, the refusal holds for every process and every connection, whatever the store's own
/// settings (such as SQLite's and PostgreSQL's `allowsPlaintextWrites`, which lets an
/// application without a keyring write during a migration): an unencrypted event or snapshot is
/// refused with ``EventSourcingError/Code/plaintextRejected`` naming the record, and nothing of
/// its save is written. A shred's erasure record (plaintext by design, ``ErasureRecord``) is
/// still taken.
public protocol PlaintextRefusing: Sendable {
    /// Makes the store refuse unencrypted records from now on, if it holds none: the check and
    /// the setting are one atomic step, so no unencrypted record can slip in between.
    /// - Returns: how many unencrypted events and snapshots the store holds (erasure records not
    ///   counted): 0 when it now refuses them; otherwise nothing was changed.
    func refusePlaintextWrites() async throws -> Int

    /// Whether the store refuses unencrypted records (``refusePlaintextWrites()`` returned 0 once).
    func refusesPlaintextWrites() async throws -> Bool
}

/// Encrypting a store that was written without a cipher (issue 17; SECURITY.md §7.8, the
/// runbook in Operations §16): every unencrypted event and snapshot is sealed in place, under
/// its aggregate's key scope, by ``Application/encryptPlaintextRecords(options:progress:)``.
public enum PlaintextEncryption {
    /// How a pass runs and picks scopes.
    public struct Options: Sendable {
        /// Records read and rewritten per page: one rewrite transaction each. 1 to
        /// `RecordRewrite.maxBatchSize`; 500 by default.
        public var pageSize: Int
        /// The key scope of each aggregate named here, such as a data subject (esctl's
        /// `--subjects` file). It wins over ``resolveScope`` and the default.
        public var scopes: [UUID: String]
        /// Asked for each aggregate that ``scopes`` does not name and that has no encrypted
        /// record yet, with its first stored event (version 1; nil when the store holds none):
        /// returns the aggregate's key scope, or nil for the default, its own id in lowercase.
        /// ``Application/encryptPlaintextRecords(aggregateTypes:options:progress:)`` sets one that
        /// replays the creation event to read ``Aggregate/dataSubject``.
        public var resolveScope: (@Sendable (_ originatorID: UUID, _ creation: StoredEvent?) async throws -> String?)?
        /// Once the pass has left no unencrypted record, tell the store to refuse new ones
        /// (``PlaintextRefusing``, when the recorder is one). True by default.
        public var refusePlaintextAfterwards: Bool
        /// After the pass, how long the removal of the old plaintext bytes from the store's files
        /// may wait for what holds it up (``ErasureResidueScrubbing``, when the recorder is one:
        /// SQLite's WAL checkpoint, held up by a long read). 1 second by default; nil skips it.
        public var residueTimeout: Duration?

        /// Creates options.
        public init(pageSize: Int = 500, scopes: [UUID: String] = [:],
                    resolveScope: (@Sendable (_ originatorID: UUID, _ creation: StoredEvent?) async throws -> String?)? = nil,
                    refusePlaintextAfterwards: Bool = true, residueTimeout: Duration? = .seconds(1)) {
            self.pageSize = pageSize
            self.scopes = scopes
            self.resolveScope = resolveScope
            self.refusePlaintextAfterwards = refusePlaintextAfterwards
            self.residueTimeout = residueTimeout
        }
    }

    /// Where a pass is, for a progress display.
    public struct Progress: Sendable, Hashable {
        /// Which records the pass is reading.
        public enum Phase: String, Sendable, Hashable { case events, snapshots }
        /// Events first, then snapshots.
        public var phase: Phase
        /// Records of this phase examined so far.
        public var examined: Int
        /// Records of this phase encrypted so far.
        public var encrypted: Int
        /// The last notification id read (events), nil for snapshots.
        public var notificationID: Int64?
    }

    /// What a pass did.
    public struct Report: Sendable {
        /// Events read (erasure records included).
        public var eventsExamined = 0
        /// Events sealed by this pass.
        public var eventsEncrypted = 0
        /// Events that were encrypted already (left as they are).
        public var eventsAlreadyEncrypted = 0
        /// Shreds' erasure records: plaintext by design (a scope and a time), left as they are.
        public var erasureRecords = 0
        /// Snapshots read.
        public var snapshotsExamined = 0
        /// Snapshots sealed by this pass.
        public var snapshotsEncrypted = 0
        /// Snapshots that were encrypted already.
        public var snapshotsAlreadyEncrypted = 0
        /// Data keys this pass created (scopes that had none).
        public var keysCreated = 0
        /// Records sealed by this pass, by key scope: at most ``maxScopesListed`` scopes, the
        /// rest counted in ``recordsInUnlistedScopes``.
        public var encryptedByScope: [String: Int] = [:]
        /// Records sealed under scopes not listed in ``encryptedByScope``.
        public var recordsInUnlistedScopes = 0
        /// Pages read again because a record changed between the read and the rewrite (another
        /// pass, a re-encryption), or a scope's first key was created by another writer meanwhile.
        public var pagesRetried = 0
        /// Records left unencrypted because they could not be sealed, each error naming the
        /// record (at most ``maxFailuresListed``; ``failed`` counts them all).
        public var failures: [EventSourcingError] = []
        /// How many records were left unencrypted for an error.
        public var failed = 0
        /// Unencrypted events and snapshots in the store after the pass (erasure records not
        /// counted), when the store can count them; nil when it cannot.
        public var plaintextLeft: Int?
        /// Whether the store refuses unencrypted records now (``PlaintextRefusing``).
        public var plaintextRefused = false
        /// Whether the store's files may still hold old plaintext bytes (``ErasureResidueScrubbing``:
        /// SQLite's WAL checkpoint was held up; `esctl scrub` or `scrubErasureResidue(timeout:)`
        /// finishes it), nil when the store is not one or ``PlaintextEncryption/Options/residueTimeout`` is nil.
        public var residue: ErasureResidueStatus?

        /// The most scopes ``encryptedByScope`` lists.
        public static let maxScopesListed = 1_000
        /// The most errors ``failures`` holds.
        public static let maxFailuresListed = 100

        /// Events and snapshots sealed by this pass.
        public var encrypted: Int { eventsEncrypted + snapshotsEncrypted }

        mutating func fail(_ e: EventSourcingError) {
            failed += 1
            if failures.count < Self.maxFailuresListed { failures.append(e) }
        }

        mutating func sealed(_ count: Int, scope: String) {
            if encryptedByScope[scope] != nil || encryptedByScope.count < Self.maxScopesListed {
                encryptedByScope[scope, default: 0] += count
            } else {
                recordsInUnlistedScopes += count
            }
        }
    }
}

extension Application {
    /// Encrypts a store written without a cipher, online: seals every unencrypted event and
    /// snapshot in place, under its aggregate's key scope, with the application's cipher.
    ///
    /// Records keep their coordinates, topics and notification ids (followers of the log do not
    /// see them again); their payloads are kept byte for byte, in the encoding and compression
    /// they were written with, and sealed as the mapper seals a new record, so they read as if
    /// they had been written encrypted. Records that are encrypted already are left alone, so a
    /// second pass seals none: the pass is idempotent, and a pass cut short (killed, cancelled,
    /// a lost connection) is finished by running it again. Each page of records is one rewrite
    /// transaction, conditional on every record still being what was read: the application (and
    /// others) keep saving meanwhile, and a record changed between the read and the rewrite is
    /// read again.
    ///
    /// The key scope of an aggregate is, in this order: its entry in ``PlaintextEncryption/Options/scopes``;
    /// the scope of a record of it that is encrypted already (all of one aggregate's records end
    /// under one scope: a mapping that names another scope fails that aggregate's records);
    /// what ``PlaintextEncryption/Options/resolveScope`` returns; else its own id in lowercase
    /// (what `AggregateRoot` uses for an aggregate without a data subject). An aggregate whose
    /// state names a data subject must be mapped or resolved (see
    /// ``encryptPlaintextRecords(aggregateTypes:options:progress:)``), or its records would be
    /// sealed under its own id where the application looks for its subject's key. A scope's first
    /// data key is stored before the records sealed under it.
    ///
    /// A record that cannot be sealed (its payload does not parse, its scope was shredded, its
    /// scope mapping conflicts) is left as it is and reported with an error naming it; the pass
    /// carries on. Once the pass leaves no unencrypted record and the recorder is
    /// ``PlaintextRefusing``, it is told to refuse new ones (unless
    /// ``PlaintextEncryption/Options/refusePlaintextAfterwards`` is false).
    ///
    /// Then, when the recorder is ``ErasureResidueScrubbing`` (SQLite), the old plaintext bytes
    /// are removed from its files (``PlaintextEncryption/Report/residue`` says whether that was
    /// held up). PostgreSQL keeps them in dead row versions until VACUUM: SECURITY.md §7.8.
    /// - Parameters:
    ///   - options: the page size, scopes, and what to do afterwards.
    ///   - progress: called after each page.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` without a cipher, when the recorder
    ///   (or the snapshot recorder) is not ``RecordRewriting``, or for a page size out of range,
    ///   before anything is changed; `CancellationError` between pages; the store's errors and
    ///   `.keySourceFailed` when the master key's token or helper fails (the pages before are
    ///   done, nothing of the failing page is written, a rerun finishes).
    public func encryptPlaintextRecords(options: PlaintextEncryption.Options = .init(),
                                        progress: (@Sendable (PlaintextEncryption.Progress) -> Void)? = nil)
        async throws -> PlaintextEncryption.Report {
        guard let cipher = mapper.cipher else {
            throw EventSourcingError(.invalidArgument,
                "encrypting a store needs an application whose Mapper has a cipher (a Keyring); nothing was changed")
        }
        guard let rewriter = recorder as? any RecordRewriting else {
            throw EventSourcingError(.invalidArgument,
                "the application's recorder (\(type(of: recorder))) cannot rewrite records (RecordRewriting); nothing was changed")
        }
        var snapshotRewriter: (any RecordRewriting)?
        if let snapshotRecorder {
            guard let r = snapshotRecorder as? any RecordRewriting else {
                throw EventSourcingError(.invalidArgument,
                    "the application's snapshot recorder (\(type(of: snapshotRecorder))) cannot rewrite records (RecordRewriting); nothing was changed")
            }
            snapshotRewriter = r
        }
        guard options.pageSize >= 1, options.pageSize <= RecordRewrite.maxBatchSize else {
            throw EventSourcingError(.invalidArgument,
                "the page size must be 1 to \(RecordRewrite.maxBatchSize) (it is \(options.pageSize)); nothing was changed")
        }
        var pass = PlaintextPass(app: self, cipher: cipher, options: options)
        var start: Int64 = 1
        while true {
            try Task.checkCancellation()
            let page = try await recorder.selectNotifications(start: start, limit: options.pageSize, stop: nil, topics: [])
            guard let last = page.last else { break }
            try await pass.events(page, rewriter)
            progress?(.init(phase: .events, examined: pass.report.eventsExamined, encrypted: pass.report.eventsEncrypted,
                            notificationID: last.id))
            guard last.id < Int64.max else { break }
            start = last.id + 1
        }
        if let snapshotRewriter {
            var cursor: SnapshotCursor?
            while true {
                try Task.checkCancellation()
                let page = try await snapshotRewriter.selectSnapshots(after: cursor, limit: options.pageSize)
                guard let last = page.last else { break }
                try await pass.snapshots(page, after: cursor, snapshotRewriter)
                progress?(.init(phase: .snapshots, examined: pass.report.snapshotsExamined,
                                encrypted: pass.report.snapshotsEncrypted, notificationID: nil))
                cursor = SnapshotCursor(after: last)
            }
        }
        var report = pass.report
        if let refusing = recorder as? any PlaintextRefusing {
            if options.refusePlaintextAfterwards {
                // Counts what is left, and sets the refusal only when that is nothing.
                let left = try await refusing.refusePlaintextWrites()
                report.plaintextLeft = left
                report.plaintextRefused = left == 0
            } else {
                report.plaintextRefused = try await refusing.refusesPlaintextWrites()
            }
        }
        if let timeout = options.residueTimeout, let scrubbing = recorder as? any ErasureResidueScrubbing {
            // The old pages: overwritten in the database file (secure_delete), dropped from the WAL.
            report.residue = try await scrubbing.scrubErasureResidue(timeout: timeout)
        }
        if report.plaintextLeft == nil, let counting = recorder as? any KeyScopeCounting, snapshotRewriter == nil {
            report.plaintextLeft = try await counting.countPlaintextEvents()
        }
        return report
    }

    /// ``encryptPlaintextRecords(options:progress:)`` for an application that knows its
    /// aggregate types: an aggregate that ``PlaintextEncryption/Options/scopes`` does not name
    /// and that has no encrypted record yet gets the scope `AggregateRoot` would give it, its
    /// creation event's ``Aggregate/dataSubject`` (else its own id), read by decoding its first
    /// event as the type whose ``Aggregate/typeName`` its topic names. An aggregate of a type not
    /// listed gets ``PlaintextEncryption/Options/resolveScope``'s answer, else its own id.
    /// - Parameters:
    ///   - aggregateTypes: the application's aggregate types (at least those with a data subject).
    ///   - options: as for ``encryptPlaintextRecords(options:progress:)``; its `resolveScope` is
    ///     asked for aggregates of other types.
    ///   - progress: called after each page.
    /// - Throws: as ``encryptPlaintextRecords(options:progress:)``; a creation event that does
    ///   not decode fails that aggregate's records (reported, left as they are).
    public func encryptPlaintextRecords(aggregateTypes: [any Aggregate.Type], options: PlaintextEncryption.Options = .init(),
                                        progress: (@Sendable (PlaintextEncryption.Progress) -> Void)? = nil)
        async throws -> PlaintextEncryption.Report {
        var options = options
        let fallback = options.resolveScope
        let reader = Mapper(cipher: mapper.cipher, configuration: {
            var c = mapper.configuration
            c.plaintextReads = .allowed
            return c
        }())
        let types = aggregateTypes
        options.resolveScope = { id, creation in
            if let creation {
                for type in types where Self.topic(creation.topic, isOf: type.typeName) {
                    return try await Self.creationScope(type, creation, reader)
                }
            }
            return try await fallback?(id, creation)
        }
        return try await encryptPlaintextRecords(options: options, progress: progress)
    }

    static func topic(_ topic: String, isOf typeName: String) -> Bool {
        let name = typeName.utf8, t = topic.utf8
        return t.count > name.count + 1 && t.starts(with: name) && t[t.index(t.startIndex, offsetBy: name.count)] == UInt8(ascii: ".")
    }

    /// The key scope `AggregateRoot` gives an `A` created by `creation`: its data subject, else its id.
    static func creationScope<A: Aggregate>(_ type: A.Type, _ creation: StoredEvent, _ reader: Mapper) async throws -> String {
        var root = AggregateRoot<A>(id: creation.originatorID)
        try root.apply(try await reader.decode(creation, as: A.self))
        return root.keyScope
    }
}

/// One pass of ``Application/encryptPlaintextRecords(options:progress:)``: the pages, the scopes
/// resolved so far (a bounded cache) and the report.
struct PlaintextPass {
    let app: Application
    let cipher: any RecordCipher
    let options: PlaintextEncryption.Options
    var report = PlaintextEncryption.Report()
    /// Aggregates' scopes (or why none), reset when it holds ``maxCached``.
    private var scopes: [UUID: Result<String, EventSourcingError>] = [:]
    static let maxCached = 10_000
    /// How many times a page is read again after a record changed under it.
    static let maxAttempts = 5

    init(app: Application, cipher: any RecordCipher, options: PlaintextEncryption.Options) {
        self.app = app
        self.cipher = cipher
        self.options = options
    }

    /// A record to seal, and where it was read.
    private struct Candidate {
        var stored: StoredEvent
        var notificationID: Int64?
    }

    /// A record of the current page that failed (reported once): left out when the page is read again.
    private struct RecordID: Hashable {
        var id: UUID
        var version: Int
    }
    private var failedInPage: Set<RecordID> = []

    private mutating func fail(_ e: EventSourcingError, _ c: Candidate) {
        report.fail(e)
        failedInPage.insert(RecordID(id: c.stored.originatorID, version: c.stored.originatorVersion))
    }

    private func failedBefore(_ r: StoredEvent) -> Bool {
        failedInPage.contains(RecordID(id: r.originatorID, version: r.originatorVersion))
    }

    mutating func events(_ page: [StoredNotification], _ rewriter: any RecordRewriting) async throws {
        var current = page
        var attempt = 0, reads = 0
        failedInPage.removeAll()
        while attempt < Self.maxAttempts {
            var candidates: [Candidate] = []
            for n in current {
                if reads == 0 { report.eventsExamined += 1 }
                if ErasureRecord.isErasure(topic: n.topic) {
                    if reads == 0 { report.erasureRecords += 1 }
                } else if StateHeader.isEncrypted(n.state) {
                    if reads == 0 { report.eventsAlreadyEncrypted += 1 }
                } else if !failedBefore(n.storedEvent) {
                    candidates.append(Candidate(stored: n.storedEvent, notificationID: n.id))
                }
            }
            reads += 1
            guard !candidates.isEmpty else { return }
            let (done, complete, deferred) = try await seal(candidates, snapshot: false) { try await rewriter.rewriteEvents($0) }
            report.eventsEncrypted += done
            if complete && !deferred { return }
            if !complete {
                attempt += 1
                report.pagesRetried += 1
            }
            // Read the page again: what changed under it is encrypted now, or is sealed on the next
            // attempt; records left for a scope's next key (deferred) are sealed now.
            guard let first = page.first, let last = page.last else { return }
            current = try await app.recorder.selectNotifications(start: first.id, limit: page.count, stop: last.id, topics: [])
        }
        throw EventSourcingError(.concurrencyConflict,
            "records of notifications \(page.first?.id ?? 0)…\(page.last?.id ?? 0) kept changing while they were encrypted "
            + "(\(Self.maxAttempts) attempts); run the pass again", notificationID: page.first?.id)
    }

    mutating func snapshots(_ page: [StoredEvent], after cursor: SnapshotCursor?, _ rewriter: any RecordRewriting) async throws {
        var current = page
        var attempt = 0, reads = 0
        failedInPage.removeAll()
        while attempt < Self.maxAttempts {
            var candidates: [Candidate] = []
            for s in current {
                if reads == 0 { report.snapshotsExamined += 1 }
                if StateHeader.isEncrypted(s.state) {
                    if reads == 0 { report.snapshotsAlreadyEncrypted += 1 }
                } else if !failedBefore(s) {
                    candidates.append(Candidate(stored: s, notificationID: nil))
                }
            }
            reads += 1
            guard !candidates.isEmpty else { return }
            let (done, complete, deferred) = try await seal(candidates, snapshot: true) { try await rewriter.rewriteSnapshots($0) }
            report.snapshotsEncrypted += done
            if complete && !deferred { return }
            if !complete {
                attempt += 1
                report.pagesRetried += 1
            }
            // The same range again (a snapshot deleted meanwhile lets one of the next page in: it is
            // sealed here, and the next page finds it encrypted).
            current = try await rewriter.selectSnapshots(after: cursor, limit: page.count)
        }
        throw EventSourcingError(.concurrencyConflict,
            "snapshots kept changing while they were encrypted (\(Self.maxAttempts) attempts); run the pass again",
            originatorID: page.first?.originatorID, originatorVersion: page.first?.originatorVersion)
    }

    /// Seals `candidates` and rewrites them in one call of `rewrite`. Each scope's key is taken
    /// once, with its records' encryptions reserved (SECURITY.md §10): a key ring rotates a
    /// full version first. A scope with more records than one version may seal (its
    /// `encryptionLimit`) seals that many; the rest wait for the page's next reading, once the
    /// new key is stored.
    /// - Returns: how many were rewritten, whether every one that was sealed was (false: read
    ///   the page again), and whether records were left for a scope's next key (read it again too).
    private mutating func seal(_ candidates: [Candidate], snapshot: Bool,
                               rewrite: ([RecordRewrite]) async throws -> Int) async throws -> (Int, Bool, Bool) {
        // By exact scope bytes: canonically equivalent spellings are different scopes, with different keys.
        var keys: [ExactScope: SealingKey] = [:]
        var keyFailures: [ExactScope: EventSourcingError] = [:]
        var minted: [SealingKey] = []
        var rewrites: [RecordRewrite] = []
        var sealedScopes: [String] = []
        var sealedFrom: [Candidate] = []
        // Scopes first: a scope's key is taken with all of its records here reserved.
        var resolved: [(Candidate, String)] = []
        var perScope: [ExactScope: Int] = [:]
        for c in candidates {
            switch await self.scope(of: c.stored.originatorID) {
            case .success(let s):
                resolved.append((c, s))
                perScope[ExactScope(s), default: 0] += 1
            case .failure(let e):
                fail(Self.naming(e, c), c)
            }
        }
        let limit = app.mapper.keyring.map { Int(clamping: $0.encryptionLimit) } ?? Int.max
        var taken: [ExactScope: Int] = [:]
        var deferred = false
        for (c, scope) in resolved {
            let exact = ExactScope(scope)
            if let e = keyFailures[exact] {
                fail(Self.naming(e, c), c)
                continue
            }
            if taken[exact, default: 0] >= limit {
                // The key has no room for more: sealed on the page's next reading, under the next version.
                deferred = true
                continue
            }
            let key: SealingKey
            if let k = keys[exact] {
                key = k
            } else {
                do {
                    key = try await cipher.sealingKey(for: scope, likelyNew: false,
                                                      encryptions: min(perScope[exact] ?? 1, limit))
                } catch {
                    let e = Mapper.translate(error, stored: c.stored, scope: scope)
                    // The master key's token or helper failed: every other scope's key would fail
                    // the same way (each after its timeout), so the pass stops, nothing of the
                    // page written.
                    if e.code == .keySourceFailed { throw Self.naming(e, c) }
                    keyFailures[exact] = e
                    fail(Self.naming(e, c), c)
                    continue
                }
                keys[exact] = key
                if key.minted != nil { minted.append(key) }
            }
            taken[exact, default: 0] += 1
            do {
                guard let sealed = try app.mapper.sealPlaintext(c.stored, snapshot: snapshot, key: key.key,
                                                                notificationID: c.notificationID) else { continue }
                rewrites.append(RecordRewrite(originatorID: c.stored.originatorID, originatorVersion: c.stored.originatorVersion,
                                              expected: c.stored.state, state: sealed.state, keyScope: sealed.keyScope))
                sealedScopes.append(scope)
                sealedFrom.append(c)
            } catch {
                fail(error, c)
            }
        }
        guard !rewrites.isEmpty else { return (0, true, deferred) }
        if !minted.isEmpty {
            // A scope's first key is stored before any record sealed under it.
            do {
                if let keyStore = cipher.keyStore, let combined = app.recorder as? any KeyCommittingRecorder,
                   combined.sharesTransactions(with: keyStore) {
                    // The page's new keys in one transaction of the store (no event), not one each.
                    _ = try await combined.insertEvents([], newKeys: minted.compactMap(\.minted))
                    cipher.didPersist(minted)
                } else {
                    try await cipher.persist(minted)
                }
            } catch let e as KeyManagementError where e.code == .keyExists {
                // Another writer created one of these scopes' first key: seal under its key.
                for k in minted { cipher.invalidate(scope: k.key.scope) }
                return (0, false, deferred)
            } catch {
                throw Mapper.translate(error, stored: nil, scope: minted[0].key.scope)
            }
            report.keysCreated += minted.count
        }
        let done: Int
        while true {
            do {
                done = try await rewrite(rewrites)
                break
            } catch let e as KeyManagementError where e.code == .shredded && e.scope != nil {
                // A scope of the page was shredded since its key was taken (the recorder refused
                // the whole batch, changing nothing): its records are reported and left, the rest
                // go again.
                let shredded = e.scope ?? ""
                cipher.invalidate(scope: shredded)
                let failure = Mapper.translate(e, stored: nil, scope: shredded)
                var kept: [Int] = []
                for i in rewrites.indices {
                    if ExactScope.same(sealedScopes[i], shredded) {
                        fail(Self.naming(failure, sealedFrom[i]), sealedFrom[i])
                    } else {
                        kept.append(i)
                    }
                }
                guard kept.count < rewrites.count else { throw failure }
                rewrites = kept.map { rewrites[$0] }
                sealedScopes = kept.map { sealedScopes[$0] }
                sealedFrom = kept.map { sealedFrom[$0] }
                if rewrites.isEmpty { return (0, true, deferred) }
            }
        }
        if done == rewrites.count {
            var counts: [ExactScope: Int] = [:]
            for s in sealedScopes { counts[ExactScope(s), default: 0] += 1 }
            for (s, n) in counts.sorted(by: { $0.key < $1.key }) { report.sealed(n, scope: s.scope) }
        } else {
            // Which ones were rewritten is not known: counted under no scope.
            report.recordsInUnlistedScopes += done
        }
        return (done, done == rewrites.count, deferred)
    }

    private static func naming(_ e: EventSourcingError, _ c: Candidate) -> EventSourcingError {
        var e = e
        (e.originatorID, e.originatorVersion, e.topic, e.notificationID) =
            (c.stored.originatorID, c.stored.originatorVersion, c.stored.topic, c.notificationID)
        return e
    }

    /// The scope `id`'s records are sealed under (see `encryptPlaintextRecords`), or why it has none.
    private mutating func scope(of id: UUID) async -> Result<String, EventSourcingError> {
        if let known = scopes[id] { return known }
        let found: Result<String, EventSourcingError>
        do { found = .success(try await resolve(id)) } catch let e as EventSourcingError {
            found = .failure(e)
        } catch {
            found = .failure(EventSourcingError(.invalidArgument, "the scope of the aggregate could not be resolved: \(error)", originatorID: id))
        }
        if scopes.count >= Self.maxCached { scopes.removeAll(keepingCapacity: true) }
        scopes[id] = found
        return found
    }

    private func resolve(_ id: UUID) async throws -> String {
        let mapped = options.scopes[id]
        // A record of the aggregate sealed already (by the application, or an earlier pass)
        // names the scope all the others must join.
        let first = try await app.recorder.selectEvents(originatorID: id, limit: 1).first
        var sealed = first.flatMap { Mapper.sealedScope(of: $0.state) }
        if sealed == nil, let latest = try await app.recorder.selectEvents(originatorID: id, order: .descending, limit: 1).first {
            sealed = Mapper.sealedScope(of: latest.state)
        }
        if sealed == nil, let snap = try await app.snapshotRecorder?.selectSnapshot(originatorID: id, lte: nil) {
            sealed = Mapper.sealedScope(of: snap.state)
        }
        if let sealed {
            if let mapped, !ExactScope.same(mapped, sealed) {
                throw EventSourcingError(.invalidArgument,
                    "the aggregate's records are sealed under scope \(sealed) already, but the mapping names \(mapped): "
                    + "all of one aggregate's records must be under one scope; left as it is", originatorID: id, keyScope: mapped)
            }
            return sealed
        }
        if let mapped { return try Self.checked(mapped, id) }
        if let resolveScope = options.resolveScope,
           let resolved = try await resolveScope(id, first.flatMap { $0.originatorVersion == 1 ? $0 : nil }) {
            return try Self.checked(resolved, id)
        }
        return id.uuidString.lowercased()
    }

    private static func checked(_ scope: String, _ id: UUID) throws(EventSourcingError) -> String {
        guard !scope.isEmpty, scope.utf8.count <= 255 else {
            throw EventSourcingError(.invalidArgument, "the scope named for the aggregate is empty or longer than 255 bytes; left as it is",
                                     originatorID: id)
        }
        return scope
    }
}

extension StateHeader {
    /// Whether `state`'s header parses and says it is encrypted.
    static func isEncrypted(_ state: [UInt8]) -> Bool {
        guard case .success(let (h, _)) = parse(state) else { return false }
        return h.flags.contains(.encrypted)
    }
}
