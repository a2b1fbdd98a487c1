#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A key scope id compared, hashed and ordered by its exact UTF-8 bytes.
///
/// Swift's `String` equality is Unicode canonical equivalence: "José" written with é (U+00E9)
/// and with e + U+0301 are equal `String`s, and so are "K" and U+212A KELVIN SIGN. The key
/// stores compare scope ids byte by byte (SQLite's BINARY collation, PostgreSQL's deterministic
/// collations, ``InMemoryKeyStore``), so to them these are different scopes with different data
/// keys. A cache or set of scopes keyed by `String` would mix them up, handing one subject the
/// other's key or reporting it shredded. Key every map or set of scope ids by this type instead.
///
/// Equality and hashing read the string's UTF-8 bytes in place (no copy, no allocation, for
/// native Swift strings), so ASCII scopes such as UUIDs cost about what a `String` key costs.
/// The order is the byte order of UTF-8 (which is also code-point order), the order of SQLite's
/// BINARY collation.
public struct ExactScope: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The scope id, exactly as given.
    public let scope: String

    /// Wraps `scope`; its bytes are not changed or normalised.
    @inlinable
    public init(_ scope: String) { self.scope = scope }

    public var description: String { scope }

    public static func == (a: ExactScope, b: ExactScope) -> Bool {
        a.scope.utf8.count == b.scope.utf8.count && ExactScope.compare(a.scope, b.scope) == 0
    }

    public static func < (a: ExactScope, b: ExactScope) -> Bool {
        ExactScope.compare(a.scope, b.scope) < 0
    }

    public func hash(into hasher: inout Hasher) {
        // Always hashed as one run of bytes (never byte by byte), so two equal scopes hash alike
        // whichever way their storage is reached.
        if scope.utf8.withContiguousStorageIfAvailable({ hasher.combine(bytes: UnsafeRawBufferPointer($0)) }) != nil {
            return
        }
        var copy = scope
        copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    /// Whether `a` and `b` are the same scope id: the same UTF-8 bytes.
    @inlinable
    public static func same(_ a: String, _ b: String) -> Bool { ExactScope(a) == ExactScope(b) }

    /// Compares the UTF-8 bytes of `a` and `b` like `memcmp`, a shorter prefix first:
    /// negative, zero or positive.
    static func compare(_ a: String, _ b: String) -> Int {
        let x = a.utf8, y = b.utf8
        let fast = x.withContiguousStorageIfAvailable { p in
            y.withContiguousStorageIfAvailable { q -> Int in
                let n = min(p.count, q.count)
                if n > 0, let pa = p.baseAddress, let qa = q.baseAddress {
                    let c = memcmp(pa, qa, n)
                    if c != 0 { return Int(c) }
                }
                return p.count == q.count ? 0 : (p.count < q.count ? -1 : 1)
            }
        }
        if let fast, let result = fast { return result }
        var i = x.makeIterator(), j = y.makeIterator()
        while true {
            switch (i.next(), j.next()) {
            case (nil, nil): return 0
            case (nil, _): return -1
            case (_, nil): return 1
            case let (l?, r?): if l != r { return l < r ? -1 : 1 }
            }
        }
    }
}
