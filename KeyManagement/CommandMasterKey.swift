import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A master key held by an external program (a "helper"), in the spirit of git's credential
/// helpers: Vault transit, a cloud KMS or a company tool plugs in without a new dependency.
///
/// The helper is started once (with `posix_spawn`, no shell) and kept for the life of this
/// value; it speaks one JSON object per line over its standard input and output (the protocol
/// is in SECURITY.md §5.17):
///
/// ```
/// → {"v":1,"op":"id"}                                        ← {"id":"vault:transit/keys/es"}
/// → {"v":1,"op":"wrap","aad":"<b64>","plaintext":"<b64>"}    ← {"ciphertext":"<b64>"}
/// → {"v":1,"op":"unwrap","aad":"<b64>","ciphertext":"<b64>"} ← {"plaintext":"<b64>"}
///                                                             ← {"error":"authentication"}
/// ```
///
/// Every answer is bounded in time (``timeout``) and size (``maxResponseLength``). A helper
/// that exits, answers garbage, answers too much, or does not answer in time is stopped
/// (SIGKILL) and the call throws ``KeyManagementError/Code/keySourceFailed``; the next
/// call starts it again. What the helper writes to standard error is read (so it never blocks)
/// and counted, but never shown: it may hold secrets.
///
/// The ``id`` is `cmd-` and 12 hex digits of SHA-256 over the id the helper reports, so the
/// same helper key (a Vault key name, a KMS key ARN) always has the same id.
public final class CommandMasterKey: KeyEncryptionKey, @unchecked Sendable {
    // @unchecked: every mutable field is inside `process`, a Mutex.

    /// The stable id (`cmd-` + 12 hex digits: 16 characters, like a local key's).
    public let id: String
    /// The id the helper reported (not secret: a key name).
    public let helperKeyID: String
    /// The helper's path.
    public let executable: String
    /// The arguments passed to it.
    public let arguments: [String]
    /// How long one answer may take.
    public let timeout: Duration
    /// The helper's environment (`NAME=value` strings); `nil`: this process's own.
    public let environment: [String]?
    /// The longest ``timeout`` accepted: one hour.
    public static let maxTimeout = Duration.seconds(3600)
    public var kind: String { "command" }

    /// The longest answer line accepted, in bytes (newline excluded).
    public static let maxResponseLength = 65_536
    /// The longest wrapped key accepted from, or passed to, a helper, in bytes.
    public static let maxWrappedLength = 8_192
    /// The longest helper key id accepted, in bytes.
    public static let maxHelperIDLength = 256
    /// The most bytes of the helper's standard error kept (the rest is counted only).
    static let maxStderrKept = 4_096

    private let process = Mutex<Helper?>(nil)

