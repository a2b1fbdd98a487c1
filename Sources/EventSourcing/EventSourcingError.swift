import Foundation

/// An error from the event-sourcing layers: domain, application, mapper and recorders.
///
/// A struct with an extensible ``Code``. Every error names the record (originator id and
/// version, notification id, topic) or key scope it is about, never the plaintext.
public struct EventSourcingError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let raw: String
        private init(_ raw: String) { self.raw = raw }

        /// No events exist for the aggregate id (or none at or below the asked version).
        public static let aggregateNotFound = Code("aggregateNotFound")
        /// Another writer recorded this `(originator id, version)` first.
        public static let concurrencyConflict = Code("concurrencyConflict")
        /// The stored payload could not be decoded into the expected type (names the topic).
        public static let decodingFailed = Code("decodingFailed")
        /// The stored record was tampered with or corrupted: its tag or header does not check out.
        public static let integrityFailure = Code("integrityFailure")
        /// The record's key scope was crypto-shredded: its content is gone for good.
        public static let shredded = Code("shredded")
        /// The data key needed is not available (missing, or its master key is not loaded).
        public static let keyUnavailable = Code("keyUnavailable")
        /// The master key does not open this store.
        public static let wrongMasterKey = Code("wrongMasterKey")
        /// An event does not follow the aggregate (wrong originator id or version).
        public static let invalidEvent = Code("invalidEvent")
        /// An unencrypted record was read while plaintext reads are disabled, or offered to a store
        /// that holds encrypted data (which refuses plaintext unless opened for a migration).
        public static let plaintextRejected = Code("plaintextRejected")
        /// The database file is not a database, is truncated or is otherwise corrupt.
        public static let databaseCorrupt = Code("databaseCorrupt")
        /// The database is locked by another process for longer than the busy timeout.
        public static let databaseLocked = Code("databaseLocked")
        /// The database cannot be opened or written (path, permissions, read-only media).
        public static let databaseUnavailable = Code("databaseUnavailable")
        /// The database was written by a newer version of this library.
        public static let unsupportedSchema = Code("unsupportedSchema")
        /// Any other recorder failure.
        public static let recorderFailure = Code("recorderFailure")
        /// An argument is outside what the API accepts.
        public static let invalidArgument = Code("invalidArgument")
        /// A write broke a database constraint other than the events' `(originator id, version)`
        /// key (which is ``concurrencyConflict``); ``EventSourcingError/storeCode`` says which.
        public static let constraintViolation = Code("constraintViolation")
        /// The key scope has never had a data key and was never shredded (a typo, or an
        /// uppercase UUID): nothing was changed.
        public static let keyScopeNotFound = Code("keyScopeNotFound")
        /// The stored record belongs to another aggregate type than the one asked for (its topic
        /// names another type).
        public static let aggregateTypeMismatch = Code("aggregateTypeMismatch")
        /// A projection threw while its runner gave it a notification (or a set-up or drop): the
        /// runner stopped. The message names the projection, the error's ``notificationID`` the
        /// notification; the tracking position stays before it, so running again retries it.
        public static let projectionFailed = Code("projectionFailed")
        /// A wait (such as a projection runner's `wait(until:timeout:)`) ran out of time before
        /// what it waited for happened; nothing was changed.
        public static let timedOut = Code("timedOut")
        /// Too many operations are already waiting for the store (its bound on waiting reads or
        /// writes was reached): nothing of this one ran. Retry later, or raise the bound.
        public static let storeOverloaded = Code("storeOverloaded")
        /// A tracking record's notification id is not higher than the one recorded for its name
        /// (a tracking position only moves forward: it can't fill in a gap). The message names
        /// the tracking name and both ids; nothing of the write was stored.
        public static let trackingConflict = Code("trackingConflict")
        /// A process application's policy threw while its system runner gave it a leader's
        /// event (or an erasure), or the event could not be processed: the runner stopped. The
        /// message names the process application, the leader, the notification and its topic;
        /// the error's ``notificationID`` is the leader's notification. The follower's position
        /// stays before it, so running again resumes at that event.
        public static let processFailed = Code("processFailed")
        /// An in-process subscription (`Application.subscribe(to:)`) fell behind: its buffer
        /// was full, so events were dropped and the subscription ended. The message says how
        /// many; the error's ``notificationID`` is the first dropped. The events are in the
        /// notification log: follow it with `NotificationLog.subscribe(after:)` to resume.
        public static let subscriptionOverflow = Code("subscriptionOverflow")
        /// The record (or a personal field in it) names a data-key version that was retired
        /// after the scope was re-encrypted: below its minimum decryption version. Names the
        /// record and key scope; the message names the version. Not a corrupt record.
        public static let keyRetired = Code("keyRetired")
        /// Re-encryption or retiring found a record that still needs a data-key version below
        /// the one asked to retire (the message names the scope, the lowest version still
        /// needed and a record): nothing was retired. Re-encrypt the scope first.
        public static let keyVersionInUse = Code("keyVersionInUse")
        /// The operation needs something the application's recorder, snapshot store or cipher
        /// does not offer (a recorder that cannot rewrite records, a cipher that is not a
        /// `Keyring`): nothing was changed.
        public static let unsupported = Code("unsupported")
        /// The master key's source (a PKCS#11 token, a helper command) failed or could not be
        /// reached while a data key was wrapped or unwrapped: nothing of the operation was
        /// written. The message names the token or the helper, never a PIN, a key or what the
        /// helper wrote to its standard error. (esctl exits 71.)
        public static let keySourceFailed = Code("keySourceFailed")
        /// The record was compressed with a preset dictionary (``CompressionDictionary``) that
        /// the mapper does not have: the message names the dictionary's id. Not a corrupt record:
        /// give the mapper that dictionary again (``Mapper/Configuration/retiredCompressionDictionaries``).
        public static let compressionDictionaryMissing = Code("compressionDictionaryMissing")

        public var description: String { raw }
    }

    /// What went wrong.
    public var code: Code
    /// A human-readable explanation; never contains plaintext or keys.
    public var message: String
    /// The aggregate concerned.
    public var originatorID: UUID?
    /// The aggregate version concerned.
    public var originatorVersion: Int?
    /// The topic concerned.
    public var topic: String?
    /// The notification id concerned.
    public var notificationID: Int64?
    /// The key scope concerned.
    public var keyScope: String?
    /// When the scope was shredded.
    public var shreddedAt: Date?
    /// The database's own code for the failure, when a store reported it: SQLite's extended
    /// result code (`"SQLITE_CONSTRAINT_UNIQUE (2067)"`) or PostgreSQL's SQLSTATE (`"23505"`).
    public var storeCode: String?

    /// Creates an error.
    public init(_ code: Code, _ message: String, originatorID: UUID? = nil, originatorVersion: Int? = nil,
                topic: String? = nil, notificationID: Int64? = nil, keyScope: String? = nil,
                shreddedAt: Date? = nil, storeCode: String? = nil) {
        self.code = code
        self.message = message
        self.originatorID = originatorID
        self.originatorVersion = originatorVersion
        self.topic = topic
        self.notificationID = notificationID
        self.keyScope = keyScope
        self.shreddedAt = shreddedAt
        self.storeCode = storeCode
    }

    public var description: String {
        var parts: [String] = []
        if let originatorID { parts.append("aggregate \(originatorID.uuidString.lowercased())") }
        if let originatorVersion { parts.append("version \(originatorVersion)") }
        if let notificationID { parts.append("notification \(notificationID)") }
        if let topic { parts.append("topic \(topic)") }
        if let keyScope { parts.append("key scope \(keyScope)") }
        if let shreddedAt { parts.append("shredded at \(ISO8601DateFormatter().string(from: shreddedAt))") }
        if let storeCode { parts.append("store code \(storeCode)") }
        return "EventSourcingError.\(code): \(message)" + (parts.isEmpty ? "" : " [" + parts.joined(separator: ", ") + "]")
    }

    /// Whether this is a ``Code/concurrencyConflict``.
    public var isConcurrencyConflict: Bool { code == .concurrencyConflict }
}
