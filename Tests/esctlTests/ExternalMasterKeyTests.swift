import ESTestTags
import Foundation
import KeyManagement
import Testing

/// esctl with master keys outside its files: a PKCS#11 token (SoftHSM2, a token of the test's
/// own in its workspace) and a helper command (Tests/Helpers/kek-helper.py), end to end on SQLite.
@Suite("esctl with PKCS#11 and helper master keys", .tags(.multiProcess), .enabled(if: ExternalKeys.available))
struct ExternalMasterKeyTests {
    @Test("rotate-master onto a new token key, then keys list / verify / export with the token alone; the PIN is never on argv nor in output; refusals change no byte")
    func pkcs11EndToEnd() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let hsm = try await ExternalKeys.SoftHSM(ws)
        let uri = hsm.uri(object: "es-master")
        let files = ExternalKeys.storeFiles(ws)

        // Rotation from the key file onto a key created in the token (the PIN from the environment).
        let rotate = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-uri", uri, "--create"], env: hsm.env)
        #expect(rotate.status == 0, "\(rotate.summary)")
        #expect(rotate.stderr.contains("created AES-256 key 'es-master'"), "\(rotate.summary)")
        let tokenArgs = ["--store", ws.storeURL, "--master-key-uri", uri]
        let list = try await ws.esctl(tokenArgs + ["keys", "list", "--json"], env: hsm.env)
        #expect(list.status == 0, "\(list.summary)")
        let kekIDs = Set(list.stdout.components(separatedBy: "\"").filter { $0.hasPrefix("p11-") })
        #expect(kekIDs.count == 1, "every data key is under the token key: \(list.stdout)")
        let verify = try await ws.esctl(tokenArgs + ["verify"], env: hsm.env)
        #expect(verify.status == 0, "\(verify.summary)")
        let export = try await ws.esctl(tokenArgs + ["export", s.subject], env: hsm.env)
        #expect(export.status == 0, "\(export.summary)")
        #expect(export.stdout.contains("Ada Lovelace"), "\(export.stdout.prefix(300))")
        // The PIN from the URI's pin-source works the same.
        let bySource = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri", hsm.uri(object: "es-master", pinSource: true), "keys", "list"],
                                          env: hsm.envWithoutPIN)
        #expect(bySource.status == 0, "\(bySource.summary)")
        for r in [rotate, list, verify, export, bySource] {
            #expect(!r.stdout.contains(hsm.pin) && !r.stderr.contains(hsm.pin))
        }

        // Refusals: each its exit code, no byte of the store changed, no PIN shown.
        let before = files()
        let oldKey = try await ws.esctl(ws.with() + ["keys", "list"], env: hsm.env)
        #expect(oldKey.status == 65, "the retired key file: \(oldKey.summary)")
        let wrongPIN = try await ws.esctl(tokenArgs + ["keys", "rotate", s.subject], env: hsm.env(pin: "0000-wrong"))
        #expect(wrongPIN.status == 71, "\(wrongPIN.summary)")
        #expect(wrongPIN.stderr.contains("PIN for PKCS#11 token 'es-cli' is incorrect"), "\(wrongPIN.summary)")
        #expect(!wrongPIN.stderr.contains("0000-wrong"))
        let missingKey = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri", hsm.uri(object: "nope"), "keys", "list"], env: hsm.env)
        #expect(missingKey.status == 71 && missingKey.stderr.contains("no AES key 'nope'"), "\(missingKey.summary)")
        let unknownToken = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri", hsm.uri(object: "es-master", token: "elsewhere"), "keys", "list"],
                                              env: hsm.env)
        #expect(unknownToken.status == 71 && unknownToken.stderr.contains("no PKCS#11 token 'elsewhere'"), "\(unknownToken.summary)")
        let badModule = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri",
                                            "pkcs11:token=es-cli;object=es-master?module-path=\(ws.path("none.so"))", "keys", "list"], env: hsm.env)
        #expect(badModule.status == 64, "\(badModule.summary)")
        // A PIN on argv is refused before anything runs, and not repeated.
        let onArgv = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri", uri + "&pin-value=4321-typed", "keys", "list"], env: hsm.env)
        #expect(onArgv.status == 64, "\(onArgv.summary)")
        #expect(!onArgv.stderr.contains("4321-typed") && onArgv.stderr.contains("pin-value"), "\(onArgv.summary)")
        let onArgvInline = try await ws.esctl(["--store", ws.storeURL, "--master-key-uri=" + uri + "&pin-value=4321-typed", "keys", "list"], env: hsm.env)
        #expect(onArgvInline.status == 64 && !onArgvInline.stderr.contains("4321-typed"), "\(onArgvInline.summary)")
        #expect(files() == before, "a refused command changed the store")
    }

    @Test("init creates a store under a new token key; rotate-master moves key file → helper command → token → key file; a failing helper exits 71 and changes nothing")
    func helperEndToEnd() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let hsm = try await ExternalKeys.SoftHSM(ws)

        // init with a key created in the token; no key file is written. A second key of that label is refused.
        let other = "sqlite:" + ws.path("other.sqlite")
        let initialised = try await ws.esctl(["--store", other, "init", "--new-master-key-uri", hsm.uri(object: "init-key"), "--json"], env: hsm.env)
        #expect(initialised.status == 0, "\(initialised.summary)")
        #expect(initialised.stdout.contains("pkcs11"), "\(initialised.stdout)")
        let listOther = try await ws.esctl(["--store", other, "--master-key-uri", hsm.uri(object: "init-key"), "keys", "list"], env: hsm.env)
        #expect(listOther.status == 0, "\(listOther.summary)")
        let third = ws.path("third.sqlite")
        let twice = try await ws.esctl(["--store", "sqlite:" + third, "init", "--new-master-key-uri", hsm.uri(object: "init-key")], env: hsm.env)
        #expect(twice.status != 0 && !FileManager.default.fileExists(atPath: third), "\(twice.summary)")
        #expect(!FileManager.default.fileExists(atPath: ws.path("master.key.1")))

        // Key file → helper.
        let helper = try ExternalKeys.helperScript(ws, name: "helper.sh")
        let toHelper = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-command", helper])
        #expect(toHelper.status == 0, "\(toHelper.summary)")
        let helperArgs = ["--store", ws.storeURL, "--master-key-command", helper]
        for args in [["keys", "list"], ["verify"], ["export", s.subject]] {
            let r = try await ws.esctl(helperArgs + args)
            #expect(r.status == 0, "\(args): \(r.summary)")
        }
        let oldFile = try await ws.esctl(ws.with() + ["keys", "list"])
        #expect(oldFile.status == 65, "the key file was retired: \(oldFile.summary)")

        // A helper that fails, prints garbage, floods or hangs: exit 71, nothing changed, nothing of its stderr shown.
        let files = ExternalKeys.storeFiles(ws)
        let before = files()
        for mode in ["exit1", "garbage", "hang", "huge", "refuse"] {
            let bad = try ExternalKeys.helperScript(ws, name: "bad-\(mode).sh", mode: mode)
            let clock = ContinuousClock()
            let start = clock.now
            let r = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", bad, "keys", "rotate", s.subject],
                                       env: [MasterKeyEnv.timeout: "1"])
            #expect(r.status == 71, "\(mode): \(r.summary)")
            #expect(!r.stderr.contains("SECRET"), "\(mode): \(r.summary)")
            #expect(clock.now - start < .seconds(20), "\(mode) took \(clock.now - start)")
        }
        let wrongID = try ExternalKeys.helperScript(ws, name: "other-id.sh", id: "another-key")
        let r = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", wrongID, "keys", "list"])
        #expect(r.status == 65, "\(r.summary)")
        let relative = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", "helper.sh", "keys", "list"])
        #expect(relative.status == 64, "\(relative.summary)")
        let rotateToBad = try await ws.esctl(helperArgs + ["keys", "rotate-master", "--new-master-key-command",
                                                           try ExternalKeys.helperScript(ws, name: "bad-new.sh", mode: "exit1", id: "new-key")],
                                             env: [MasterKeyEnv.timeout: "1"])
        #expect(rotateToBad.status == 71, "\(rotateToBad.summary)")
        #expect(files() == before, "a refused command changed the store")

        // Helper → token → key file.
        let toToken = try await ws.esctl(helperArgs + ["keys", "rotate-master", "--new-master-key-uri", hsm.uri(object: "second"), "--create"],
                                         env: hsm.env)
        #expect(toToken.status == 0, "\(toToken.summary)")
        let tokenArgs = ["--store", ws.storeURL, "--master-key-uri", hsm.uri(object: "second")]
        let back = try await ws.esctl(tokenArgs + ["keys", "rotate-master", "--new-master-key-file", ws.path("final.key"), "--create"], env: hsm.env)
        #expect(back.status == 0, "\(back.summary)")
        let final = try await ws.esctl(ws.with(key: ws.path("final.key")) + ["verify"])
        #expect(final.status == 0, "\(final.summary)")
        let export = try await ws.esctl(ws.with(key: ws.path("final.key")) + ["export", s.subject])
        #expect(export.status == 0 && export.stdout.contains("Ada Lovelace"), "\(export.summary)")
    }
}

