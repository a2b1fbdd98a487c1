import Foundation

/// The application's events in one total order, for projections and other readers that
/// follow along: `select(start: last + 1, limit: …)` until it comes back empty.
public struct NotificationLog: Sendable {
    let app: Application

    /// The raw stored notifications (still compressed and encrypted) with
    /// `start <= id <= stop`, ascending, at most `limit`, filtered by `topics` if not empty.
    /// - Throws: ``EventSourcingError/Code/invalidArgument`` for `start < 1` or `limit < 1`.
    public func select(start: Int64, limit: Int, stop: Int64? = nil, topics: [String] = []) async throws -> [StoredNotification] {
        guard start >= 1 else { throw EventSourcingError(.invalidArgument, "start must be at least 1, got \(start)") }
        guard limit >= 1 else { throw EventSourcingError(.invalidArgument, "limit must be at least 1, got \(limit)") }
        return try await app.recorder.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }

    /// The `start` of the page after one whose last id is `lastID`, for readers that page
    /// through the log: `lastID + 1`, or `Int64.max` once the log's last possible id was read
    /// (then stop). A page must end at or after its own `start`.
    /// - Throws: ``EventSourcingError/Code/databaseCorrupt`` when `lastID < start`: the recorder
    ///   returned ids out of order (a corrupt index), and paging on would never end.
    public static func next(after lastID: Int64, from start: Int64) throws(EventSourcingError) -> Int64 {
        guard lastID >= start else {
            throw EventSourcingError(.databaseCorrupt,
                "the recorder returned notification \(lastID) for a page starting at \(start): ids out of order (corrupt index?)",
                notificationID: lastID)
        }
        return lastID == Int64.max ? Int64.max : lastID + 1
    }

    /// The highest notification id, nil when the log is empty.
    public var maxNotificationID: Int64? {
        get async throws { try await app.recorder.maxNotificationID() }
    }

    /// Like ``select(start:limit:stop:topics:)``, with every item decrypted. A shredded or
    /// unreadable item does not fail the page: its ``LogItem/outcome`` says what happened.
    public func read(start: Int64, limit: Int, stop: Int64? = nil, topics: [String] = []) async throws -> [LogItem] {
        try await app.instruments.readLog { try await readPage(start: start, limit: limit, stop: stop, topics: topics) }
    }

    private func readPage(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [LogItem] {
        let page = try await select(start: start, limit: limit, stop: stop, topics: topics)
        // The page's data keys, in one call to a store that reads them in batches.
        await app.mapper.prefetchKeys(for: page.lazy.map(\.storedEvent))
        var items: [LogItem] = []
        items.reserveCapacity(page.count)
        for n in page {
            if ErasureRecord.isErasure(topic: n.topic) {
                // Never decrypted: a shred's erasure record is plaintext, read by its strict decoder.
                do {
                    let erasure = try ErasureRecord(decoding: n.storedEvent, notificationID: n.id)
                    items.append(LogItem(notification: n, outcome: .erased(keyScope: erasure.keyScope, at: erasure.shreddedAt)))
                } catch {
                    app.instruments.readFailed(error)
                    items.append(LogItem(notification: n, outcome: .failed(error)))
                }
                continue
            }
            do {
                let payload = try await app.mapper.openPayload(n.storedEvent, snapshot: false, notificationID: n.id)
                items.append(LogItem(notification: n, outcome: .decoded(payload)))
            } catch let e as EventSourcingError where e.code == .shredded {
                items.append(LogItem(notification: n, outcome: .shredded(keyScope: e.keyScope ?? "", at: e.shreddedAt)))
            } catch let e as EventSourcingError {
                app.instruments.readFailed(e)
                items.append(LogItem(notification: n, outcome: .failed(e)))
            }
        }
        return items
    }
}

/// One notification, decrypted (or not) by ``NotificationLog/read(start:limit:stop:topics:)``.
public struct LogItem: Sendable {
    /// What reading the item gave.
    public enum Outcome: Sendable {
        /// Decrypted and decompressed: the event's envelope (see ``Mapper/Payload``).
        case decoded(Mapper.Payload)
        /// The item's key scope was crypto-shredded.
        case shredded(keyScope: String, at: Date?)
        /// The item could not be read (integrity failure, missing key, …).
        case failed(EventSourcingError)
        /// The item is a shred's erasure record (``ErasureRecord``): `keyScope` was
        /// crypto-shredded at `at`. A reader that keeps copies of that scope's data (a read
        /// model) must delete or redact them now. Items after it in the log never carry the
        /// scope's plaintext again.
        case erased(keyScope: String, at: Date)
    }

    /// The stored notification.
    public let notification: StoredNotification
    /// What reading it gave.
    public let outcome: Outcome

    /// Whether the item was shredded.
    public var isShredded: Bool { if case .shredded = outcome { return true } else { return false } }

    /// Whether the item is a shred's erasure record.
    public var isErased: Bool { if case .erased = outcome { return true } else { return false } }

    /// Whether the item is an aggregate's discard marker (``AggregateRoot/discard(at:)``): its
    /// topic is the aggregate type's ``Aggregate/discardTopic``, its outcome ``Outcome/decoded(_:)``
    /// (or shredded, or failed, like an event). It carries no event: ``event(as:)`` throws for it.
    public var isDiscardMarker: Bool { DiscardMarker.isDiscard(topic: notification.topic) }

    /// Decodes the item as an event of aggregate type `A`.
    /// - Throws: ``EventSourcingError`` `.shredded` or the read failure, `.decodingFailed` if it is not an `A` event,
    ///   `.aggregateTypeMismatch` for another type's event, an erasure record (``Outcome/erased(keyScope:at:)``)
    ///   or a discard marker (``isDiscardMarker``).
    public func event<A: Aggregate>(as type: A.Type) throws -> DomainEvent<A.Event> {
        switch outcome {
        case .decoded where isDiscardMarker:
            throw EventSourcingError(.aggregateTypeMismatch,
                "the item is an aggregate's discard marker, not an event: check isDiscardMarker to handle it (the aggregate was discarded at this version)",
                originatorID: notification.originatorID, originatorVersion: notification.originatorVersion,
                topic: notification.topic, notificationID: notification.id)
        case .decoded(let payload):
            try Mapper.checkTopic(notification.storedEvent, of: A.self, snapshot: false, notificationID: notification.id)
            return try Mapper.decodeEvent(payload, as: type, stored: notification.storedEvent, notificationID: notification.id)
        case .shredded(let scope, let at):
            throw EventSourcingError(.shredded, "the key scope was crypto-shredded", originatorID: notification.originatorID,
                                     originatorVersion: notification.originatorVersion, topic: notification.topic,
                                     notificationID: notification.id, keyScope: scope, shreddedAt: at)
        case .failed(let e):
            throw e
        case .erased(let scope, let at):
            throw EventSourcingError(.aggregateTypeMismatch,
                "the item is an erasure record, not an event of \(A.typeName): switch on its outcome (.erased) to handle it",
                originatorID: notification.originatorID, originatorVersion: notification.originatorVersion,
                topic: notification.topic, notificationID: notification.id, keyScope: scope, shreddedAt: at)
        }
    }
}
