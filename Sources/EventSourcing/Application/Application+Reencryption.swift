import Foundation
import KeyManagement

/// Re-encrypting a key scope's records under its newest data-key version, and retiring the
/// versions no record needs any more (issue 17; SECURITY.md §7.7, Operations.md §15).
public enum Reencryption {
    /// Which records a pass is at.
    public enum Phase: String, Sendable, Hashable {
        case events, snapshots
    }

    /// Progress of a pass, reported after each page.
    public struct Progress: Sendable, Hashable {
        /// Events or snapshots.
        public var phase: Phase
        /// Records read so far (events and snapshots).
        public var examined: Int
        /// Records rewritten so far.
        public var rewritten: Int
        /// The highest notification id when the pass started (nil for an empty log): how far
        /// the events phase has to go.
        public var lastNotificationID: Int64?
        /// The notification id the events phase has reached.
        public var notificationID: Int64
    }

    /// What a pass did.
    public struct Report: Sendable, Hashable {
        /// The scopes re-encrypted (one, or empty for every scope: `reencryptAll`).
        public var keyScopes: [String]
        /// For a single scope, its newest version: what every record now uses.
        public var targetVersion: UInt32?
        /// Events read.
        public var eventsExamined = 0
        /// Events rewritten (their own key, or a personal field inside, moved to the newest version).
        public var eventsRewritten = 0
        /// Snapshots read.
        public var snapshotsExamined = 0
        /// Snapshots rewritten.
        public var snapshotsRewritten = 0
        /// Personal fields moved to their subject's newest version (inside the records counted above).
        public var personalFieldsRewritten = 0
        /// Records (or personal fields) of the scope(s) already under the newest version.
        public var alreadyCurrent = 0
        /// Records left alone because their scope (or a field's subject) was shredded.
        public var skippedShredded = 0
        /// Records another writer changed between the read and the rewrite (re-read and retried).
        public var conflictsRetried = 0
        /// Records still changing after ``Application/maxRewriteAttempts`` attempts: left as they
        /// were (run again; retiring refuses while any still uses an old version).
        public var conflictsLeft = 0

        public init(keyScopes: [String], targetVersion: UInt32?) {
            self.keyScopes = keyScopes
            self.targetVersion = targetVersion
        }

        /// Records read in all.
        public var examined: Int { eventsExamined + snapshotsExamined }
        /// Records rewritten in all.
        public var rewritten: Int { eventsRewritten + snapshotsRewritten }
    }
}

extension Application {
    /// How often a record that another writer keeps changing is re-read and resealed.
    public static let maxRewriteAttempts = 4
    /// The largest page a re-encryption or a retire check reads (and rewrites) at once.
    public static let maxReencryptionPageSize = RecordRewrite.maxBatchSize

    /// Re-encrypts every record of `keyScope` (events and snapshots), and every personal field
    /// sealed under it inside any record, under the scope's newest data-key version. Online:
    /// other writers keep writing; each page is rewritten in one transaction, each record only
    /// if it is still the one read (a record changed meanwhile is read again). Coordinates,
    /// topics and notification ids never change, and followers see nothing new. Idempotent (a
    /// second run rewrites 0) and resumable: interrupted (a kill, a cancelled task), it leaves
    /// every record under its old or its new version, and running it again finishes.
    ///
    /// Personal fields are found by opening records, so the pass decrypts every encrypted record
    /// of the store once (records of shredded scopes are skipped).
    /// - Throws: ``EventSourcingError`` `.keyScopeNotFound` for a scope that never had a key,
    ///   `.shredded`, `.unsupported` when the recorder is not ``RecordRewriting`` or the cipher is
    ///   not a `Keyring`, `.invalidArgument` for a page size outside 1…``maxReencryptionPageSize``
    ///   (all before anything is changed); a record that does not open (`.integrityFailure`,
    ///   `.keyUnavailable`, …) stops the pass, naming it (the pages before it stay rewritten);
    ///   `CancellationError` between pages.
    public func reencrypt(keyScope: String, pageSize: Int = 500,
                          progress: (@Sendable (Reencryption.Progress) -> Void)? = nil) async throws -> Reencryption.Report {
        let (keyring, rewriter) = try reencryptionParts(pageSize: pageSize)
        let scope = try await existingScope(keyScope, keyring)
        let target: DataKey
        do { target = try await keyring.newestKey(scope: scope) } catch { throw Mapper.translate(error, stored: nil, scope: scope) }
        var pass = ReencryptionPass(mapper: mapper, keyring: keyring, only: target,
                                    report: Reencryption.Report(keyScopes: [scope], targetVersion: target.version))
        try await pass.run(recorder: recorder, rewriter: rewriter, pageSize: pageSize, progress: progress)
        return pass.report
    }

