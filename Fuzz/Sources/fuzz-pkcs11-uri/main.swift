// Fuzzes the PKCS#11 URI parser (PKCS11URI(parsing:), RFC 7512) with any bytes as text:
// non-UTF-8 input goes in through String(decoding:), as a command line or environment would
// hand it over.
//
// Invariants: nothing traps or hangs; a URI that parses holds no pin-value (the parser
// refuses one); text holding the bytes "pin-value" anywhere never parses; an error's
// description never repeats the value of a pin-value attribute in the input (a value the
// message would show with that value replaced is the message's own text, not a leak).
import Foundation
import FuzzSupport
import KeyManagement

/// The seed corpus: valid URIs as the tests and the documentation write them.
@Sendable func seeds() async throws -> [[UInt8]] {
    [
        "pkcs11:token=My%20Token;object=es-master;id=%01%ff;type=secret-key;serial=42?module-path=/usr/lib/m.so&pin-source=file:///run/pin",
        "pkcs11:token=es-cli;object=es-master?module-path=/usr/lib/softhsm/libsofthsm2.so",
        "pkcs11:token=es-test;object=es-master?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/tmp/es-test/pin",
        "pkcs11:token=shop-prod;object=shop-master?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/shop/keys/token.pin",
        "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;slot-id=0;library-description=x;id=%a0%b1?pin-source=./pin",
    ].map { Array($0.utf8) }
}

let pinValue = Array("pin-value".utf8)

/// Where `needle` occurs in `haystack`, byte for byte.
func occurrences(of needle: [UInt8], in haystack: [UInt8]) -> [Int] {
    guard !needle.isEmpty, haystack.count >= needle.count else { return [] }
    return (0...(haystack.count - needle.count)).filter { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
}

/// The byte ranges of the values of `pin-value=` attributes: up to the next `;`, `&`, `?` or the end.
func pinValueRanges(_ text: [UInt8]) -> [Range<Int>] {
    occurrences(of: pinValue + [UInt8(ascii: "=")], in: text).compactMap { start in
        let from = start + pinValue.count + 1
        let end = text[from...].firstIndex { $0 == UInt8(ascii: ";") || $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: "?") } ?? text.count
        return from < end ? from..<end : nil
    }
}

/// The parse: its error's description and no URI, or "" and the URI.
func failure(_ text: String) -> (description: String, uri: PKCS11URI?) {
    do { return ("", try PKCS11URI(parsing: text)) } catch { return (String(describing: error), nil) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func test(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = String(decoding: Fuzz.bytes(data, size), as: UTF8.self)
    let bytes = Array(text.utf8)  // what the parser sees (invalid UTF-8 became U+FFFD)
    let holdsPinValue = !occurrences(of: pinValue, in: bytes).isEmpty
    let (message, uri) = failure(text)
    if let uri {
        if holdsPinValue { Fuzz.fail("a URI holding 'pin-value' parsed: \(uri)") }
        // Nothing the parsed URI keeps may be a pin-value (it has no field for one; none of
        // its fields may have picked one up either).
        for field in [uri.token, uri.manufacturer, uri.model, uri.serial, uri.object, uri.modulePath, uri.pinSource, uri.description] {
            if let field, field.contains("pin-value") { Fuzz.fail("a parsed URI field holds 'pin-value': \(field)") }
        }
        return 0
    }
    // Every pin-value attribute's value: the message may show it only when it shows the
    // same text with that value overwritten (then it is the message's own wording).
    let messageBytes = Array(message.utf8)
    for range in pinValueRanges(bytes) {
        let value = Array(bytes[range])
        guard !occurrences(of: value, in: messageBytes).isEmpty else { continue }
        let filler = [UInt8(ascii: "Z"), UInt8(ascii: "Q"), UInt8(ascii: "X")].first { !value.contains($0) } ?? UInt8(ascii: "Z")
        var masked = bytes
        masked.replaceSubrange(range, with: repeatElement(filler, count: range.count))
        let (other, _) = failure(String(decoding: masked, as: UTF8.self))
        if occurrences(of: value, in: Array(other.utf8)).isEmpty {
            Fuzz.fail("an error repeats a pin-value (\(value.count) bytes): \(message)")
        }
    }
    return 0
}

Fuzz.main(seeds: seeds, test: test)
