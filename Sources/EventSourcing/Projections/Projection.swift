import Foundation

/// A read model fed by the notification log: it declares a name and the topics it wants, turns
/// each notification into writes to its view, and deletes or redacts a data subject's copies
/// when the subject's key scope is shredded.
///
/// A ``ProjectionRunner`` calls it, one notification after another in log order, from the
/// projection's tracking position (so a restart resumes exactly where it stopped):
///
/// - ``process(_:in:)`` for each readable event whose topic is in ``topics`` (all topics when
///   ``topics`` is empty);
/// - ``erase(keyScope:in:)`` for each erasure record (``LogItem/Outcome/erased(keyScope:at:)``),
///   whatever ``topics`` says: a shred reaches every projection, in log order;
/// - nothing for a shredded event (``LogItem/Outcome/shredded(keyScope:at:)``): its content is
///   gone; the runner moves past it and never stops for it.
///
/// Each call gets a `Context`: where the view lives. A view in the store's own database gets a
/// transaction on that database (`SQLiteViewTransaction` of the SQLite store, `PostgresViewTransaction`
/// of the PostgreSQL store), in which the view's writes and the tracking record commit together:
/// every notification is processed **exactly once**. A view anywhere else gets a
/// ``ProjectionContext`` (``AtLeastOnceProjectionStore``): the tracking record is written after
/// the call returns, so a crash in between processes the notification again (**at least once**);
/// ``ProjectionContext/notificationID`` lets such a projection recognise a repeat.
///
/// When a call throws, the runner stops with `.projectionFailed` naming the projection and the
/// notification; nothing of that notification is kept (exactly-once views), and running again
/// retries it. The name is stored in plaintext as a tracking name: it must not carry personal data.
public protocol Projection<Context>: Sendable {
    /// Where the view lives: the transaction or context each call gets.
    associatedtype Context: Sendable

    /// The projection's name, its tracking name: 1 to 255 bytes of UTF-8 without NUL, unique
    /// per store.
    var name: String { get }

    /// The topics the projection processes; empty for every topic. Erasure records reach
    /// ``erase(keyScope:in:)`` whatever this says.
    var topics: [String] { get }

    /// Creates the view if it does not exist (tables, indexes). Called once each time the runner
    /// starts, before the first notification, in a transaction of its own; must be idempotent.
    /// The default does nothing.
    func setUp(in context: Context) async throws

    /// Applies one notification to the view. `item.outcome` is ``LogItem/Outcome/decoded(_:)``;
    /// ``LogItem/event(as:)`` decodes it.
    func process(_ item: LogItem, in context: Context) async throws

    /// Deletes or redacts every copy the view holds of data under `keyScope`, which was
    /// crypto-shredded. Later notifications never carry that scope's data again (its events
    /// read as shredded), so a view emptied here stays so, also after a rebuild.
    func erase(keyScope: String, in context: Context) async throws

    /// Deletes the view's content (or drops its tables) for a rebuild from the start
    /// (``ProjectionRunner/reset()``). Called in the same transaction that deletes the tracking
    /// record where the store allows.
    func drop(in context: Context) async throws
}

extension Projection {
    public var topics: [String] { [] }
    public func setUp(in context: Context) async throws {}
}

/// Where a projection's view lives and its tracking position is kept: the transactions the
/// ``ProjectionRunner`` runs the projection in.
///
/// The SQLite and PostgreSQL stores conform with their own transactions (exactly once);
/// ``AtLeastOnceProjectionStore`` serves views anywhere else from any ``TrackingRecorder``.
public protocol ProjectionStore<Context>: Sendable {
    /// What the projection's calls get.
    associatedtype Context: Sendable

    /// The notification id up to which `name`'s view holds every notification, nil when it holds
    /// none (a new or reset projection).
    /// - Throws: `.invalidArgument` for a bad name; the store's errors.
    func projectionPosition(_ name: String) async throws -> Int64?

    /// Runs `batch`'s steps in order and records the last one that completed as `batch.name`'s
    /// tracking position, in one transaction where the store allows. A step that throws ends the
    /// batch: what it wrote is undone (where the store allows), the steps before it are kept
    /// with the tracking position of the last of them, and the outcome names it.
    /// - Throws: the store's own failures (then nothing of the batch is kept where the store
    ///   allows), `.trackingConflict` when another runner moved the position first.
    func applyProjectionBatch(_ batch: ProjectionBatch<Context>) async throws -> ProjectionBatch<Context>.Outcome

    /// Runs `body` in one transaction with no step, to set a view up; with `resettingTracking`,
    /// deletes `name`'s tracking record too (a rebuild), in the same transaction where the store allows.
    func projectionTransaction(_ name: String, resettingTracking: Bool,
                               _ body: @escaping @Sendable (Context) async throws -> Void) async throws
}

/// Notifications for a ``ProjectionStore`` to apply in one transaction.
public struct ProjectionBatch<Context: Sendable>: Sendable {
    /// One notification: its id and what to do with it (nil: nothing, only move the position,
    /// as for a shredded event).
    public struct Step: Sendable {
        /// The notification id.
        public var notificationID: Int64
        /// Whether the step erases a key scope (``Projection/erase(keyScope:in:)``): a store
        /// whose files keep old page images (SQLite's WAL) removes them after the batch commits.
        public var isErasure: Bool
        /// The projection's call, or nil for none.
        public var body: (@Sendable (Context) async throws -> Void)?

        public init(notificationID: Int64, isErasure: Bool = false, body: (@Sendable (Context) async throws -> Void)?) {
            self.notificationID = notificationID
            self.isErasure = isErasure
            self.body = body
        }
    }

    /// What applying the batch gave.
    public struct Outcome: Sendable {
        /// The notification id recorded as the new position (the last step kept), nil when no
        /// step was kept.
        public var committedThrough: Int64?
        /// The step that threw, and its error; nil when every step completed.
        public var failure: (notificationID: Int64, error: any Error)?

        public init(committedThrough: Int64?, failure: (notificationID: Int64, error: any Error)?) {
            self.committedThrough = committedThrough
            self.failure = failure
        }
    }

    /// The projection's (tracking) name.
    public var name: String
    /// The steps, in ascending notification id order.
    public var steps: [Step]

    public init(name: String, steps: [Step]) {
        self.name = name
        self.steps = steps
    }
}

extension LogItem {
    /// The key scope the item's data is sealed under: what a view stores beside the rows it
    /// makes from the item, so ``Projection/erase(keyScope:in:)`` can find them. For a decoded
    /// item it comes from the record's header, which decryption authenticated; for an erasure
    /// record, the erased scope. Nil for an unencrypted record.
    public var keyScope: String? {
        switch outcome {
        case .erased(let scope, _), .shredded(let scope, _): return scope
        case .decoded, .failed: return StateHeader.peekKeyScope(notification.state)
        }
    }
}
