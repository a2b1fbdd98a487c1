import Synchronization

/// Decides, per topic, whether compressing a small record is worth trying.
///
/// Deflating a ~260-byte record costs about as much as the rest of encoding it together
/// (Docs/Performance.md), and on records of personal data it often saves only a few percent.
/// When an attempt on a topic's small record does not pay (``Mapper/Configuration/minimumCompressionSaving``),
/// the next 1, then 3, 7, … up to 63 small records of that topic are stored without trying; an
/// attempt that pays ends the back-off, so at least one small record in 64 of every topic is
/// tried and a topic whose records become compressible is compressed again soon. Records longer
/// than ``smallRecord`` bytes are always tried. Reading never depends on this: every record says
/// in its header whether it is compressed.
final class CompressionAdvisor: Sendable {
    /// Records up to this many bytes (encoded) may be stored without trying.
    static let smallRecord = 1024
    /// The longest run of small records stored without trying.
    static let maxSkip = 63
    /// Topics remembered; past it the memory starts again (bounded, whatever the topics).
    static let maxTopics = 4096

    private struct Backoff {
        /// Small records still to store without trying.
        var skip: Int
        /// The run length after the next attempt that does not pay (before doubling).
        var run: Int
    }

    private let backoffs = Mutex<[String: Backoff]>([:])

    /// Whether to try compressing a record of `size` bytes of `topic`.
    func shouldTry(topic: String, size: Int) -> Bool {
        guard size <= Self.smallRecord else { return true }
        return backoffs.withLock { b in
            guard var entry = b[topic], entry.skip > 0 else { return true }
            entry.skip -= 1
            b[topic] = entry
            return false
        }
    }

    /// What trying gave for a record of `size` bytes of `topic`.
    func tried(topic: String, size: Int, paid: Bool) {
        guard size <= Self.smallRecord else { return }
        backoffs.withLock { b in
            if paid {
                b[topic] = nil
                return
            }
            if b[topic] == nil, b.count >= Self.maxTopics { b.removeAll() }
            let run = min((b[topic]?.run ?? 0) * 2 + 1, Self.maxSkip)
            b[topic] = Backoff(skip: run, run: run)
        }
    }
}
