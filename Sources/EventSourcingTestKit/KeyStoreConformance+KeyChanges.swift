import Foundation
import KeyManagement

// The key-change feed (``KeyChangeFeed``) and encryption counts (``KeyUsageCounter``): optional
// for a key store, so a store that has neither passes these behaviours with nothing to check.
extension KeyStoreConformance {
    static let keyChangeFeed: Body = { c, store in
        guard let feed = store as? any KeyChangeFeed else { return }
        let base = try await feed.keyChangeMark()
        try await store.insertDataKey(wrapped("subject-1", 1))
        try c.equal(try await feed.keyChangeMark(), base, "the feed's position after a scope's first key (no change)")
        try await store.insertDataKey(wrapped("subject-1", 2))
        _ = try await store.shred(scope: composed, at: date)
        var kinds: [KeyChangeKind] = [.rotate, .shred]
        var scopes = ["subject-1", composed]
        do {
            _ = try await store.retireDataKeys(scope: "subject-1", below: 2)
            kinds.append(.retire)
            scopes.append("subject-1")
        } catch let e as KeyManagementError where e.code == .unsupported {}
        let page = try await feed.keyChanges(after: base, limit: 10)
        try c.require(!page.gap, "no gap after the position read before the changes", observed: "a gap")
        try c.equal(page.changes.map(\.kind), kinds, "the kinds recorded, in order", describe: { "\($0.map(\.rawValue))" })
        try c.require(zip(page.changes.map(\.scope), scopes).allSatisfy { sameBytes($0, $1) } && page.changes.count == scopes.count,
                      "the changes name \(scopes.map(show)) byte for byte", observed: "\(page.changes.map { show($0.scope) })")
        try c.equal(page.changes.map(\.seq), (1...Int64(kinds.count)).map { base + $0 }, "the positions", describe: { "\($0)" })
        try c.equal(page.changes.dropFirst().first?.at, date, "the shred's time (the tombstone's)")
        try c.equal(try await feed.keyChangeMark(), base + Int64(kinds.count), "the feed's position after the changes")
        try c.equal(try await feed.keyChanges(after: base, limit: 1).changes.map(\.seq), [base + 1], "a page of one",
                    describe: { "\($0)" })
        try c.equal(try await feed.keyChanges(after: base + Int64(kinds.count), limit: 10).changes.count, 0,
                    "changes after the newest position")
        // A refused change records nothing.
        _ = try await c.keyManagementError(.shredded, "a second shred") { try await store.shred(scope: composed, at: date) }
        _ = try await c.keyManagementError(.keyExists, "inserting v2 again") { try await store.insertDataKey(wrapped("subject-1", 2)) }
        try c.equal(try await feed.keyChangeMark(), base + Int64(kinds.count), "the feed's position after refused changes")
    }

    static let encryptionCounts: Body = { c, store in
        guard let counter = store as? any KeyUsageCounter else { return }
        let limit: UInt64 = 10_000
        let first = KeyUsage.firstBlock(limit: limit)
        try c.equal(try await counter.reserveEncryptions(scope: composed, version: 1, count: 10, limit: limit), first + 10,
                    "the first reservation (on top of the implicit first block)")
        try c.equal(try await counter.reserveEncryptions(scope: composed, version: 1, count: 10, limit: limit), first + 20,
                    "the second reservation")
        try c.equal(try await counter.reserveEncryptions(scope: composed, version: 1, count: limit, limit: limit), nil,
                    "a reservation past the limit")
        try c.equal(try await counter.reservedEncryptions(scope: composed), [1: first + 20], "the counts after a refused reservation")
        try c.equal(try await counter.reservedEncryptions(scope: decomposed), [:], "the other spelling's counts")
        try c.equal(try await counter.reserveEncryptions(scope: decomposed, version: 1, count: 1, limit: 5), nil,
                    "a reservation under a limit below the first block")
        try c.equal(try await counter.reservedEncryptions(scope: decomposed), [:], "the counts after that refusal")
        try await store.insertDataKey(wrapped(composed, 1))
        _ = try await store.shred(scope: composed, at: date)
        try c.equal(try await counter.reservedEncryptions(scope: composed), [:], "the counts of a shredded scope")
    }
}
