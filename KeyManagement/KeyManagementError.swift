import Foundation

/// An error from the key-management kernel.
///
/// A struct with an extensible ``Code`` rather than a frozen enum, so new cases can be
/// added without breaking callers. Messages name key scopes and versions, never key bytes.
public struct KeyManagementError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let raw: String
        private init(_ raw: String) { self.raw = raw }

        /// Key bytes of the wrong length or format (e.g. a master key file that is not 32 bytes).
        public static let invalidKeyMaterial = Code("invalidKeyMaterial")
        /// A nonce that is not 96 bits.
        public static let invalidNonce = Code("invalidNonce")
        /// An AEAD tag check failed (wrong key, wrong associated data, or tampered bytes).
        public static let authenticationFailed = Code("authenticationFailed")
        /// The loaded master key does not open this key store.
        public static let wrongMasterKey = Code("wrongMasterKey")
        /// The scope has been crypto-shredded.
        public static let shredded = Code("shredded")
        /// The data key exists but cannot be used here (its master key is not loaded).
        public static let keyUnavailable = Code("keyUnavailable")
        /// No data key exists for the scope and version asked for, and the scope was not shredded.
        public static let keyNotFound = Code("keyNotFound")
        /// A key with this scope and version already exists.
        public static let keyExists = Code("keyExists")
        /// The key scope id is empty or too long.
        public static let invalidScope = Code("invalidScope")
        /// A key source (file, environment variable) is missing or unreadable.
        public static let keySourceUnavailable = Code("keySourceUnavailable")
        /// A master key held outside this process could not be used: its PKCS#11 module, token,
        /// PIN or key object, or its helper command, failed, refused or did not answer in time.
        /// Not a wrong key (that is ``wrongMasterKey``): nothing about the store is known yet.
        public static let keySourceFailed = Code("keySourceFailed")
        /// The key store itself failed (I/O, corruption).
        public static let storeFailure = Code("storeFailure")
        /// OpenSSL reported an internal failure.
        public static let cryptoFailure = Code("cryptoFailure")
        /// An argument is outside what the API accepts (for example a page size below 1).
        public static let invalidArgument = Code("invalidArgument")
        /// A size, cost or count is beyond what the kernel supports: an input longer than the
        /// 2^31 − 1 bytes OpenSSL takes in one call, scrypt parameters beyond their bounds, or a
        /// scope whose data key is already at version 2^32 − 1.
        public static let limitExceeded = Code("limitExceeded")
        /// The data-key version asked for was retired (destroyed after the scope's records were
        /// re-encrypted under a newer version): names the scope and version. Not a corrupt
        /// record: the version is below the scope's minimum decryption version.
        public static let keyRetired = Code("keyRetired")
        /// The key store does not implement this operation (for example retiring data-key
        /// versions, ``KeyStore/retireDataKeys(scope:below:)``); nothing was changed.
        public static let unsupported = Code("unsupported")

        public var description: String { raw }
    }

    /// What went wrong.
    public var code: Code
    /// The key scope concerned, if any.
    public var scope: String?
    /// The data-key version concerned, if any.
    public var keyVersion: UInt32?
    /// When the scope was shredded, for ``Code/shredded``.
    public var shreddedAt: Date?
    /// A human-readable explanation. Never contains key material.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String, scope: String? = nil, keyVersion: UInt32? = nil,
                shreddedAt: Date? = nil) {
        self.code = code
        self.message = message
        self.scope = scope
        self.keyVersion = keyVersion
        self.shreddedAt = shreddedAt
    }

    public var description: String {
        var s = "KeyManagementError.\(code): \(message)"
        if let scope { s += " [scope \(scope)" + (keyVersion.map { " v\($0)" } ?? "") + "]" }
        if let shreddedAt { s += " [shredded \(ISO8601DateFormatter().string(from: shreddedAt))]" }
        return s
    }
}
