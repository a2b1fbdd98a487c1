/// Finds many byte strings (each at least 8 bytes) in a haystack in one pass.
public struct NeedleSet: Sendable {
    public let needles: [[UInt8]]
    private var byPrefix: [UInt64: [Int]] = [:]

    public init(_ needles: [[UInt8]]) {
        precondition(needles.allSatisfy { $0.count >= 8 }, "needles must be at least 8 bytes")
        self.needles = needles
        for (i, n) in needles.enumerated() { byPrefix[NeedleSet.word(n, 0), default: []].append(i) }
    }

    private static func word(_ b: [UInt8], _ at: Int) -> UInt64 {
        b.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt64.self) }
    }

    /// The indices of the needles that occur in `hay`.
    public func found(in hay: [UInt8]) -> Set<Int> {
        var out = Set<Int>()
        guard hay.count >= 8 else { return out }
        hay.withUnsafeBytes { h in
            for at in 0...(h.count - 8) {
                guard let candidates = byPrefix[h.loadUnaligned(fromByteOffset: at, as: UInt64.self)] else { continue }
                for c in candidates where !out.contains(c) {
                    let n = needles[c]
                    if at + n.count <= h.count, n.indices.allSatisfy({ n[$0] == h[at + $0] }) {
                        out.insert(c)
                    }
                }
            }
        }
        return out
    }
}
