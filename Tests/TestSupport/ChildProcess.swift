// Child processes for the tests that need a second OS process (crash consistency, several
// writers on one store). Shared by the SQLite and PostgreSQL test targets.

import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private func sendSignal(_ pid: pid_t, _ signal: Int32) { _ = kill(pid, signal) }

/// How a child process ended.
public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public init(waitStatus s: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are C macros Swift cannot import.
        self = (s & 0x7F) == 0 ? .exited((s >> 8) & 0xFF) : .signaled(s & 0x7F)
    }

    public var description: String {
        switch self {
        case .exited(let c): "exited with status \(c)"
        case .signaled(let s): "killed by signal \(s)"
        }
    }
}

public struct ChildProcessError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// A child process with a line-reading stdout pipe, a stdin pipe and stderr in a file.
///
/// Spawned with posix_spawn rather than Foundation's `Process` so that the pipes are
/// close-on-exec in the parent (they never leak into another test's child, which would keep
/// a pipe open after its owner died) and the exit is reaped by one dedicated thread.
/// Used by one test task at a time.
public final class ChildProcess {
    public let pid: pid_t
    public let stderrPath: String
    private var lines: AsyncStream<String>.Iterator
    private var stdinFD: Int32
    private let exit: Task<ExitStatus, Never>
    private let reaped: Reaped

    private final class Reaped: Sendable {
        let done = Atomic<Bool>(false)
    }

    /// Serialises pipe creation and spawning, so no descriptor of one child can be inherited
    /// by another between `pipe` and `fcntl(FD_CLOEXEC)`.
    private static let spawnLock = Mutex<Void>(())

    /// Starts `executable` (looked up in PATH when it has no slash) with `arguments`.
    public init(_ executable: String, _ arguments: [String], stderrPath: String) throws {
        signal(SIGPIPE, SIG_IGN)  // writing to a dead child's stdin must not kill the test runner
        self.stderrPath = stderrPath
        let (pid, outRead, inWrite) = try ChildProcess.spawnLock.withLock { _ throws -> (pid_t, Int32, Int32) in
            var out: [Int32] = [-1, -1]
            var inp: [Int32] = [-1, -1]
            guard pipe(&out) == 0 else { throw ChildProcessError(description: "pipe failed: errno \(errno)") }
            guard pipe(&inp) == 0 else {
                close(out[0]); close(out[1])
                throw ChildProcessError(description: "pipe failed: errno \(errno)")
            }
            for fd in out + inp { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, inp[0], 0)
            posix_spawn_file_actions_adddup2(&actions, out[1], 1)
            posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
            defer { for p in argv { free(p) } }
            var pid: pid_t = 0
            let rc = executable.contains("/")
                ? posix_spawn(&pid, executable, &actions, nil, argv, environ)
                : posix_spawnp(&pid, executable, &actions, nil, argv, environ)
            close(out[1])
            close(inp[0])
            guard rc == 0 else {
                close(out[0]); close(inp[1])
                throw ChildProcessError(description: "cannot start \(executable): \(String(cString: strerror(rc)))")
            }
            return (pid, out[0], inp[1])
        }
        self.pid = pid
        self.stdinFD = inWrite

        let (stream, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .unbounded)
        lines = stream.makeAsyncIterator()
        Thread {
            // Only complete lines count: the agent writes each line with one write(2).
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(outRead, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR { continue }
                if n <= 0 { break }
                pending += chunk[0..<n]
                var start = 0
                while let nl = pending[start...].firstIndex(of: 10) {
                    continuation.yield(String(decoding: pending[start..<nl], as: UTF8.self))
                    start = nl + 1
                }
                pending.removeFirst(start)
            }
            close(outRead)
            continuation.finish()
        }.start()

        let reaped = Reaped()
        self.reaped = reaped
        exit = Task.detached {
            await withCheckedContinuation { (c: CheckedContinuation<ExitStatus, Never>) in
                Thread {
                    var status: Int32 = 0
                    var r: pid_t
                    repeat { r = waitpid(pid, &status, 0) } while r == -1 && errno == EINTR
                    reaped.done.store(true, ordering: .sequentiallyConsistent)
                    c.resume(returning: r == pid ? ExitStatus(waitStatus: status) : .exited(-1))
                }.start()
            }
        }
    }

    deinit {
        // A failed test may leave its child running: never leave it behind.
        if !reaped.done.load(ordering: .sequentiallyConsistent) { sendSignal(pid, SIGKILL) }
        if stdinFD >= 0 { close(stdinFD) }
    }

    /// The next complete line of stdout, or nil at end of file.
    public func readLine() async -> String? { await lines.next() }

    /// Every remaining line until end of file.
    public func readRemainingLines() async -> [String] {
        var out: [String] = []
        while let l = await readLine() { out.append(l) }
        return out
    }

    /// Writes `line` and a newline to the child's stdin.
    public func writeLine(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
    }

    /// Closes the child's stdin.
    public func closeStdin() {
        if stdinFD >= 0 { close(stdinFD) }
        stdinFD = -1
    }

    /// Sends `signal` unless the child was already reaped.
    public func kill(_ signal: Int32) {
        if !reaped.done.load(ordering: .sequentiallyConsistent) { sendSignal(pid, signal) }
    }

    /// Waits for the child to end.
    public func waitForExit() async -> ExitStatus { await exit.value }

    /// What the child wrote to stderr so far.
    public var stderr: String {
        (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
    }

    /// Runs a command to completion (stdin closed) and returns its stdout; throws with its
    /// stderr unless it exits 0. Its stderr goes to `stderrPath`.
    public static func run(_ executable: String, _ arguments: [String], stderrPath: String) async throws -> String {
        let child = try ChildProcess(executable, arguments, stderrPath: stderrPath)
        child.closeStdin()
        let out = await child.readRemainingLines()
        let status = await child.waitForExit()
        guard status == .exited(0) else {
            throw ChildProcessError(description: "\(executable) \(arguments.prefix(2).joined(separator: " ")) \(status): \(child.stderr)")
        }
        return out.joined(separator: "\n")
    }
}
