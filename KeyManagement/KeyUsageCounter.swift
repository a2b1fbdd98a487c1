import Foundation

/// A key store that counts, for each data-key version, the encryptions reserved under it, so
/// that a ``Keyring`` rotates a scope's key before it has sealed ``Keyring/encryptionLimit``
/// records under one version, across restarts and processes (SECURITY.md §10).
///
/// Key rings reserve encryptions ahead of use, in blocks (``Keyring/encryptionBlock``), so the
/// stored count is always at least the number of encryptions made (a process that stops leaves
/// the rest of its block unused, never uncounted). A version without a stored count has its
/// first block, ``KeyUsage/firstBlock(limit:)``, reserved implicitly: it belongs to the key ring
/// that created the version (minted it for a write, or rotated to it), so creating a key costs
/// no extra write. `SQLiteStore` (schema 5), `PostgresStore` (schema 2) and
/// ``InMemoryKeyStore`` implement it; a shred deletes the scope's counts.
///
/// With a store that does not, each key ring counts in its own memory only, from zero at every
/// start: the limit then holds per process, not per key.
public protocol KeyUsageCounter: KeyStore {
    /// Adds `count` encryptions to those reserved for `version` of `scope` (a version without a
    /// stored count starts from ``KeyUsage/firstBlock(limit:)``), atomically and only if the
    /// total stays at most `limit`. Returns the new total, or nil (nothing is changed) if it
    /// would pass `limit`.
    func reserveEncryptions(scope: String, version: UInt32, count: UInt64, limit: UInt64) async throws -> UInt64?
    /// The stored counts per version of `scope` (versions without one are left out: they have
    /// at most their implicit first block reserved).
    func reservedEncryptions(scope: String) async throws -> [UInt32: UInt64]
}

/// The constants of encryption counting.
public enum KeyUsage {
    /// The default encryption limit per data-key version: 2^30. NIST SP 800-38D bounds a key
    /// used with random 96-bit nonces to 2^32 encryptions (a repeated nonce then stays below
    /// probability 2^-32); 2^30 keeps a margin of three quarters of that bound for what no
    /// counter sees (records sealed outside the key ring) and for blocks reserved but unused.
    public static let defaultLimit: UInt64 = 1 << 30
    /// The most a limit can be: the NIST bound itself.
    public static let maxLimit: UInt64 = 1 << 32
    /// Encryptions reserved at a time: 4,096 (one store write per 4,096 records per version).
    public static let defaultBlock: UInt64 = 4_096

    /// The block reserved implicitly for the key ring that creates a version:
    /// min(``defaultBlock``, `limit`).
    public static func firstBlock(limit: UInt64) -> UInt64 { min(defaultBlock, limit) }

    /// What a reservation of `count` stores for a version without a stored count, or nil if
    /// that already passes `limit`.
    public static func initialTotal(count: UInt64, limit: UInt64) -> UInt64? {
        let first = firstBlock(limit: limit)
        guard count <= limit, first <= limit - count else { return nil }
        return first + count
    }
}
