import Foundation

/// A saga (a process manager): a long-running process that reacts to events of several
/// applications, keeps its own state as an event-sourced aggregate, and issues commands.
///
/// Each upstream event is correlated to one saga instance by a correlation id (an order's id,
/// say): ``SagaPolicy`` derives the instance's aggregate id from the saga's state type and the
/// correlation id (``SagaPolicy/sagaID(correlationID:)``), gets it from the process
/// application's own store (or creates it, when ``start(with:correlationID:)`` says the event
/// starts one), hands it to ``handle(_:saga:in:)``, and collects its new events. The saga's new
/// state commits with the process application's tracking record, atomically: after a crash or
/// a restart the saga resumes from its stored state at the next unprocessed event, and never
/// sees an event twice *as far as its own state goes*.
///
/// Commands to other applications are not part of that commit. A system's pipes may not form
/// cycles, so a saga that follows `payments` cannot be followed by it: it calls the payments
/// application directly from ``handle(_:saga:in:)``. Such a call runs again when the event is
/// processed again (the process stopped after the call and before the commit), so it must be
/// idempotent:
/// - create aggregates under ids derived from the correlation id (``DerivedID``) with
///   ``Application/saveIfNew(_:)``: the repeat finds the aggregate already created;
/// - change existing aggregates only when their state says the change is still to be made
///   (refund a payment that is not refunded yet).
///
/// Events of one leader arrive in its log order; events of different leaders in the order the
/// runner reads them. After a crash between a command and the commit, the command's effect (a
/// refund, in the payments log) can reach the saga before the event that caused the command
/// (a failed shipment, in the shipping log) is processed again. So do not assume an order
/// between leaders: record what each event tells in the state, then do whatever is due given
/// all the state knows (see the OrderSystem example's `FulfilmentSaga`).
///
/// The state type's ``Aggregate/dataSubject`` decides its key scope, as for any aggregate: name
/// the customer, and a shred of the customer erases the saga's state too. A saga whose state
/// was shredded is over: ``SagaPolicy`` skips later events for it.
public protocol Saga: Sendable {
    /// The saga's state: an event-sourced aggregate in the process application's own store.
    associatedtype State: Aggregate

    /// Topics wanted from the leaders (empty: all); erasure records always arrive.
    var topics: [String] { get }

    /// Which saga instance `event` belongs to: its correlation id (1 to
    /// ``DerivedID/maxPartBytes`` bytes of UTF-8, no NUL), or nil when the event is none of this
    /// saga's business.
    func correlationID(of event: UpstreamEvent) throws -> String?

    /// The creation event of a new instance when `event` starts one; nil when it does not.
    /// Called only when no instance exists for the correlation id; an event that neither
    /// starts an instance nor finds one is skipped.
    func start(with event: UpstreamEvent, correlationID: String) throws -> State.Event?

    /// One event for the instance `saga` (just created by ``start(with:correlationID:)``, or
    /// got from the store): record events on it (they are collected after this returns) and
    /// issue idempotent commands. Throwing stops the process application at this event with
    /// nothing of it committed; running again retries it.
    func handle(_ event: UpstreamEvent, saga: inout AggregateRoot<State>, in context: ProcessingContext) async throws

    /// A leader's erasure record for `keyScope` (the scope is already shredded in the process
    /// application's store). Default: nothing.
    func erase(keyScope: String, in context: ProcessingContext) async throws
}

extension Saga {
    public var topics: [String] { [] }
    public func erase(keyScope: String, in context: ProcessingContext) async throws {}
}

/// Turns a ``Saga`` into the ``ProcessPolicy`` of a process application.
public struct SagaPolicy<S: Saga>: ProcessPolicy {
    /// The saga.
    public let saga: S

    /// The policy of `saga`.
    public init(_ saga: S) { self.saga = saga }

    public var topics: [String] { saga.topics }

    /// The aggregate id of the saga instance for `correlationID`: ``DerivedID`` of namespace
    /// `"saga " + S.State.typeName` and the correlation id. Two saga types correlated by the
    /// same id have different instances.
    /// - Throws: `.invalidArgument` for a bad correlation id (see ``Saga/correlationID(of:)``).
    public static func sagaID(correlationID: String) throws(EventSourcingError) -> UUID {
        try DerivedID.uuid(namespace: "saga " + S.State.typeName, name: correlationID)
    }

    public func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        guard let correlationID = try saga.correlationID(of: event) else { return }
        let id: UUID
        do { id = try Self.sagaID(correlationID: correlationID) } catch {
            var e = error
            e.message = "saga \(S.State.typeName): the correlation id of the event is not usable: " + e.message
            e.notificationID = event.notificationID
            e.topic = event.topic
            throw e
        }
        var instance: AggregateRoot<S.State>
        if try await context.contains(id) {
            do {
                instance = try await context.get(S.State.self, id: id)
            } catch let e as EventSourcingError where e.code == .shredded {
                // The saga's data subject was erased: its process is over.
                return
            }
        } else {
            guard let creation = try saga.start(with: event, correlationID: correlationID) else { return }
            instance = try AggregateRoot<S.State>(id: id, creation)
        }
        try await saga.handle(event, saga: &instance, in: context)
        try context.collect(&instance)
    }

    public func erase(keyScope: String, in context: ProcessingContext) async throws {
        try await saga.erase(keyScope: keyScope, in: context)
    }
}
