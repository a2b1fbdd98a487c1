import Foundation
import KeyManagement
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
                   timeout: Duration = .seconds(10)) throws -> CommandMasterKey {
            try CommandMasterKey(executable: "/usr/bin/python3",
                                 arguments: [Self.script, "--key", key ?? keyPath, "--id", id, "--mode", mode, "--log", log],
                                 timeout: timeout)
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
}
