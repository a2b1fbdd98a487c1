import Foundation
import Synchronization

// In-process publish/subscribe: code in the same process follows what an application saves,
// after it commits. The notification log (`NotificationLog.subscribe`) is the durable,
// resumable way to follow a store; this is the immediate, in-memory one.

extension Application {
    /// The default number of events a subscription holds for a consumer that has not taken
    /// them yet (see ``subscribe(to:bufferSize:)``).
    public static let defaultSubscriberBufferSize = 10_000
    /// The largest buffer a subscription may ask for.
    public static let maxSubscriberBufferSize = 1_000_000

    /// Follows the events of aggregate type `A` that this application saves, typed, from now on.
    ///
    /// - **After the commit, never before:** an event is delivered once the store has committed
    ///   it and the save is returning; a save that throws publishes nothing (not even when the
    ///   store committed before the error reached the application, a connection lost at the
    ///   commit: the notification log has such events).
    /// - **In notification-id order:** events are delivered in the order of their notification
    ///   ids, across concurrent saves too (a save's events wait for the saves that started before
    ///   it returned to finish).
    /// - **What is published:** every save through this `Application` instance, including a
    ///   process application's saves (it saves through its application). Not other instances'
    ///   or other processes' saves: follow the notification log for those. The discard marker
    ///   (``AggregateRoot/discard(at:)``) is not an `A` event: it is not delivered here (the
    ///   untyped ``subscribe(topics:bufferSize:)`` delivers it under ``Aggregate/discardTopic``).
    /// - **A slow consumer never blocks or slows a save.** Up to `bufferSize` events wait for it
    ///   in memory (bounded: `bufferSize` times the size of an event). When one more arrives while
    ///   the buffer is full, nothing more is buffered: the consumer gets the events already buffered,
    ///   then `next()` throws ``EventSourcingError/Code/subscriptionOverflow`` saying how many
    ///   events were dropped and from which notification id (its ``EventSourcingError/notificationID``),
    ///   and the sequence ends. Nothing is dropped silently. To follow a store durably and resume
    ///   after a gap, use ``NotificationLog/subscribe(after:topics:pageSize:pollInterval:)``
    ///   from the last notification id received.
    /// - **Cancelling** the consuming task ends the sequence (`next()` throws `CancellationError`)
    ///   and removes the subscription at once; so does dropping the sequence and its iterator.
    /// - One consumer per subscription: each event goes to one `next()` call.
    ///
    /// The subscription starts when this method returns: events whose commit completes later are
    /// delivered, earlier ones are not.
    /// - Parameters:
    ///   - type: the aggregate type whose events are delivered.
    ///   - bufferSize: 1 to ``maxSubscriberBufferSize`` events; another value makes the first
    ///     `next()` throw ``EventSourcingError/Code/invalidArgument``.
    public func subscribe<A: Aggregate>(to type: A.Type, bufferSize: Int = Application.defaultSubscriberBufferSize)
        -> PublishedEvents<A> {
        PublishedEvents(handle: SubscriberHandle(hub: hub, filter: .eventsOf(A.typeName + "."), bufferSize: bufferSize))
    }

    /// Follows every record this application saves (or only those with one of `topics`),
    /// untyped: each as a ``Recording`` (aggregate id, version, topic, notification id). Events,
    /// discard markers and, for a process application, the erasure records it commits.
    /// Guarantees and bounds as ``subscribe(to:bufferSize:)``.
    public func subscribe(topics: [String] = [], bufferSize: Int = Application.defaultSubscriberBufferSize) -> PublishedRecordings {
        PublishedRecordings(handle: SubscriberHandle(hub: hub, filter: topics.isEmpty ? .all : .topics(Set(topics)),
                                                     bufferSize: bufferSize))
    }

    /// The number of in-process subscriptions currently registered (see ``subscribe(to:bufferSize:)``).
    public var subscriberCount: Int { hub.subscriberCount }
}

/// One event delivered by ``Application/subscribe(to:bufferSize:)``.
public struct PublishedEvent<A: Aggregate>: Sendable {
    /// Its position in the notification log.
    public let notificationID: Int64
    /// Its topic.
    public let topic: String
    /// The event as the application saved it.
    public let domainEvent: DomainEvent<A.Event>

