import EventSourcing
import Foundation
import KeyManagement

// MARK: - Retiring old versions

extension KeyStoreConformance {
    static let retireOldVersions: Body = { c, store in
        for v: UInt32 in [1, 2, 3] { try await store.insertDataKey(wrapped("subject-1", v, "old", UInt8(v))) }
        try await store.insertDataKey(wrapped("subject-2", 1))
        try await store.insertDataKey(wrapped(composed, 1))
        try await store.insertDataKey(wrapped(composed, 2))
        let all = try await store.dataKeys(scope: "subject-1")
        // Encryption counts (a KeyUsageCounter): the retired versions' go with them, the rest stay.
        let counter = store as? any KeyUsageCounter
        let first = KeyUsage.firstBlock(limit: 10_000)
        for v: UInt32 in [1, 2, 3] { _ = try await counter?.reserveEncryptions(scope: "subject-1", version: v, count: UInt64(v), limit: 10_000) }
        _ = try await counter?.reserveEncryptions(scope: composed, version: 1, count: 7, limit: 10_000)
        let retired: [UInt32]
        do {
            retired = try await store.retireDataKeys(scope: "subject-1", below: 3)
        } catch let e as KeyManagementError where e.code == .unsupported {
            // A store that cannot retire (the protocol's default) must change nothing.
            try c.equal(try await store.dataKeys(scope: "subject-1"), all, "subject-1's keys after an unsupported retire",
                        describe: describe)
            return
        }
        try c.equal(retired, [1, 2], "the versions retired below v3", describe: { "\($0)" })
        try c.equal(try await store.dataKeys(scope: "subject-1").map(\.version), [3], "subject-1's versions after the retire",
                    describe: { "\($0)" })
        try c.equal(try await store.dataKeys(scope: "subject-1").first, all.last, "the newest version, intact", describe: { describe($0.map { [$0] } ?? []) })
        try c.equal(try await store.dataKeys(scope: "subject-2").map(\.version), [1], "another scope's versions", describe: { "\($0)" })
        try c.equal(try await store.dataKeys(scope: composed).map(\.version), [1, 2], "another scope's versions", describe: { "\($0)" })
        if let counter {
            try c.equal(try await counter.reservedEncryptions(scope: "subject-1"), [3: first + 3],
                        "subject-1's encryption counts after the retire (the retired versions' deleted)", describe: { "\($0)" })
            try c.equal(try await counter.reservedEncryptions(scope: composed), [1: first + 7], "another scope's encryption counts",
                        describe: { "\($0)" })
        }
        // Nothing below: nothing retired. Above the newest: refused.
        try c.equal(try await store.retireDataKeys(scope: "subject-1", below: 3), [], "retiring below v3 again", describe: { "\($0)" })
        try c.equal(try await store.retireDataKeys(scope: "subject-1", below: 1), [], "retiring below v1", describe: { "\($0)" })
        let above = try await c.keyManagementError(.invalidArgument, "retiring below v4 (above the newest, v3)") {
            try await store.retireDataKeys(scope: "subject-1", below: 4)
        }
        try c.equal(above.scope, "subject-1", "the refusal's scope")
        try c.equal(try await store.dataKeys(scope: "subject-1").map(\.version), [3], "subject-1's versions after the refusal",
                    describe: { "\($0)" })
        // One spelling of a scope spares the other.
        _ = try await c.keyManagementError(.keyNotFound, "retiring the other spelling of a scope, which has no key") {
            try await store.retireDataKeys(scope: decomposed, below: 2)
        }
        try c.equal(try await store.dataKeys(scope: composed).map(\.version), [1, 2], "the other spelling's versions", describe: { "\($0)" })
        _ = try await c.keyManagementError(.keyNotFound, "retiring a scope that never had a key") {
            try await store.retireDataKeys(scope: "never", below: 2)
        }
        _ = try await store.shred(scope: "subject-2", at: date)
        let shredded = try await c.keyManagementError(.shredded, "retiring a shredded scope") {
            try await store.retireDataKeys(scope: "subject-2", below: 1)
        }
        try c.equal(shredded.scope, "subject-2", "the refusal's scope")
        // New versions still go in above the retired ones.
        try await store.insertDataKey(wrapped("subject-1", 4))
        try c.equal(try await store.dataKeys(scope: "subject-1").map(\.version), [3, 4], "subject-1's versions after a new one",
                    describe: { "\($0)" })
    }
}
