import Foundation
import KeyManagement
import Synchronization

/// An optional, bounded cache of recently used aggregates (least recently used evicted first),
/// turned on with `Application(…, cache: .lru(maxEntries: 10_000))`; off by default.
///
/// - ``Repository/get(_:id:version:)`` without a version returns a cached aggregate after
///   bringing it up to date: the events stored after its version are read and applied
///   ("fast-forward"), so events saved by another writer (another application instance, another
///   process) are never missed. One indexed read of the aggregate's latest records replaces
///   reading, decrypting and decoding all of them. With a version, the cache is bypassed.
/// - A save puts the saved aggregate in the cache (as the application held it, timestamps as
///   stored); a discarded aggregate is removed.
/// - A shred through the application (``Application/shred(keyScope:ifAbsent:)``,
///   ``Application/shred(aggregateID:)``) removes every cached aggregate of that key scope at once.
///   A cached aggregate is also never returned once its data key can no longer be obtained: each
///   hit asks the cipher for the key of the aggregate's latest record, so a shred by another
///   application sharing the keyring is seen too (from another process: as soon as this
///   process's keyring no longer holds the key, exactly as for uncached reads).
/// - Any shred through the application's keyring (by any application sharing it) makes every
///   aggregate cached before it a miss (``RecordCipher/erasureGeneration``): a cached state can
///   hold personal fields of other subjects (``Personal``), whose shred the aggregate's own key
///   does not show. A root read before a shred and saved after it is cached only as of its read.
/// - Cached aggregates are values: each get returns its own copy; two tasks getting the same id
///   both get a correct, up-to-date state.
///
/// **Memory bound:** at most `maxEntries` aggregates, so about `maxEntries` × the in-memory size
/// of an aggregate's state (plus its id and key scope). The cache holds decrypted state: it is
/// plaintext in the process's memory, like any aggregate the application holds.
public final class AggregateCache: Sendable {
    /// Whether and how much an application caches.
    public struct Configuration: Sendable, Hashable {
        /// The most aggregates held; below 1 turns the cache off.
        public var maxEntries: Int

        /// Creates a configuration; `maxEntries` below 1 turns the cache off.
        public init(maxEntries: Int) { self.maxEntries = maxEntries }

        /// No cache (the default).
        public static let off = Configuration(maxEntries: 0)
        /// A least-recently-used cache of at most `maxEntries` aggregates (off when below 1).
        public static func lru(maxEntries: Int) -> Configuration { Configuration(maxEntries: maxEntries) }
    }

    /// The most aggregates held.
    public let maxEntries: Int

    private struct Entry {
        var id: UUID
        var root: any Sendable
        var version: Int
        var scope: String
        /// The root's ``AggregateRoot/cacheGeneration``: a hit at another generation is a miss.
        var generation: UInt64?
        var prev: Int
        var next: Int
    }

    /// A doubly linked list over slots, most recently used at `head`.
    private struct State {
        var index: [UUID: Int] = [:]
        var slots: [Entry] = []
        var free: [Int] = []
        var head = -1
        var tail = -1

        mutating func unlink(_ i: Int) {
            let (p, n) = (slots[i].prev, slots[i].next)
            if p >= 0 { slots[p].next = n } else { head = n }
            if n >= 0 { slots[n].prev = p } else { tail = p }
        }

        mutating func pushFront(_ i: Int) {
            slots[i].prev = -1
            slots[i].next = head
            if head >= 0 { slots[head].prev = i }
            head = i
            if tail < 0 { tail = i }
        }

        mutating func remove(_ id: UUID) {
            guard let i = index.removeValue(forKey: id) else { return }
            unlink(i)
            slots[i].root = 0   // drop the state now
            free.append(i)
        }
    }

    private let state = Mutex(State())

    init(maxEntries: Int) {
        self.maxEntries = max(1, maxEntries)
    }

    /// The number of aggregates held.
    public var count: Int { state.withLock { $0.index.count } }

    /// Removes every cached aggregate.
    public func removeAll() {
        state.withLock { $0 = State() }
    }

    /// Removes aggregate `id`.
    public func remove(_ id: UUID) {
        state.withLock { $0.remove(id) }
    }

    /// Removes every cached aggregate encrypted under `keyScope` (compared byte by byte).
    public func remove(keyScope: String) {
        state.withLock { s in
            let ids = s.index.compactMap { id, i in ExactScope.same(s.slots[i].scope, keyScope) ? id : nil }
            for id in ids { s.remove(id) }
        }
    }

    /// Whether aggregate `id` is cached (without making it recently used).
    public func contains(_ id: UUID) -> Bool {
        state.withLock { $0.index[id] != nil }
    }

    /// A copy of the cached root of `id`, made most recently used; nil when absent, cached as
    /// another type, or cached at another erasure generation than `generation` (then it is
    /// removed: a shred since may have erased some of its fields).
    func get<A: Aggregate>(_ id: UUID, as type: A.Type, generation: UInt64?) -> AggregateRoot<A>? {
        state.withLock { s in
            guard let i = s.index[id], let root = s.slots[i].root as? AggregateRoot<A> else { return nil }
            guard s.slots[i].generation == generation else {
                s.remove(id)
                return nil
            }
            if s.head != i {
                s.unlink(i)
                s.pushFront(i)
            }
            return root
        }
    }

    /// Caches `root` (without pending events) unless a newer version of it is cached; evicts the
    /// least recently used aggregate when full.
    func put<A: Aggregate>(_ root: AggregateRoot<A>) {
        state.withLock { s in
            if let i = s.index[root.id] {
                guard root.version >= s.slots[i].version else { return }
                s.slots[i].root = root
                s.slots[i].version = root.version
                s.slots[i].scope = root.keyScope
                s.slots[i].generation = root.cacheGeneration
                if s.head != i {
                    s.unlink(i)
                    s.pushFront(i)
                }
                return
            }
            if s.index.count >= maxEntries, s.tail >= 0 { s.remove(s.slots[s.tail].id) }
            let entry = Entry(id: root.id, root: root, version: root.version, scope: root.keyScope,
                              generation: root.cacheGeneration, prev: -1, next: -1)
            let i: Int
            if let f = s.free.popLast() {
                s.slots[f] = entry
                i = f
            } else {
                s.slots.append(entry)
                i = s.slots.count - 1
            }
            s.index[root.id] = i
            s.pushFront(i)
        }
    }
}

extension Application {
    /// After a commit: the aggregate cache takes the saved root (or drops a discarded one), under
    /// the older of the generation it was read at and `generation`, the one its save began at.
    func didSave<A: Aggregate>(_ root: AggregateRoot<A>, generation: UInt64?) {
        guard let aggregateCache else { return }
        guard !root.isDiscarded, root.version > 0 else {
            aggregateCache.remove(root.id)
            return
        }
        var saved = root
        saved.markSaved(through: root.version)
        if let read = root.cacheGeneration, let began = generation {
            saved.cacheGeneration = min(read, began)
        } else {
            saved.cacheGeneration = root.cacheGeneration ?? generation
        }
        aggregateCache.put(saved.withStoredTimestamps())
    }
}
