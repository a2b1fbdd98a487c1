import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Terminal I/O: every line on stderr (messages, errors, log lines, progress) goes through
/// here, so that a progress bar is cleared before a line is written and drawn again after it,
/// and so that no secret given on the command line is ever written back.
enum Terminal {
    static var stdinIsTTY: Bool { isatty(STDIN_FILENO) == 1 }
    static var stderrIsTTY: Bool { isatty(STDERR_FILENO) == 1 }

    private struct State {
        /// The progress bar currently on the last line of stderr, if any.
        var bar: String?
        /// Strings that must never be written to stderr (see ``Secrets``).
        var secrets: [String] = []
    }
    private static let state = Mutex(State())

    /// Registers strings that must never appear on stderr; they are replaced wherever they occur.
    static func neverShow(_ values: [String]) {
        state.withLock { s in
            for v in values where !v.isEmpty && !s.secrets.contains(v) { s.secrets.append(v) }
            // Longest first, so a secret that contains another is replaced whole.
            s.secrets.sort { $0.utf8.count > $1.utf8.count }
        }
    }

    /// `text` with every registered secret replaced.
    static func redact(_ text: String) -> String {
        let secrets = state.withLock { $0.secrets }
        var out = text
        for s in secrets where out.contains(s) {
            out = out.replacingOccurrences(of: s, with: Secrets.placeholder)
        }
        return out
    }

    /// A message line on stderr.
    static func info(_ line: String) { writeLines(line) }

    /// One error line on stderr, prefixed `esctl: `; control characters (say, a newline inside
    /// a scope name) are escaped so a message is always exactly one line.
    static func error(_ line: String) {
        let safe = line.unicodeScalars.map { $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0) }.joined()
        writeLines("esctl: " + safe)
    }

    /// Text that may span several lines (argument errors with their usage), on stderr.
    static func block(_ text: String) { writeLines(text) }

    /// Writes `text` and a newline on stderr, clearing the progress bar first and drawing it
    /// again afterwards, so a line never lands on the bar's line.
    static func writeLines(_ text: String) {
        let safe = redact(text)
        state.withLock { s in
            var out = ""
            if s.bar != nil { out += "\r\u{1B}[K" }
            out += safe + "\n"
            if let bar = s.bar { out += "\r" + bar + "\u{1B}[K" }
            rawWrite(out)
        }
    }

    /// Draws (or redraws) the progress bar on the last line of stderr.
    static func drawBar(_ bar: String) {
        let safe = redact(bar)
        state.withLock { s in
            s.bar = safe
            rawWrite("\r" + safe + "\u{1B}[K")
        }
    }

    /// Ends the progress bar's line: later output starts on a new line.
    static func endBar() {
        state.withLock { s in
            guard s.bar != nil else { return }
            s.bar = nil
            rawWrite("\n")
        }
    }

    private static func rawWrite(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            offset += n
        }
        bytes.removeAll()
    }

    /// Reads one line from stdin; with `silent` on a TTY, without echo. Returns the bytes
    /// without the newline; the caller zeroizes them.
    static func readLine(prompt: String?, silent: Bool) -> [UInt8]? {
        if let prompt, stdinIsTTY { state.withLock { _ in rawWrite(prompt) } }
        var old = termios()
        let hide = silent && stdinIsTTY && tcgetattr(STDIN_FILENO, &old) == 0
        if hide {
            var quiet = old
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
        }
        defer {
            if hide {
                tcsetattr(STDIN_FILENO, TCSAFLUSH, &old)
                state.withLock { _ in rawWrite("\n") }
            }
        }
        var bytes: [UInt8] = []
        var c: UInt8 = 0
        while true {
            let n = read(STDIN_FILENO, &c, 1)
            if n < 0, errno == EINTR { continue }
            guard n == 1 else { break }
            if c == 0x0A { return bytes }
            bytes.append(c)
            // A line longer than any key or passphrase is not one: stop reading.
            if bytes.count > 64 * 1024 { break }
        }
        c = 0
        return bytes.isEmpty ? nil : bytes
    }

    /// Reads all of stdin, up to `limit` bytes (a key is 44 characters; anything much longer is
    /// not a key, and must not make esctl read without end). The caller zeroizes the result.
    static func readAll(limit: Int = 64 * 1024) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count <= limit {
            let n = buf.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        for i in buf.indices { buf[i] = 0 }
        return out
    }
}

/// A log handler that writes lines in swift-log's stream format through ``Terminal``, so a
/// log line never shares the progress bar's line and never shows a secret.
struct TerminalLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        if let error = event.error { all["error.message"] = "\(error)" }
        let pretty = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        Terminal.writeLines("\(Self.timestamp()) \(event.level) \(label):\(pretty) [\(event.source)] \(event.message)")
    }

    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        guard localtime_r(&now, &parts) != nil else { return "<unknown>" }
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A progress bar on stderr with rate and ETA, shown only when stderr is a TTY.
///
/// The count shown never exceeds the total and never goes backwards, and the ETA is never
/// negative, whatever the caller reports (a rotation that scans the keys twice reports more
/// than the total).
final class Progress: Sendable {
    private let label: String
    private let total: Int?
    private let start = Date()
    private struct State {
        var lastDraw = Date.distantPast
        var shown = 0
    }
    private let state = Mutex(State())
    private let enabled: Bool

    init(_ label: String, total: Int?, enabled: Bool = Terminal.stderrIsTTY) {
        self.label = label
        self.total = total
        self.enabled = enabled
    }

