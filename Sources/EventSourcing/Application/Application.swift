import Foundation
import KeyManagement
import Logging

/// What a save recorded: one entry per stored event.
public struct Recording: Sendable, Hashable {
    /// The aggregate id.
    public var originatorID: UUID
    /// The version of the event.
    public var originatorVersion: Int
    /// The event's topic.
    public var topic: String
    /// The event's position in the notification log.
    public var notificationID: Int64
}

/// An event-sourced application: saves aggregates, gets them back, snapshots them, exposes
/// the notification log, and erases key scopes.
///
/// Encryption is a property of the ``Mapper``: give it a `Keyring` and every record is
/// compressed and encrypted; nothing in the application or the aggregates changes.
public final class Application: Sendable {
    /// Where events (and the notification log) are stored.
    public let recorder: any ApplicationRecorder
    /// Where snapshots are stored, if snapshotting is used.
    public let snapshotRecorder: (any SnapshotRecorder)?
    /// The transcoder pipeline.
    public let mapper: Mapper
    /// Automatic snapshot intervals: a snapshot is taken whenever a save carries an aggregate's
    /// version past a multiple of its type's interval.
    public let snapshotIntervals: [SnapshotInterval]
    /// The intervals by aggregate ``Aggregate/typeName``.
    let intervalsByType: [String: Int]
    let logger: Logger
    /// Metrics and tracer, bound at creation (see `Observability`).
    let instruments = ApplicationInstruments()
    /// The cache of recently used aggregates, nil when off (see ``AggregateCache``).
    public let aggregateCache: AggregateCache?
    /// In-process publishing of committed events (see ``subscribe(to:bufferSize:)``).
    let hub = EventHub()

    /// Creates an application.
    /// - Parameters:
    ///   - recorder: the event store.
    ///   - snapshots: the snapshot store; needed for ``takeSnapshot(_:id:version:)`` and intervals.
    ///   - mapper: the pipeline; `Mapper()` stores plaintext JSON (zlib-compressed).
    ///   - snapshotIntervals: automatic snapshotting, e.g. `[.every(100, for: Dog.self)]`.
    ///   - cache: a bounded cache of recently used aggregates, e.g. `.lru(maxEntries: 10_000)`; off by
    ///     default (see ``AggregateCache``).
    ///   - logger: where the application logs shreds, failed automatic snapshots and retries (never key
    ///     bytes or payloads).
    public init(recorder: any ApplicationRecorder, snapshots: (any SnapshotRecorder)? = nil, mapper: Mapper = Mapper(),
                snapshotIntervals: [SnapshotInterval] = [], cache: AggregateCache.Configuration = .off,
                logger: Logger = Logger(label: "eventsourcing.application")) {
        self.recorder = recorder
        self.snapshotRecorder = snapshots
        self.mapper = mapper
        self.snapshotIntervals = snapshotIntervals
        self.intervalsByType = SnapshotInterval.byTypeName(snapshotIntervals)
        self.aggregateCache = cache.maxEntries > 0 ? AggregateCache(maxEntries: cache.maxEntries) : nil
        self.logger = logger
    }

    /// Reads aggregates back.
    public var repository: Repository { Repository(app: self) }
    /// The application's notification log.
    public var notificationLog: NotificationLog { NotificationLog(app: self) }

    // MARK: Saving

    /// Saves the pending events of `root` atomically and clears them.
    ///
    /// Swift does not let an actor's (or a `main.swift`'s top-level) variable be passed `inout`
    /// to an `async` call: save a local variable, then store it back.
    /// - Returns: one ``Recording`` per event, with its notification id.
    /// - Throws: ``EventSourcingError`` `.concurrencyConflict` (nothing written), `.shredded`, …
    @discardableResult
    public func save<A: Aggregate>(_ root: inout AggregateRoot<A>) async throws -> [Recording] {
        let snapshot = root
        let generation = erasureGeneration
        let recordings = try await commit([encoder(for: snapshot)])
        root.markSaved(through: snapshot.version)
        await autoSnapshot(snapshot, savedFrom: snapshot.version - snapshot.pendingEvents.count, generation: generation)
        return recordings
    }

    /// Saves the pending events of two aggregates in one atomic recorder call.
    @discardableResult
    public func save<A: Aggregate, B: Aggregate>(_ a: inout AggregateRoot<A>, _ b: inout AggregateRoot<B>) async throws -> [Recording] {
        let (sa, sb) = (a, b)
        let generation = erasureGeneration
        let recordings = try await commit([encoder(for: sa), encoder(for: sb)])
        a.markSaved(through: sa.version)
        b.markSaved(through: sb.version)
        await autoSnapshot(sa, savedFrom: sa.version - sa.pendingEvents.count, generation: generation)
        await autoSnapshot(sb, savedFrom: sb.version - sb.pendingEvents.count, generation: generation)
        return recordings
    }

