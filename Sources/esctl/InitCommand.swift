import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement
import Logging

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a store and a new master key.",
        discussion: """
            Writes a fresh random master key to the --master-key-file path (default: master.key
            beside the store), created with mode 0600 and never overwritten; or, with
            --passphrase, derives it from a passphrase (scrypt; salt stored in the store).
            Keep the key file away from the store's backups.
            """
    )

    @ParentCommand var root: Esctl

    func run() async throws {
        try await Esctl.guarded {
            let access = StoreAccess(options: root)
            let path = try access.sqlitePath() ?? FileManager.default.currentDirectoryPath + "/eventstore"

            let keyFileTaken = !root.passphrase && !root.masterKeyStdin
                && root.masterKeyFile.map { FileManager.default.fileExists(atPath: $0) } == true
            let keyFileError = CLIError(exitCode: Exit.usage,
                message: "\(root.masterKeyFile ?? "") already exists; init writes a new key and never overwrites one")
            // Refuse before creating anything; an existing store is checked first (66 if unusable).
            if keyFileTaken, try access.sqlitePath().map({ FileManager.default.fileExists(atPath: $0) }) != true {
                throw keyFileError
            }
            let store = try await access.openStore(create: true)
            if keyFileTaken {
                await store.close()
                throw keyFileError
            }
            do {
                try await initialise(store, access: access, path: path)
            } catch {
                await store.close()
                throw error
            }
        }
    }

    private func initialise(_ store: any AdminStore, access: StoreAccess, path: String) async throws {
        guard try await store.masterKeyChecks().isEmpty else {
            throw CLIError(exitCode: Exit.failure, message: "\(store.location) is already initialised")
        }
        let key: MasterKey
        var keyFile: String?
        if root.passphrase {
            let kdf = try KDFParameters.random()
            let first = try access.readPassphrase(prompt: "New passphrase: ")
            if Terminal.stdinIsTTY {
                guard try access.readPassphrase(prompt: "Repeat passphrase: ") == first else {
                    throw CLIError(exitCode: Exit.usage, message: "the passphrases differ")
                }
            }
            key = try MasterKey(passphrase: first, parameters: kdf)
        } else if root.masterKeyStdin || (root.masterKeyFile == nil && ProcessInfo.processInfo.environment["ESCTL_MASTER_KEY"] != nil) {
            key = try access.masterKey(kdf: nil)
        } else {
            let file = root.masterKeyFile
                ?? URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("master.key").path
            key = try MasterKey.generate()
            try key.writeKeyFile(to: file)
            keyFile = file
        }
        _ = try await Keyring.open(store: store, masterKeys: [key], logger: Logger(label: "esctl.keyring"))
        await store.close()
        Terminal.info("initialised \(store.location) with master key \(key.id)")
        if let keyFile { Terminal.info("master key written to \(keyFile) (mode 0600): keep it safe, and away from the store's backups (move it if this directory is backed up)") }
    }
}