    func update(_ done: Int, force: Bool = false) {
        guard enabled else { return }
        let now = Date()
        let shown: Int? = state.withLock { s in
            let value = max(s.shown, Self.clamp(done, total))
            s.shown = value
            guard force || now.timeIntervalSince(s.lastDraw) > 0.1 else { return nil }
            s.lastDraw = now
            return value
        }
        guard let shown else { return }
        Terminal.drawBar(Self.render(label: label, done: shown, total: total, elapsed: now.timeIntervalSince(start)))
    }

    func finish(_ done: Int) {
        guard enabled else { return }
        update(done, force: true)
        Terminal.endBar()
    }

    /// Ends the bar's line without drawing it again (on an error or an interruption).
    func abandon() {
        guard enabled else { return }
        Terminal.endBar()
    }

    private static func clamp(_ done: Int, _ total: Int?) -> Int {
        let d = max(0, done)
        guard let total, total > 0 else { return d }
        return min(d, total)
    }

    /// The bar's text for `done` of `total` after `elapsed` seconds.
    static func render(label: String, done: Int, total: Int?, elapsed: Double) -> String {
        let done = clamp(done, total)
        let rate = Double(done) / max(elapsed, 0.001)
        guard let total, total > 0 else { return "\(label) \(done)  \(Int(rate))/s" }
        let frac = Double(done) / Double(total)
        let width = 24
        let filled = min(width, Int(frac * Double(width)))
        let eta = rate > 0 ? max(0, Double(total - done) / rate) : 0
        return "\(label) [" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
            + "] \(done)/\(total) \(Int(frac * 100))%  \(Int(rate))/s  ETA \(Int(eta.rounded()))s"
    }
}

/// JSON on stdout with sorted keys, so `--json` output is stable.
enum JSONOut {
    private static func encoder(pretty: Bool) -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// One pretty-printed document.
    static func print<T: Encodable>(_ value: T) throws {
        var data = try encoder(pretty: true).encode(value)
        data.append(0x0A)
        FileHandle.standardOutput.write(data)
    }

    /// A pretty-printed object of string members `head` (their keys sorting before
    /// `arrayKey`, as ``print(_:)`` sorts them) and then the array `arrayKey` of `elements`,
    /// written element by element in chunks of about 64 KiB: the memory holds one element's
    /// JSON, not a tree of the whole document. The same JSON as ``print(_:)`` of that object
    /// (`keys list --json` of a million scopes took 3.1 GB that way).
    static func printStreaming<E: Encodable>(head: [(key: String, value: String)], arrayKey: String,
                                             elements: some Sequence<E>) throws {
        let pretty = encoder(pretty: true)
        let compact = encoder(pretty: false)
        let indent: [UInt8] = Array("    ".utf8)
        var out = Data("{\n".utf8)
        for member in head {
            out += Data("  ".utf8) + (try compact.encode(member.key)) + Data(" : ".utf8) + (try compact.encode(member.value))
            out += Data(",\n".utf8)
        }
        out += Data("  ".utf8) + (try compact.encode(arrayKey)) + Data(" : [".utf8)
        var first = true
        for element in elements {
            out += Data((first ? "\n" : ",\n").utf8)
            first = false
            // Each line of the element's own document, indented to its place in the array (an
            // empty line stays empty, as the encoder writes it). Strings escape their newlines,
            // so every 0x0A here ends a line.
            let encoded = try pretty.encode(element)
            encoded.withUnsafeBytes { raw in
                var start = 0
                while start < raw.count {
                    var end = start
                    while end < raw.count, raw[end] != 0x0A { end += 1 }
                    if end < raw.count { end += 1 }   // the line with its newline
                    if raw[start] != 0x0A { out.append(contentsOf: indent) }
                    out.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[start..<end]))
                    start = end
                }
            }
            if out.count > 1 << 16 {
                FileHandle.standardOutput.write(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        out += Data((first ? "\n\n  ]\n}\n" : "\n  ]\n}\n").utf8)
        FileHandle.standardOutput.write(out)
    }

    /// One compact line.
    static func line<T: Encodable>(_ value: T) throws {
        var data = try encoder(pretty: false).encode(value)
        data.append(0x0A)
        FileHandle.standardOutput.write(data)
    }

    /// ISO 8601 in UTC with milliseconds (`2026-11-22T15:18:00.000Z`), without a formatter
    /// object: `keys list` formats several dates per scope, over every scope of the store.
    static func date(_ d: Date) -> String {
        let t = d.timeIntervalSince1970
        // A time read from a row written outside the library can be anything: no conversion
        // below may trap (years 0001 to 9999 only).
        guard t.isFinite, t >= -62_135_596_800, t < 253_402_300_800 else { return "invalid time \(t)" }
        var seconds = t.rounded(.down)
        var millis = Int(((t - seconds) * 1000).rounded(.down))
        if millis >= 1000 { seconds += 1; millis -= 1000 }
        var whole = time_t(seconds)
        var parts = tm()
        guard gmtime_r(&whole, &parts) != nil else { return "\(t)" }
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return pad(parts.tm_year + 1900, 4) + "-" + pad(parts.tm_mon + 1, 2) + "-" + pad(parts.tm_mday, 2)
            + "T" + pad(parts.tm_hour, 2) + ":" + pad(parts.tm_min, 2) + ":" + pad(parts.tm_sec, 2)
            + "." + pad(Int32(millis), 3) + "Z"
    }
}
