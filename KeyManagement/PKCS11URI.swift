import Foundation

/// A `pkcs11:` URI (RFC 7512) naming a token and an AES key on it, and the module to load.
///
/// Path attributes (`;`-separated): `token`, `manufacturer`, `model`, `serial`, `slot-id`
/// select the token; `object` (the key's CKA_LABEL), `id` (its CKA_ID, percent-encoded bytes)
/// and `type` (only `secret-key`) select the key. Query attributes (`&`-separated):
/// `module-path` (the module's file), `pin-source` (a file holding the PIN: `file:/path` or
/// a path). `pin-value` is refused: a PIN in a URI ends up in shell history and `ps` output.
/// Values are percent-decoded; an unknown attribute is refused, so a typo never selects
/// something else silently.
public struct PKCS11URI: Sendable, Hashable, CustomStringConvertible {
    public var token: String?
    public var manufacturer: String?
    public var model: String?
    public var serial: String?
    public var slotID: UInt?
    /// The key's CKA_LABEL.
    public var object: String?
    /// The key's CKA_ID.
    public var id: [UInt8]?
    /// The module's path.
    public var modulePath: String?
    /// Where the PIN is read from: a file path.
    public var pinSource: String?

    /// The longest URI accepted, in bytes.
    public static let maxLength = 4096

    /// Parses `text`.
    /// - Throws: ``KeyManagementError/Code/invalidArgument`` for what is not such a URI (the
    ///   text is not repeated when it holds `pin-value`).
    public init(parsing text: String) throws(KeyManagementError) {
        guard text.utf8.count <= Self.maxLength else {
            throw KeyManagementError(.invalidArgument, "the PKCS#11 URI is longer than \(Self.maxLength) bytes")
        }
        guard text.hasPrefix("pkcs11:") else {
            throw KeyManagementError(.invalidArgument, "a PKCS#11 URI begins with 'pkcs11:' (RFC 7512)")
        }
        var rest = Substring(text.dropFirst("pkcs11:".count))
        var query = Substring("")
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        // Byte by byte: `String.contains` compares characters, and "pin-value" followed by a
        // combining mark (e + U+0301) is another character sequence that still holds the bytes.
        if Array(text.utf8).contains(subsequence: Array("pin-value".utf8)) {
            throw KeyManagementError(.invalidArgument,
                "the PKCS#11 URI holds a pin-value, which is refused (the URI is not shown): a PIN in an argument is visible to other users and kept in shell history; use pin-source=file:PATH or the PIN environment variable")
        }
        func decode(_ v: Substring, _ name: String) throws(KeyManagementError) -> [UInt8] {
            var out: [UInt8] = []
            var bytes = Array(v.utf8)[...]
            while let c = bytes.popFirst() {
                if c == UInt8(ascii: "%") {
                    guard bytes.count >= 2, let h = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else {
                        throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's \(name) has a malformed %-escape")
                    }
                    out.append(h)
                    bytes = bytes.dropFirst(2)
                } else {
                    out.append(c)
                }
            }
            return out
        }
        func textValue(_ v: Substring, _ name: String) throws(KeyManagementError) -> String {
            let raw = try decode(v, name)
            guard let s = String(validating: raw, as: UTF8.self) else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's \(name) is not UTF-8")
            }
            return s
        }
        var seen: Set<String> = []
        for part in rest.split(separator: ";", omittingEmptySubsequences: true) {
            guard let eq = part.firstIndex(of: "=") else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's attribute '\(part)' has no '='")
            }
            let name = String(part[..<eq]), value = part[part.index(after: eq)...]
            guard seen.insert(name).inserted else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI gives \(name) twice")
            }
            switch name {
            case "token": token = try textValue(value, name)
            case "manufacturer": manufacturer = try textValue(value, name)
            case "model": model = try textValue(value, name)
            case "serial": serial = try textValue(value, name)
            case "slot-id":
                guard let n = UInt(try textValue(value, name)) else {
                    throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's slot-id is not a number")
                }
                slotID = n
            case "object": object = try textValue(value, name)
            case "id": id = try decode(value, name)
            case "type":
                guard try textValue(value, name) == "secret-key" else {
                    throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's type must be secret-key: the master key is an AES key")
                }
            case "library-description", "library-manufacturer", "library-version", "slot-description", "slot-manufacturer":
                break  // describe the module or slot; the token attributes select it
            default:
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI has an unknown attribute '\(name)'")
            }
        }
        for part in query.split(separator: "&", omittingEmptySubsequences: true) {
            guard let eq = part.firstIndex(of: "=") else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's query attribute '\(part)' has no '='")
            }
            let name = String(part[..<eq]), value = part[part.index(after: eq)...]
            guard seen.insert(name).inserted else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI gives \(name) twice")
            }
            switch name {
            case "module-path": modulePath = try textValue(value, name)
            case "pin-source":
                var source = try textValue(value, name)
                if source.hasPrefix("file:") {
                    source.removeFirst("file:".count)
                    // file:///path and file:/path both name /path.
                    if source.hasPrefix("//") { source.removeFirst(2) }
                }
                guard source.hasPrefix("/") || source.hasPrefix(".") else {
                    throw KeyManagementError(.invalidArgument, "the PKCS#11 URI's pin-source must be a file (file:/path/to/pin)")
                }
                pinSource = source
            default:
                throw KeyManagementError(.invalidArgument, "the PKCS#11 URI has an unknown query attribute '\(name)'")
            }
        }
        guard object != nil || id != nil else {
            throw KeyManagementError(.invalidArgument, "the PKCS#11 URI names no key: give object=LABEL or id=%xx…")
        }
    }

    /// The token and key, without the PIN source or module (for messages).
    public var description: String {
        var parts: [String] = []
        if let token { parts.append("token=\(token)") }
        if let serial { parts.append("serial=\(serial)") }
        if let slotID { parts.append("slot-id=\(slotID)") }
        if let object { parts.append("object=\(object)") }
        if let id { parts.append("id=" + id.map { String(format: "%%%02x", $0) }.joined()) }
        return "pkcs11:" + parts.joined(separator: ";")
    }

    /// What names the key in messages: its label, else its id.
    var keyName: String {
        if let object { return "'\(object)'" }
        return "with id " + (id ?? []).map { String(format: "%02x", $0) }.joined()
    }

    var tokenName: String {
        if let token { return "'\(token)'" }
        if let serial { return "with serial \(serial)" }
        if let slotID { return "in slot \(slotID)" }
        return "(any)"
    }
}

extension Array where Element == UInt8 {
    /// Whether `needle` occurs in these bytes.
    fileprivate func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if self[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}
