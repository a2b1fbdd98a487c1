import EventSourcing
import Foundation
import KeyManagement
import Synchronization
import Testing

extension RecorderFactory {
    /// Runs `body` with a fresh store and closes the store afterwards, also when `body` throws.
    func withFreshStore(_ body: (Store) async throws -> Void) async throws {
        let store = try await make()
        do {
            try await body(store)
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
    }
}

extension AppFactory {
    /// Runs `body` with a fresh application and closes its store afterwards, also when `body` throws.
    func withFreshApp(snapshotIntervals: [SnapshotInterval] = [], masterKey: MasterKey? = nil,
                      _ body: (TestApp) async throws -> Void) async throws {
        let t = try await make(snapshotIntervals: snapshotIntervals, masterKey: masterKey)
        do {
            try await body(t)
        } catch {
            try? await t.store.close()
            throw error
        }
        try await t.store.close()
    }
}

/// Whether `needle` occurs as a contiguous run inside `haystack`.
func bytes(_ haystack: [UInt8], contain needle: [UInt8]) -> Bool {
    guard !needle.isEmpty else { return true }
    guard haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
    }
    return false
}

/// A pass-through recorder that remembers how it was called, to prove what the
/// application asked of its recorder (one atomic insert, reads after a snapshot, …).
final class SpyRecorder: ApplicationRecorder {
    let inner: any ApplicationRecorder
    private let calls = Mutex<(inserts: [[StoredEvent]], queries: [EventQuery])>(([], []))

    init(_ inner: any ApplicationRecorder) { self.inner = inner }

    /// Every `insertEvents` batch, in call order.
    var inserts: [[StoredEvent]] { calls.withLock { $0.inserts } }
    /// Every `selectEvents` call, in call order.
    var queries: [EventQuery] { calls.withLock { $0.queries } }
    func reset() { calls.withLock { $0 = ([], []) } }

    func insertEvents(_ events: [StoredEvent]) async throws -> [Int64] {
        calls.withLock { $0.inserts.append(events) }
        return try await inner.insertEvents(events)
    }

    func selectEvents(_ query: EventQuery) async throws -> [StoredEvent] {
        calls.withLock { $0.queries.append(query) }
        return try await inner.selectEvents(query)
    }

    func selectNotifications(start: Int64, limit: Int, stop: Int64?, topics: [String]) async throws -> [StoredNotification] {
        try await inner.selectNotifications(start: start, limit: limit, stop: stop, topics: topics)
    }

    func maxNotificationID() async throws -> Int64? { try await inner.maxNotificationID() }
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed
    var out: [UInt8] = []
    out.reserveCapacity(count)
    while out.count < count {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        for i in 0..<8 where out.count < count { out.append(UInt8(truncatingIfNeeded: z >> (8 * UInt64(i)))) }
    }
    return out
}