    /// Re-encrypts every scope's records and personal fields under each scope's newest version
    /// (as ``reencrypt(keyScope:pageSize:progress:)`` for each scope, in one pass over the store).
    /// - Throws: as ``reencrypt(keyScope:pageSize:progress:)``, but never `.keyScopeNotFound`.
    public func reencryptAll(pageSize: Int = 500,
                             progress: (@Sendable (Reencryption.Progress) -> Void)? = nil) async throws -> Reencryption.Report {
        let (keyring, rewriter) = try reencryptionParts(pageSize: pageSize)
        var pass = ReencryptionPass(mapper: mapper, keyring: keyring, only: nil,
                                    report: Reencryption.Report(keyScopes: [], targetVersion: nil))
        try await pass.run(recorder: recorder, rewriter: rewriter, pageSize: pageSize, progress: progress)
        return pass.report
    }

    /// Retires the versions of `keyScope`'s data key below `below` (its new minimum decryption
    /// version): checks, at this moment, every event, snapshot and personal field of the store,
    /// and refuses if any still uses such a version; otherwise destroys their wrapped bytes in the
    /// key store. The newest version is never retired. A later read of a retired version
    /// throws ``EventSourcingError/Code/keyRetired``.
    ///
    /// The check and the destruction are not one transaction: a process still writing with an
    /// older version it has cached can write such a record in between (SECURITY.md §7.7).
    /// - Returns: the versions destroyed, lowest first (empty when none was below `below`).
    /// - Throws: ``EventSourcingError`` `.keyVersionInUse` naming the scope, the lowest version
    ///   still needed and a record that needs it; `.keyScopeNotFound`; `.shredded`;
    ///   `.invalidArgument` when `below` is above the newest version; `.unsupported` when the
    ///   cipher is not a `Keyring` or its key store cannot retire. Nothing is changed then.
    @discardableResult
    public func retireKeyVersions(keyScope: String, below: UInt32, pageSize: Int = 500) async throws -> [UInt32] {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.unsupported, "the application's cipher is not a Keyring: nothing to retire", keyScope: keyScope)
        }
        try Self.checkPageSize(pageSize)
        let scope = try await existingScope(keyScope, keyring)
        let versions: [UInt32]
        do {
            versions = try KeyStoreRetire.versions(try await keyring.storedVersions(scope: scope), scope: scope, below: below)
        } catch { throw Self.retireError(error, scope: scope) }
        guard !versions.isEmpty else { return [] }
        if let needed = try await lowestVersionInUse(scope: scope, keyring: keyring, pageSize: pageSize), needed.version < below {
            throw EventSourcingError(.keyVersionInUse,
                "key scope \(scope) still needs data key v\(needed.version) (\(needed.what)); re-encrypt it first: nothing was retired",
                originatorID: needed.record.originatorID, originatorVersion: needed.record.originatorVersion,
                topic: needed.record.topic, keyScope: scope)
        }
        do { return try await keyring.retire(scope: scope, below: below) } catch { throw Self.retireError(error, scope: scope) }
    }

    /// The lowest data-key version of `keyScope` any event, snapshot or personal field uses now
    /// (nil when none uses the scope): a full pass over the store, as the retire check makes.
    public func lowestKeyVersionInUse(keyScope: String, pageSize: Int = 500) async throws -> UInt32? {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.unsupported, "the application's cipher is not a Keyring", keyScope: keyScope)
        }
        try Self.checkPageSize(pageSize)
        let scope = try await existingScope(keyScope, keyring)
        return try await lowestVersionInUse(scope: scope, keyring: keyring, pageSize: pageSize)?.version
    }

    // MARK: Internals

    private func reencryptionParts(pageSize: Int) throws -> (Keyring, any RecordRewriting) {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.unsupported, "the application's cipher is not a Keyring: nothing to re-encrypt")
        }
        guard let rewriter = recorder as? any RecordRewriting else {
            throw EventSourcingError(.unsupported, "the application's recorder (\(type(of: recorder))) cannot rewrite records (RecordRewriting)")
        }
        if let snaps = snapshotRecorder, !(snaps is any RecordRewriting) || (snaps as AnyObject) !== (recorder as AnyObject) {
            throw EventSourcingError(.unsupported, "the application's snapshot store is not its recorder, so its snapshots cannot be rewritten")
        }
        try Self.checkPageSize(pageSize)
        return (keyring, rewriter)
    }

    private static func checkPageSize(_ pageSize: Int) throws(EventSourcingError) {
        guard pageSize >= 1, pageSize <= maxReencryptionPageSize else {
            throw EventSourcingError(.invalidArgument, "the page size must be 1…\(maxReencryptionPageSize), got \(pageSize)")
        }
    }

    /// The scope as stored (a UUID-shaped scope in its stored spelling), or a typed refusal.
    private func existingScope(_ keyScope: String, _ keyring: Keyring) async throws -> String {
        do { try KeyScope.validate(keyScope) } catch {
            throw EventSourcingError(.invalidArgument, "not a key scope: \(error.message)")
        }
        var candidates = [keyScope]
        if let u = UUID(uuidString: keyScope), keyScope.utf8.count == 36 {
            for s in [u.uuidString.lowercased(), u.uuidString] where !candidates.contains(s) { candidates.append(s) }
        }
        for c in candidates {
            if let t = try await keyring.store.tombstone(scope: c) {
                throw EventSourcingError(.shredded, "the key scope was crypto-shredded: nothing to re-encrypt or retire",
                                         keyScope: c, shreddedAt: t.shreddedAt)
            }
            if try await !keyring.store.dataKeys(scope: c).isEmpty { return c }
        }
        throw EventSourcingError(.keyScopeNotFound, "no such key scope: it has no data key and was never shredded; nothing was changed",
                                 keyScope: keyScope)
    }

    private static func retireError(_ error: any Error, scope: String) -> EventSourcingError {
        guard let k = error as? KeyManagementError else {
            return error as? EventSourcingError ?? EventSourcingError(.recorderFailure, "\(error)", keyScope: scope)
        }
        let code: EventSourcingError.Code
        switch k.code {
        case .invalidArgument: code = .invalidArgument
        case .unsupported: code = .unsupported
        case .shredded: code = .shredded
        case .keyNotFound: code = .keyScopeNotFound
        default: code = .recorderFailure
        }
        return EventSourcingError(code, k.message, keyScope: scope, shreddedAt: k.shreddedAt)
    }

    private struct VersionInUse {
        var version: UInt32
        var record: StoredEvent
        var what: String
    }

    /// The lowest version of `scope` used by any record header or personal field, with a record
    /// that uses it.
    private func lowestVersionInUse(scope: String, keyring: Keyring, pageSize: Int) async throws -> VersionInUse? {
        var lowest: VersionInUse?
        func consider(_ stored: StoredEvent, snapshot: Bool, notificationID: Int64?) async throws {
            let uses: [Mapper.KeyUse]
            do {
                uses = try await mapper.keyUses(of: stored, snapshot: snapshot, scope: scope, notificationID: notificationID)
            } catch let e as EventSourcingError where e.code == .shredded && !ExactScope.same(e.keyScope ?? "", scope) {
                // A record of another, shredded scope: nothing in it can be read any more.
                return
            }
            for u in uses where lowest.map({ u.version < $0.version }) ?? true {
                let kind = snapshot ? "snapshot" : "event"
                let what = u.personalField ? "a personal field in a \(kind) of aggregate \(stored.originatorID.uuidString.lowercased()) v\(stored.originatorVersion)"
                    : "\(kind) of aggregate \(stored.originatorID.uuidString.lowercased()) v\(stored.originatorVersion)"
                lowest = VersionInUse(version: u.version, record: stored, what: what)
            }
        }
        var start: Int64 = 1
        while true {
            try Task.checkCancellation()
            let page = try await recorder.selectNotifications(start: start, limit: pageSize, stop: nil, topics: [])
            guard let last = page.last else { break }
            for n in page where ReencryptionPass.isEncrypted(n.state) {
                try await consider(n.storedEvent, snapshot: false, notificationID: n.id)
            }
            start = try NotificationLog.next(after: last.id, from: start)
            if last.id == Int64.max { break }
        }
        if let rewriter = recorder as? any RecordRewriting, snapshotRecorder != nil {
            var cursor: SnapshotCursor?
            while true {
                try Task.checkCancellation()
                let page = try await rewriter.selectSnapshots(after: cursor, limit: pageSize)
                guard let last = page.last else { break }
                for s in page where ReencryptionPass.isEncrypted(s.state) { try await consider(s, snapshot: true, notificationID: nil) }
                let next = SnapshotCursor(after: last)
                if let cursor, !(UUIDOrder.less(cursor.originatorID, next.originatorID)
                                 || (cursor.originatorID == next.originatorID && cursor.originatorVersion < next.originatorVersion)) {
                    throw EventSourcingError(.databaseCorrupt, "the snapshot pages do not move forward (at aggregate \(next.originatorID.uuidString.lowercased()) v\(next.originatorVersion))")
                }
                cursor = next
            }
        }
        return lowest
    }
}

