import Foundation
import KeyManagement

/// The erasures of a store (one entry per tombstone: key scope and shred time), in a portable,
/// versioned JSON form, to re-apply to a restored backup with
/// ``Application/applyErasures(_:dryRun:)``. It holds no personal data and no key material:
/// only key scope ids (opaque ids, SECURITY.md §4) and times.
///
/// The JSON form, version 1 (UTF-8; keys in any order; unknown keys are ignored):
///
/// ```json
/// {
///   "format": "eventsourcing-erasures",
///   "version": 1,
///   "exported_at": "2026-11-30T06:40:00.000Z",
///   "erasures": [
///     { "scope": "subject-alice", "shredded_at": "2026-11-30T06:39:58.123Z" }
///   ]
/// }
/// ```
///
/// `format` must be `eventsourcing-erasures`; a `version` above ``currentVersion`` is refused
/// (written by a newer library). Times are ISO 8601 in UTC, with or without milliseconds. Each
/// `scope` is a valid key scope (1–255 UTF-8 bytes, no control characters) and appears once
/// (scopes compared by their exact bytes). A list holds at most ``maxErasures`` entries and its
/// file at most ``maxBytes`` bytes.
public struct ErasureList: Sendable, Hashable {
    /// The value of the `format` field.
    public static let format = "eventsourcing-erasures"
    /// The format version this library writes, and the newest it reads.
    public static let currentVersion = 1
    /// The largest file ``init(decoding:)`` and ``init(contentsOfFile:)`` read: 64 MiB.
    public static let maxBytes = 64 << 20
    /// The most entries a list may hold (export refuses a store with more tombstones).
    public static let maxErasures = 500_000

    /// One erasure: a key scope and when it was shredded in the store it was exported from.
    public struct Entry: Sendable, Hashable {
        /// The shredded key scope, exactly as stored.
        public var keyScope: String
        /// When it was shredded (in the store the list was exported from).
        public var shreddedAt: Date

        /// Creates an entry.
        public init(keyScope: String, shreddedAt: Date) {
            self.keyScope = keyScope
            self.shreddedAt = shreddedAt
        }
    }

    /// When the list was exported.
    public var exportedAt: Date
    /// The erasures, oldest first.
    public var erasures: [Entry]

    /// Creates a list (check it with ``validate()``; ``Application/applyErasures(_:dryRun:)``
    /// does).
    public init(erasures: [Entry], exportedAt: Date = Date()) {
        self.erasures = erasures
        self.exportedAt = exportedAt
    }

    /// Checks every entry: at most ``maxErasures``, valid key scopes, no scope twice, finite
    /// times within the years 0001–9999.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` naming the first bad entry (by its
    ///   position, from 1, and its scope when that is a valid one).
    public func validate() throws(EventSourcingError) {
        guard erasures.count <= Self.maxErasures else {
            throw EventSourcingError(.invalidArgument,
                "the erasure list holds \(erasures.count) entries, more than the \(Self.maxErasures) a list may hold")
        }
        var seen: [ExactScope: Int] = [:]
        seen.reserveCapacity(erasures.count)
        for (i, e) in erasures.enumerated() {
            do { try KeyScope.validate(e.keyScope) } catch {
                throw EventSourcingError(.invalidArgument,
                    "erasure \(i + 1) of the list does not name a valid key scope: \(error.message)")
            }
            if let first = seen.updateValue(i + 1, forKey: ExactScope(e.keyScope)) {
                throw EventSourcingError(.invalidArgument,
                    "erasures \(first) and \(i + 1) of the list name the same key scope, \(e.keyScope)", keyScope: e.keyScope)
            }
            guard ErasureTime.string(e.shreddedAt) != nil else {
                throw EventSourcingError(.invalidArgument,
                    "erasure \(i + 1) of the list (key scope \(e.keyScope)) has a shred time outside the years 0001–9999", keyScope: e.keyScope)
            }
        }
        guard ErasureTime.string(exportedAt) != nil else {
            throw EventSourcingError(.invalidArgument, "the erasure list's export time is outside the years 0001–9999")
        }
    }

    /// `date` as a list writes it (ISO 8601 in UTC, to the nearest millisecond:
    /// `2026-11-30T06:39:58.123Z`), or nil outside the years 0001–9999.
    public static func timestamp(_ date: Date) -> String? { ErasureTime.string(date) }

    // MARK: JSON