    /// The aggregate id.
    public var originatorID: UUID { domainEvent.originatorID }
    /// The aggregate version the event produced.
    public var originatorVersion: Int { domainEvent.originatorVersion }
    /// The event itself.
    public var event: A.Event { domainEvent.event }
}

/// The events of one aggregate type an application saves: an `AsyncSequence` of
/// ``PublishedEvent`` from ``Application/subscribe(to:bufferSize:)``.
public struct PublishedEvents<A: Aggregate>: AsyncSequence, Sendable {
    public typealias Element = PublishedEvent<A>
    let handle: SubscriberHandle

    public func makeAsyncIterator() -> Iterator { Iterator(handle: handle) }

    /// Takes the buffered events, waiting for the next commit when there are none.
    public struct Iterator: AsyncIteratorProtocol {
        let handle: SubscriberHandle

        /// The next event, waiting for one to commit.
        /// - Throws: `CancellationError` once the task is cancelled;
        ///   ``EventSourcingError/Code/subscriptionOverflow`` after the consumer fell behind;
        ///   `.invalidArgument` for a bad buffer size; `.aggregateTypeMismatch` for an event
        ///   saved as another Swift type with the same ``Aggregate/typeName``.
        public mutating func next() async throws -> PublishedEvent<A>? {
            guard let item = try await handle.next() else { return nil }
            guard let events = item.events as? [DomainEvent<A.Event>], events.indices.contains(item.index) else {
                let r = item.recording
                throw EventSourcingError(.aggregateTypeMismatch,
                    "the event was saved as another Swift type than \(A.self) with the type name \(A.typeName)",
                    originatorID: r.originatorID, originatorVersion: r.originatorVersion, topic: r.topic,
                    notificationID: r.notificationID)
            }
            return PublishedEvent(notificationID: item.recording.notificationID, topic: item.recording.topic,
                                  domainEvent: events[item.index])
        }
    }
}

/// The records an application saves, untyped: an `AsyncSequence` of ``Recording`` from
/// ``Application/subscribe(topics:bufferSize:)``.
public struct PublishedRecordings: AsyncSequence, Sendable {
    public typealias Element = Recording
    let handle: SubscriberHandle

    public func makeAsyncIterator() -> Iterator { Iterator(handle: handle) }

    /// Takes the buffered records, waiting for the next commit when there are none.
    public struct Iterator: AsyncIteratorProtocol {
        let handle: SubscriberHandle

        /// The next record, waiting for one to commit.
        /// - Throws: as ``PublishedEvents/Iterator/next()``.
        public mutating func next() async throws -> Recording? {
            try await handle.next()?.recording
        }
    }
}

/// A subscription's registration: removed from the hub when the last sequence or iterator
/// holding it goes away, or when its consumer is cancelled.
final class SubscriberHandle: Sendable {
    let hub: EventHub
    let id: UInt64?
    let invalid: EventSourcingError?

    init(hub: EventHub, filter: EventHub.Filter, bufferSize: Int) {
        self.hub = hub
        if (1...Application.maxSubscriberBufferSize).contains(bufferSize) {
            id = hub.add(filter: filter, bufferSize: bufferSize)
            invalid = nil
        } else {
            id = nil
            invalid = EventSourcingError(.invalidArgument,
                "a subscription's buffer size must be 1 to \(Application.maxSubscriberBufferSize) events, got \(bufferSize)")
        }
    }

    deinit { if let id { hub.remove(id) } }

    func next() async throws -> EventHub.Item? {
        if let invalid { throw invalid }
        guard let id else { return nil }
        return try await hub.next(id)
    }
}

/// The application's publisher: orders what commits by notification id and hands it to each
/// subscription's bounded buffer.
final class EventHub: Sendable {
    /// What one encoder's batch of a commit publishes: its record count and its domain events
    /// (`[DomainEvent<A.Event>]`, the batch's first records), nil for records without any.
    struct Batch: Sendable {
        var count: Int
        var events: (any Sendable)?
    }

    /// One committed record, with the domain event it came from (`events[index]`) if any.
    struct Item: Sendable {
        var recording: Recording
        var events: (any Sendable)?
        var index: Int
    }

    enum Filter: Sendable {
        case all
        case topics(Set<String>)
        /// Events of one type: topics starting with the type name and a dot.
        case eventsOf(String)