/// The retire check's view of a store's versions (``KeyStore/versionsToRetire(_:scope:below:)``).
enum KeyStoreRetire {
    static func versions(_ stored: [UInt32], scope: String, below: UInt32) throws(KeyManagementError) -> [UInt32] {
        try InMemoryKeyStore.versionsToRetire(stored, scope: scope, below: below)
    }
}

/// One re-encryption pass over the log and the snapshots.
struct ReencryptionPass {
    let mapper: Mapper
    let keyring: Keyring
    /// The one scope re-encrypted (its newest key), or nil for every scope.
    let only: DataKey?
    var report: Reencryption.Report
    /// Newest keys by scope, for `reencryptAll` (bounded: cleared when full).
    private var newest: [ExactScope: DataKey] = [:]
    private var shredded: Set<ExactScope> = []

    init(mapper: Mapper, keyring: Keyring, only: DataKey?, report: Reencryption.Report) {
        self.mapper = mapper
        self.keyring = keyring
        self.only = only
        self.report = report
    }

    static func isEncrypted(_ state: [UInt8]) -> Bool {
        guard state.count >= 4, state[0] == StateHeader.magic[0], state[1] == StateHeader.magic[1] else { return false }
        return StateHeader.Flags(rawValue: state[3]).contains(.encrypted)
    }