    /// The two fields that say what a document is, each nil when missing or of another type.
    private struct Header: Decodable {
        var format: String?
        var version: Int?
        enum CodingKeys: String, CodingKey { case format, version }
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            format = try? c.decodeIfPresent(String.self, forKey: .format)
            version = try? c.decodeIfPresent(Int.self, forKey: .version)
        }
    }

    private struct Document: Codable {
        var format: String
        var version: Int
        var exportedAt: String
        var erasures: [Item]
        enum CodingKeys: String, CodingKey { case format, version, exportedAt = "exported_at", erasures }
    }

    private struct Item: Codable {
        var scope: String
        var shreddedAt: String
        enum CodingKeys: String, CodingKey { case scope, shreddedAt = "shredded_at" }
    }

    /// The list in its JSON form (version ``currentVersion``): one entry per line, so a diff or
    /// `grep` reads it.
    /// - Throws: as ``validate()``.
    public func encoded() throws(EventSourcingError) -> Data {
        try validate()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        func json<T: Encodable>(_ value: T) throws(EventSourcingError) -> String {
            do { return String(decoding: try encoder.encode(value), as: UTF8.self) } catch {
                throw EventSourcingError(.invalidArgument, "the erasure list could not be encoded")
            }
        }
        // validate() checked every time.
        var out = "{\n  \"erasures\": ["
        for (i, e) in erasures.enumerated() {
            out += (i == 0 ? "\n    " : ",\n    ")
            out += try json(Item(scope: e.keyScope, shreddedAt: ErasureTime.string(e.shreddedAt) ?? ""))
        }
        out += erasures.isEmpty ? "],\n" : "\n  ],\n"
        out += "  \"exported_at\": \(try json(ErasureTime.string(exportedAt) ?? "")),\n"
        out += "  \"format\": \(try json(Self.format)),\n"
        out += "  \"version\": \(Self.currentVersion)\n}\n"
        return Data(out.utf8)
    }

    /// Reads a list from its JSON form and checks it whole (see ``validate()``).
    /// - Throws: ``EventSourcingError`` `.invalidArgument`: larger than ``maxBytes``, not JSON,
    ///   not this format, a `version` newer than ``currentVersion``, a missing or mistyped field,
    ///   a time that is not ISO 8601, or as ``validate()``. The message never quotes the input
    ///   beyond a valid key scope.
    public init(decoding data: Data) throws(EventSourcingError) {
        guard data.count <= Self.maxBytes else {
            throw EventSourcingError(.invalidArgument,
                "the erasure list is \(data.count) bytes, more than the \(Self.maxBytes) a list may have")
        }
        let decoder = JSONDecoder()
        let header: Header
        do { header = try decoder.decode(Header.self, from: data) } catch {
            throw EventSourcingError(.invalidArgument, "not an erasure list: not a JSON object")
        }
        guard header.format == Self.format else {
            throw EventSourcingError(.invalidArgument,
                "not an erasure list: its \"format\" is not \"\(Self.format)\" (write one with esctl erasures export)")
        }
        guard let version = header.version, version >= 1 else {
            throw EventSourcingError(.invalidArgument, "not an erasure list: its \"version\" is missing or not a positive integer")
        }
        guard version <= Self.currentVersion else {
            throw EventSourcingError(.invalidArgument,
                "the erasure list is format version \(version), written by a newer version of the library; this one reads version \(Self.currentVersion) and older")
        }
        let document: Document
        do { document = try decoder.decode(Document.self, from: data) } catch let error as DecodingError {
            throw EventSourcingError(.invalidArgument, "not an erasure list: " + Self.describe(error))
        } catch {
            throw EventSourcingError(.invalidArgument, "not an erasure list: it does not parse")
        }
        guard document.erasures.count <= Self.maxErasures else {
            throw EventSourcingError(.invalidArgument,
                "the erasure list holds \(document.erasures.count) entries, more than the \(Self.maxErasures) a list may hold")
        }
        guard let exported = ErasureTime.date(document.exportedAt) else {
            throw EventSourcingError(.invalidArgument, "not an erasure list: \"exported_at\" is not an ISO 8601 time")
        }
        var entries: [Entry] = []
        entries.reserveCapacity(document.erasures.count)
        for (i, item) in document.erasures.enumerated() {
            guard let at = ErasureTime.date(item.shreddedAt) else {
                let named = (try? KeyScope.validate(item.scope)) != nil ? item.scope : nil
                throw EventSourcingError(.invalidArgument,
                    "erasure \(i + 1) of the list" + (named.map { " (key scope \($0))" } ?? "")
                        + ": \"shredded_at\" is not an ISO 8601 time", keyScope: named)
            }
            entries.append(Entry(keyScope: item.scope, shreddedAt: at))
        }
        self.init(erasures: entries, exportedAt: exported)
        try validate()
    }

    /// Reads a list from a file, reading at most ``maxBytes`` + 1 bytes of it, and checks it.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` when the file cannot be read (naming
    ///   the path) or as ``init(decoding:)``.
    public init(contentsOfFile path: String) throws(EventSourcingError) {
        let data: Data
        do {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            data = try handle.read(upToCount: Self.maxBytes + 1) ?? Data()
        } catch {
            throw EventSourcingError(.invalidArgument, "cannot read the erasure list \(path): \(Self.reason(error))")
        }
        guard data.count <= Self.maxBytes else {
            throw EventSourcingError(.invalidArgument,
                "the erasure list \(path) is larger than the \(Self.maxBytes) bytes a list may have")
        }
        try self.init(decoding: data)
    }

    private static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let posix = ns.userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain,
           let text = strerror(Int32(posix.code)) {
            return String(cString: text)
        }
        switch ns.code {
        case NSFileNoSuchFileError, NSFileReadNoSuchFileError: return "no such file"
        case NSFileReadNoPermissionError: return "permission denied"
        default: return "not readable"
        }
    }

    /// Where a document failed to decode, without quoting its content.
    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let parts = context.codingPath.map { key in key.intValue.map { "[\($0 + 1)]" } ?? key.stringValue }
            return parts.isEmpty ? "the document" : "\"" + parts.joined(separator: ".") + "\""
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context)) has no \"\(key.stringValue)\""
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "\(path(context)) has the wrong type"
        case .dataCorrupted(let context):
            return "\(path(context)) does not parse"
        @unknown default:
            return "it does not parse"
        }
    }
}

