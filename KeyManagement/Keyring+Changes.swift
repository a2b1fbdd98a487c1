import Foundation
import Logging
import Synchronization

/// Changes made by other processes: the key ring follows its store's ``KeyChangeFeed``.
///
/// Before it uses a key (a cached one above all), the key ring looks at the feed, at most once
/// per ``keyChangeRefreshInterval``: one cheap query (the newest position) when nothing
/// changed, and the entries after its position when something did. A shred evicts the scope
/// and marks it shredded (its records are refused from then on, and ``shredGeneration`` moves
/// so aggregate caches drop what they hold); a rotation makes the next write read the scope's
/// newest version; a retirement evicts the scope's cached versions. So a shred made by any
/// process is refused by every other one within the interval plus one check's round trip.
extension Keyring {
    // MARK: Key changes

    /// The default ``keyChangeRefreshInterval``: half a second, so that with a check's round
    /// trip the documented bound of one second holds (SECURITY.md §8).
    public static let defaultKeyChangeRefreshInterval: Duration = .milliseconds(500)

    /// How often, at most, the key ring looks at its store's key-change feed before it uses a
    /// cached key. Zero looks before every use (a store round trip per key look-up). Ignored
    /// when the store is no ``KeyChangeFeed``.
    ///
    /// Setting it to a negative duration sets zero.
    public var keyChangeRefreshInterval: Duration {
        get { state.withLock { $0.refreshInterval } }
        set {
            let interval = max(newValue, .zero)
            state.withLock { s in
                s.refreshInterval = interval
                s.nextFeedCheck = nil   // the next use checks, then the new interval runs
            }
        }
    }

    /// The most entries read from the feed in one page.
    static let keyChangePageSize = 1_000

    /// Looks at the key-change feed now, whether or not it is due, and applies what it finds.
    /// Useful after a long pause, or in tests. Does nothing for a store without a feed.
    /// - Throws: what the store throws; the key ring then drops its whole cache (it cannot tell
    ///   what changed), so no key is used unchecked.
    public func refreshKeyChanges() async throws {
        guard let feed = changeFeed else { return }
        let after = state.withLock { s -> Int64? in
            s.nextFeedCheck = ContinuousClock.now + s.refreshInterval
            return s.feedMark
        }
        try await applyKeyChanges(from: feed, after: after)
    }

    /// Looks at the feed if it is due (called before a key is used).
    /// - Throws: what the store throws when the feed cannot be read: the key ring drops its
    ///   cache (see ``refreshKeyChanges()``) and the look-up fails at once, instead of waiting a
    ///   second time for a store that did not answer.
    package func refreshKeyChangesIfDue() async throws {
        guard let feed = changeFeed else { return }
        let now = ContinuousClock.now
        let due = state.withLock { s -> (Bool, Int64?) in
            if let next = s.nextFeedCheck, now < next, s.feedMark != nil { return (false, nil) }
            s.nextFeedCheck = now + s.refreshInterval
            return (true, s.feedMark)
        }
        guard due.0 else { return }
        do {
            try await applyKeyChanges(from: feed, after: due.1)
        } catch {
            logger.warning("could not read the key-change feed; the key cache is dropped", metadata: ["error": "\(error)"])
            throw error
        }
    }

    private func applyKeyChanges(from feed: any KeyChangeFeed, after: Int64?) async throws {
        do {
            let mark = try await feed.keyChangeMark()
            guard let after else {
                // The first look: the position to follow from. Nothing was cached from the store
                // before it (every look-up checks first), so there is nothing to evict.
                state.withLock { s in if s.feedMark == nil { s.feedMark = mark } }
                return
            }
            guard mark != after else { return }
            if mark < after {
                // The feed went back (a store restored from a backup): nothing cached can be trusted.
                dropAllCachedKeys(reason: "the key-change feed is behind this key ring's position")
                state.withLock { $0.feedMark = mark }
                return
            }
            var position = after
            while position < mark {
                let page = try await feed.keyChanges(after: position, limit: Keyring.keyChangePageSize)
                if page.gap {
                    dropAllCachedKeys(reason: "key changes were pruned from the feed before this key ring read them")
                    state.withLock { s in s.feedMark = max(s.feedMark ?? mark, mark) }
                    return
                }
                guard let last = page.changes.last, last.seq > position,
                      zip([position] + page.changes.map(\.seq), page.changes.map(\.seq)).allSatisfy({ $0 < $1 }) else {
                    throw KeyManagementError(.storeFailure,
                        "the key-change feed's page after position \(position) does not move forward (newest is \(mark))")
                }
                apply(page.changes)
                position = last.seq
            }
            state.withLock { s in s.feedMark = max(s.feedMark ?? position, position) }
        } catch {
            dropAllCachedKeys(reason: "the key-change feed could not be read")
            state.withLock { $0.nextFeedCheck = nil }   // look again at the next use
            throw error
        }
    }

    /// Applies feed entries to the cache.
    private func apply(_ changes: [KeyChange]) {
        var shredded = 0
        state.withLock { s in
            for c in changes {
                let scope = ExactScope(c.scope)
                switch c.kind {
                case .shred:
                    s.evict(scope)
                    if s.shredded[scope] == nil { s.shredded[scope] = c.at; shredded += 1 }
                    s.erasures &+= 1
                case .rotate:
                    // Old versions still decrypt; writes should move to the new one.
                    s.current.removeValue(forKey: scope)
                case .retire:
                    s.evict(scope)
                    s.erasures &+= 1
                }
            }
        }
        if shredded > 0 {
            logger.debug("shreds made elsewhere applied from the key-change feed", metadata: ["scopes": "\(shredded)"])
        }
    }

    /// Forgets every cached key (not the scopes known shredded: a shred is for good).
    private func dropAllCachedKeys(reason: String) {
        state.withLock { s in
            s.cache.removeAll()
            s.current.removeAll()
            s.minted.removeAll()
            s.erasures &+= 1
        }
        logger.info("key cache dropped", metadata: ["reason": "\(reason)"])
    }
}
