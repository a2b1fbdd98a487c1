import Foundation
@testable import KeyManagement
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A master key command (SECURITY.md §5.17) run for real: Tests/Helpers/kek-helper.py, a
/// python3 helper holding its AES-256 key in a temporary file.
@Suite("Master key command")
struct CommandMasterKeyTests {
    /// A helper key in a fresh temporary directory, and a way to start the helper on it.
    struct Helper {
        let dir: URL
        let keyPath: String
        var log: String { dir.appendingPathComponent("requests.log").path }

        init() throws {
            dir = try TestSupport.makeTemporaryDirectory()
            keyPath = dir.appendingPathComponent("helper.key").path
            let key = try LibCryptoRandom.bytes(32)
            try Data(key.base64EncodedString().utf8).write(to: URL(fileURLWithPath: keyPath))
        }

        static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Helpers/kek-helper.py").path

        func start(mode: String = "ok", id: String = "test-helper-key", key: String? = nil,
                   timeout: Duration = .seconds(10), environment: [String]? = nil) throws -> CommandMasterKey {
            try CommandMasterKey(executable: "/usr/bin/python3",
                                 arguments: [Self.script, "--key", key ?? keyPath, "--id", id, "--mode", mode, "--log", log],
                                 timeout: timeout, environment: environment)
        }

        func requests() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        func remove() { TestSupport.removeItem(dir) }
    }

    /// Random bytes for the helper's key file (the test's own RNG: the helper key is not the library's).
    enum LibCryptoRandom {
        static func bytes(_ n: Int) throws -> Data {
            var g = SystemRandomNumberGenerator()
            return Data((0..<n).map { _ in UInt8.random(in: 0...255, using: &g) })
        }
    }

    static func snapshot(_ store: InMemoryKeyStore) async throws -> ([MasterKeyCheck], [WrappedDataKey]) {
        (try await store.masterKeyChecks(), try await store.dataKeys(after: nil, limit: 10_000))
    }