/// ISO 8601 times of erasure lists (UTC, milliseconds), years 0001–9999 only.
enum ErasureTime {
    static func string(_ date: Date) -> String? {
        let t = date.timeIntervalSince1970
        guard t.isFinite, t >= -62_135_596_800, t < 253_402_300_800 else { return nil }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        f.timeZone = TimeZone(identifier: "UTC")
        // The nearest whole millisecond, so a time read from a list prints as it was written.
        return f.string(from: Date(timeIntervalSince1970: (t * 1000).rounded() / 1000))
    }

    static func date(_ text: String) -> Date? {
        guard text.utf8.count <= 64 else { return nil }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: text)
    }
}

/// What ``Application/applyErasures(_:dryRun:)`` did, or would do, with one erasure.
public struct AppliedErasure: Sendable, Hashable {
    /// What happened to the scope.
    public enum Action: String, Sendable, Hashable, Codable {
        /// The store had a data key for it: destroyed (its records now read as shredded).
        case shredded
        /// The store had already shredded it: nothing changed.
        case alreadyShredded = "already_shredded"
        /// The store never had a key for it: tombstoned ahead of time, so no record can ever
        /// be written under it.
        case tombstonedAhead = "tombstoned_ahead"
    }

    /// The scope, as the list names it.
    public var keyScope: String
    /// What was (or, in a dry run, would be) done.
    public var action: Action
    /// When the list says it was shredded (in the store it was exported from).
    public var listedShreddedAt: Date
    /// When this store shredded it: now, or its earlier tombstone's time (nil in a dry run of
    /// a scope not yet shredded).
    public var shreddedAt: Date?
    /// The receipt of the shred this apply made (nil when it made none, and in a dry run).
    public var receipt: ErasureReceipt?

    /// Creates an outcome.
    public init(keyScope: String, action: Action, listedShreddedAt: Date, shreddedAt: Date?, receipt: ErasureReceipt?) {
        self.keyScope = keyScope
        self.action = action
        self.listedShreddedAt = listedShreddedAt
        self.shreddedAt = shreddedAt
        self.receipt = receipt
    }
}

