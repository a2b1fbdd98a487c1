import Foundation
import Synchronization

/// One upstream event's processing: what the policy reads and saves. Everything collected is
/// committed with the tracking record, atomically, when ``ProcessPolicy/process(_:in:)`` (or
/// ``ProcessPolicy/erase(keyScope:in:)``) returns: the new events and the follower's new
/// position are stored together or not at all.
///
/// A context lives for one call of the policy. The policy must not save through
/// ``application`` itself (such a save is not part of the atomic commit, and is repeated
/// when the event is processed again after a crash or a conflict): it collects.
public final class ProcessingContext: Sendable {
    /// The follower's own application.
    public let application: Application
    /// The event being processed; nil in ``ProcessPolicy/erase(keyScope:in:)``.
    public let upstream: UpstreamEvent?

    /// One aggregate's collected events: the root with every event collected for it still
    /// pending, and how to encode them.
    private struct Entry: Sendable {
        var root: any Sendable
        var encoder: EventWriter.Encoder
        var afterCommit: @Sendable () async -> Void
        /// Whether the collected root ends with a discard (``AggregateRoot/discard(at:)``).
        var discarded: Bool
    }

    private struct State {
        var order: [UUID] = []
        var entries: [UUID: Entry] = [:]
        /// Set once the collected events are handed to the commit: later collects are refused.
        var committed = false
    }

    private let state = Mutex(State())

    init(application: Application, upstream: UpstreamEvent?) {
        self.application = application
        self.upstream = upstream
    }

    /// Gets one of the follower's own aggregates: with the events collected in this context
    /// applied when it was collected here, else from the application's repository.
    /// - Throws: `.aggregateTypeMismatch` when `id` was collected here as another type; as
    ///   ``Repository/get(_:id:version:)``.
    public func get<A: Aggregate>(_ type: A.Type, id: UUID) async throws -> AggregateRoot<A> {
        if let entry = state.withLock({ $0.entries[id] }) {
            guard var root = entry.root as? AggregateRoot<A> else {
                throw EventSourcingError(.aggregateTypeMismatch,
                    "the aggregate was collected in this processing context as another type than \(A.typeName)", originatorID: id)
            }
            if root.isDiscarded {
                // As the repository answers once the discard is saved.
                throw EventSourcingError(.aggregateNotFound,
                    "no such aggregate: it was discarded in this processing context at version \(root.version)",
                    originatorID: id, originatorVersion: root.version, topic: A.discardTopic)
            }
            root.markSaved(through: root.version)
            return root
        }
        return try await application.repository.get(A.self, id: id)
    }

    /// Whether aggregate `id` was collected in this context (and not discarded here) or exists
    /// in the follower's store.
    public func contains(_ id: UUID) async throws -> Bool {
        if let collected = state.withLock({ $0.entries[id] }) { return !collected.discarded }
        return try await application.repository.contains(id)
    }

    /// Queues `root`'s pending events for the commit with the tracking record and marks them
    /// saved (as ``Application/save(_:)`` does, but nothing is written before the policy returns).
    /// Collecting the same aggregate again (after ``get(_:id:)`` here, or with the same root)
    /// adds its new events; ``get(_:id:)`` sees them all. A discard (``AggregateRoot/discard(at:)``)
    /// is collected too: its marker commits after the root's events, and ``get(_:id:)`` and
    /// ``contains(_:)`` then answer as the repository does for a discarded aggregate.
    /// - Throws: `.invalidArgument` after the context's events were committed (a context is for
    ///   one call of the policy); `.aggregateTypeMismatch` when `root.id` was collected here as
    ///   another type; `.concurrencyConflict` when the root does not continue the events
    ///   collected for it here (it was got before them). `root` is unchanged then.
    public func collect<A: Aggregate>(_ root: inout AggregateRoot<A>) throws {
        let discard = root.pendingDiscard
        guard !root.pendingEvents.isEmpty || discard != nil else { return }
        let snapshot = root
        let mapper = application.mapper
        let app = application
        try state.withLock { (s: inout State) throws(EventSourcingError) in
            guard !s.committed else {
                throw EventSourcingError(.invalidArgument,
                    "the processing context was already committed: collect aggregates while the policy runs, not later",
                    originatorID: snapshot.id)
            }
            var combined = snapshot
            // The discard marker, when pending, takes the version after the pending events.
            let pendingCount = snapshot.pendingEvents.count + (discard == nil ? 0 : 1)
            var firstVersion = snapshot.version - pendingCount + 1
            if let existing = s.entries[snapshot.id] {
                guard let earlier = existing.root as? AggregateRoot<A> else {
                    throw EventSourcingError(.aggregateTypeMismatch,
                        "the aggregate was collected in this processing context as another type than \(A.typeName)",
                        originatorID: snapshot.id)
                }
                guard firstVersion - 1 == earlier.version else {
                    throw EventSourcingError(.concurrencyConflict,
                        "the aggregate's events collected in this processing context end at version \(earlier.version); these start at \(firstVersion): get it from the context before changing it again",
                        originatorID: snapshot.id, originatorVersion: firstVersion)
                }
                combined = earlier
                for e in snapshot.pendingEvents {
                    // Applied to a root at this version and state already: it applies again
                    // unless the aggregate's apply is not deterministic.
                    do { try combined.record(e.event, at: e.timestamp) } catch {
                        throw EventSourcingError(.invalidEvent,
                            "an event collected again in this processing context did not apply to the events collected before it (\(type(of: error)))",
                            originatorID: snapshot.id, originatorVersion: e.originatorVersion)
                    }
                }
                if let discard {
                    do { try combined.discard(at: discard.at) } catch {
                        throw EventSourcingError(.invalidEvent,
                            "a discard collected again in this processing context did not follow the events collected before it (\(type(of: error)))",
                            originatorID: snapshot.id, originatorVersion: discard.version)
                    }
                }
                let earlierPending = earlier.pendingEvents.count + (earlier.pendingDiscard == nil ? 0 : 1)
                firstVersion = earlier.version - earlierPending + 1
            } else {
                s.order.append(snapshot.id)
            }
            let final = combined
            let savedFrom = firstVersion - 1
            let generation = app.erasureGeneration
            // A new aggregate keyed by its own (random) id has a new scope (as Application.save).
            let newScope = savedFrom == 0 && final.keyScope == AggregateRoot<A>.ownScope(final.id)
            s.entries[snapshot.id] = Entry(
                root: final,
                encoder: { optimistic in
                    try await mapper.encode(final.pendingEvents, of: A.self, keyScope: final.keyScope,
                                            newScope: optimistic && newScope,
                                            discard: final.pendingDiscard.map { (final.id, $0.version, $0.at) })
                },
                afterCommit: { await app.autoSnapshot(final, savedFrom: savedFrom, generation: generation) },
                discarded: final.isDiscarded)
        }
        root.markSaved(through: snapshot.version)
    }

    /// Whether anything was collected.
    var isEmpty: Bool { state.withLock { $0.order.isEmpty } }

    /// Commits the collected events, `plain` records and `tracking` in one transaction, then
    /// takes the automatic snapshots due. The context takes no more collects.
    func commit(tracking: Tracking, plain: [StoredEvent] = []) async throws {
        let entries = state.withLock { s -> [Entry] in
            s.committed = true
            return s.order.compactMap { s.entries[$0] }
        }
        try await application.commit(entries.map(\.encoder), tracking: tracking, plain: plain)
        for e in entries { await e.afterCommit() }
    }
}