    @Test("A helper key opens a store, wraps data keys, and the same helper key opens it again; its id is stable")
    func roundTrip() async throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start()
        #expect(kek.id.hasPrefix("cmd-") && kek.id.count == 16)
        #expect(kek.helperKeyID == "test-helper-key")
        #expect(kek.kind == "command")
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [kek])
        var created: [DataKey] = []
        for s in ["alice", "bob", "carol"] { created.append(try await KeyringTests.create(s, in: keyring)) }
        let wrapped = try await store.dataKeys(after: nil, limit: 100)
        #expect(wrapped.allSatisfy { $0.kekID == kek.id })
        // The helper process is kept: one start for the id and every wrap.
        #expect(h.requests().filter { $0.hasPrefix("start") }.count == 1)

        let again = try h.start()
        #expect(again.id == kek.id)
        let reopened = try await Keyring.open(store: store, masterKeys: [again])
        for k in created {
            let read = try await reopened.readKey(scope: k.scope, version: k.version)
            #expect(read.material.constantTimeEquals(k.material))
        }
    }

    @Test("Another helper key with the same id, or another id, is the wrong master key; nothing is written")
    func wrongKeyOrWrongID() async throws {
        let h = try Helper()
        defer { h.remove() }
        let store = InMemoryKeyStore()
        let keyring = try await Keyring.open(store: store, masterKeys: [try h.start()])
        try await KeyringTests.create("alice", in: keyring)
        let before = try await Self.snapshot(store)

        // Same id, other key bytes: the check record does not open.
        let other = try Helper()
        defer { other.remove() }
        let impostor = try other.start()
        let e1 = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [impostor]) }
        #expect(e1?.code == .wrongMasterKey)
        // The right key bytes under another id: no check record for it.
        let renamed = try h.start(id: "another-key")
        let e2 = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [renamed]) }
        #expect(e2?.code == .wrongMasterKey)
        let after = try await Self.snapshot(store)
        #expect(after.0 == before.0 && after.1 == before.1)
    }

    @Test("A helper that exits, prints garbage, refuses, answers two lines, floods or hangs: keySourceFailed, nothing written, nothing secret shown",
          arguments: ["exit1", "garbage", "refuse", "twolines", "huge", "hang"])
    func misbehavingHelper(mode: String) async throws {
        let h = try Helper()
        defer { h.remove() }
        let store = InMemoryKeyStore()
        let good = try h.start()
        let keyring = try await Keyring.open(store: store, masterKeys: [good])
        let alice = try await KeyringTests.create("alice", in: keyring)
        let before = try await Self.snapshot(store)

        let bad = try h.start(mode: mode, timeout: .milliseconds(500))
        #expect(bad.id == good.id)
        let clock = ContinuousClock()
        let started = clock.now
        // Opening verifies the check record through the helper: the failure is the helper's, not a wrong key.
        let e1 = await #expect(throws: KeyManagementError.self) { try await Keyring.open(store: store, masterKeys: [bad]) }
        #expect(e1?.code == .keySourceFailed)
        #expect(clock.now - started < .seconds(5))
        let message = e1?.description ?? ""
        #expect(!message.contains("SECRET") && !message.contains("AAAA"))
        let expected = ["exit1": "exited with status 1 before answering", "garbage": "not a flat JSON object",
                        "refuse": "refused the request", "twolines": "more than one line",
                        "huge": "more than 65536 bytes in one line", "hang": "took longer than its timeout"]
        #expect(message.contains("master key command") && message.contains(expected[mode] ?? "?"), "\(message)")
        // Wrapping under it fails the same way, naming the scope; the keyring stays usable afterwards.
        let e2 = #expect(throws: KeyManagementError.self) { try bad.wrap(Array(repeating: 7, count: 32), aad: [1]) }
        #expect(e2?.code == .keySourceFailed)
        // A rotation onto the failing helper changes nothing.
        let e3 = await #expect(throws: KeyManagementError.self) { try await keyring.rotateMasterKey(to: bad) }
        #expect(e3?.code == .keySourceFailed)
        let after = try await Self.snapshot(store)
        #expect(after.0 == before.0 && after.1 == before.1)
        let read = try await Keyring.open(store: store, masterKeys: [good]).readKey(scope: "alice", version: 1)
        #expect(read.material.constantTimeEquals(alice.material))
    }

    @Test("A helper that fails at start or answers no id is refused when it is loaded")
    func badStart() throws {
        let h = try Helper()
        defer { h.remove() }
        let e1 = #expect(throws: KeyManagementError.self) { try h.start(mode: "id-exit") }
        #expect(e1?.code == .keySourceFailed)
        #expect(e1?.message.contains("exited with status 3") == true)
        #expect(e1?.message.contains("SECRET") == false)
        let e2 = #expect(throws: KeyManagementError.self) { try h.start(mode: "id-none") }
        #expect(e2?.code == .keySourceFailed)
        let e3 = #expect(throws: KeyManagementError.self) {
            try CommandMasterKey(executable: h.dir.appendingPathComponent("missing").path)
        }
        #expect(e3?.code == .keySourceUnavailable)
        let e4 = #expect(throws: KeyManagementError.self) { try CommandMasterKey(executable: "python3") }
        #expect(e4?.code == .invalidArgument)
        let e5 = #expect(throws: KeyManagementError.self) { try h.start(id: String(repeating: "x", count: 300)) }
        #expect(e5?.code == .keySourceFailed)
    }

    @Test("A helper that hangs is stopped with everything it started (its process group)")
    func hangingHelperLeavesNothingBehind() throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start(mode: "hang-child", timeout: .milliseconds(500))
        let e = #expect(throws: KeyManagementError.self) { try kek.wrap(Array(repeating: 1, count: 32), aad: [1]) }
        #expect(e?.code == .keySourceFailed)
        let child = try #require(h.requests().first { $0.hasPrefix("child ") }.flatMap { Int32($0.dropFirst(6)) })
        // Killed by the time the call returned; reaped by init soon after.
        var gone = false
        for _ in 0..<100 where !gone {
            gone = kill(child, 0) != 0 || (try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8))?.contains(") Z ") == true
            if !gone { usleep(20_000) }
        }
        #expect(gone, "the helper's child \(child) still runs")
        if !gone { kill(child, SIGKILL) }
    }

    @Test("A helper that died is started again on the next request")
    func restartsAfterFailure() async throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start()
        let sealed = try kek.wrap(Array(repeating: 9, count: 32), aad: [1, 2])
        // Kill the helper behind the key's back.
        let pids = h.requests().filter { $0.hasPrefix("start ") }.compactMap { Int32($0.dropFirst(6)) }
        let pid = try #require(pids.first)
        kill(pid, SIGKILL)
        // The request that finds it dead fails; the next one starts a new helper.
        _ = try? kek.unwrap(sealed, aad: [1, 2])
        let opened = try kek.unwrap(sealed, aad: [1, 2])
        #expect(opened == Array(repeating: 9, count: 32))
        #expect(try kek.unwrap(sealed, aad: [1, 3]) == nil)
    }

    @Test("Wrapped values no helper could have written (empty, longer than the bound) are refused without asking it")
    func outOfBoundsWrapped() throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start()
        #expect(try kek.unwrap([], aad: []) == nil)
        #expect(try kek.unwrap(Array(repeating: 0, count: CommandMasterKey.maxWrappedLength + 1), aad: []) == nil)
    }

    /// Waits up to two seconds for `pid` to be gone (or a zombie awaiting init).
    static func gone(_ pid: Int32) -> Bool {
        for _ in 0..<100 {
            if kill(pid, 0) != 0 || (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.contains(") Z ") == true { return true }
            usleep(20_000)
        }
        return false
    }

    @Test("A helper that exits leaving a hung child is stopped with its child (the group is killed even after the helper exited)")
    func exitedHelperLeavesNothingBehind() throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start(mode: "exit-child", timeout: .seconds(5))
        let e = #expect(throws: KeyManagementError.self) { try kek.wrap(Array(repeating: 1, count: 32), aad: [1]) }
        #expect(e?.code == .keySourceFailed)
        #expect(e?.message.contains("exited with status 1") == true, "\(e?.message ?? "")")
        let child = try #require(h.requests().first { $0.hasPrefix("child ") }.flatMap { Int32($0.dropFirst(6)) })
        let gone = Self.gone(child)
        #expect(gone, "the exited helper's child \(child) still runs")
        if !gone { kill(child, SIGKILL) }
    }

    @Test("A helper whose stderr is closed (it logs elsewhere) is waited for without spinning a core")
    func closedStderrDoesNotSpin() throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start(mode: "close-stderr")
        func threadCPU() -> Double {
            var t = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
        // Each answer takes the helper a second; waiting for it must cost (almost) no CPU.
        let before = threadCPU()
        let sealed = try kek.wrap(Array(repeating: 5, count: 32), aad: [1])
        let opened = try kek.unwrap(sealed, aad: [1])
        let used = threadCPU() - before
        #expect(opened == Array(repeating: 5, count: 32))
        #expect(used < 0.3, "waiting 2 s for the helper used \(used) s of CPU")
    }

    @Test("A helper writing its stderr without end is stopped at its timeout")
    func stderrFloodTimesOut() throws {
        let h = try Helper()
        defer { h.remove() }
        let kek = try h.start(mode: "stderr-flood", timeout: .milliseconds(500))
        let clock = ContinuousClock()
        let started = clock.now
        let e = #expect(throws: KeyManagementError.self) { try kek.wrap(Array(repeating: 1, count: 32), aad: [1]) }
        let took = clock.now - started
        #expect(e?.code == .keySourceFailed)
        #expect(e?.message.contains("took longer than its timeout") == true, "\(e?.message ?? "")")
        #expect(took < .seconds(3), "took \(took)")
    }

    @Test("The helper gets the environment it is given, no blocked signal and SIGHUP at its default, whatever the caller's thread had")
    func helperEnvironmentAndSignals() throws {
        let h = try Helper()
        defer { h.remove() }
        // This thread blocks SIGINT and SIGTERM (as a pool thread may), and the process ignores SIGHUP.
        var block = sigset_t(), previous = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGINT)
        sigaddset(&block, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &block, &previous)
        var ignore = sigaction(), oldHUP = sigaction()
        ignore.__sigaction_handler.sa_handler = SIG_IGN
        sigaction(SIGHUP, &ignore, &oldHUP)
        let started = Result { try h.start(mode: "report", environment: ["TEST_SECRET_GIVEN=1", "LANG=C"]) }
        sigaction(SIGHUP, &oldHUP, nil)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        let kek = try started.get()
        #expect(kek.environment == ["TEST_SECRET_GIVEN=1", "LANG=C"])
        let log = h.requests()
        #expect(log.contains("env TEST_SECRET_GIVEN"), "\(log)")
        let blocked = try #require(log.first { $0.hasPrefix("sigblk ") }.flatMap { UInt64($0.dropFirst(7), radix: 16) })
        let ignored = try #require(log.first { $0.hasPrefix("sigign ") }.flatMap { UInt64($0.dropFirst(7), radix: 16) })
        #expect(blocked == 0, "the helper starts with signals blocked: \(String(blocked, radix: 16))")
        // (Not SIGPIPE: python ignores it itself.)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGALRM, SIGCHLD] {
            #expect(ignored & (1 << UInt64(signal - 1)) == 0, "the helper starts ignoring signal \(signal)")
        }
    }

    @Test("A timeout above one hour is refused (never an overflow); the longest one is accepted")
    func timeoutBounds() throws {
        let h = try Helper()
        defer { h.remove() }
        for timeout in [Duration.seconds(Int64.max), .seconds(3601)] {
            let e = #expect(throws: KeyManagementError.self) { try h.start(timeout: timeout) }
            #expect(e?.code == .invalidArgument)
        }
        let kek = try h.start(timeout: CommandMasterKey.maxTimeout)
        #expect(try kek.unwrap(try kek.wrap([1, 2, 3], aad: []), aad: []) == [1, 2, 3])
    }

    @Test("An answer is zeroed in place: the dictionary's own value buffers, not copies")
    func answersAreWipedInPlace() {
        var answer: [String: [UInt8]] = ["plaintext": Array(repeating: 0xAB, count: 32), "id": Array("x".utf8)]
        let address = answer["plaintext"]?.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
        CommandMasterKey.wipeValues(&answer)
        #expect(answer["plaintext"] == Array(repeating: 0, count: 32))
        #expect(answer["id"] == [0])
        #expect(answer["plaintext"]?.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) } == address)
    }

    @Test("One drain of the helper's stderr reads at most 64 KiB, so a flood cannot hold a call past its deadline")
    func stderrDrainIsBounded() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        var size: Int32 = 1 << 20
        setsockopt(pair[1], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(pair[0], SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        for fd in pair { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let block = [UInt8](repeating: 0x78, count: 4096)
        var written = 0
        while written < 1 << 20 {
            let n = block.withUnsafeBytes { write(pair[1], $0.baseAddress, $0.count) }
            if n <= 0 { break }
            written += n
        }
        try #require(written > 2 * CommandMasterKey.Helper.maxStderrPerDrain)
        // Never stopped (its pid is not a process): only its stderr is used.
        var helper = CommandMasterKey.Helper(pid: -1, socket: -1, stderr: pair[0])
        helper.drainStderr()
        #expect(helper.stderrBytes > 0 && helper.stderrBytes <= CommandMasterKey.Helper.maxStderrPerDrain, "read \(helper.stderrBytes) of \(written)")
        #expect(helper.stderr == pair[0])
    }
}