    mutating func run(recorder: any ApplicationRecorder, rewriter: any RecordRewriting, pageSize: Int,
                      progress: (@Sendable (Reencryption.Progress) -> Void)?) async throws {
        let last = try await recorder.maxNotificationID()
        var start: Int64 = 1
        var reached: Int64 = 0
        while true {
            try Task.checkCancellation()
            let page = try await recorder.selectNotifications(start: start, limit: pageSize, stop: nil, topics: [])
            guard let lastOfPage = page.last else { break }
            // The page's data keys in one read of the store (PostgreSQL: one query, not one
            // round trip per subject), for the opening of its records that follows.
            await mapper.prefetchKeys(for: page.lazy.map(\.storedEvent))
            var batch: [(RecordRewrite, StoredEvent, Int64?)] = []
            for n in page {
                report.eventsExamined += 1
                guard Self.isEncrypted(n.state) else { continue }
                if let r = try await resealed(n.storedEvent, snapshot: false, notificationID: n.id) { batch.append((r, n.storedEvent, n.id)) }
            }
            try await apply(batch, snapshot: false, recorder: recorder, rewriter: rewriter)
            reached = lastOfPage.id
            progress?(Reencryption.Progress(phase: .events, examined: report.examined, rewritten: report.rewritten,
                                            lastNotificationID: last, notificationID: reached))
            if lastOfPage.id == Int64.max { break }
            start = try NotificationLog.next(after: lastOfPage.id, from: start)
        }
        var cursor: SnapshotCursor?
        while true {
            try Task.checkCancellation()
            let page = try await rewriter.selectSnapshots(after: cursor, limit: pageSize)
            guard let lastOfPage = page.last else { break }
            await mapper.prefetchKeys(for: page)
            var batch: [(RecordRewrite, StoredEvent, Int64?)] = []
            for s in page {
                report.snapshotsExamined += 1
                guard Self.isEncrypted(s.state) else { continue }
                if let r = try await resealed(s, snapshot: true, notificationID: nil) { batch.append((r, s, nil)) }
            }
            try await apply(batch, snapshot: true, recorder: recorder, rewriter: rewriter)
            let next = SnapshotCursor(after: lastOfPage)
            if let cursor, !(UUIDOrder.less(cursor.originatorID, next.originatorID)
                             || (cursor.originatorID == next.originatorID && cursor.originatorVersion < next.originatorVersion)) {
                throw EventSourcingError(.databaseCorrupt,
                    "the snapshot pages do not move forward (at aggregate \(next.originatorID.uuidString.lowercased()) v\(next.originatorVersion))")
            }
            cursor = next
            progress?(Reencryption.Progress(phase: .snapshots, examined: report.examined, rewritten: report.rewritten,
                                            lastNotificationID: last, notificationID: reached))
        }
    }

