/// Padded base64 (RFC 4648 §4) for master-key text, working in buffers the caller owns.
///
/// Foundation's `Data(base64Encoded:)` and `base64EncodedString()` leave copies of a key in
/// `Data` values nobody can zeroize; these functions decode straight into the key's own
/// buffer and encode into an array the caller cleanses.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let padding = UInt8(ascii: "=")

    /// Space, tab, CR and LF: ignored anywhere in key text.
    static func isWhitespace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D
    }

    /// The value of a base64 digit, or nil for any other byte.
    private static func sextet(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): 62
        case UInt8(ascii: "/"): 63
        default: nil
        }
    }

    /// How many bytes `text` decodes to, whitespace ignored; nil unless the rest is padded
    /// base64: a multiple of 4 characters with `=` only as the last one or two.
    static func decodedCount(_ text: UnsafeRawBufferPointer) -> Int? {
        var characters = 0
        var pad = 0
        for c in text where !isWhitespace(c) {
            if c == padding {
                pad += 1
            } else if pad > 0 || sextet(c) == nil {
                return nil   // a digit after padding, or not base64 at all
            }
            characters += 1
        }
        guard characters % 4 == 0, pad <= 2 else { return nil }
        return characters / 4 * 3 - pad
    }

    /// Decodes `text` into `out`, which must be exactly ``decodedCount(_:)`` bytes long.
    /// Returns false, with `out` partly written, if `text` is not what `decodedCount` accepted.
    static func decode(_ text: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Bool {
        guard decodedCount(text) == out.count else { return false }
        var quantum: UInt32 = 0
        var digits = 0
        var written = 0
        for c in text where !isWhitespace(c) && c != padding {
            guard let v = sextet(c) else { return false }
            quantum = quantum << 6 | UInt32(v)
            digits += 1
            if digits == 4 {
                for shift in [16, 8, 0] where written < out.count {
                    out[written] = UInt8(truncatingIfNeeded: quantum >> UInt32(shift))
                    written += 1
                }
                quantum = 0
                digits = 0
            }
        }
        if digits > 0 {
            // The last quantum before `=` padding: its missing digits are zero bits. Non-zero
            // leftover bits are ignored, as Foundation does.
            quantum <<= UInt32(6 * (4 - digits))
            for shift in [16, 8, 0] where written < out.count {
                out[written] = UInt8(truncatingIfNeeded: quantum >> UInt32(shift))
                written += 1
            }
        }
        return written == out.count
    }

    /// `bytes` as padded base64 text, with a trailing newline if asked. The caller zeroizes the result.
    static func encode(_ bytes: UnsafeRawBufferPointer, newline: Bool = false) -> [UInt8] {
        let length = (bytes.count + 2) / 3 * 4
        // Allocated once at its final size, so no reallocation leaves a copy behind.
        var out = [UInt8](repeating: 0, count: length + (newline ? 1 : 0))
        var o = 0
        var i = 0
        while i < bytes.count {
            let b0 = UInt32(bytes[i])
            let b1 = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
            let b2 = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
            let quantum = b0 << 16 | b1 << 8 | b2
            out[o] = alphabet[Int(quantum >> 18 & 0x3F)]
            out[o + 1] = alphabet[Int(quantum >> 12 & 0x3F)]
            out[o + 2] = i + 1 < bytes.count ? alphabet[Int(quantum >> 6 & 0x3F)] : padding
            out[o + 3] = i + 2 < bytes.count ? alphabet[Int(quantum & 0x3F)] : padding
            o += 4
            i += 3
        }
        if newline { out[length] = 0x0A }
        return out
    }
}
