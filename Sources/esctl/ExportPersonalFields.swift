import EventSourcing
import Foundation
import KeyManagement

/// The exported data subject's personal fields (`Personal` values, SECURITY.md §5.16): shown in
/// place in the subject's own events, and found by a scan of every other record of the store
/// when they sit in other subjects' aggregates (a courier's name in customers' orders).
///
/// Another subject's personal field is never exported: in the subject's own events it is
/// replaced by ``withheld``, and the scan lists only fields sealed under the subject's own key.
enum PersonalFieldExport {
    /// What stands in an exported event for another data subject's personal field.
    static let withheld: JSONValue = .object(["withheld": .string("personal data of another data subject")])

    /// Scope ids compare by their exact bytes, as the key store and the field format compare
    /// them (Swift's `==` would match a canonically equivalent spelling).
    static func sameScope(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    /// Whether a record's JSON text may hold a personal field: the marker key `"$pf"` in it.
    static func mayHoldFields(_ text: [UInt8]) -> Bool { contains(text, Array("\"$pf\"".utf8)) }

    /// Whether a payload, JSON or compact, may hold a personal field: the bytes `$pf` in it.
    static func mayHoldMarker(_ payload: [UInt8]) -> Bool { contains(payload, Array("$pf".utf8)) }

    private static func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
        guard let first = needle.first, bytes.count >= needle.count else { return false }
        return bytes.withUnsafeBufferPointer { b in
            needle.withUnsafeBufferPointer { m in
                var i = 0
                while i + m.count <= b.count {
                    if b[i] == first {
                        var j = 1
                        while j < m.count, b[i + j] == m[j] { j += 1 }
                        if j == m.count { return true }
                    }
                    i += 1
                }
                return false
            }
        }
    }

    /// One of the subject's personal fields in a record of another key scope
    /// (Operations.md §12.5).
    struct Field: Encodable {
        var notificationID: Int64
        var originatorID: String
        var originatorVersion: Int
        var topic: String
        /// The field's coding path as stored (`p`), from the envelope's root.
        var path: [String]
        /// Its value as JSON; null when it was written redacted.
        var value: JSONValue
        /// Whether the field was written redacted (nothing sealed in it).
        var redacted: Bool
        var recordedAt: String?

        enum CodingKeys: String, CodingKey {
            case kind, topic, path, value, redacted
            case notificationID = "notification_id", originatorID = "originator_id", originatorVersion = "originator_version"
            case recordedAt = "recorded_at"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode("personal_field", forKey: .kind)
            try c.encode(notificationID, forKey: .notificationID)
            try c.encode(originatorID, forKey: .originatorID)
            try c.encode(originatorVersion, forKey: .originatorVersion)
            try c.encode(topic, forKey: .topic)
            try c.encode(path, forKey: .path)
            try c.encode(value, forKey: .value)
            try c.encode(redacted, forKey: .redacted)
            try c.encodeIfPresent(recordedAt, forKey: .recordedAt)
        }
    }

    // MARK: The subject's own events

    /// Where a sealed-field object is matched with its reading: its stored path (or, for a
    /// field written redacted, where it sits) and the subject it names, by their bytes.
    private struct Slot: Hashable {
        var path: [[UInt8]]
        var subject: [UInt8]?
    }

    /// `envelope` (one of the subject's own records) with each personal field replaced: the
    /// subject's own by its value, another subject's by ``withheld``.
    ///
    /// Fields are matched with the mapper's readings by stored path and subject; fields that
    /// share both (items of one array in the compact encoding) are matched in array order,
    /// which both walks keep.
    /// - Throws: `CLIError` (exit 67) naming the record and the field when one of the subject's
    ///   fields does not open, or a field has no reading.
    static func resolve(_ envelope: JSONValue, _ n: StoredNotification, mapper: Mapper, scope: String) async throws -> JSONValue {
        let readings: [PersonalFieldReading]
        do {
            readings = try await mapper.personalFields(of: n.storedEvent, snapshot: false, notificationID: n.id)
        } catch let e as EventSourcingError where e.code == .shredded {
            throw CLIError(exitCode: Exit.scopeShredded, message: "key scope \(scope) was shredded during the export; the export is incomplete")
        } catch {
            throw incomplete(scope, n, field: nil, error)
        }
        var queues: [Slot: ArraySlice<PersonalFieldReading>] = [:]
        for r in readings {
            let slot = Slot(path: r.path.map { Array($0.utf8) }, subject: r.namesSubject ? Array(r.subject.utf8) : nil)
            queues[slot, default: []].append(r)
        }
        var at: [String] = []
        return try replace(envelope, &at, &queues, n, scope)
    }

