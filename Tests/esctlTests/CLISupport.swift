import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `esctl` binary (and helper processes) as subprocesses.
///
/// Nothing here prints key material: outputs are scanned for known keys and redacted before
/// they are handed to a test, so a failing expectation never shows a key.
enum CLI {
    /// The exit codes documented in `esctl --help`.
    enum Code {
        static let ok: Int32 = 0
        static let usage: Int32 = 64
        static let wrongMasterKey: Int32 = 65
        static let storeUnavailable: Int32 = 66
        static let verificationFailed: Int32 = 67
        static let scopeNotFound: Int32 = 68
        static let scopeShredded: Int32 = 69
        static let storeLocked: Int32 = 70
    }

    /// The result of one run.
    struct Result: Sendable {
        var status: Int32
        var signalled: Bool
        var stdoutData: Data
        var stderrData: Data
        var seconds: Double

        var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
        var stderr: String { String(decoding: stderrData, as: UTF8.self) }
        /// Non-empty stderr lines.
        var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }
        /// A short description for expectation messages (outputs are already redacted).
        var summary: String { "exit \(status)\(signalled ? " (signal)" : ""); stderr: \(stderr.prefix(600))" }
    }

    // MARK: Locating the binary

    /// Where the built `esctl` is, or why it was not found.
    static let binary: Swift.Result<URL, LocateError> = locate()

    struct LocateError: Error, CustomStringConvertible {
        var tried: [String]
        var description: String {
            "the esctl binary was not found (build it with `swift build --build-tests`); looked at: " + tried.joined(separator: ", ")
        }
    }

    private static func locate() -> Swift.Result<URL, LocateError> {
        // ESCTL_TEST_BINARY runs the suites against another build (say, an older esctl, to see
        // that a regression test fails without its fix).
        if let override = ProcessInfo.processInfo.environment["ESCTL_TEST_BINARY"], !override.isEmpty {
            return FileManager.default.isExecutableFile(atPath: override)
                ? .success(URL(fileURLWithPath: override)) : .failure(LocateError(tried: [override]))
        }
        var candidates: [URL] = []
        // Under `swift test` on Linux, arguments[0] is the test executable
        // `.build/<triple>/debug/<Package>PackageTests.xctest`, a file beside the products.
        // On macOS it may be inside a `.xctest` bundle, or be the `xctest` runner itself.
        let arg0 = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).standardizedFileURL
        candidates.append(arg0.deletingLastPathComponent().appendingPathComponent("esctl"))
        var u = arg0
        while u.path != "/" && !u.path.isEmpty {
            if u.pathExtension == "xctest" {
                candidates.append(u.deletingLastPathComponent().appendingPathComponent("esctl"))
            }
            u = u.deletingLastPathComponent()
        }
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            candidates.append(URL(fileURLWithPath: bundle.bundlePath).deletingLastPathComponent().appendingPathComponent("esctl"))
        }
        // Fall back to the package's own build directory, found from this file's path.
        let root = packageRoot
        candidates.append(root.appendingPathComponent(".build/debug/esctl"))
        for triple in (try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(".build").path)) ?? [] {
            candidates.append(root.appendingPathComponent(".build/\(triple)/debug/esctl"))
        }
        var tried: [String] = []
        for c in candidates where !tried.contains(c.path) {
            tried.append(c.path)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: c.path, isDirectory: &isDir), !isDir.boolValue,
               FileManager.default.isExecutableFile(atPath: c.path) {
                return .success(c)
            }
        }
        return .failure(LocateError(tried: tried))
    }

    /// The package root: three levels above this file (`Tests/esctlTests/CLISupport.swift`).
    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The binary, or a thrown error that fails the test (never a skip).
    static func esctlURL() throws -> URL { try binary.get() }

    // MARK: Environment

    /// A clean environment: no ESCTL_* variable of the test runner leaks in.
    static func cleanEnvironment(home: String, extra: [String: String] = [:]) -> [String: String] {
        let parent = ProcessInfo.processInfo.environment
        var env: [String: String] = [
            "PATH": parent["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
        ]
        for k in ["LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH", "PYENV_ROOT", "PYENV_VERSION"] {
            if let v = parent[k] { env[k] = v }
        }
        for (k, v) in extra { env[k] = v }
        return env
    }

    // MARK: Running

    /// A started subprocess whose end can be awaited.
    final class Running: @unchecked Sendable {
        // @unchecked: `process` is configured before `run()` and only read afterwards;
        // the end-of-process state lives in a Mutex.
        let process: Process
        private struct State {
            var finished = false
            var waiter: CheckedContinuation<Void, Never>?
        }
        private let state = Mutex(State())
        let outURL: URL
        let errURL: URL
        let started = Date()

        init(process: Process, outURL: URL, errURL: URL) {
            self.process = process
            self.outURL = outURL
            self.errURL = errURL
        }

        var pid: Int32 { process.processIdentifier }

        func didTerminate() {
            let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
                s.finished = true
                defer { s.waiter = nil }
                return s.waiter
            }
            w?.resume()
        }

        /// Waits for the process to end and collects its output.
        func wait() async -> Result {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.finished { return true }
                    s.waiter = c
                    return false
                }
                if done { c.resume() }
            }
            let seconds = Date().timeIntervalSince(started)
            let out = (try? Data(contentsOf: outURL)) ?? Data()
            let err = (try? Data(contentsOf: errURL)) ?? Data()
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
            return Result(status: process.terminationStatus, signalled: process.terminationReason == .uncaughtSignal,
                          stdoutData: out, stderrData: err, seconds: seconds)
        }

        /// Sends SIGKILL.
        func kill9() { _ = Glibc.kill(process.processIdentifier, SIGKILL) }
    }

    /// Starts `executable` with `args`; stdout and stderr go to files in `scratch`.
    /// Standard input is `stdin` (from a file, so never a TTY) or /dev/null.
    static func start(_ executable: URL, _ args: [String], stdin: Data? = nil, env: [String: String],
                      cwd: URL, scratch: URL) throws -> Running {
        let tag = UUID().uuidString
        let outURL = scratch.appendingPathComponent(".out-\(tag)")
        let errURL = scratch.appendingPathComponent(".err-\(tag)")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        p.environment = env
        p.currentDirectoryURL = cwd
        let outHandle = try FileHandle(forWritingTo: outURL)
        let errHandle = try FileHandle(forWritingTo: errURL)
        var inHandle: FileHandle?
        var inURL: URL?
        if let stdin {
            let url = scratch.appendingPathComponent(".in-\(tag)")
            _ = FileManager.default.createFile(atPath: url.path, contents: stdin, attributes: [.posixPermissions: 0o600])
            inHandle = try FileHandle(forReadingFrom: url)
            inURL = url
        }
        // The child gets its own copies of the descriptors; the parent's are closed after the spawn.
        defer {
            try? outHandle.close()
            try? errHandle.close()
            try? inHandle?.close()
            if let inURL { try? FileManager.default.removeItem(at: inURL) }
        }
        p.standardOutput = outHandle
        p.standardError = errHandle
        p.standardInput = inHandle ?? FileHandle.nullDevice
        let r = Running(process: p, outURL: outURL, errURL: errURL)
        p.terminationHandler = { _ in r.didTerminate() }
        try p.run()
        return r
    }

    /// Runs argv[1] (esctl) with argv[4...], its stderr on a new pseudo-terminal whose output is
    /// saved to argv[3], its stdout to argv[2]; prints the exit status (negative: the signal).
    static let ptyRunner = """
        import os, pty, subprocess, sys
        exe, out_path, err_path = sys.argv[1], sys.argv[2], sys.argv[3]
        master, slave = pty.openpty()
        with open(out_path, "wb") as out:
            p = subprocess.Popen([exe] + sys.argv[4:], stdin=subprocess.DEVNULL, stdout=out, stderr=slave, close_fds=True)
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        rc = p.wait()
        with open(err_path, "wb") as f:
            f.write(data)
        print(rc)
        """

    /// Runs python3 with `script` and `args`; returns its result.
    static func python(_ script: String, _ args: [String], scratch: URL) async throws -> Result {
        let r = try start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", script] + args,
                          env: cleanEnvironment(home: scratch.path), cwd: scratch, scratch: scratch)
        return await r.wait()
    }
}

