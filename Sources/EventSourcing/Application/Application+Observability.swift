import CoreMetrics
import KeyManagement
import Tracing

extension EventSourcingError: ObservableErrorCode {
    package var observableCode: String { code.description }
}

/// An application's metrics and tracer, bound when it is created (see `Observability`).
struct ApplicationInstruments: Sendable {
    let factory: any MetricsFactory
    let savesOK: Counter
    let savedEvents: Counter
    let saveDuration: CoreMetrics.Timer
    let conflicts: Counter
    /// Nil when tracing is off.
    let tracer: (any Tracer)?

    /// The read failures counted in `Observability.Metric.readFailures` (a shredded record is
    /// an erasure, not a failure; a missing aggregate is not a read of a record).
    static let readFailureCodes: Set<EventSourcingError.Code> = [
        .integrityFailure, .keyUnavailable, .wrongMasterKey, .decodingFailed, .plaintextRejected,
        .compressionDictionaryMissing,
    ]

    init() {
        let factory = Observability.currentFactory
        self.factory = factory
        savesOK = Counter(label: Observability.Metric.saves, dimensions: [("outcome", "ok")], factory: factory)
        savedEvents = Counter(label: Observability.Metric.savedEvents, dimensions: [], factory: factory)
        saveDuration = CoreMetrics.Timer(label: Observability.Metric.saveDuration, dimensions: [], factory: factory)
        conflicts = Counter(label: Observability.Metric.conflicts, dimensions: [], factory: factory)
        tracer = Observability.activeTracer
    }

    /// Times, counts and traces one save.
    func save(_ body: () async throws -> [Recording]) async throws -> [Recording] {
        let start = ContinuousClock.now
        do {
            let recordings = try await Observability.span(tracer, Observability.SpanName.save) { span in
                let recordings = try await body()
                span?.attributes["eventsourcing.events"] = recordings.count
                return recordings
            }
            saveDuration.recordElapsed(start.duration(to: .now))
            savesOK.increment()
            savedEvents.increment(by: recordings.count)
            return recordings
        } catch {
            saveDuration.recordElapsed(start.duration(to: .now))
            let code = Observability.code(of: error)
            Counter(label: Observability.Metric.saves, dimensions: [("outcome", code)], factory: factory).increment()
            if (error as? EventSourcingError)?.code == .concurrencyConflict { conflicts.increment() }
            throw error
        }
    }

    /// Traces one read of an aggregate of `typeName`, and counts a failed one.
    func get<T>(_ typeName: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await Observability.span(tracer, Observability.SpanName.get) { span in
                span?.attributes["eventsourcing.aggregate_type"] = typeName
                return try await body()
            }
        } catch let e as EventSourcingError {
            readFailed(e)
            throw e
        }
    }

    /// Traces one page of the notification log (the span holds the number of items).
    func readLog(_ body: () async throws -> [LogItem]) async throws -> [LogItem] {
        try await Observability.span(tracer, Observability.SpanName.readLog) { span in
            let items = try await body()
            span?.attributes["eventsourcing.items"] = items.count
            return items
        }
    }

    /// Counts a record that could not be read, by its error's code.
    func readFailed(_ error: EventSourcingError) {
        guard Self.readFailureCodes.contains(error.code) else { return }
        Counter(label: Observability.Metric.readFailures, dimensions: [("code", error.code.description)], factory: factory)
            .increment()
    }
}

extension CoreMetrics.Timer {
    /// Records a duration (clamped: a duration too long for nanoseconds in an Int64 records the maximum).
    func recordElapsed(_ duration: Duration) {
        let c = duration.components
        let (ns, overflow) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let total = ns.addingReportingOverflow(c.attoseconds / 1_000_000_000)
        recordNanoseconds(overflow || total.overflow ? Int64.max : max(0, total.partialValue))
    }
}
