import Foundation
import KeyManagement

/// Master keys that live outside esctl's files: a PKCS#11 token (`--master-key-uri`) and a
/// helper command (`--master-key-command`), and their environment equivalents.
enum MasterKeySources {
    /// The PIN of a `pkcs11:` URI without `pin-source`.
    static let pinVariable = "ESCTL_PKCS11_PIN"
    /// Seconds a helper command may take per answer (default 10).
    static let timeoutVariable = "ESCTL_MASTER_KEY_COMMAND_TIMEOUT"

    /// The key in the token `uri` names; with `create`, a missing key is created in the token first.
    /// The PIN comes from the URI's pin-source, else from `pinVariables` (the first set).
    static func pkcs11(_ uri: String, environment: [String: String], pinVariables: [String] = [pinVariable],
                       create: Bool = false) throws -> PKCS11MasterKey {
        let parsed = try PKCS11URI(parsing: uri)
        var pinText: String?
        if parsed.pinSource == nil {
            pinText = pinVariables.lazy.compactMap { environment[$0] }.first { !$0.isEmpty }
        }
        var given: [UInt8]? = pinText.map { Array($0.utf8) }
        let loaded: Result<PKCS11MasterKey, KeyManagementError> = Result { () throws(KeyManagementError) in
            try PKCS11MasterKey(uri: parsed, pin: &given)
        }
        switch loaded {
        case .success(let key):
            return key
        case .failure(let error):
            guard create, error.code == .keySourceFailed, error.message.contains("has no AES key") else { throw error }
            var again: [UInt8]? = pinText.map { Array($0.utf8) }
            let key = try PKCS11MasterKey.generate(uri: parsed, pin: &again)
            Terminal.info("created AES-256 key '\(key.label)' in PKCS#11 token '\(key.tokenLabel)' (not extractable): master key \(key.id)")
            return key
        }
    }

    /// The helper command at `path`, started and asked for its key id.
    static func command(_ path: String, environment: [String: String]) throws -> CommandMasterKey {
        var timeout = Duration.seconds(10)
        if let text = environment[timeoutVariable], !text.isEmpty {
            guard let seconds = Double(text), seconds > 0, seconds <= 3600 else {
                throw CLIError(exitCode: Exit.usage, message: "\(timeoutVariable) must be a number of seconds between 0 and 3600, got \(text)")
            }
            // At least a millisecond: 0.0001 is accepted above, so it must not round to nothing.
            timeout = .milliseconds(max(1, Int64(seconds * 1000)))
        }
        return try CommandMasterKey(executable: path, timeout: timeout, environment: helperEnvironment(environment))
    }

    /// The helper's environment: esctl's own without its secrets - master keys
    /// (ESCTL_MASTER_KEY*), PINs (ESCTL_*PIN), PGPASSWORD and ESCTL_STORE (a URL may hold a
    /// database password). SECURITY.md §5.17.
    static func helperEnvironment(_ environment: [String: String]) -> [String] {
        environment.filter { name, _ in
            !(name.hasPrefix("ESCTL_MASTER_KEY") || (name.hasPrefix("ESCTL_") && name.hasSuffix("PIN"))
              || name == "PGPASSWORD" || name == "ESCTL_STORE")
        }.map { "\($0.key)=\($0.value)" }.sorted()
    }

    /// How the user names a key source in a message (for "run the same command again").
    static func argument(file: String?, uri: String?, command: String?, prefix: String) -> String {
        if let file { return "--\(prefix)master-key-file \(file)" }
        if let uri { return "--\(prefix)master-key-uri '\(uri)'" }
        if let command { return "--\(prefix)master-key-command \(command)" }
        return ""
    }
}