    private static func replace(_ value: JSONValue, _ at: inout [String], _ queues: inout [Slot: ArraySlice<PersonalFieldReading>],
                                _ n: StoredNotification, _ scope: String) throws -> JSONValue {
        switch value {
        case .object(let o):
            if o["$pf"] != nil { return try field(o, at, &queues, n, scope) }
            var out: [String: JSONValue] = [:]
            // Sorted, so that fields sharing a slot are met in one order whatever the
            // dictionary's: they differ only by array positions, which both walks keep.
            for k in o.keys.sorted() {
                guard let child = o[k] else { continue }
                at.append(k)
                out[k] = try replace(child, &at, &queues, n, scope)
                at.removeLast()
            }
            return .object(out)
        case .array(let items):
            // Array positions are not part of a field's path (stored paths leave them out, and
            // so does the library's location of a field written redacted, which has none).
            var out: [JSONValue] = []
            out.reserveCapacity(items.count)
            for item in items { out.append(try replace(item, &at, &queues, n, scope)) }
            return .array(out)
        default:
            return value
        }
    }

    private static func field(_ o: [String: JSONValue], _ at: [String], _ queues: inout [Slot: ArraySlice<PersonalFieldReading>],
                              _ n: StoredNotification, _ scope: String) throws -> JSONValue {
        var path = at
        if case .array(let segments)? = o["p"] {
            path = segments.compactMap { if case .string(let s) = $0 { return s } else { return nil } }
        }
        var subject: [UInt8]?
        if case .string(let s)? = o["s"] { subject = Array(s.utf8) }
        let slot = Slot(path: path.map { Array($0.utf8) }, subject: subject)
        guard let reading = queues[slot]?.popFirst() else {
            throw CLIError(exitCode: Exit.verificationFailed, message: """
                export of key scope \(scope) is incomplete: notification \(n.id) (aggregate \(n.originatorID.uuidString.lowercased()) \
                version \(n.originatorVersion)) has a personal field at \(path.joined(separator: ".")) that the library does not \
                read (run 'esctl verify' for the full list)
                """)
        }
        guard sameScope(reading.subject, scope) else { return withheld }
        switch reading.outcome {
        case .value(let text):
            return try value(text, scope, n, reading)
        case .redacted:
            return .object(["redacted": .bool(true)])
        case .failed(let e):
            throw incomplete(scope, n, field: reading.path, e)
        }
    }

    private static func value(_ text: [UInt8], _ scope: String, _ n: StoredNotification, _ r: PersonalFieldReading) throws -> JSONValue {
        do {
            return Export.readable(try JSONDecoder().decode(JSONValue.self, from: Data(text)))
        } catch {
            throw incomplete(scope, n, field: r.path, EventSourcingError(.decodingFailed, "the field's value is not JSON"))
        }
    }

    static func incomplete(_ scope: String, _ n: StoredNotification, field: [String]?, _ error: any Error) -> CLIError {
        let code = (error as? EventSourcingError)?.code.description ?? "error"
        let message = (error as? EventSourcingError)?.message ?? "\(error)"
        let place = field.map { " field \($0.joined(separator: "."))" } ?? ""
        return CLIError(exitCode: Exit.verificationFailed, message: """
            export of key scope \(scope) is incomplete: notification \(n.id) (aggregate \(n.originatorID.uuidString.lowercased()) \
            version \(n.originatorVersion))\(place) fails: \(code): \(message) (run 'esctl verify' for the full list)
            """)
    }

    // MARK: Other subjects' records

    /// What the scan of other subjects' records found.
    struct ScanResult {
        /// The subject's fields written.
        var fields = 0
        /// Records of other scopes that could not be read, so were not searched (notification
        /// ids, the first ``listed`` of them), and how many there were.
        var unreadable: [Int64] = []
        var unreadableCount = 0
        static let listed = 10

        mutating func skipped(_ id: Int64) {
            unreadableCount += 1
            if unreadable.count < Self.listed { unreadable.append(id) }
        }

        /// The warning for records that could not be searched, if any.
        var warning: String? {
            guard unreadableCount > 0 else { return nil }
            let ids = unreadable.map { "\($0)" }.joined(separator: ", ") + (unreadableCount > unreadable.count ? ", …" : "")
            return "this export may not hold all of the subject's personal fields: \(unreadableCount) record\(unreadableCount == 1 ? "" : "s") "
                + "of other key scopes could not be read to search them (notification \(ids); run 'esctl verify' for the reasons)"
        }
    }