extension ExternalMasterKeyTests {
    @Test("The helper command never sees esctl's secrets (ESCTL_MASTER_KEY*, ESCTL_*PIN, PGPASSWORD, ESCTL_STORE); other variables reach it")
    func helperEnvironmentHasNoSecrets() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        _ = try ExternalKeys.helperScript(ws, name: "unused.sh")  // writes the helper's key file
        let log = ws.path("helper.log")
        let script = CLI.packageRoot.appendingPathComponent("Tests/Helpers/kek-helper.py").path
        let helper = ws.path("report.sh")
        try Data("#!/bin/sh\nexec python3 '\(script)' --key '\(ws.path("helper-kek.b64"))' --id env-key --mode report --log '\(log)'\n".utf8)
            .write(to: URL(fileURLWithPath: helper))
        chmod(helper, 0o755)
        let secrets = ["ESCTL_PKCS11_PIN": "1111-pin", "ESCTL_NEW_PKCS11_PIN": "2222-pin", "PGPASSWORD": "pg-secret",
                       "ESCTL_MASTER_KEY_URI_EXTRA": "x", "TEST_SECRET_OK": "1"]
        let rotated = try await ws.esctl(ws.with() + ["keys", "rotate-master", "--new-master-key-command", helper], env: secrets)
        #expect(rotated.status == 0, "\(rotated.summary)")
        var env = secrets
        env["ESCTL_STORE"] = ws.storeURL
        env["ESCTL_MASTER_KEY_COMMAND"] = helper
        env[MasterKeyEnv.timeout] = "5"
        let listed = try await ws.esctl(["keys", "list"], env: env)
        #expect(listed.status == 0, "\(listed.summary)")
        let seen = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("env ") }
        #expect(seen.count >= 2 && seen.allSatisfy { $0 == "env TEST_SECRET_OK" }, "the helper saw \(seen)")
    }

    @Test("ESCTL_MASTER_KEY_COMMAND_TIMEOUT below a millisecond is accepted as one millisecond, not refused as zero")
    func tinyHelperTimeout() async throws {
        let (ws, _, _) = try await CommandTests.seeded()
        let helper = try ExternalKeys.helperScript(ws, name: "slow.sh", mode: "hang")
        let r = try await ws.esctl(["--store", ws.storeURL, "--master-key-command", helper, "keys", "list"],
                                   env: [MasterKeyEnv.timeout: "0.0001"])
        #expect(r.status == 71, "\(r.summary)")
        #expect(r.stderr.contains("took longer than its timeout") && !r.stderr.contains("positive"), "\(r.summary)")
    }
}

