import Foundation

/// What counts as a secret on the command line, and how it is kept off stderr.
enum Secrets {
    /// What is written instead of a secret.
    static let placeholder = "<not shown: it may be a secret>"

    /// Whether `value` is a 32-byte key written out: 64 hex digits (optionally `0x`), or base64
    /// (standard or URL-safe alphabet, padded or not) that decodes to 32 bytes.
    static func looksLikeKey(_ value: String) -> Bool {
        var t = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if t.hasPrefix("0x") || t.hasPrefix("0X") { t.removeFirst(2) }
        if t.utf8.count == 64, t.utf8.allSatisfy({ isHexDigit($0) }) { return true }
        var b = Array(t.utf8).map { $0 == UInt8(ascii: "-") ? UInt8(ascii: "+") : $0 == UInt8(ascii: "_") ? UInt8(ascii: "/") : $0 }
        while b.last == UInt8(ascii: "=") { b.removeLast() }
        guard b.count == 43, b.allSatisfy({ isBase64Digit($0) }) else { return false }
        b.append(UInt8(ascii: "="))
        let decoded = Data(base64Encoded: Data(b))
        return decoded?.count == 32
    }

    /// Whether `value` holds control characters or bytes that are not UTF-8 (raw key bytes
    /// given where a path belongs).
    static func isBinary(_ value: String) -> Bool {
        value.unicodeScalars.contains { $0.properties.generalCategory == .control || $0 == "\u{FFFD}" }
    }

    /// Whether the value of a key-file option is evidently a path (and so may be named in
    /// messages): it holds a `/`, or is a file name with an extension and no blank, or exists.
    /// Anything else (a passphrase typed where the path belongs, say) is never shown.
    static func isEvidentlyPath(_ value: String) -> Bool {
        if looksLikeKey(value) || isBinary(value) { return false }
        if value.contains("/") { return true }
        if value.contains("."), !value.contains(where: \.isWhitespace) { return true }
        return FileManager.default.fileExists(atPath: value)
    }

    /// The arguments (or `--option=value` values) that must never be written to stderr:
    /// anything that looks like a key or is binary, a key-file option's value that is not
    /// evidently a path, and whatever follows a key option that does not exist (`--master-key VALUE`).
    static func sensitive(in arguments: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            let (name, inline) = ArgumentScreen.split(a)
            if let inline, looksLikeKey(inline) || isBinary(inline) { out.append(inline) }
            if looksLikeKey(a) || isBinary(a) { out.append(a) }
            let value = inline ?? (i + 1 < arguments.count ? arguments[i + 1] : nil)
            if ArgumentScreen.keyValueOptions.contains(name), let value { out.append(value) }
            if ArgumentScreen.keyFileOptions.contains(name), let value, !isEvidentlyPath(value) { out.append(value) }
            // A pkcs11: URI with a PIN in it: the whole value is never shown.
            if ArgumentScreen.keyURIOptions.contains(name), let value, value.contains("pin-value") { out.append(value) }
            i += 1
        }
        return out
    }

    private static func isHexDigit(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
    }

    private static func isBase64Digit(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2B || c == 0x2F
    }
}

/// Checks the raw arguments before they are parsed, for mistakes whose generic parser error
/// would be unhelpful or would echo a secret.
enum ArgumentScreen {
    /// Options that do not exist but that someone may try in order to give a key directly.
    static let keyValueOptions: Set<String> = ["--master-key", "--new-master-key", "--key", "--master-key-base64", "--master-key-value"]
    /// Options that take a value (so that value is not taken for a command name).
    static let valueOptions: Set<String> = ["--store", "--master-key-file", "--new-master-key-file", "--format", "--output", "--dir",
                                            "--master-key-uri", "--new-master-key-uri", "--master-key-command", "--new-master-key-command",
                                            "--compression-dictionary"]
    /// Options whose value is the path of a key file (or of a master key command: a key typed
    /// there is refused and never shown, the same way).
    static let keyFileOptions: Set<String> = ["--master-key-file", "--new-master-key-file", "--master-key-command", "--new-master-key-command"]
    /// Options whose value is a `pkcs11:` URI.
    static let keyURIOptions: Set<String> = ["--master-key-uri", "--new-master-key-uri"]

    static let commands = ["init", "keys", "verify", "export", "erasures", "encrypt", "stats", "projections", "scrub", "demo", "help"]
    static let keysCommands = ["list", "show", "rotate", "rotate-master", "shred", "reencrypt", "retire", "help"]

    /// `--name=value` as (`--name`, `value`); anything else as (itself, nil).
    static func split(_ argument: String) -> (String, String?) {
        guard argument.hasPrefix("--"), let eq = argument.firstIndex(of: "=") else { return (argument, nil) }
        return (String(argument[..<eq]), String(argument[argument.index(after: eq)...]))
    }

