import ESTestTags
import EventSourcing
import EventSourcingTestKit
import Foundation
import KeyManagement
import Testing

extension RecorderFactory {
    /// The test kit's rewriting suite over this factory's stores (each behaviour a fresh store).
    var rewritingConformance: RewritingConformance {
        RewritingConformance(hasKeyStore: commitsKeys) {
            let store = try await make()
            guard let rewriting = store.recorder as? any RecordRewriting else {
                try await store.close()
                throw EventSourcingError(.invalidArgument, "the \(name) recorder is not RecordRewriting")
            }
            return .init(recorder: store.recorder, rewriting: rewriting, snapshots: store.snapshots,
                         keyStore: store.keyStore, close: store.close)
        }
    }

    /// Each recorder with each rewriting behaviour it must show.
    static var rewritingCases: [(RecorderFactory, RewritingConformance.Behaviour)] {
        all.flatMap { f in RewritingConformance.Behaviour.allCases.filter { f.commitsKeys || !$0.needsKeyStore }.map { (f, $0) } }
    }
}

/// The record-rewrite primitive (issue 17) on every backend.
@Suite("Rewriting conformance", .tags(.conformance))
struct RewritingConformanceTests {
    @Test("Every recorder shows the rewriting behaviours", arguments: RecorderFactory.rewritingCases)
    func rewriting(_ factory: RecorderFactory, _ behaviour: RewritingConformance.Behaviour) async throws {
        try await factory.rewritingConformance.check(behaviour)
    }
}
