import CoreMetrics
import Tracing

/// Metrics (swift-metrics) and spans (swift-distributed-tracing) of the stores, keyrings and
/// applications: no-ops unless the application bootstraps a backend with
/// `MetricsSystem.bootstrap` and `InstrumentationSystem.bootstrap`.
///
/// A keyring or an application binds to the metrics factory and the tracer when it is created,
/// so bootstrap them before opening a store. No metric dimension and no span attribute ever
/// holds a key, a key scope (a data subject's id), an originator id, a topic or any plaintext:
/// only aggregate type names, counts and error codes. A failed operation's span gets an error
/// status and the error's code (`eventsourcing.error.code`), never the error's message (which
/// names the record or scope).
public enum Observability {
    /// For the current task only, the metrics factory that keyrings and applications created in
    /// it bind to instead of `MetricsSystem.factory` (for tests, which cannot bootstrap the
    /// process-wide system more than once).
    @TaskLocal public static var metricsFactory: (any MetricsFactory)?
    /// For the current task only, the tracer that keyrings and applications created in it use
    /// instead of `InstrumentationSystem.tracer`.
    @TaskLocal public static var tracer: (any Tracer)?

    /// The metric labels.
    public enum Metric {
        /// Counter of saves (one per `Application.save` call), by `outcome`: `ok` or the error code.
        public static let saves = "eventsourcing_saves_total"
        /// Counter of events stored by successful saves.
        public static let savedEvents = "eventsourcing_saved_events_total"
        /// Timer of saves, successful or not.
        public static let saveDuration = "eventsourcing_save_duration"
        /// Counter of saves refused with `concurrencyConflict`.
        public static let conflicts = "eventsourcing_conflicts_total"
        /// Counter of records that could not be read, by `code`: `integrityFailure` (tampered or
        /// corrupt), `keyUnavailable`, `wrongMasterKey`, `decodingFailed`, `plaintextRejected`.
        public static let readFailures = "eventsourcing_read_failures_total"
        /// Counters of data-key look-ups answered from the keyring's cache, and not.
        public static let keyCacheHits = "eventsourcing_key_cache_hits_total"
        public static let keyCacheMisses = "eventsourcing_key_cache_misses_total"
        /// Counter of key scopes shredded by a keyring.
        public static let shreds = "eventsourcing_shreds_total"
        /// Counter of completed rotations, by `key`: `data` (a scope's data key) or `master` (every
        /// data key rewrapped under a new master key).
        public static let rotations = "eventsourcing_key_rotations_total"
    }

    /// The span names.
    public enum SpanName {
        public static let save = "eventsourcing.save"
        public static let get = "eventsourcing.get"
        public static let readLog = "eventsourcing.log.read"
        public static let shred = "eventsourcing.shred"
        public static let rotate = "eventsourcing.rotate"
        public static let rotateMasterKey = "eventsourcing.rotate_master_key"
    }

    /// The factory a new keyring or application binds to.
    package static var currentFactory: any MetricsFactory { metricsFactory ?? MetricsSystem.factory }
    /// The tracer a new keyring or application uses.
    package static var currentTracer: any Tracer { tracer ?? InstrumentationSystem.tracer }

    /// A short, safe name for an error: its code (for the library's errors), `cancelled`, or its type.
    package static func code(of error: any Error) -> String {
        switch error {
        case let e as any ObservableErrorCode: e.observableCode
        case is CancellationError: "cancelled"
        default: String(describing: type(of: error))
        }
    }

    /// Runs `body` in a span named `name` (none when `tracer` is nil: tracing is off). `body`
    /// may set attributes (counts and type names only). A failure sets the error status and
    /// `eventsourcing.error.code`, never the error's message.
    package static func span<T>(_ tracer: (any Tracer)?, _ name: String,
                                _ body: ((any Span)?) async throws -> T) async throws -> T {
        guard let tracer else { return try await body(nil) }
        let span = tracer.startAnySpan(name, context: .current ?? .topLevel, ofKind: .internal)
        do {
            let result = try await body(span)
            span.end()
            return result
        } catch {
            span.attributes["eventsourcing.error.code"] = code(of: error)
            span.setStatus(SpanStatus(code: .error))
            span.end()
            throw error
        }
    }

    /// `currentTracer`, or nil when it is the no-op tracer (so the hot paths skip spans entirely).
    package static var activeTracer: (any Tracer)? {
        let tracer = currentTracer
        return tracer is NoOpTracer ? nil : tracer
    }
}

/// An error whose code can be put in a metric dimension or span attribute (it names no record).
package protocol ObservableErrorCode: Error {
    var observableCode: String { get }
}

extension KeyManagementError: ObservableErrorCode {
    package var observableCode: String { code.description }
}

/// A keyring's metrics, bound when it is created.
struct KeyringInstruments: Sendable {
    let cacheHits: Counter
    let cacheMisses: Counter
    let shreds: Counter
    let dataKeyRotations: Counter
    let masterKeyRotations: Counter
    /// Nil when tracing is off.
    let tracer: (any Tracer)?

    init() {
        let factory = Observability.currentFactory
        cacheHits = Counter(label: Observability.Metric.keyCacheHits, dimensions: [], factory: factory)
        cacheMisses = Counter(label: Observability.Metric.keyCacheMisses, dimensions: [], factory: factory)
        shreds = Counter(label: Observability.Metric.shreds, dimensions: [], factory: factory)
        dataKeyRotations = Counter(label: Observability.Metric.rotations, dimensions: [("key", "data")], factory: factory)
        masterKeyRotations = Counter(label: Observability.Metric.rotations, dimensions: [("key", "master")], factory: factory)
        tracer = Observability.activeTracer
    }

    func cacheHit() { cacheHits.increment() }
    func cacheMiss() { cacheMisses.increment() }

    /// Runs `body` in a span named `name`, and counts `success` when it returns.
    func run<T>(_ name: String, counting success: Counter, _ body: () async throws -> T) async throws -> T {
        let result = try await Observability.span(tracer, name) { _ in try await body() }
        success.increment()
        return result
    }
}