enum MasterKeyEnv {
    static let timeout = "ESCTL_MASTER_KEY_COMMAND_TIMEOUT"
}

enum ExternalKeys {
    static let module = ProcessInfo.processInfo.environment["ES_SOFTHSM2_MODULE"] ?? "/usr/lib/softhsm/libsofthsm2.so"
    static let util = "/usr/bin/softhsm2-util"

    static let available: Bool = {
        if ProcessInfo.processInfo.environment["CI"] == "true" { return true }
        if FileManager.default.fileExists(atPath: module), FileManager.default.fileExists(atPath: util) { return true }
        FileHandle.standardError.write(Data(
            "!!! SoftHSM2 is not installed (\(module)): the esctl PKCS#11 tests are SKIPPED. Run scripts/test.sh. !!!\n".utf8))
        return false
    }()

    /// A SoftHSM2 configuration and token directory in the workspace, with one token, es-cli.
    struct SoftHSM {
        let conf: String
        let pin = "2468-cli-pin"
        let pinFile: String

        init(_ ws: Workspace) async throws {
            let dir = ws.dir.appendingPathComponent("softhsm")
            try FileManager.default.createDirectory(at: dir.appendingPathComponent("tokens"), withIntermediateDirectories: true)
            conf = dir.appendingPathComponent("softhsm2.conf").path
            try Data("directories.tokendir = \(dir.path)/tokens\nobjectstore.backend = file\nlog.level = ERROR\n".utf8)
                .write(to: URL(fileURLWithPath: conf))
            pinFile = dir.appendingPathComponent("pin").path
            try Data((pin + "\n").utf8).write(to: URL(fileURLWithPath: pinFile))
            let r = try await CLI.start(URL(fileURLWithPath: ExternalKeys.util),
                                        ["--init-token", "--free", "--label", "es-cli", "--pin", pin, "--so-pin", "1357-cli-so"],
                                        env: CLI.cleanEnvironment(home: ws.dir.path, extra: ["SOFTHSM2_CONF": conf]),
                                        cwd: ws.dir, scratch: ws.dir).wait()
            guard r.status == 0 else { throw SoftHSMSetupError(description: "softhsm2-util --init-token: \(r.summary)") }
        }