        func admits(_ topic: String) -> Bool {
            switch self {
            case .all: true
            case .topics(let set): set.contains(topic)
            case .eventsOf(let prefix): topic.hasPrefix(prefix)
            }
        }
    }

    private struct Subscriber {
        var filter: Filter
        var bound: Int
        /// A two-stack queue: `outbox` (reversed) is taken from, `inbox` appended to.
        var inbox: [Item] = []
        var outbox: [Item] = []
        var waiter: CheckedContinuation<Item?, any Error>?
        var dropped = 0
        var firstDropped: Int64?
        var lastDelivered: Int64?

        var count: Int { inbox.count + outbox.count }

        mutating func pop() -> Item? {
            if outbox.isEmpty {
                guard !inbox.isEmpty else { return nil }
                outbox = inbox.reversed()
                inbox.removeAll(keepingCapacity: true)
            }
            let item = outbox.removeLast()
            lastDelivered = item.recording.notificationID
            return item
        }
    }

    private struct Held {
        /// The ticket counter when the commit completed: every ticket below it was opened before.
        var completedAt: UInt64
        var items: [Item]
    }

    private struct State {
        var nextTicket: UInt64 = 0
        var inFlight: Set<UInt64> = []
        var held: [Held] = []
        /// The items in `held`.
        var heldCount = 0
        var nextSubscriber: UInt64 = 0
        var subscribers: [UInt64: Subscriber] = [:]
    }

    private let state = Mutex(State())

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    // MARK: Publishing side

    /// One commit's claim on the publishing order, from before it writes until it returns.
    final class Ticket: Sendable {
        let hub: EventHub
        let number: UInt64
        private let closed = Mutex(false)

        init(hub: EventHub, number: UInt64) {
            self.hub = hub
            self.number = number
        }

        /// Publishes what the commit stored: `events` got `ids`; `batches` say which of them
        /// came from which encoder, with its domain events. Closes the ticket.
        func publish(_ events: [StoredEvent], ids: [Int64], batches: [Batch]) {
            guard closed.withLock({ c in defer { c = true }; return !c }) else { return }
            var items: [Item] = []
            if hub.subscriberCount > 0 {
                items.reserveCapacity(events.count)
                var offset = 0
                for batch in batches {
                    for i in 0..<batch.count where offset + i < events.count && offset + i < ids.count {
                        let e = events[offset + i]
                        items.append(Item(recording: Recording(originatorID: e.originatorID, originatorVersion: e.originatorVersion,
                                                               topic: e.topic, notificationID: ids[offset + i]),
                                          events: batch.events, index: i))
                    }
                    offset += batch.count
                }
            }
            hub.complete(number, items: items)
        }

        /// Closes the ticket without publishing (the commit failed), unless it published.
        func close() {
            guard closed.withLock({ c in defer { c = true }; return !c }) else { return }
            hub.complete(number, items: [])
        }
    }

    /// Opens a ticket: call before the commit writes; the ticket must be closed (published or not).
    func open() -> Ticket {
        let n = state.withLock { s -> UInt64 in
            let n = s.nextTicket
            s.nextTicket &+= 1
            s.inFlight.insert(n)
            return n
        }
        return Ticket(hub: self, number: n)
    }