    /// Starts `executable` and asks it for its key id.
    /// - Parameters:
    ///   - executable: the helper's path (run directly, never through a shell; no PATH search
    ///     unless it holds no `/`, then it is refused).
    ///   - arguments: its arguments (do not put secrets here: other users can read them).
    ///   - timeout: how long each answer may take (default 10 seconds, at most one hour).
    ///   - environment: the helper's environment as `NAME=value` strings; `nil` (the default)
    ///     passes this process's own. Leave out what the helper must not see (passwords, PINs,
    ///     other master keys).
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` if `executable` cannot be run;
    ///   ``KeyManagementError/Code/keySourceFailed`` if it cannot be started or
    ///   does not answer `id` properly; ``KeyManagementError/Code/invalidArgument`` for an
    ///   executable path without `/`, or a timeout that is not positive or above one hour.
    public init(executable: String, arguments: [String] = [], timeout: Duration = .seconds(10),
                environment: [String]? = nil) throws(KeyManagementError) {
        guard executable.contains("/") else {
            throw KeyManagementError(.invalidArgument,
                "the master key command must be a path (with a '/', e.g. ./helper or /usr/local/bin/helper); no PATH search and no shell")
        }
        guard timeout > .zero, timeout <= Self.maxTimeout else {
            throw KeyManagementError(.invalidArgument, "the master key command's timeout must be positive and at most one hour")
        }
        self.executable = executable
        self.arguments = arguments
        self.timeout = timeout
        self.environment = environment
        let label = "master key command \(executable)"
        var helper = try Helper.start(executable, arguments, environment: environment, label: label)
        let answer: [String: [UInt8]]
        do {
            answer = try helper.request(Array(#"{"v":1,"op":"id"}"#.utf8) + [0x0A], timeout: timeout, label: label)
        } catch {
            helper.stop()
            throw error
        }
        guard let raw = answer["id"], !raw.isEmpty, raw.count <= Self.maxHelperIDLength,
              let text = String(validating: raw, as: UTF8.self),
              !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            helper.stop()
            throw KeyManagementError(.keySourceFailed,
                "\(label) answered the id request without a usable \"id\" (1 to \(Self.maxHelperIDLength) bytes of UTF-8 text without control characters)")
        }
        helperKeyID = text
        id = KeyEncryptionKeyID.derive(prefix: "cmd-", domain: "eventsourcing.kek-id.command.v1", parts: [raw])
        process.withLock { $0 = helper }
    }

    deinit {
        process.withLock { p in
            p?.stop()
            p = nil
        }
    }

    public var description: String { "CommandMasterKey(id: \(id), helper key: \(helperKeyID))" }

    public func wrap(_ plaintext: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        var request = Self.request(op: "wrap", aad: aad, field: "plaintext", value: plaintext)
        defer { LibCrypto.cleanse(&request) }
        var answer = try call(request)
        defer { Self.cleanse(&answer) }
        guard let wrapped = answer["ciphertext"].flatMap(Self.decode), !wrapped.isEmpty,
              wrapped.count <= Self.maxWrappedLength else {
            throw KeyManagementError(.keySourceFailed,
                "master key command \(executable) answered a wrap request without a usable \"ciphertext\" (base64 of 1 to \(Self.maxWrappedLength) bytes)")
        }
        return wrapped
    }

    public func unwrap(_ wrapped: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8]? {
        // A stored value longer than any helper answer was never written by one.
        guard !wrapped.isEmpty, wrapped.count <= Self.maxWrappedLength else { return nil }
        let request = Self.request(op: "unwrap", aad: aad, field: "ciphertext", value: wrapped)
        var answer = try call(request)
        defer { Self.cleanse(&answer) }
        if answer["error"].map({ $0 == Array("authentication".utf8) }) == true { return nil }
        guard let field = answer["plaintext"], let plain = Self.decode(field) else {
            throw KeyManagementError(.keySourceFailed,
                "master key command \(executable) answered an unwrap request without a usable \"plaintext\" (base64)")
        }
        return plain
    }

    /// Sends one request and reads one answer; on any failure the helper is stopped (the next
    /// call starts it again). An `{"error": …}` answer other than `authentication` is a refusal.
    private func call(_ request: [UInt8]) throws(KeyManagementError) -> [String: [UInt8]] {
        let label = "master key command \(executable)"
        return try process.withLock { (p) throws(KeyManagementError) -> [String: [UInt8]] in
            var helper: Helper
            if let running = p { helper = running } else { helper = try Helper.start(executable, arguments, environment: environment, label: label) }
            var answer: [String: [UInt8]]
            do throws(KeyManagementError) {
                answer = try helper.request(request, timeout: timeout, label: label)
                p = helper
            } catch {
                helper.stop()
                p = nil
                throw error
            }
            if let error = answer["error"], error != Array("authentication".utf8) {
                Self.cleanse(&answer)
                throw KeyManagementError(.keySourceFailed,
                    "\(label) refused the request (its \"error\" answer is not shown: it may hold secrets; see the helper's own logs)")
            }
            return answer
        }
    }

    /// `{"v":1,"op":OP,"aad":B64,FIELD:B64}` and a newline, built in one buffer the caller cleanses.
    static func request(op: String, aad: [UInt8], field: String, value: [UInt8]) -> [UInt8] {
        // Sized once: growing would leave copies of the key's base64 in freed memory.
        var out: [UInt8] = []
        out.reserveCapacity(64 + op.utf8.count + field.utf8.count + (aad.count + 2) / 3 * 4 + (value.count + 2) / 3 * 4)
        out += Array(#"{"v":1,"op":""#.utf8) + Array(op.utf8) + Array(#"","aad":""#.utf8)
        out += aad.withUnsafeBytes { Base64.encode($0) }
        out += Array("\",\"\(field)\":\"".utf8)
        var encoded = value.withUnsafeBytes { Base64.encode($0) }
        out += encoded
        LibCrypto.cleanse(&encoded)
        out += Array("\"}\n".utf8)
        return out
    }

    static func decode(_ text: [UInt8]) -> [UInt8]? {
        text.withUnsafeBytes { t -> [UInt8]? in
            guard let count = Base64.decodedCount(t), count <= maxWrappedLength else { return nil }
            var out = [UInt8](repeating: 0, count: count)
            let ok = out.withUnsafeMutableBytes { Base64.decode(t, into: $0) }
            if !ok { LibCrypto.cleanse(&out); return nil }
            return out
        }
    }

    static func cleanse(_ answer: inout [String: [UInt8]]) {
        wipeValues(&answer)
        answer = [:]
    }

    /// Zeroes every value of `answer` in place (its own buffers, not copies).
    static func wipeValues(_ answer: inout [String: [UInt8]]) {
        // By index, holding no second reference to the storage (`values.indices` would, and
        // the mutation would then wipe copies).
        var i = answer.startIndex
        while i != answer.endIndex {
            answer.values[i].withUnsafeMutableBytes { LibCrypto.cleanse($0) }
            answer.formIndex(after: &i)
        }
    }

    // MARK: The helper process

    struct Helper {
        let pid: pid_t
        /// Our end of the socket that is the helper's stdin and stdout.
        let socket: Int32
        /// The read end of its stderr pipe; -1 once the helper closed its end.
        var stderr: Int32
        var stderrBytes = 0
        /// Whether it was reaped.
        var stopped = false

        static func start(_ executable: String, _ arguments: [String], environment: [String]?,
                          label: String) throws(KeyManagementError) -> Helper {
            guard access(executable, X_OK) == 0 else {
                throw KeyManagementError(.keySourceUnavailable, "cannot run \(label): \(String(cString: strerror(errno)))")
            }
            var pair: [Int32] = [-1, -1]
            // A socket rather than pipes: writing to a helper that died fails with EPIPE
            // (MSG_NOSIGNAL) instead of raising SIGPIPE in this process.
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                throw KeyManagementError(.keySourceFailed, "cannot start \(label): socketpair: \(String(cString: strerror(errno)))")
            }
            var err: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &err) == 0 else {
                close(pair[0]); close(pair[1])
                throw KeyManagementError(.keySourceFailed, "cannot start \(label): pipe: \(String(cString: strerror(errno)))")
            }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, pair[1], 0)
            posix_spawn_file_actions_adddup2(&actions, pair[1], 1)
            posix_spawn_file_actions_adddup2(&actions, err[1], 2)
            // Nothing else of this process (store files, sockets, other helpers) reaches the helper.
            if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
            let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
            defer { for p in argv { free(p) } }
            let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
            defer { if let envp { for p in envp { free(p) } } }
            // Its own process group, so that stopping it also stops what it started (a shell
            // script's `curl`, say): a hung helper leaves nothing behind.
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            // No signal blocked and the usual ones at their defaults, whatever the spawning thread
            // (a pool thread, a process that ignores SIGINT) had: a helper must be stoppable.
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
            posix_spawnattr_setpgroup(&attributes, 0)
            var none = sigset_t()
            sigemptyset(&none)
            posix_spawnattr_setsigmask(&attributes, &none)
            var defaults = sigset_t()
            sigemptyset(&defaults)
            for signal in [SIGINT, SIGTERM, SIGPIPE, SIGALRM, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            var pid: pid_t = 0
            let rc = envp.map { e in e.withUnsafeBufferPointer { posix_spawn(&pid, executable, &actions, &attributes, argv, UnsafeMutablePointer(mutating: $0.baseAddress)) } }
                ?? posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
            close(pair[1])
            close(err[1])
            guard rc == 0 else {
                close(pair[0]); close(err[0])
                throw KeyManagementError(.keySourceFailed, "cannot start \(label): \(String(cString: strerror(rc)))")
            }
            _ = fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(err[0], F_SETFL, fcntl(err[0], F_GETFL) | O_NONBLOCK)
            return Helper(pid: pid, socket: pair[0], stderr: err[0])
        }

        /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), looked up at run
        /// time (Swift's Glibc module does not declare it). Without it the helper inherits only
        /// descriptors not marked close-on-exec; the library opens every descriptor with it.
        static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32)? = {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
            return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32).self)
        }()

        /// Writes `line`, reads one answer line within `timeout`, and parses it.
        mutating func request(_ line: [UInt8], timeout: Duration, label: String) throws(KeyManagementError) -> [String: [UInt8]] {
            let deadline = ContinuousClock.now + min(timeout, CommandMasterKey.maxTimeout)
            var sent = 0
            while sent < line.count {
                let n = line.withUnsafeBytes { b -> Int in
                    guard let base = b.baseAddress else { return 0 }
                    return send(socket, base + sent, b.count - sent, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                }
                if n > 0 { sent += n; continue }
                if n < 0, errno == EINTR { continue }
                if n < 0, errno == EAGAIN || errno == EWOULDBLOCK {
                    try wait(for: Int16(POLLOUT), until: deadline, label: label, phase: "to read the request")
                    continue
                }
                throw died(label, "while the request was written")
            }
            // Sized once for the longest answer and one more chunk: growing it would leave copies
            // of key bytes in freed memory.
            var answer: [UInt8] = []
            answer.reserveCapacity(CommandMasterKey.maxResponseLength + 16_384 + 2)
            defer { answer.withUnsafeMutableBytes { LibCrypto.cleanse($0) } }
            var chunk = [UInt8](repeating: 0, count: 16_384)
            defer { LibCrypto.cleanse(&chunk) }
            while true {
                if let nl = answer.firstIndex(of: 0x0A) {
                    guard nl == answer.count - 1 else {
                        throw KeyManagementError(.keySourceFailed, "\(label) answered more than one line to one request")
                    }
                    answer.removeLast()
                    guard let parsed = FlatJSON.parse(answer) else {
                        throw KeyManagementError(.keySourceFailed,
                            "\(label) answered a line that is not a flat JSON object of strings (not shown: it may hold secrets)")
                    }
                    return parsed
                }
                let n = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n > 0 {
                    answer.append(contentsOf: chunk[0..<n])
                    guard answer.count <= CommandMasterKey.maxResponseLength + 1 else {
                        throw KeyManagementError(.keySourceFailed,
                            "\(label) answered more than \(CommandMasterKey.maxResponseLength) bytes in one line; it was stopped")
                    }
                    continue
                }
                if n == 0 { throw died(label, "before answering") }
                if errno == EINTR { continue }
                guard errno == EAGAIN || errno == EWOULDBLOCK else { throw died(label, "before answering") }
                try wait(for: Int16(POLLIN), until: deadline, label: label, phase: "to answer")
            }
        }

        /// Polls the socket for `events` (draining stderr meanwhile) until `deadline`.
        private mutating func wait(for events: Int16, until deadline: ContinuousClock.Instant,
                                   label: String, phase: String) throws(KeyManagementError) {
            while true {
                let left = deadline - ContinuousClock.now
                guard left > .zero else {
                    throw KeyManagementError(.keySourceFailed,
                        "\(label) took longer than its timeout \(phase); it was stopped")
                }
                let seconds = min(left.components.seconds, 3600)
                let ms = Int32(clamping: max(1, seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
                var fds = [pollfd(fd: socket, events: events, revents: 0), pollfd(fd: stderr, events: Int16(POLLIN), revents: 0)]
                let r = poll(&fds, stderr >= 0 ? 2 : 1, ms)
                if r < 0, errno != EINTR { throw died(label, "while waiting") }
                if stderr >= 0, fds[1].revents != 0 {
                    if fds[1].revents & Int16(POLLIN) != 0 {
                        drainStderr()
                    } else {
                        // Its stderr closed (a helper that logs elsewhere): poll the socket alone.
                        closeStderr()
                    }
                }
                if fds[0].revents & (events | Int16(POLLHUP) | Int16(POLLERR)) != 0 { return }
            }
        }

        /// The most bytes of stderr read per drain, so that a helper writing it without end
        /// cannot hold a call past its deadline.
        static let maxStderrPerDrain = 65_536

        /// Reads what the helper wrote to stderr (up to ``maxStderrPerDrain``), keeping none of
        /// it (only the count); at its end, closes it.
        mutating func drainStderr() {
            guard stderr >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 4096)
            defer { LibCrypto.cleanse(&buffer) }
            var read = 0
            while read < Self.maxStderrPerDrain {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(stderr, $0.baseAddress, $0.count) }
                if n > 0 { stderrBytes &+= n; read += n; continue }
                if n < 0, errno == EINTR { continue }
                if n == 0 { closeStderr() }
                break
            }
        }

        private mutating func closeStderr() {
            if stderr >= 0 { close(stderr) }
            stderr = -1
        }

        /// Whether the helper exited, without reaping it: while it is unreaped its pid, and so
        /// its process group id, cannot be reused, and the group can still be killed.
        private func exitStatus() -> siginfo_t? {
            var info = siginfo_t()
            while true {
                if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 {
                    return info._sifields._sigchld.si_pid == pid ? info : nil
                }
                if errno != EINTR { return nil }
            }
        }

        /// The error for a helper that stopped answering: its exit status if it exited.
        private mutating func died(_ label: String, _ when: String) -> KeyManagementError {
            drainStderr()
            var status: Int32 = 0
            var how = "closed its output"
            // It closed its output: it is exiting. Up to a second for its status.
            for _ in 0..<250 {
                if let info = exitStatus() {
                    status = info._sifields._sigchld.si_status
                    how = info.si_code == CLD_EXITED ? "exited with status \(status)" : "was killed by signal \(status)"
                    break
                }
                usleep(4_000)
            }
            let err = stderrBytes > 0 ? " (it wrote \(stderrBytes) bytes to standard error, not shown: they may hold secrets)" : ""
            return KeyManagementError(.keySourceFailed, "\(label) \(how) \(when)\(err)")
        }

        /// Closes its input (a helper ends at end of file), waits briefly for it to exit, then
        /// kills its whole process group (what it started, even if it exited itself) and reaps it.
        mutating func stop() {
            close(socket)
            closeStderr()
            guard !stopped else { return }
            stopped = true
            for _ in 0..<25 {
                if exitStatus() != nil { break }
                usleep(2_000)
            }
            // Not reaped yet, so the group id is still this helper's.
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        }
    }
}

/// A parser for one flat JSON object whose values are strings (others are skipped), over bytes
/// the caller cleanses: the answers of a master key command hold key bytes, which must not
/// land in `String`s nobody can zeroize.
enum FlatJSON {
    static func parse(_ text: [UInt8]) -> [String: [UInt8]]? {
        var i = 0
        func skip() { while i < text.count, [0x20, 0x09, 0x0D, 0x0A].contains(text[i]) { i += 1 } }
        func string() -> [UInt8]? {
            guard i < text.count, text[i] == 0x22 else { return nil }
            i += 1
            // Sized once: growing would leave copies of key bytes in freed memory.
            var out: [UInt8] = []
            out.reserveCapacity(text.count - i)
            while i < text.count {
                let c = text[i]
                i += 1
                if c == 0x22 { return out }
                if c < 0x20 { return nil }
                if c == 0x5C {
                    guard i < text.count else { return nil }
                    let e = text[i]
                    i += 1
                    switch e {
                    case 0x22, 0x5C, 0x2F: out.append(e)
                    case 0x6E: out.append(0x0A)
                    case 0x74: out.append(0x09)
                    case 0x72: out.append(0x0D)
                    case 0x62: out.append(0x08)
                    case 0x66: out.append(0x0C)
                    default: return nil  // \u escapes: not needed by any answer of the protocol
                    }
                } else {
                    out.append(c)
                }
            }
            return nil
        }
        func scalar() -> Bool {
            // A number, true, false or null: skipped.
            let start = i
            while i < text.count, !([0x2C, 0x7D, 0x20, 0x09, 0x0D, 0x0A] as [UInt8]).contains(text[i]) {
                let c = text[i]
                guard (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2B || c == 0x2E || c == 0x45 else { return false }
                i += 1
            }
            return i > start
        }
        skip()
        guard i < text.count, text[i] == 0x7B else { return nil }
        i += 1
        var out: [String: [UInt8]] = [:]
        skip()
        if i < text.count, text[i] == 0x7D {
            i += 1
        } else {
            while true {
                skip()
                guard let keyBytes = string(), let key = String(validating: keyBytes, as: UTF8.self) else { return nil }
                skip()
                guard i < text.count, text[i] == 0x3A else { return nil }
                i += 1
                skip()
                if i < text.count, text[i] == 0x22 {
                    guard let value = string() else { return nil }
                    guard out[key] == nil else { return nil }
                    out[key] = value
                } else if !scalar() {
                    return nil
                }
                skip()
                guard i < text.count else { return nil }
                if text[i] == 0x2C { i += 1; continue }
                if text[i] == 0x7D { i += 1; break }
                return nil
            }
        }
        skip()
        return i == text.count ? out : nil
    }
}