/// One test's own directory, store and master keys, and a runner for esctl in it.
///
/// Every run scans stdout and stderr for every master key the workspace knows (raw bytes,
/// base64, hex) and records a failed expectation if one appears; the key is redacted from
/// the returned outputs.
final class Workspace: Sendable {
    let dir: URL
    private let secrets = Mutex<[Data]>([])

    init(_ name: String = #function) throws {
        let safe = name.filter { $0.isLetter || $0.isNumber }.prefix(40)
        dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("esctlTests-\(safe)-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: dir) }

    var storePath: String { dir.appendingPathComponent("store.sqlite").path }
    var storeURL: String { "sqlite:" + storePath }
    var keyPath: String { dir.appendingPathComponent("master.key").path }
    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// The global options that name this workspace's store and a key file.
    func with(key: String? = nil) -> [String] { ["--store", storeURL, "--master-key-file", key ?? keyPath] }

    /// Registers a key (its file content) as a secret that must never appear in any output.
    func learnKey(base64 text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { return }
        var forms = [Data(trimmed.utf8)]
        if let raw = Data(base64Encoded: trimmed) {
            forms.append(raw)
            forms.append(Data(raw.map { String(format: "%02x", $0) }.joined().utf8))
            forms.append(Data(raw.map { String(format: "%02X", $0) }.joined().utf8))
            // The unpadded and URL-safe base64 forms too.
            let noPad = trimmed.replacingOccurrences(of: "=", with: "")
            forms.append(Data(noPad.utf8))
            forms.append(Data(noPad.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").utf8))
        }
        secrets.withLock { known in
            for f in forms where !known.contains(f) { known.append(f) }
        }
    }

    /// Learns every `*.key` file in the workspace, subdirectories included.
    func learnKeyFiles() {
        for name in (try? FileManager.default.subpathsOfDirectory(atPath: dir.path)) ?? [] where name.hasSuffix(".key") {
            if let d = FileManager.default.contents(atPath: path(name)) {
                learnKey(base64: String(decoding: d, as: UTF8.self))
            }
        }
    }

    /// Runs esctl with `args`. `env` is added to a clean environment.
    func esctl(_ args: [String], stdin: Data? = nil, env: [String: String] = [:], cwd: URL? = nil,
               sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLI.Result {
        let running = try start(args, stdin: stdin, env: env, cwd: cwd)
        return await finish(running, args: args, sourceLocation: sourceLocation)
    }

    /// Starts esctl without waiting (for kill tests).
    func start(_ args: [String], stdin: Data? = nil, env: [String: String] = [:], cwd: URL? = nil) throws -> CLI.Running {
        let exe = try CLI.esctlURL()
        return try CLI.start(exe, args, stdin: stdin, env: CLI.cleanEnvironment(home: dir.path, extra: env),
                             cwd: cwd ?? dir, scratch: dir)
    }

    /// Waits for a started run and checks its output for keys.
    func finish(_ running: CLI.Running, args: [String], sourceLocation: SourceLocation = #_sourceLocation) async -> CLI.Result {
        var r = await running.wait()
        learnKeyFiles()
        let known = secrets.withLock { $0 }
        var leaked = false
        for s in known {
            if r.stdoutData.range(of: s) != nil || r.stderrData.range(of: s) != nil {
                leaked = true
                r.stdoutData = Workspace.redact(r.stdoutData, s)
                r.stderrData = Workspace.redact(r.stderrData, s)
            }
        }
        let command = args.filter { !$0.hasPrefix("/") && !$0.hasPrefix("sqlite:") }.joined(separator: " ")
        #expect(!leaked, "a master key appeared in the output of `esctl \(command)`", sourceLocation: sourceLocation)
        return r
    }

    /// Whether `data` holds a key this workspace knows (in any of its forms), or `extra`.
    func leaks(in data: Data, extra: [String] = []) -> Bool {
        learnKeyFiles()
        let known = secrets.withLock { $0 } + extra.map { Data($0.utf8) }
        return known.contains { data.range(of: $0) != nil }
    }

    /// Runs esctl with its standard error on a pseudo-terminal (so progress bars are drawn), its
    /// standard output to a file and its standard input from /dev/null. Keys are checked for
    /// as in ``esctl(_:stdin:env:cwd:sourceLocation:)``.
    func esctlOnTerminal(_ args: [String], env: [String: String] = [:],
                         sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLI.Result {
        let exe = try CLI.esctlURL()
        let tag = UUID().uuidString
        let out = dir.appendingPathComponent(".tty-out-\(tag)").path
        let err = dir.appendingPathComponent(".tty-err-\(tag)").path
        let started = Date()
        let runner = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", CLI.ptyRunner, exe.path, out, err] + args,
                                   env: CLI.cleanEnvironment(home: dir.path, extra: env), cwd: dir, scratch: dir)
        let r = await runner.wait()
        try #require(r.status == 0, "the pty runner failed: \(r.summary)", sourceLocation: sourceLocation)
        let status = Int32(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        var result = CLI.Result(status: status < 0 ? -status : status, signalled: status < 0,
                                stdoutData: (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data(),
                                stderrData: (try? Data(contentsOf: URL(fileURLWithPath: err))) ?? Data(),
                                seconds: Date().timeIntervalSince(started))
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: err)
        let leaked = leaks(in: result.stdoutData) || leaks(in: result.stderrData)
        #expect(!leaked, "a master key appeared in the output of esctl on a terminal", sourceLocation: sourceLocation)
        if leaked {
            result.stdoutData = Data("<withheld: holds a key>".utf8)
            result.stderrData = Data("<withheld: holds a key>".utf8)
        }
        return result
    }

    private static func redact(_ data: Data, _ secret: Data) -> Data {
        var d = data
        while let range = d.range(of: secret) { d.replaceSubrange(range, with: Data("<REDACTED>".utf8)) }
        return d
    }

    /// `esctl init` with a key file beside the store; learns the key.
    @discardableResult
    func initStore(sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLI.Result {
        let r = try await esctl(["--store", storeURL, "init"], sourceLocation: sourceLocation)
        try #require(r.status == 0, "esctl init failed: \(r.summary)", sourceLocation: sourceLocation)
        learnKeyFiles()
        return r
    }

    /// The bytes of a file, or nil if it does not exist.
    func bytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

    /// The content of the store's key file (base64 text), for passing by env or stdin.
    func keyText(_ path: String? = nil) throws -> String {
        let d = try #require(bytes(path ?? keyPath))
        return String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Parses JSON output; records a failure (without printing the output) if it does not parse.
func parseJSON(_ r: CLI.Result, sourceLocation: SourceLocation = #_sourceLocation) throws -> Any {
    do {
        return try JSONSerialization.jsonObject(with: r.stdoutData, options: [.fragmentsAllowed])
    } catch {
        Issue.record("stdout is not JSON: \(r.stdout.prefix(400))", sourceLocation: sourceLocation)
        throw error
    }
}

func parseJSONObject(_ r: CLI.Result, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
    let any = try parseJSON(r, sourceLocation: sourceLocation)
    return try #require(any as? [String: Any], "stdout is not a JSON object", sourceLocation: sourceLocation)
}

/// Whether `s` is an ISO 8601 date-time as esctl writes them.
func isISODate(_ value: Any?) -> Bool {
    guard let s = value as? String else { return false }
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    if f.date(from: s) != nil { return true }
    f.formatOptions = [.withInternetDateTime]
    return f.date(from: s) != nil
}
