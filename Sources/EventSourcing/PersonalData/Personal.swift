import Foundation

/// A field of an event or of an aggregate's state that holds a data subject's personal data.
///
/// ```swift
/// enum Event: Codable, Sendable {
///     case placed(customer: Personal<String>, courier: Personal<String>, amount: Int)
/// }
/// let placed = Event.placed(customer: Personal("Ada", subject: "customer-17"),
///                           courier: Personal("Bob", subject: "courier-4"), amount: 120)
/// ```
///
/// The record as a whole stays sealed under its aggregate's key scope as before; a personal
/// field is additionally sealed under its data subject's own data key (AES-256-GCM), with
/// associated data binding it to its record (event or snapshot, originator id and version), its
/// coding path, its subject and the key version. Once the subject is crypto-shredded, the
/// record still reads: the field comes back as its replacement value, ``isRedacted`` is true,
/// and every other field (non-personal ones, other subjects' ones) is intact.
///
/// Only the ``Mapper`` can write a `Personal`: its `encode(to:)` needs the mapper's field
/// sealer in the encoder's `userInfo` and throws without one (it never writes the plaintext),
/// and a mapper without a cipher refuses it with ``EventSourcingError/Code/plaintextRejected``.
/// The stored form is specified in SECURITY.md ("Personal fields").
public struct Personal<Value: Codable & Sendable>: Codable, Sendable {
    private var stored: Value

    /// The real value, or the replacement once the subject was shredded (``isRedacted``).
    /// Setting it gives the field a real value again (not redacted).
    public var value: Value {
        get { stored }
        set {
            stored = newValue
            redaction = nil
        }
    }

    /// Set when the value is a replacement: the subject's key was shredded.
    public private(set) var redaction: Redaction?

    /// The data subject whose key seals the field; nil for the record's own key scope (the
    /// aggregate's data subject, else its id), so the field is erased with the record itself.
    public var subject: String?

    /// The value the field takes once its subject is shredded, stored beside the sealed value
    /// under the record's key (not the subject's), so it survives the shred; nil for the type's
    /// ``PersonalDataReplaceable/redactedValue``. It is not personal data: never put the
    /// personal value itself here.
    public var replacement: Value?

    /// Whether ``value`` is a replacement (the subject's key was shredded).
    public var isRedacted: Bool { redaction != nil }

    /// A personal field holding `value`, sealed under `subject`'s key (nil: the record's own
    /// key scope), replaced after the shred by `replacement` (nil: the type's
    /// ``PersonalDataReplaceable/redactedValue``; a type without one needs a replacement).
    public init(_ value: Value, subject: String? = nil, replacement: Value? = nil) {
        self.stored = value
        self.subject = subject
        self.replacement = replacement
        self.redaction = nil
    }

    /// A redacted field, as read after its subject's shred.
    init(redacted value: Value, subject: String?, replacement: Value?, redaction: Redaction) {
        self.stored = value
        self.subject = subject
        self.replacement = replacement
        self.redaction = redaction
    }

    /// The value a redacted field takes: the declared replacement, else the type's default.
    var replacementValue: Value? { replacement ?? Self.defaultReplacement }

    /// The type's ``PersonalDataReplaceable/redactedValue``, or nil if it has none.
    static var defaultReplacement: Value? {
        guard let t = Value.self as? any PersonalDataReplaceable.Type else { return nil }
        return t.redactedValue as? Value
    }

    /// Decodes a sealed field through the mapper's field opener.
    /// - Throws: `EventSourcingError` (`.integrityFailure` naming the record and the field path,
    ///   `.decodingFailed`), or `DecodingError` when read without the mapper.
    public init(from decoder: any Decoder) throws {
        self = try PersonalFieldCodec.decode(Self.self, from: decoder)
    }

    /// Seals the field through the mapper's field sealer.
    /// - Throws: `EventSourcingError` (`.plaintextRejected` without a cipher, `.invalidArgument`),
    ///   or `EncodingError.invalidValue` when encoded without the mapper: never the plaintext.
    public func encode(to encoder: any Encoder) throws {
        try PersonalFieldCodec.encode(self, to: encoder)
    }
}

