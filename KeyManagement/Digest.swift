/// SHA-256 for the other modules of the package (the erasure record's originator id).
package enum Digest {
    /// SHA-256 of `bytes` (32 bytes).
    package static func sha256(_ bytes: [UInt8]) -> [UInt8] { LibCrypto.sha256(bytes) }
}