    /// Writes a page's rewrites; those another writer changed meanwhile are read again and
    /// resealed, up to `Application.maxRewriteAttempts` times.
    private mutating func apply(_ batch: [(RecordRewrite, StoredEvent, Int64?)], snapshot: Bool,
                                recorder: any ApplicationRecorder, rewriter: any RecordRewriting) async throws {
        var pending = batch
        var attempt = 1
        while !pending.isEmpty {
            let rewrites = pending.map(\.0)
            let replaced: Int
            do {
                replaced = snapshot ? try await rewriter.rewriteSnapshots(rewrites) : try await rewriter.rewriteEvents(rewrites)
            } catch let e as KeyManagementError where e.code == .shredded && e.scope != nil {
                // A scope of the page was shredded since it was read (the recorder refused the
                // whole batch, changing nothing): its records are left alone, the rest go again.
                let scope = e.scope ?? ""
                remember(shredded: scope)
                let before = pending.count
                pending.removeAll { ExactScope.same($0.0.keyScope ?? "", scope) }
                guard pending.count < before else { throw Mapper.translate(e, stored: nil, scope: scope) }
                report.skippedShredded += before - pending.count
                continue
            }
            guard replaced >= 0, replaced <= rewrites.count else {
                throw EventSourcingError(.recorderFailure, "the recorder reports \(replaced) records rewritten for a batch of \(rewrites.count)")
            }
            if replaced == rewrites.count {
                count(pending.map(\.0), snapshot: snapshot)
                return
            }
            // Some were changed meanwhile: find which by reading each again.
            var retry: [(RecordRewrite, StoredEvent, Int64?)] = []
            var done: [RecordRewrite] = []
            for (r, stored, nid) in pending {
                let current = try await reread(stored, snapshot: snapshot, recorder: recorder, rewriter: rewriter)
                if let current, current.state == r.state { done.append(r); continue }   // ours landed
                report.conflictsRetried += 1
                guard let current, Self.isEncrypted(current.state) else { continue }   // gone, or no longer sealed
                if attempt >= Application.maxRewriteAttempts {
                    report.conflictsLeft += 1
                    continue
                }
                if let again = try await resealed(current, snapshot: snapshot, notificationID: nid, counting: false) {
                    retry.append((again, current, nid))
                }
            }
            count(done, snapshot: snapshot)
            pending = retry
            attempt += 1
        }
    }

    private mutating func count(_ done: [RecordRewrite], snapshot: Bool) {
        if snapshot { report.snapshotsRewritten += done.count } else { report.eventsRewritten += done.count }
    }

    private func reread(_ stored: StoredEvent, snapshot: Bool, recorder: any ApplicationRecorder,
                        rewriter: any RecordRewriting) async throws -> StoredEvent? {
        if snapshot {
            let page = try await rewriter.selectSnapshots(
                after: SnapshotCursor(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion - 1), limit: 1)
            return page.first.flatMap { $0.originatorID == stored.originatorID && $0.originatorVersion == stored.originatorVersion ? $0 : nil }
        }
        return try await recorder.selectEvents(originatorID: stored.originatorID, after: stored.originatorVersion - 1,
                                               upTo: stored.originatorVersion).first
    }