        var envWithoutPIN: [String: String] { ["SOFTHSM2_CONF": conf] }
        var env: [String: String] { env(pin: pin) }
        func env(pin: String) -> [String: String] { ["SOFTHSM2_CONF": conf, "ESCTL_PKCS11_PIN": pin] }

        func uri(object: String, token: String = "es-cli", pinSource: Bool = false) -> String {
            "pkcs11:token=\(token);object=\(object)?module-path=\(ExternalKeys.module)" + (pinSource ? "&pin-source=file:\(pinFile)" : "")
        }
    }

    struct SoftHSMSetupError: Error, CustomStringConvertible { var description: String }

    /// A helper command in the workspace: a shell wrapper around Tests/Helpers/kek-helper.py with
    /// a key file of its own (shared by every wrapper of the workspace).
    static func helperScript(_ ws: Workspace, name: String, mode: String = "ok", id: String = "cli-helper-key") throws -> String {
        let key = ws.path("helper-kek.b64")
        if !FileManager.default.fileExists(atPath: key) {
            var g = SystemRandomNumberGenerator()
            let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
            try Data(Data(bytes).base64EncodedString().utf8).write(to: URL(fileURLWithPath: key))
        }
        let script = CLI.packageRoot.appendingPathComponent("Tests/Helpers/kek-helper.py").path
        let path = ws.path(name)
        try Data("#!/bin/sh\nexec python3 '\(script)' --key '\(key)' --id '\(id)' --mode '\(mode)'\n".utf8)
            .write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
        return path
    }

    /// The store's files' bytes (database, -wal, -shm), to compare before and after a refusal.
    static func storeFiles(_ ws: Workspace) -> () -> [Data?] {
        { ["", "-wal", "-shm"].map { ws.bytes(ws.storePath + $0) } }
    }
}
