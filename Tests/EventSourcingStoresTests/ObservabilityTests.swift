import CoreMetrics
import EventSourcing
import EventSourcingSQLite
import EventSourcingStores
import Foundation
import InMemoryTracing
import KeyManagement
import MetricsTestKit
import Testing
import Tracing

/// Metrics and spans are bound per task with `Observability.$metricsFactory` / `$tracer`, so
/// these tests need no process-wide bootstrap (which can happen only once per process, and
/// every test target runs in the same process) and see exactly their own counts.
@Suite("Metrics and spans")
struct ObservabilityTests {
    static let scope = "subj-metrics-7f3a"
    static let owner = "Ada Observed"

    /// Opens an encrypted SQLite store bound to `metrics` and `tracer`.
    static func open(_ path: String, key: MasterKey, metrics: TestMetrics, tracer: InMemoryTracer,
                     allowsPlaintext: Bool = false) async throws -> EncryptedStore {
        try await Observability.$metricsFactory.withValue(metrics) {
            try await Observability.$tracer.withValue(tracer) {
                try await EncryptedStore.open(url: "sqlite:" + path, masterKey: key, options: .init(allowsPlaintext: allowsPlaintext))
            }
        }
    }

    static func total(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)] = []) -> Int64 {
        metrics.counters.filter { c in
            c.label == label && c.dimensions.count == dimensions.count
                && zip(c.dimensions, dimensions).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }.reduce(0) { $0 + $1.totalValue }
    }

    @Test("Counters move on save, conflict, key-cache hit and miss, rotation, shred and a refused read; spans around each")
    func countersAndSpans() async throws {
        let dir = try ScratchDir()
        let path = dir.path("events.sqlite")
        let key = try MasterKey.generate()
        let metrics = TestMetrics()
        let tracer = InMemoryTracer()
        let store = try await Self.open(path, key: key, metrics: metrics, tracer: tracer)
        let app = store.application

        var account = try AggregateRoot<Account>(.opened(subject: Self.scope, owner: Self.owner))
        try await app.save(&account)
        try account.record(.renamed(Self.owner + " II"))
        try account.record(.renamed(Self.owner + " III"))
        try await app.save(&account)
        #expect(Self.total(metrics, Observability.Metric.saves, [("outcome", "ok")]) == 2)
        #expect(Self.total(metrics, Observability.Metric.savedEvents) == 3)

        // A conflict: two copies of version 3 both record version 4.
        var first = try await app.repository.get(Account.self, id: account.id)
        var second = first
        try first.record(.renamed("one"))
        try second.record(.renamed("two"))
        try await app.save(&first)
        let conflict = try await #require(throws: EventSourcingError.self) { try await app.save(&second) }
        #expect(conflict.code == .concurrencyConflict)
        #expect(Self.total(metrics, Observability.Metric.conflicts) == 1)
        #expect(Self.total(metrics, Observability.Metric.saves, [("outcome", "concurrencyConflict")]) == 1)
        #expect(try metrics.expectTimer(Observability.Metric.saveDuration).values.count == 4)

        // The keyring minted the key and cached it: the get above was a hit.
        #expect(Self.total(metrics, Observability.Metric.keyCacheHits) >= 1)
        // A second store on the same file has an empty cache: its first read misses, its second hits.
        let other = try await Self.open(path, key: key, metrics: metrics, tracer: tracer)
        let missesBefore = Self.total(metrics, Observability.Metric.keyCacheMisses)
        let hitsBefore = Self.total(metrics, Observability.Metric.keyCacheHits)
        _ = try await other.application.repository.get(Account.self, id: account.id)
        #expect(Self.total(metrics, Observability.Metric.keyCacheMisses) == missesBefore + 1)
        _ = try await other.application.repository.get(Account.self, id: account.id)
        #expect(Self.total(metrics, Observability.Metric.keyCacheHits) > hitsBefore)
        await other.close()

        // Rotations and a shred.
        _ = try await store.keyring.rotate(scope: Self.scope)
        #expect(Self.total(metrics, Observability.Metric.rotations, [("key", "data")]) == 1)
        try await store.keyring.rotateMasterKey(to: try MasterKey.generate())
        #expect(Self.total(metrics, Observability.Metric.rotations, [("key", "master")]) == 1)
        _ = try await app.shred(keyScope: Self.scope)
        #expect(Self.total(metrics, Observability.Metric.shreds) == 1)
        // A shredded record is an erasure, not a read failure.
        _ = try await app.notificationLog.read(start: 1, limit: 10)
        #expect(Self.total(metrics, Observability.Metric.readFailures, [("code", "shredded")]) == 0)

        let names = Set(tracer.finishedSpans.map(\.operationName))
        for name in [Observability.SpanName.save, Observability.SpanName.get, Observability.SpanName.readLog,
                     Observability.SpanName.rotate, Observability.SpanName.rotateMasterKey, Observability.SpanName.shred] {
            #expect(names.contains(name), "no \(name) span in \(names)")
        }
        let failed = tracer.finishedSpans.filter { $0.status?.code == .error }
        #expect(failed.count == 1)
        #expect(failed.first?.operationName == Observability.SpanName.save)
        #expect(failed.first?.attributes["eventsourcing.error.code"]?.toSpanAttribute() == .string("concurrencyConflict"))
        #expect(failed.first?.errors.isEmpty == true, "the error (and its message naming the record) is not recorded")
        await store.close()

        Self.expectNothingPersonal(metrics, tracer, values: [Self.scope, Self.owner, account.id.uuidString.lowercased(),
                                                             account.id.uuidString, "Account.opened", "Account.renamed"])
    }

    @Test("A refused read is counted by its code; the log's unreadable items too")
    func readFailures() async throws {
        let dir = try ScratchDir()
        let path = dir.path("events.sqlite")
        let legacy = try SQLiteStore(path: path)
        var old = try AggregateRoot<Account>(.opened(subject: "", owner: Self.owner))
        try await Application(recorder: legacy).save(&old)
        await legacy.close()

        let metrics = TestMetrics()
        let tracer = InMemoryTracer()
        let store = try await Self.open(path, key: try MasterKey.generate(), metrics: metrics, tracer: tracer)
        let error = try await #require(throws: EventSourcingError.self) {
            try await store.application.repository.get(Account.self, id: old.id)
        }
        #expect(error.code == .plaintextRejected)
        #expect(Self.total(metrics, Observability.Metric.readFailures, [("code", "plaintextRejected")]) == 1)
        let items = try await store.application.notificationLog.read(start: 1, limit: 10)
        #expect(items.count == 1)
        #expect(Self.total(metrics, Observability.Metric.readFailures, [("code", "plaintextRejected")]) == 2)
        let get = try #require(tracer.finishedSpans.first { $0.operationName == Observability.SpanName.get })
        #expect(get.status?.code == .error)
        #expect(get.attributes["eventsourcing.aggregate_type"]?.toSpanAttribute() == .string("Account"))
        await store.close()
        Self.expectNothingPersonal(metrics, tracer, values: [old.id.uuidString.lowercased(), old.id.uuidString, Self.owner])
    }

    @Test("Without a bootstrap or an override, nothing is traced (the hot paths skip spans)")
    func offByDefault() {
        #expect(Observability.activeTracer == nil)
    }

    /// No metric dimension and no span attribute contains any of `values`.
    static func expectNothingPersonal(_ metrics: TestMetrics, _ tracer: InMemoryTracer, values: [String]) {
        var seen: [String] = []
        for c in metrics.counters { seen += [c.label] + c.dimensions.flatMap { [$0.0, $0.1] } }
        for t in metrics.timers { seen += [t.label] + t.dimensions.flatMap { [$0.0, $0.1] } }
        for span in tracer.finishedSpans {
            seen.append(span.operationName)
            span.attributes.forEach { name, value in seen += [name, "\(value)"] }
        }
        #expect(!seen.isEmpty)
        for text in seen {
            for value in values { #expect(!text.contains(value), "\(text) contains \(value)") }
        }
    }
}