    /// The record resealed so nothing in it uses an old version of the scope(s), or nil.
    private mutating func resealed(_ stored: StoredEvent, snapshot: Bool, notificationID: Int64?,
                                   counting: Bool = true) async throws -> RecordRewrite? {
        guard case .success(let (header, _)) = StateHeader.parse(stored.state), let recordScope = header.keyScope else { return nil }
        if shredded.contains(ExactScope(recordScope)) {
            if counting { report.skippedShredded += 1 }
            return nil
        }
        // Which scopes does the record use (its header, its personal fields)?
        let uses: [Mapper.KeyUse]
        do {
            if let only, !ExactScope.same(recordScope, only.scope),
               !mayHoldFields(stored) {
                return nil
            }
            uses = try await mapper.keyUses(of: stored, snapshot: snapshot, scope: only?.scope, notificationID: notificationID)
        } catch let e as EventSourcingError where e.code == .shredded {
            if ExactScope.same(e.keyScope ?? "", recordScope) { remember(shredded: recordScope) }
            if counting { report.skippedShredded += 1 }
            return nil
        }
        var state = stored.state
        var changed = false
        var seen = Set<ExactScope>()
        for u in uses where seen.insert(ExactScope(u.scope)).inserted {
            guard let key = try await newestKey(u.scope) else {
                if counting { report.skippedShredded += 1 }
                continue
            }
            let current = StoredEvent(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                                      topic: stored.topic, state: state)
            guard let r = try await mapper.reseal(current, snapshot: snapshot, under: key, notificationID: notificationID) else {
                if counting { report.alreadyCurrent += 1 }
                continue
            }
            state = r.state
            changed = true
            if counting { report.personalFieldsRewritten += r.fieldsResealed }
            // Every seal is an encryption under the key (SECURITY.md §10), a retried one too.
            do {
                try await keyring.countEncryptions((r.recordResealed ? 1 : 0) + r.fieldsResealed, scope: key.scope, version: key.version)
            } catch {
                throw Mapper.translate(error, stored: stored, scope: key.scope)
            }
            // Only fields moved: the record itself was sealed again under its own key (its
            // scope, the version its header names), which is an encryption under that key too.
            if !r.recordResealed, r.fieldsResealed > 0, case .success(let (sealedHeader, _)) = StateHeader.parse(r.state) {
                do {
                    try await keyring.countEncryptions(1, scope: recordScope, version: sealedHeader.keyVersion)
                } catch {
                    throw Mapper.translate(error, stored: stored, scope: recordScope)
                }
            }
        }
        guard changed else { return nil }
        return RecordRewrite(originatorID: stored.originatorID, originatorVersion: stored.originatorVersion,
                             expected: stored.state, state: state, keyScope: recordScope)
    }

    /// Whether a record of another scope must be opened to look for personal fields: always
    /// (its payload is sealed), unless it is unencrypted.
    private func mayHoldFields(_ stored: StoredEvent) -> Bool { Self.isEncrypted(stored.state) }

    private mutating func remember(shredded scope: String) {
        if shredded.count >= 4_096 { shredded.removeAll() }
        shredded.insert(ExactScope(scope))
    }

    /// The newest key of `scope` (nil when it was shredded).
    private mutating func newestKey(_ scope: String) async throws -> DataKey? {
        if let only {
            return ExactScope.same(only.scope, scope) ? only : nil
        }
        if let k = newest[ExactScope(scope)] { return k }
        if shredded.contains(ExactScope(scope)) { return nil }
        do {
            let k = try await keyring.newestKey(scope: scope)
            if newest.count >= 4_096 { newest.removeAll() }
            newest[ExactScope(scope)] = k
            return k
        } catch let e as KeyManagementError where e.code == .shredded {
            remember(shredded: scope)
            return nil
        } catch {
            throw Mapper.translate(error, stored: nil, scope: scope)
        }
    }
}
