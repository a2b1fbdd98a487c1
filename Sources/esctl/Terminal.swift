import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Terminal I/O: messages to stderr, prompts, and reading secrets without echo.
enum Terminal {
    static var stdinIsTTY: Bool { isatty(STDIN_FILENO) == 1 }
    static var stderrIsTTY: Bool { isatty(STDERR_FILENO) == 1 }

    static func info(_ line: String) { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    /// One line on stderr; control characters (say, a newline inside a scope name) are escaped
    /// so a message is always exactly one line.
    static func error(_ line: String) {
        let safe = line.unicodeScalars.map { $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0) }.joined()
        FileHandle.standardError.write(Data(("esctl: " + safe + "\n").utf8))
    }

    /// Reads one line from stdin; with `silent` on a TTY, without echo. Returns the bytes
    /// without the newline; the caller zeroizes them.
    static func readLine(prompt: String?, silent: Bool) -> [UInt8]? {
        if let prompt, stdinIsTTY { FileHandle.standardError.write(Data(prompt.utf8)) }
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
                FileHandle.standardError.write(Data("\n".utf8))
            }
        }
        var bytes: [UInt8] = []
        var c: UInt8 = 0
        while read(STDIN_FILENO, &c, 1) == 1 {
            if c == 0x0A { return bytes }
            bytes.append(c)
        }
        return bytes.isEmpty ? nil : bytes
    }

    /// Reads all of stdin.
    static func readAll() -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        for i in buf.indices { buf[i] = 0 }
        return out
    }
}

/// A progress bar on stderr with rate and ETA, shown only when stderr is a TTY.
final class Progress: Sendable {
    private let label: String
    private let total: Int?
    private let start = Date()
    private let last = Mutex(Date.distantPast)
    private let enabled = Terminal.stderrIsTTY

    init(_ label: String, total: Int?) {
        self.label = label
        self.total = total
    }

    func update(_ done: Int, force: Bool = false) {
        guard enabled else { return }
        let now = Date()
        let due = last.withLock { last -> Bool in
            guard force || now.timeIntervalSince(last) > 0.1 else { return false }
            last = now
            return true
        }
        guard due else { return }
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        var line = "\r\(label) \(done)"
        if let total, total > 0 {
            let frac = min(1, Double(done) / Double(total))
            let width = 24
            let filled = Int(frac * Double(width))
            let eta = rate > 0 ? Double(total - done) / rate : 0
            line = "\r\(label) [" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
                + "] \(done)/\(total) \(Int(frac * 100))%  \(Int(rate))/s  ETA \(Int(eta.rounded()))s"
        } else {
            line += "  \(Int(rate))/s"
        }
        FileHandle.standardError.write(Data((line + "\u{1B}[K").utf8))
    }

    func finish(_ done: Int) {
        guard enabled else { return }
        update(done, force: true)
        FileHandle.standardError.write(Data("\n".utf8))
    }
}

/// Writes JSON to stdout with sorted keys, so `--json` output is stable.
enum JSONOut {
    static func print(_ value: Any) throws {
        let data = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
        FileHandle.standardOutput.write(data)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    static func line(_ value: Any) throws {
        let data = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])
        FileHandle.standardOutput.write(data)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    static func date(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }
}