    /// Saves the pending events of three aggregates in one atomic recorder call.
    @discardableResult
    public func save<A: Aggregate, B: Aggregate, C: Aggregate>(_ a: inout AggregateRoot<A>, _ b: inout AggregateRoot<B>,
                                                               _ c: inout AggregateRoot<C>) async throws -> [Recording] {
        let (sa, sb, sc) = (a, b, c)
        let generation = erasureGeneration
        let recordings = try await commit([encoder(for: sa), encoder(for: sb), encoder(for: sc)])
        a.markSaved(through: sa.version)
        b.markSaved(through: sb.version)
        c.markSaved(through: sc.version)
        await autoSnapshot(sa, savedFrom: sa.version - sa.pendingEvents.count, generation: generation)
        await autoSnapshot(sb, savedFrom: sb.version - sb.pendingEvents.count, generation: generation)
        await autoSnapshot(sc, savedFrom: sc.version - sc.pendingEvents.count, generation: generation)
        return recordings
    }

    /// Saves the pending events of many aggregates of one type in one atomic recorder call.
    @discardableResult
    public func save<A: Aggregate>(_ roots: inout [AggregateRoot<A>]) async throws -> [Recording] {
        let snapshot = roots
        let generation = erasureGeneration
        let recordings = try await commit(snapshot.map { encoder(for: $0) })
        for i in roots.indices { roots[i].markSaved(through: snapshot[i].version) }
        for r in snapshot { await autoSnapshot(r, savedFrom: r.version - r.pendingEvents.count, generation: generation) }
        return recordings
    }

    private func encoder<A: Aggregate>(for root: AggregateRoot<A>) -> EventWriter.Encoder {
        let mapper = self.mapper
        // A new aggregate keyed by its own (random) id has a new scope: its first key is minted
        // without asking the store, which refuses it atomically if the scope had one after all.
        let newScope = !root.pendingEvents.isEmpty && root.version == root.pendingEvents.count
            && root.keyScope == AggregateRoot<A>.ownScope(root.id)
        return { optimistic in
            try await mapper.encode(root.pendingEvents, of: A.self, keyScope: root.keyScope, newScope: optimistic && newScope,
                                    discard: root.pendingDiscard.map { (root.id, $0.version, $0.at) })
        }
    }

    /// Commits `encoders`' events; with `tracking` (a process application's), `plain` records
    /// (an erasure record) and the tracking record go in the same transaction.
    func commit(_ encoders: [EventWriter.Encoder], tracking: Tracking? = nil, plain: [StoredEvent] = []) async throws -> [Recording] {
        try await instruments.save {
            try await EventWriter(mapper: mapper, recorder: recorder, hub: hub).commit(encoders, tracking: tracking, plain: plain)
        }
    }

    // MARK: Snapshots

    /// Stores a snapshot of aggregate `id` at `version` (the latest when nil).
    /// - Throws: ``EventSourcingError`` `.invalidArgument` without a snapshot recorder, and
    ///   whatever reading the aggregate throws.
    public func takeSnapshot<A: Aggregate>(_ type: A.Type, id: UUID, version: Int? = nil) async throws {
        guard let snapshotRecorder else {
            throw EventSourcingError(.invalidArgument, "the application has no snapshot recorder", originatorID: id)
        }
        let root = try await repository.get(A.self, id: id, version: version)
        try await store(snapshotOf: root, in: snapshotRecorder)
    }

    private func store<A: Aggregate>(snapshotOf root: AggregateRoot<A>, in snapshots: any SnapshotRecorder) async throws {
        try await EventWriter(mapper: mapper, recorder: recorder).store(snapshotOf: root, in: snapshots)
    }

    /// The cipher's ``RecordCipher/erasureGeneration`` (nil without a cipher, or one that cannot tell).
    var erasureGeneration: UInt64? { mapper.cipher?.erasureGeneration ?? nil }

    /// After a save: the aggregate cache takes the saved root, then an automatic snapshot is taken
    /// when due. `generation` is ``erasureGeneration`` as the save began.
    func autoSnapshot<A: Aggregate>(_ root: AggregateRoot<A>, savedFrom oldVersion: Int, generation: UInt64?) async {
        didSave(root, generation: generation)   // the aggregate cache (AggregateCache.swift)
        guard !root.isDiscarded, let interval = intervalsByType[A.typeName], let snapshotRecorder,
              root.version / interval > oldVersion / interval else { return }
        do {
            try await store(snapshotOf: root, in: snapshotRecorder)
        } catch {
            // The events are saved; a missing snapshot only costs replay time.
            logger.warning("automatic snapshot failed", metadata: ["aggregate": "\(root.id)", "error": "\(error)"])
        }
    }

    // MARK: Conflicts

    /// Runs `command` again when it fails with a concurrency conflict, up to `maxAttempts` times
    /// in all. The command should get the aggregate afresh each time.
    ///
    /// The command runs in the caller's isolation, so it can be called from `@MainActor` code or
    /// an actor and touch that actor's state.
    /// - Throws: the last conflict after `maxAttempts`, or any other error at once.
    public func retryingOnConflict<T>(maxAttempts: Int = 5, isolation: isolated (any Actor)? = #isolation,
                                      _ command: () async throws -> T) async throws -> T {
        var attempt = 1
        while true {
            do { return try await command() } catch let e as EventSourcingError where e.isConcurrencyConflict && attempt < maxAttempts {
                attempt += 1
                logger.debug("retrying after concurrency conflict", metadata: ["attempt": "\(attempt)"])
            }
        }
    }
}
