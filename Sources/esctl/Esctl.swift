import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement
import Logging

/// Exit codes: stable, documented in `--help` and Docs/Operations.md.
enum Exit {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 64
    static let wrongMasterKey: Int32 = 65
    static let storeUnavailable: Int32 = 66
    static let verificationFailed: Int32 = 67
    static let scopeNotFound: Int32 = 68
    static let scopeShredded: Int32 = 69
    static let storeLocked: Int32 = 70
    static let keySourceFailed: Int32 = 71
    /// `keys retire`: a record or personal field still uses a version below the one asked.
    static let keyVersionInUse: Int32 = 72
    static let interrupted: Int32 = 130
}

@main
struct Esctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "esctl",
        abstract: "Administer an encrypted event store: keys, erasure, verification, subject export.",
        discussion: """
            The store is `sqlite:PATH` (default ./eventstore.sqlite) or
            `postgres://USER[:PASSWORD]@HOST:PORT/DB?sslmode=disable|prefer|require&schema=NAME`,
            from --store or ESCTL_STORE. Arguments are visible to other local users: put no
            password in --store; use ESCTL_STORE, or leave it out of the URL and set PGPASSWORD.
            The master key comes from --master-key-file, from ESCTL_MASTER_KEY (base64), from
            standard input (--master-key-stdin), or from a passphrase (--passphrase); or it stays in
            a PKCS#11 token (--master-key-uri pkcs11:…, ESCTL_MASTER_KEY_URI; PIN from the URI's
            pin-source or ESCTL_PKCS11_PIN) or with a helper command (--master-key-command PATH,
            ESCTL_MASTER_KEY_COMMAND). The key itself is never
            taken as an argument value. Data goes to stdout; messages and progress to stderr.

            Exit codes:
              0   success
              1   any other failure
              64  usage error
              65  wrong master key: it does not open this store
              66  store not found, unreadable or corrupt
              67  records fail to decrypt, cannot be read or are plaintext (verify, export)
              68  key scope not found
              69  key scope already shredded
              70  store locked by another process
              71  the master key's PKCS#11 token or helper command failed
              72  key version still in use
              130 interrupted
            """,
        version: "0.1.0",
        subcommands: [Init.self, Keys.self, Verify.self, Export.self, Erasures.self, Encrypt.self, Stats.self, Projections.self, Scrub.self, Demo.self]
    )

    @OptionGroup(title: "Global options") var global: GlobalOptions

    /// Parses and runs the command. Every argument error goes through ``Terminal`` too, so a
    /// key typed where a path or command belongs is never written back.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        Terminal.neverShow(Secrets.sensitive(in: arguments))
        LoggingSystem.bootstrap { label in TerminalLogHandler(label: label) }
        if let refusal = ArgumentScreen.refusal(arguments) {
            Terminal.error(refusal.message)
            Foundation.exit(refusal.exitCode)
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            let text = fullMessage(for: error)
            if code == .success {
                if !text.isEmpty { print(text) }
            } else if !text.isEmpty {
                Terminal.block(text.hasSuffix("\n") ? String(text.dropLast()) : text)
            }
            Foundation.exit(code.rawValue)
        }
    }

    /// Runs `body`, turning library errors into one line on stderr and the documented exit code.
    static func guarded(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let e as CleanExit {
            throw e
        } catch let e as ExitCode {
            throw e
        } catch let e as ValidationError {
            throw e
        } catch {
            let (code, line) = describe(error)
            Terminal.error(line)
            throw ExitCode(code)
        }
    }

    static func describe(_ error: any Error) -> (Int32, String) {
        switch error {
        case let e as CLIError:
            return (e.exitCode, e.message)
        case let e as KeyManagementError:
            switch e.code {
            case .wrongMasterKey: return (Exit.wrongMasterKey, "wrong master key: \(e.message)")
            case .shredded: return (Exit.scopeShredded, "key scope \(e.scope ?? "") is shredded")
            case .keySourceUnavailable, .invalidKeyMaterial, .invalidArgument: return (Exit.usage, e.message)
            case .keySourceFailed: return (Exit.keySourceFailed, "master key source failed: \(e.message)")
            case .keyNotFound: return (Exit.scopeNotFound, e.message + (e.scope.map { " (scope \($0))" } ?? ""))
            case .keyUnavailable:
                return (Exit.verificationFailed, e.message + (e.scope.map { " (scope \($0))" } ?? ""))
            default: return (Exit.failure, e.description)
            }
        case let e as EventSourcingError:
            switch e.code {
            case .wrongMasterKey: return (Exit.wrongMasterKey, "wrong master key: \(e.message)")
            case .shredded: return (Exit.scopeShredded, "key scope \(e.keyScope ?? "") is shredded")
            case .databaseCorrupt, .databaseUnavailable, .unsupportedSchema: return (Exit.storeUnavailable, e.message)
            case .databaseLocked: return (Exit.storeLocked, e.message)
            case .invalidArgument: return (Exit.usage, e.message)
            case .keyScopeNotFound: return (Exit.scopeNotFound, e.message + (e.keyScope.map { " (scope \($0))" } ?? ""))
            case .integrityFailure, .keyUnavailable, .keyRetired:
                return (Exit.verificationFailed, e.description + " (run 'esctl verify' for the full list)")
            case .keyVersionInUse: return (Exit.keyVersionInUse, e.message)
            case .keySourceFailed: return (Exit.keySourceFailed, "master key source failed: \(e.message)")
            case .compressionDictionaryMissing:
                return (Exit.verificationFailed, e.description + " (give esctl the dictionary with --compression-dictionary)")
            default: return (Exit.failure, e.description)
            }
        default:
            return (Exit.failure, "\(error)")
        }
    }
}

/// An error with its own exit code and a one-line message.
struct CLIError: Error {
    var exitCode: Int32
    var message: String
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, show, rotate and shred data keys; rotate the master key.",
        subcommands: [KeysList.self, KeysShow.self, KeysRotate.self, KeysRotateMaster.self, KeysShred.self,
                      KeysReencrypt.self, KeysRetire.self]
    )
}