    /// Reads every event of the store that is not under `scope` and hands `emit` each
    /// personal field sealed under `scope`'s key, in log order.
    ///
    /// Records of shredded scopes (unreadable by anyone) and unencrypted records (which the
    /// export warns about) are passed over; erasure records hold no field. A record of another
    /// scope that cannot be read (tampered, its key unavailable, a row the store cannot read)
    /// is counted in the result, which the export reports as a warning: it belongs to another
    /// subject, and the search goes on after it.
    /// - Throws: `CLIError` exit 67 naming the record and field when one of the subject's own
    ///   fields does not open; exit 69 if `scope` is shredded meanwhile.
    static func scan(_ session: Session, scope: String, emit: (Field) throws -> Void) async throws -> ScanResult {
        let mapper = session.app.mapper
        let total = try await session.store.maxNotificationID() ?? 0
        let progress = Progress("searching other records for personal fields", total: Int(clamping: total))
        var result = ScanResult()
        var start: Int64 = 1
        var seen = 0
        do {
            while true {
                var page: [StoredNotification]
                var bad: Int64?
                do {
                    page = try await session.store.selectNotifications(start: start, limit: 500, stop: nil, topics: [])
                } catch let e as EventSourcingError where e.code == .databaseCorrupt && (e.notificationID ?? 0) >= start {
                    // The store refused a row: search the rows before it, count it, go on after it.
                    let id = e.notificationID ?? start
                    page = id > start
                        ? try await session.store.selectNotifications(start: start, limit: Int(clamping: id - start), stop: id - 1, topics: [])
                        : []
                    bad = id
                }
                if page.isEmpty, bad == nil { break }
                let others = page.filter { n in
                    !ErasureRecord.isErasure(topic: n.topic)
                        && !(StateHeader.peekKeyScope(n.state).map { sameScope($0, scope) } ?? false)
                }
                await mapper.prefetchKeys(for: others.map(\.storedEvent))
                for n in others {
                    try await fields(in: n, mapper: mapper, scope: scope, into: &result, emit: emit)
                }
                seen += page.count
                let next: Int64
                if let bad {
                    result.skipped(bad)
                    seen += 1
                    next = bad
                } else {
                    next = page.last?.id ?? start
                }
                progress.update(seen)
                guard next < Int64.max else { break }
                start = next + 1
            }
        } catch {
            progress.abandon()
            throw error
        }
        progress.finish(seen)
        if let t = try await session.store.tombstone(scope: scope) {
            throw CLIError(exitCode: Exit.scopeShredded,
                           message: "key scope \(scope) was shredded during the export (at \(JSONOut.date(t.shreddedAt))); the export is incomplete")
        }
        return result
    }

    /// The subject's fields in one record of another scope.
    private static func fields(in n: StoredNotification, mapper: Mapper, scope: String, into result: inout ScanResult,
                               emit: (Field) throws -> Void) async throws {
        let readings: [PersonalFieldReading]
        let text: [UInt8]
        do {
            // The payload in its own encoding: most records hold no field, and are not converted to JSON.
            guard mayHoldMarker(try await mapper.openPayload(n.storedEvent, snapshot: false, notificationID: n.id).bytes) else { return }
            text = try await mapper.open(n.storedEvent, snapshot: false, notificationID: n.id)   // a malformed payload fails here
            readings = try await mapper.personalFields(of: n.storedEvent, snapshot: false, notificationID: n.id)
        } catch let e as EventSourcingError where e.code == .shredded || e.code == .plaintextRejected {
            return
        } catch {
            result.skipped(n.id)
            return
        }
        let mine = readings.filter { sameScope($0.subject, scope) }
        guard !mine.isEmpty else { return }
        var recordedAt: String?
        if let envelope = try? JSONDecoder().decode(JSONValue.self, from: Data(text)) {
            switch envelope["t"] {
            case .double(let t)?: recordedAt = JSONOut.date(Date(timeIntervalSince1970: t))
            case .int(let t)?: recordedAt = JSONOut.date(Date(timeIntervalSince1970: Double(t)))
            default: break
            }
        }
        for r in mine {
            var field = Field(notificationID: n.id, originatorID: n.originatorID.uuidString.lowercased(),
                              originatorVersion: n.originatorVersion, topic: n.topic, path: r.path, value: .null,
                              redacted: false, recordedAt: recordedAt)
            switch r.outcome {
            case .value(let v): field.value = try value(v, scope, n, r)
            case .redacted: field.redacted = true
            case .failed(let e): throw incomplete(scope, n, field: r.path, e)
            }
            try emit(field)
            result.fields += 1
        }
    }
}
