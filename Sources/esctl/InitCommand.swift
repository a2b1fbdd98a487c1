import ArgumentParser
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a store and its master key.",
        discussion: """
            The key options mean what they mean for every other command: --master-key-file,
            --master-key-stdin, ESCTL_MASTER_KEY and --passphrase give the (existing) key the new
            store is created with. A new random key is written only to a file that does not exist
            yet: the --new-master-key-file path, or, with no key option at all, master.key beside
            the SQLite store (./master.key for PostgreSQL). It is created with mode 0600 and never
            overwritten. Keep it away from the store's backups.

            --passphrase derives the key with scrypt (the salt is stored in the store). A
            passphrase must have at least 15 characters, at least 8 of them different, and not be
            a run of consecutive characters, unless --allow-weak-passphrase is given.

            Everything is checked, and the key or passphrase read, before the store is created:
            a refused init leaves no store and no key file behind.

            --master-key-uri pkcs11:… and --master-key-command PATH create the store with a key
            in a PKCS#11 token or held by a helper command; --new-master-key-uri pkcs11:… first
            creates a new AES-256 key in the token (not extractable; refused if the label exists).
            """
    )

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Option(help: ArgumentHelp("Write a new random master key to this file (must not exist; created with mode 0600).",
                               valueName: "path"))
    var newMasterKeyFile: String?
    @Option(name: .customLong("new-master-key-uri"),
            help: ArgumentHelp("Create a new AES-256 key in a PKCS#11 token (pkcs11: URI; refused if it exists) and use it.", valueName: "uri"))
    var newMasterKeyURI: String?
    @Flag(help: "Accept a passphrase that fails the strength rules (see below).") var allowWeakPassphrase = false
    @Flag(help: "Print the result as JSON.") var json = false

    /// What `init --json` prints.
    struct Result: Encodable {
        var store: String
        var masterKeyID: String
        var keyFile: String?
        var keySource: String

        enum CodingKeys: String, CodingKey {
            case store, masterKeyID = "master_key_id", keyFile = "key_file", keySource = "key_source"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(store, forKey: .store)
            try c.encode(masterKeyID, forKey: .masterKeyID)
            try c.encode(keyFile, forKey: .keyFile)
            try c.encode(keySource, forKey: .keySource)
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            let access = StoreAccess(options: global)
            let sqlite = try access.sqlitePath()
            let given = [newMasterKeyFile != nil, global.masterKeyFile != nil, global.masterKeyStdin, global.passphrase,
                         newMasterKeyURI != nil, global.masterKeyURI != nil, global.masterKeyCommand != nil].filter { $0 }
            guard given.count <= 1 else {
                throw CLIError(exitCode: Exit.usage,
                    message: "give one key option to init: --new-master-key-file, --master-key-file, --master-key-stdin, --passphrase, --new-master-key-uri, --master-key-uri or --master-key-command")
            }

            // 1. The store must not be initialised (read without changing it).
            var postgres: (any AdminStore)?
            if let sqlite {
                if FileManager.default.fileExists(atPath: sqlite), !(try await SQLiteStore.masterKeyChecks(readingOnly: sqlite)).isEmpty {
                    throw CLIError(exitCode: Exit.failure, message: "sqlite:\(sqlite) is already initialised")
                }
            } else {
                let store = try await access.openStore(create: true)
                postgres = store
                if try await !store.masterKeyChecks().isEmpty {
                    await store.close()
                    throw CLIError(exitCode: Exit.failure, message: "\(store.location) is already initialised")
                }
            }

            do {
                try await initialise(access, sqlite: sqlite, postgres: postgres)
            } catch {
                await postgres?.close()
                throw error
            }
        }
    }

    private func initialise(_ access: StoreAccess, sqlite: String?, postgres: (any AdminStore)?) async throws {
        // 2. The key, before anything is created.
        let key: any KeyEncryptionKey
        var writeTo: String?
        let source: String
        if global.passphrase {
            let kdf = try KDFParameters.random()
            let first = try access.readPassphrase(prompt: "New passphrase: ")
            if Terminal.stdinIsTTY {
                guard try access.readPassphrase(prompt: "Repeat passphrase: ") == first else {
                    throw CLIError(exitCode: Exit.usage, message: "the passphrases differ; nothing was created")
                }
            }
            if !allowWeakPassphrase, let weakness = Self.weakness(of: first) {
                throw CLIError(exitCode: Exit.usage, message: """
                    the passphrase is too weak: \(weakness). Anyone with a copy of the store can test guesses \
                    offline; use a key file, a longer passphrase, or --allow-weak-passphrase. Nothing was created
                    """)
            }
            key = try MasterKey(passphrase: first, parameters: kdf)
            source = "passphrase"
        } else if let path = global.masterKeyFile {
            guard FileManager.default.fileExists(atPath: path) else {
                throw CLIError(exitCode: Exit.usage, message: """
                    no master key file at \(path) (--master-key-file reads an existing key, for init as for every \
                    command); to write a new key there: esctl init --new-master-key-file \(path)
                    """)
            }
            key = try MasterKey(contentsOfFile: path)
            source = "file"
        } else if let uri = newMasterKeyURI {
            var pin: [UInt8]? = access.environment[MasterKeySources.pinVariable].map { Array($0.utf8) }
            let parsed = try PKCS11URI(parsing: uri)
            if parsed.pinSource != nil { pin?.withUnsafeMutableBufferPointer { b in b.update(repeating: 0) }; pin = nil }
            key = try PKCS11MasterKey.generate(uri: parsed, pin: &pin)
            Terminal.info("created AES-256 key '\((key as? PKCS11MasterKey)?.label ?? "")' in the PKCS#11 token (not extractable)")
            source = "pkcs11"
        } else if global.masterKeyURI != nil || global.masterKeyCommand != nil
                    || (newMasterKeyFile == nil && access.environment["ESCTL_MASTER_KEY"] == nil
                        && (access.environment["ESCTL_MASTER_KEY_URI"] != nil || access.environment["ESCTL_MASTER_KEY_COMMAND"] != nil)) {
            key = try access.masterKey(kdf: nil)
            source = key is PKCS11MasterKey ? "pkcs11" : "command"
        } else if global.masterKeyStdin || (newMasterKeyFile == nil && access.environment["ESCTL_MASTER_KEY"] != nil) {
            key = try access.masterKey(kdf: nil)
            source = global.masterKeyStdin ? "stdin" : "environment"
        } else {
            let path = try newMasterKeyFile ?? access.defaultKeyPath()
            if FileManager.default.fileExists(atPath: path) {
                throw CLIError(exitCode: Exit.usage, message: """
                    \(path) already exists; init writes a new key only to a new file and never overwrites one. To create \
                    the store with the key in it: esctl init --master-key-file \(path)
                    """)
            }
            key = try MasterKey.generate()
            writeTo = path
            source = "new"
        }

        // 3. The new key file, then the store; a failure removes what this run created.
        if let writeTo, let local = key as? MasterKey { try local.writeKeyFile(to: writeTo) }
        let created = sqlite.map { !FileManager.default.fileExists(atPath: $0) } ?? false
        do {
            let store: any AdminStore
            if let postgres { store = postgres } else { store = try await access.openStore(create: true) }
            do {
                _ = try await Keyring.open(store: store, masterKeys: [key], logger: Logger(label: "esctl.keyring"))
            } catch {
                await store.close()
                throw error
            }
            await store.close()
            if json {
                try JSONOut.print(Result(store: store.location, masterKeyID: key.id, keyFile: writeTo, keySource: source))
            }
            Terminal.info("initialised \(store.location) with master key \(key.id)")
            if let writeTo {
                Terminal.info("master key written to \(writeTo) (mode 0600): keep it safe, and away from the store's backups (move it if this directory is backed up)")
                Terminal.info("next: esctl --store \(store.location) --master-key-file \(writeTo) keys list")
            }
        } catch {
            if let writeTo { unlink(writeTo) }
            if created, let sqlite {
                for suffix in ["", "-wal", "-shm", "-journal"] { unlink(sqlite + suffix) }
            }
            throw error
        }
    }

    /// Why a passphrase is too weak, or nil. The passphrase itself is never part of the answer.
    static func weakness(of passphrase: String) -> String? {
        let scalars = Array(passphrase.unicodeScalars)
        if scalars.count < 15 { return "it has \(scalars.count) characters, fewer than 15" }
        let distinct = Set(scalars).count
        if distinct < 8 { return "it has only \(distinct) different characters, fewer than 8" }
        let steps = zip(scalars, scalars.dropFirst()).filter { abs(Int($1.value) - Int($0.value)) <= 1 }.count
        if steps >= scalars.count - 4 { return "it is mostly a run of repeated or consecutive characters" }
        return nil
    }
}