    /// Why these arguments are refused before parsing, or nil.
    static func refusal(_ arguments: [String]) -> CLIError? {
        var positionals: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { positionals += arguments[(i + 1)...]; break }
            guard a.hasPrefix("--") else {
                if a.hasPrefix("-"), Secrets.looksLikeKey(a) {
                    // A URL-safe base64 key can begin with "-": the parser would read it as short
                    // options (one of them perhaps -h). Refuse it without echoing it.
                    return CLIError(exitCode: Exit.usage, message: """
                        an argument looks like a key: esctl never takes a key as an argument (give --master-key-file PATH                         or --master-key-stdin). A scope that begins with "-" goes after "--". The value is not shown
                        """)
                }
                if !a.hasPrefix("-") || a == "-" { positionals.append(a) }
                i += 1
                continue
            }
            let (name, inline) = split(a)
            if keyValueOptions.contains(name) {
                return CLIError(exitCode: Exit.usage, message: """
                    there is no \(name) option: esctl never takes a key as an argument (other local users can read \
                    arguments, and shells keep them in history). Put the key in a file (mode 0600) and pass \
                    --master-key-file PATH, or pipe it to --master-key-stdin, or set ESCTL_MASTER_KEY
                    """)
            }
            if name == "--passphrase" || name == "--master-key-stdin", inline != nil {
                return CLIError(exitCode: Exit.usage, message: """
                    \(name) takes no value: the \(name == "--passphrase" ? "passphrase is asked for (without echo on a terminal) or read as one line of standard input" : "key is read from standard input")
                    """)
            }
            if valueOptions.contains(name) {
                let value = inline ?? (i + 1 < arguments.count ? arguments[i + 1] : nil)
                if inline == nil { i += 1 }
                if let value, let problem = problem(option: name, value: value) { return problem }
            }
            i += 1
        }
        if let first = positionals.first, !commands.contains(first) {
            return unknown(first, among: commands, what: "command", prefix: "esctl ")
        }
        if positionals.first == "keys", positionals.count > 1, !keysCommands.contains(positionals[1]) {
            return unknown(positionals[1], among: keysCommands, what: "keys command", prefix: "esctl keys ")
        }
        return nil
    }

    private static func problem(option: String, value: String) -> CLIError? {
        let keyLike = Secrets.looksLikeKey(value) || Secrets.isBinary(value)
        if keyFileOptions.contains(option), keyLike {
            return CLIError(exitCode: Exit.usage, message: """
                the value given to \(option) looks like a key, not a path: give the path of the key file \
                (or pipe the key to --master-key-stdin). The value is not shown
                """)
        }
        if keyURIOptions.contains(option), value.contains("pin-value") {
            return CLIError(exitCode: Exit.usage, message: """
                the value given to \(option) holds a pin-value: esctl never takes a PIN as an argument (other local users \
                can read arguments, and shells keep them in history). Use pin-source=file:PATH in the URI, or set \
                ESCTL_PKCS11_PIN. The value is not shown
                """)
        }
        if keyURIOptions.contains(option), keyLike {
            return CLIError(exitCode: Exit.usage, message: "the value given to \(option) looks like a key, not a pkcs11: URI. The value is not shown")
        }
        if option == "--store", keyLike {
            return CLIError(exitCode: Exit.usage, message: "the value given to --store looks like a key, not a store URL (sqlite:PATH or postgres://…). The value is not shown")
        }
        return nil
    }

    private static func unknown(_ word: String, among candidates: [String], what: String, prefix: String) -> CLIError {
        let known = candidates.filter { $0 != "help" }
        var message = "unknown \(what) '\(word)'"
        if let best = suggestion(for: word, among: known) {
            message += ": did you mean '\(prefix)\(best)'?"
        } else {
            message += "; the \(what)s are " + known.joined(separator: ", ")
        }
        return CLIError(exitCode: Exit.usage, message: message + " (see '\(prefix)--help')")
    }

    /// The closest candidate: one the word starts (or is the start of), or within two edits.
    static func suggestion(for word: String, among candidates: [String]) -> String? {
        let w = word.lowercased()
        if let prefixed = candidates.first(where: { $0.hasPrefix(w) || w.hasPrefix($0) }), w.count >= 2 { return prefixed }
        let scored = candidates.map { ($0, distance(w, $0)) }.filter { $0.1 <= 2 }.sorted { $0.1 < $1.1 }
        return scored.first?.0
    }

    private static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8.prefix(64)), b = Array(b.utf8.prefix(64))
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var next = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                next[j] = min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            row = next
        }
        return row[b.count]
    }
}