extension Personal: Equatable where Value: Equatable {
    /// Equal when value, subject and redaction state are (the replacement and the shred time are
    /// not compared).
    public static func == (a: Personal, b: Personal) -> Bool {
        a.stored == b.stored && a.subject == b.subject && a.isRedacted == b.isRedacted
    }
}

extension Personal: Hashable where Value: Hashable {
    public func hash(into hasher: inout Hasher) {
        hasher.combine(stored)
        hasher.combine(subject)
        hasher.combine(isRedacted)
    }
}

extension Personal: CustomStringConvertible {
    /// Never the value: a personal field printed (a log line, a test failure) shows only its
    /// subject and whether it is redacted.
    public var description: String {
        "Personal<\(Value.self)>(subject: \(subject ?? "record scope")\(isRedacted ? ", redacted" : ""))"
    }
}

/// Why a ``Personal`` field holds its replacement: its subject was crypto-shredded.
public struct Redaction: Sendable, Hashable, Codable {
    /// The key scope that was shredded (the field's subject, or the record's own scope).
    public var subject: String
    /// When it was shredded, if known.
    public var shreddedAt: Date?

    /// Creates a redaction.
    public init(subject: String, shreddedAt: Date? = nil) {
        self.subject = subject
        self.shreddedAt = shreddedAt
    }
}

/// A type with a default replacement for its personal fields once their subject is shredded.
/// A ``Personal`` field of another type must declare its replacement.
public protocol PersonalDataReplaceable {
    /// The value a redacted field takes when it declares no replacement.
    static var redactedValue: Self { get }
}

extension String: PersonalDataReplaceable { public static var redactedValue: String { "" } }
extension Int: PersonalDataReplaceable { public static var redactedValue: Int { 0 } }
extension Int8: PersonalDataReplaceable { public static var redactedValue: Int8 { 0 } }
extension Int16: PersonalDataReplaceable { public static var redactedValue: Int16 { 0 } }
extension Int32: PersonalDataReplaceable { public static var redactedValue: Int32 { 0 } }
extension Int64: PersonalDataReplaceable { public static var redactedValue: Int64 { 0 } }
extension UInt: PersonalDataReplaceable { public static var redactedValue: UInt { 0 } }
extension UInt8: PersonalDataReplaceable { public static var redactedValue: UInt8 { 0 } }
extension UInt16: PersonalDataReplaceable { public static var redactedValue: UInt16 { 0 } }
extension UInt32: PersonalDataReplaceable { public static var redactedValue: UInt32 { 0 } }
extension UInt64: PersonalDataReplaceable { public static var redactedValue: UInt64 { 0 } }
extension Bool: PersonalDataReplaceable { public static var redactedValue: Bool { false } }
extension Double: PersonalDataReplaceable { public static var redactedValue: Double { 0 } }
extension Float: PersonalDataReplaceable { public static var redactedValue: Float { 0 } }
extension Decimal: PersonalDataReplaceable { public static var redactedValue: Decimal { 0 } }
/// The reference date 1970-01-01T00:00:00Z.
extension Date: PersonalDataReplaceable { public static var redactedValue: Date { Date(timeIntervalSince1970: 0) } }
/// The nil UUID (all zero bits).
extension UUID: PersonalDataReplaceable {
    public static var redactedValue: UUID { UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)) }
}
extension Data: PersonalDataReplaceable { public static var redactedValue: Data { Data() } }
extension Optional: PersonalDataReplaceable { public static var redactedValue: Optional { nil } }
extension Array: PersonalDataReplaceable { public static var redactedValue: Array { [] } }
extension Set: PersonalDataReplaceable { public static var redactedValue: Set { [] } }
extension Dictionary: PersonalDataReplaceable { public static var redactedValue: Dictionary { [:] } }
