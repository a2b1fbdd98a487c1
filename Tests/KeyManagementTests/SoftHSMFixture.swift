import Foundation
import KeyManagement
#if canImport(Glibc)
import Glibc
#endif

/// SoftHSM2 tokens for the PKCS#11 tests.
///
/// SoftHSM reads its configuration from `SOFTHSM2_CONF` when the module is initialised, and
/// the test process never changes its own environment (another test may be spawning a process
/// meanwhile): scripts/test.sh creates a configuration with a token directory of its own in a
/// temporary directory and exports `SOFTHSM2_CONF`. The tokens themselves are created here,
/// once per test process and before the module is first loaded (SoftHSM lists the tokens of its
/// directory when it is initialised), with labels unique to this process.
///
/// Without `SOFTHSM2_CONF` or the module the PKCS#11 tests are left out with one loud line on
/// stderr; with CI=true they run and fail instead.
enum SoftHSMFixture {
    static let environment = ProcessInfo.processInfo.environment
    static let modulePath = environment["ES_SOFTHSM2_MODULE"] ?? "/usr/lib/softhsm/libsofthsm2.so"
    static let isCI = environment["CI"] == "true"

    static let available: Bool = {
        if isCI { return true }
        let conf = environment["SOFTHSM2_CONF"].map { !$0.isEmpty } ?? false
        if conf, FileManager.default.fileExists(atPath: modulePath) { return true }
        FileHandle.standardError.write(Data("""
            !!! SoftHSM2 \(conf ? "module \(modulePath) is missing" : "is not configured (SOFTHSM2_CONF is not set)"): \
            the PKCS#11 tests are SKIPPED. Run scripts/test.sh (it installs softhsm2 and sets SOFTHSM2_CONF). !!!

            """.utf8))
        return false
    }()

    /// The token every PKCS#11 test shares (keys told apart by label), and one that only the
    /// wrong-PIN test logs in to: a token another session of the process is logged in to
    /// accepts any PIN (CKR_USER_ALREADY_LOGGED_IN: PKCS#11 login state is per application).
    struct Tokens: Sendable {
        let main: String
        let pinTest: String
        let pin = "1234-test-pin"
        let pinFile: String
    }

    static let tokens: Result<Tokens, SoftHSMError> = {
        guard environment["SOFTHSM2_CONF"] != nil else {
            return .failure(SoftHSMError(description: "SOFTHSM2_CONF is not set (scripts/test.sh sets it)"))
        }
        guard FileManager.default.fileExists(atPath: modulePath) else {
            return .failure(SoftHSMError(description: "no SoftHSM2 module at \(modulePath) (apt-get install softhsm2)"))
        }
        let suffix = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let t = Tokens(main: "es-main-\(suffix)", pinTest: "es-pin-\(suffix)",
                       pinFile: FileManager.default.temporaryDirectory.appendingPathComponent("es-pin-\(suffix)").path)
        do {
            for label in [t.main, t.pinTest] {
                try run("softhsm2-util", ["--init-token", "--free", "--label", label, "--pin", t.pin, "--so-pin", "5678-test-so"])
            }
            try Data(t.pin.utf8 + [0x0A]).write(to: URL(fileURLWithPath: t.pinFile))
        } catch let e as SoftHSMError {
            return .failure(e)
        } catch {
            return .failure(SoftHSMError(description: "\(error)"))
        }
        return .success(t)
    }()

    static func require() throws -> Tokens { try tokens.get() }

    /// The URI of `object` on `token`, with the module and the PIN file.
    static func uri(token: String, object: String, pinFile: String? = nil) throws -> String {
        let t = try require()
        return "pkcs11:token=\(token);object=\(object)?module-path=\(modulePath)&pin-source=file:\(pinFile ?? t.pinFile)"
    }

    /// A new AES-256 key `object` on the main token.
    static func newKey(_ object: String) throws -> PKCS11MasterKey {
        let t = try require()
        var pin: [UInt8]? = nil
        return try PKCS11MasterKey.generate(uri: PKCS11URI(parsing: uri(token: t.main, object: object)), pin: &pin)
    }

    /// Runs `tool` (found in PATH) and waits; throws unless it exits 0. Its output goes to /dev/null.
    static func run(_ tool: String, _ arguments: [String]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, tool, &actions, nil, argv, environ)
        guard rc == 0 else { throw SoftHSMError(description: "cannot run \(tool): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        guard status == 0 else { throw SoftHSMError(description: "\(tool) \(arguments.first ?? "") failed (wait status \(status))") }
    }
}

struct SoftHSMError: Error, CustomStringConvertible {
    var description: String
}