    /// Ends ticket `number` and releases, in notification-id order, what can no longer be
    /// preceded by anything unknown.
    ///
    /// A completed commit is *settled* once every ticket opened before it completed has ended:
    /// a commit still in flight then started after it committed, so its ids are higher. Let `M`
    /// be the highest id of the settled commits: every id below `M` is then known (held or
    /// released), so all held items up to `M` are released, in id order, also those of commits
    /// not settled themselves (what could precede them is above `M` too).
    private func complete(_ number: UInt64, items: [Item]) {
        var wake: [(CheckedContinuation<Item?, any Error>, Item)] = []
        var fail: [(CheckedContinuation<Item?, any Error>, EventSourcingError)] = []
        defer {
            for (waiter, item) in wake { waiter.resume(returning: item) }
            for (waiter, error) in fail { waiter.resume(throwing: error) }
        }
        state.withLock { s in
            s.inFlight.remove(number)
            if !items.isEmpty, !s.subscribers.isEmpty {
                s.held.append(Held(completedAt: s.nextTicket, items: items))
                s.heldCount += items.count
            }
            guard !s.held.isEmpty else { return }
            // A commit that stays in flight holds back every later one. Bounded like the
            // subscribers' buffers: past the largest, what is held is dropped, counted, for
            // every subscriber it was for (its sequence ends with the overflow error).
            if s.heldCount > s.subscribers.values.lazy.map(\.bound).max() ?? 0 {
                let dropped = s.held.flatMap(\.items)
                s.held = []
                s.heldCount = 0
                for id in Array(s.subscribers.keys) {
                    guard var sub = s.subscribers[id] else { continue }
                    for item in dropped where sub.filter.admits(item.recording.topic) {
                        sub.dropped += 1
                        sub.firstDropped = min(sub.firstDropped ?? Int64.max, item.recording.notificationID)
                    }
                    if sub.dropped > 0, sub.count == 0, let waiter = sub.waiter {
                        s.subscribers.removeValue(forKey: id)
                        fail.append((waiter, Self.overflow(sub)))
                    } else {
                        s.subscribers[id] = sub
                    }
                }
                return
            }
            let low = s.inFlight.min() ?? UInt64.max
            let settled = s.held.lazy.filter { $0.completedAt <= low }.compactMap { $0.items.map(\.recording.notificationID).max() }.max()
            guard let settled else { return }
            var release: [Item] = []
            for i in s.held.indices {
                release += s.held[i].items.filter { $0.recording.notificationID <= settled }
                s.held[i].items.removeAll { $0.recording.notificationID <= settled }
            }
            s.held.removeAll { $0.items.isEmpty }
            s.heldCount -= release.count
            guard !release.isEmpty else { return }
            release.sort { $0.recording.notificationID < $1.recording.notificationID }
            for id in Array(s.subscribers.keys) {
                guard var sub = s.subscribers[id] else { continue }
                for item in release where sub.filter.admits(item.recording.topic) {
                    if let waiter = sub.waiter {
                        sub.waiter = nil
                        sub.lastDelivered = item.recording.notificationID
                        wake.append((waiter, item))
                    } else if sub.dropped == 0, sub.count < sub.bound {
                        sub.inbox.append(item)
                    } else {
                        sub.dropped += 1
                        sub.firstDropped = min(sub.firstDropped ?? Int64.max, item.recording.notificationID)
                    }
                }
                s.subscribers[id] = sub
            }
        }
    }

    // MARK: Subscribing side

    func add(filter: Filter, bufferSize: Int) -> UInt64 {
        state.withLock { s in
            let id = s.nextSubscriber
            s.nextSubscriber &+= 1
            s.subscribers[id] = Subscriber(filter: filter, bound: bufferSize)
            return id
        }
    }

    func remove(_ id: UInt64) {
        let waiter = state.withLock { $0.subscribers.removeValue(forKey: id)?.waiter }
        waiter?.resume(throwing: CancellationError())
    }

    /// The subscriber's next item, waiting for one; nil once it was removed (ended).
    func next(_ id: UInt64) async throws -> Item? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Item?, any Error>) in
                let outcome: Result<Item?, any Error>? = state.withLock { s in
                    guard var sub = s.subscribers[id] else {
                        return Task.isCancelled ? .failure(CancellationError()) : .success(nil)
                    }
                    if Task.isCancelled {
                        s.subscribers.removeValue(forKey: id)
                        return .failure(CancellationError())
                    }
                    if let item = sub.pop() {
                        s.subscribers[id] = sub
                        return .success(item)
                    }
                    if sub.dropped > 0 {
                        s.subscribers.removeValue(forKey: id)
                        return .failure(Self.overflow(sub))
                    }
                    sub.waiter = c
                    s.subscribers[id] = sub
                    return nil
                }
                if let outcome { c.resume(with: outcome) }
            }
        } onCancel: {
            remove(id)
        }
    }

    private static func overflow(_ sub: Subscriber) -> EventSourcingError {
        let resume = sub.lastDelivered.map { "after: \($0), the last notification delivered" } ?? "after: the last notification id you processed"
        return EventSourcingError(.subscriptionOverflow,
            "the in-process subscription fell behind: its buffer of \(sub.bound) events was full, so \(sub.dropped) "
            + "event\(sub.dropped == 1 ? " was" : "s were") dropped (the first: notification \(sub.firstDropped ?? 0)) and it ended; "
            + "to follow the store durably and resume, use NotificationLog.subscribe(\(resume))",
            notificationID: sub.firstDropped)
    }
}