extension Application {
    /// Every erasure of the store (one entry per tombstone), oldest first, ready to be written
    /// with ``ErasureList/encoded()`` and re-applied to a restored backup with
    /// ``applyErasures(_:dryRun:)``. Reads the key store only; decrypts nothing.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` without a keyring, or when the store
    ///   holds more than ``ErasureList/maxErasures`` tombstones; `.databaseCorrupt` for a
    ///   tombstone whose scope or time the library never writes (naming its scope when valid);
    ///   the key store's errors.
    public func erasures() async throws -> ErasureList {
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.invalidArgument, "the application has no keyring: records are not encrypted, nothing was shredded")
        }
        let tombstones = try await keyring.store.tombstones()
        guard tombstones.count <= ErasureList.maxErasures else {
            throw EventSourcingError(.invalidArgument,
                "the store holds \(tombstones.count) tombstones, more than the \(ErasureList.maxErasures) an erasure list may hold")
        }
        var entries: [ErasureList.Entry] = []
        entries.reserveCapacity(tombstones.count)
        for t in tombstones {
            do { try KeyScope.validate(t.scope) } catch {
                throw EventSourcingError(.databaseCorrupt, "a tombstone does not name a valid key scope: \(error.message)")
            }
            guard ErasureTime.string(t.shreddedAt) != nil else {
                throw EventSourcingError(.databaseCorrupt, "a tombstone's shred time is outside the years 0001–9999",
                                         keyScope: t.scope)
            }
            entries.append(ErasureList.Entry(keyScope: t.scope, shreddedAt: t.shreddedAt))
        }
        entries.sort { a, b in
            a.shreddedAt != b.shreddedAt ? a.shreddedAt < b.shreddedAt : ExactScope(a.keyScope) < ExactScope(b.keyScope)
        }
        let list = ErasureList(erasures: entries)
        try list.validate()
        return list
    }

    /// Re-applies a list of erasures (say, to a restored backup): shreds each scope with
    /// ``shred(keyScope:ifAbsent:)`` and ``AbsentScopePolicy/tombstone``, so a scope this store
    /// has a key for is shredded, one it never had is tombstoned ahead of time, and each gets its
    /// erasure record in the notification log. A scope already shredded is reported and left
    /// alone (nothing of it changes), so applying a list twice changes nothing the second time.
    ///
    /// The whole list is checked (``ErasureList/validate()``) before the first shred: a bad
    /// list changes nothing. A UUID-shaped scope is matched in the spelling it is stored under,
    /// as ``shred(keyScope:ifAbsent:)`` does.
    /// - Parameters:
    ///   - list: the erasures to apply.
    ///   - dryRun: say what would be done, and change nothing.
    /// - Returns: one outcome per entry, in the list's order.
    /// - Throws: ``EventSourcingError`` `.invalidArgument` for a bad list or without a keyring
    ///   (nothing changed); a store's error part-way (the message says how many were applied
    ///   before it: apply the same list again to finish).
    public func applyErasures(_ list: ErasureList, dryRun: Bool = false) async throws -> [AppliedErasure] {
        try list.validate()
        guard let keyring = mapper.keyring else {
            throw EventSourcingError(.invalidArgument, "the application has no keyring: records are not encrypted, nothing can be shredded")
        }
        // What the store holds now, for each entry: read before anything is changed.
        var plan: [AppliedErasure] = []
        plan.reserveCapacity(list.erasures.count)
        for e in list.erasures {
            let (action, at) = try await currentErasureState(of: e.keyScope, in: keyring.store)
            plan.append(AppliedErasure(keyScope: e.keyScope, action: action, listedShreddedAt: e.shreddedAt,
                                       shreddedAt: at, receipt: nil))
        }
        if dryRun { return plan }
        var applied = 0
        for i in plan.indices where plan[i].action != .alreadyShredded {
            do {
                let receipt = try await shred(keyScope: plan[i].keyScope, ifAbsent: .tombstone)
                plan[i].action = receipt.destroyedKeyVersions.isEmpty ? .tombstonedAhead : .shredded
                plan[i].shreddedAt = receipt.shreddedAt
                plan[i].receipt = receipt
                applied += 1
            } catch let error as EventSourcingError where error.code == .shredded {
                // Shredded since the plan was made (another process): nothing left to do.
                plan[i].action = .alreadyShredded
                plan[i].shreddedAt = error.shreddedAt ?? plan[i].shreddedAt
            } catch var error as EventSourcingError {
                error.message += "; \(applied) erasures of the list were applied before it: apply the same list again to finish"
                if error.keyScope == nil { error.keyScope = plan[i].keyScope }
                throw error
            } catch {
                throw EventSourcingError(.recorderFailure,
                    "\(error); \(applied) erasures of the list were applied before it: apply the same list again to finish",
                    keyScope: plan[i].keyScope)
            }
        }
        return plan
    }

    /// Whether `scope` (in any spelling ``shred(keyScope:ifAbsent:)`` would use) is shredded,
    /// has a key, or neither, read without changing anything.
    private func currentErasureState(of scope: String, in store: any KeyStore) async throws -> (AppliedErasure.Action, Date?) {
        var candidates = [scope]
        if let u = UUID(uuidString: scope) {
            for s in [u.uuidString.lowercased(), u.uuidString] where !candidates.contains(s) { candidates.append(s) }
        }
        for c in candidates where (try? KeyScope.validate(c)) != nil {
            if try await !store.dataKeys(scope: c).isEmpty { return (.shredded, nil) }
            if let t = try await store.tombstone(scope: c) { return (.alreadyShredded, t.shreddedAt) }
        }
        return (.tombstonedAhead, nil)
    }
}
