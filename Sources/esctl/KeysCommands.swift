import ArgumentParser
import Dispatch
import EventSourcing
import Foundation
import KeyManagement
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Everything known about one key scope.
struct ScopeSummary {
    var scope: String
    var versions: [WrappedDataKey] = []
    var tombstone: Tombstone?

    /// The documented JSON object (Docs/Operations.md §12.1), with `events` for `keys show`.
    struct JSON: Encodable {
        struct Version: Encodable {
            var version: Int
            var kekID: String
            var createdAt: String
            enum CodingKeys: String, CodingKey { case version, kekID = "kek_id", createdAt = "created_at" }
        }
        var scope: String
        var status: String
        var versions: [Version]
        var currentVersion: Int?
        var minimumVersion: Int?
        var kekIDs: [String]
        var createdAt: String?
        var rotatedAt: String?
        var shreddedAt: String?
        var destroyedVersions: [Int]?
        var events: Int?
        /// `keys show`: encryptions reserved per version, for the versions with a stored count.
        var encryptionsReserved: [String: UInt64]?

        enum CodingKeys: String, CodingKey {
            case scope, status, versions, events
            case currentVersion = "current_version", minimumVersion = "minimum_version", kekIDs = "kek_ids", createdAt = "created_at", rotatedAt = "rotated_at"
            case shreddedAt = "shredded_at", destroyedVersions = "destroyed_versions"
            case encryptionsReserved = "encryptions_reserved"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(scope, forKey: .scope)
            try c.encode(status, forKey: .status)
            try c.encode(versions, forKey: .versions)
            // These are always present, null when they do not apply.
            try c.encode(currentVersion, forKey: .currentVersion)
            try c.encode(minimumVersion, forKey: .minimumVersion)
            try c.encode(kekIDs, forKey: .kekIDs)
            try c.encode(createdAt, forKey: .createdAt)
            try c.encode(rotatedAt, forKey: .rotatedAt)
            try c.encode(shreddedAt, forKey: .shreddedAt)
            // These only where they apply.
            try c.encodeIfPresent(destroyedVersions, forKey: .destroyedVersions)
            try c.encodeIfPresent(events, forKey: .events)
            try c.encodeIfPresent(encryptionsReserved, forKey: .encryptionsReserved)
        }
    }

    var json: JSON {
        JSON(scope: scope, status: tombstone == nil ? "active" : "shredded",
             versions: versions.map { .init(version: Int($0.version), kekID: $0.kekID, createdAt: JSONOut.date($0.createdAt)) },
             currentVersion: versions.last.map { Int($0.version) },
             minimumVersion: versions.first.map { Int($0.version) },
             kekIDs: kekIDs,
             createdAt: versions.first.map { JSONOut.date($0.createdAt) },
             rotatedAt: versions.count > 1 ? versions.last.map { JSONOut.date($0.createdAt) } : nil,
             shreddedAt: tombstone.map { JSONOut.date($0.shreddedAt) },
             destroyedVersions: tombstone.map { $0.destroyedVersions.map(Int.init) })
    }

    private var kekIDs: [String] {
        var ids: [String] = []
        for v in versions where !ids.contains(v.kekID) { ids.append(v.kekID) }
        return ids.sorted()
    }

    var line: String {
        if let t = tombstone {
            return "\(scope)  shredded \(JSONOut.date(t.shreddedAt))  (versions destroyed: \(t.destroyedVersions.map(String.init).joined(separator: ",")))"
        }
        let kek = kekIDs.joined(separator: ",")
        let created = versions.first.map { JSONOut.date($0.createdAt) } ?? "-"
        let rotated = versions.count > 1 ? versions.last.map { JSONOut.date($0.createdAt) } ?? "-" : "-"
        // The minimum decryption version, when versions below it were retired (keys retire).
        let minimum = versions.first.map { $0.version > 1 ? " (min v\($0.version))" : "" } ?? ""
        return "\(scope)  v\(versions.last?.version ?? 0)\(minimum)  kek \(kek)  created \(created)  rotated \(rotated)"
    }

    static func load(_ scope: String, from store: any KeyStore) async throws -> ScopeSummary {
        ScopeSummary(scope: scope, versions: try await store.dataKeys(scope: scope), tombstone: try await store.tombstone(scope: scope))
    }
}

struct KeysList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list",
        abstract: "List key scopes: key versions, master key id, created, rotated, shredded.")

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Flag(help: "Print JSON (stable: see Docs/Operations.md).") var json = false

    /// The members of the JSON document (Docs/Operations.md §12.1): `master_key_id`, then
    /// `scopes`, an array of ``ScopeSummary/JSON`` in scope order, written one by one.
    enum JSONMember: String { case masterKeyID = "master_key_id", scopes }

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: global).withSession(.readOnly) { session in
                // Keys come in (scope, version) order: consecutive rows of a scope make one summary.
                var summaries: [ScopeSummary] = []
                var cursor: DataKeyCursor?
                while true {
                    let page = try await session.store.dataKeys(after: cursor, limit: 1000)
                    guard let last = page.last else { break }
                    cursor = DataKeyCursor(scope: last.scope, version: last.version)
                    for k in page {
                        if summaries.last?.scope == k.scope {
                            summaries[summaries.count - 1].versions.append(k)
                        } else {
                            summaries.append(ScopeSummary(scope: k.scope, versions: [k]))
                        }
                    }
                }
                var index: [String: Int] = [:]
                index.reserveCapacity(summaries.count)
                for (i, s) in summaries.enumerated() { index[s.scope] = i }
                for t in try await session.store.tombstones() {
                    if let i = index[t.scope] {
                        summaries[i].tombstone = t
                    } else {
                        index[t.scope] = summaries.count
                        summaries.append(ScopeSummary(scope: t.scope, tombstone: t))
                    }
                }
                summaries.sort { $0.scope < $1.scope }
                if json {
                    // Written scope by scope: a million scopes as one JSONEncoder document took 3.1 GB.
                    try JSONOut.printStreaming(head: [(JSONMember.masterKeyID.rawValue, session.keyring.primaryMasterKeyID)],
                                               arrayKey: JSONMember.scopes.rawValue, elements: summaries.lazy.map(\.json))
                } else {
                    var out = ""
                    out.reserveCapacity(summaries.count * 120)
                    for s in summaries {
                        out += s.line
                        out += "\n"
                        if out.utf8.count > 1 << 16 {
                            FileHandle.standardOutput.write(Data(out.utf8))
                            out.removeAll(keepingCapacity: true)
                        }
                    }
                    FileHandle.standardOutput.write(Data(out.utf8))
                    Terminal.info("\(summaries.count) scopes (\(summaries.filter { $0.tombstone != nil }.count) shredded), master key \(session.keyring.primaryMasterKeyID)")
                }
            }
        }
    }
}

struct KeysShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one key scope.")

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope (a data-subject id or an aggregate id).") var scope: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: global).withSession(.readOnly) { session in
                let s = try await ScopeSummary.load(scope, from: session.store)
                guard !s.versions.isEmpty || s.tombstone != nil else {
                    throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'")
                }
                let events = try await session.store.countEvents(keyScope: scope)
                // Encryptions reserved per version (SECURITY.md §10); a version without a stored
                // count has at most its first block (4,096) reserved.
                let counts = try await (session.store as? any KeyUsageCounter)?.reservedEncryptions(scope: scope) ?? [:]
                if json {
                    var j = s.json
                    j.events = events
                    j.encryptionsReserved = Dictionary(uniqueKeysWithValues: counts.map { (String($0.key), $0.value) })
                    try JSONOut.print(j)
                } else {
                    print(s.line)
                    print("events: \(events)")
                    if !s.versions.isEmpty {
                        print("encryptions reserved: " + s.versions.map { v in
                            "v\(v.version) " + (counts[v.version].map(String.init) ?? "at most \(KeyUsage.firstBlock(limit: KeyUsage.defaultLimit))")
                        }.joined(separator: ", "))
                    }
                }
            }
        }
    }
}

struct KeysRotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate",
        abstract: "Create a new data-key version for a scope; new events use it, old ones still read.")

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope.") var scope: String
    @Flag(help: "Print JSON.") var json = false

    struct JSON: Encodable {
        var scope: String
        var version: Int
        var masterKeyID: String
        enum CodingKeys: String, CodingKey { case scope, version, masterKeyID = "master_key_id" }
    }

    func run() async throws {
        try await Esctl.guarded {
            // An unknown or shredded scope is refused before the store is opened for writing,
            // with the errors the rotation itself would throw.
            try await StoreAccess(options: global).withSession(.readWrite, beforeWriting: { session, _, _ in
                try KeyScope.validate(scope)
                let s = try await ScopeSummary.load(scope, from: session.store)
                guard s.versions.isEmpty else { return }
                if let t = s.tombstone {
                    throw KeyManagementError(.shredded, "cannot rotate a shredded scope", scope: scope, shreddedAt: t.shreddedAt)
                }
                throw KeyManagementError(.keyNotFound, "the scope has no data key to rotate", scope: scope)
            }) { session in
                let version = try await session.keyring.rotate(scope: scope)
                if json {
                    try JSONOut.print(JSON(scope: scope, version: Int(version), masterKeyID: session.keyring.primaryMasterKeyID))
                } else {
                    print("\(scope) v\(version)")
                }
            }
        }
    }
}

struct KeysRotateMaster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate-master",
        abstract: "Rewrap every data key under a new master key; no event is rewritten.",
        discussion: """
            The new key is read from --new-master-key-file, which must exist. With --create, a
            missing file is created with a new random key (mode 0600); an existing one is used.
            Or the new key is in a PKCS#11 token (--new-master-key-uri pkcs11:…; with --create a
            missing key is created in the token, not extractable; the PIN comes from the URI's
            pin-source, else $ESCTL_NEW_PKCS11_PIN, else $ESCTL_PKCS11_PIN), or held by a helper
            command (--new-master-key-command PATH). The old key is given as for every command,
            so any kind rotates to any kind.
            Safe to interrupt (Ctrl-C, a crash, a lost connection): run the same command again
            to finish. Until it finishes, every data key opens with either the old or the new
            master key; afterwards only the new one opens the store, and the old key can be
            destroyed. While a rotation is unfinished, a rotation to any other key is refused.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Option(help: ArgumentHelp("File with the new master key.", valueName: "path"))
    var newMasterKeyFile: String?
    @Option(name: .customLong("new-master-key-uri"), help: ArgumentHelp("The new master key in a PKCS#11 token (pkcs11: URI).", valueName: "uri"))
    var newMasterKeyURI: String?
    @Option(help: ArgumentHelp("A helper command holding the new master key (a path, run without a shell).", valueName: "path"))
    var newMasterKeyCommand: String?
    @Flag(help: "Create --new-master-key-file with a new random key, or the --new-master-key-uri key in its token, if it does not exist.") var create = false

    func run() async throws {
        try await Esctl.guarded {
            let access = StoreAccess(options: global)
            do {
                try await rotate(access)
            } catch let e as KeyManagementError where e.code == .wrongMasterKey {
                // An earlier run may have finished, or been interrupted just after retiring the
                // old key: if the new key alone opens the store and wraps every data key, the
                // job is done and rerunning the same command succeeds.
                guard let newKey = try? loadNewKey(access, create: false),
                      try await alreadyRotated(access, to: newKey) else { throw e }
                print("master key already rotated to \(newKey.id): nothing left to rewrap")
            }
        }
    }

    /// The one new-key option given.
    private var newKeyArgument: String {
        MasterKeySources.argument(file: newMasterKeyFile, uri: newMasterKeyURI, command: newMasterKeyCommand, prefix: "new-")
    }

    /// The new key from --new-master-key-uri or --new-master-key-command (a file is read by `newKey`).
    private func loadNewKey(_ access: StoreAccess, create: Bool) throws -> any KeyEncryptionKey {
        if let uri = newMasterKeyURI {
            return try MasterKeySources.pkcs11(uri, environment: access.environment,
                                               pinVariables: ["ESCTL_NEW_PKCS11_PIN", MasterKeySources.pinVariable], create: create)
        }
        if let path = newMasterKeyCommand { return try MasterKeySources.command(path, environment: access.environment) }
        guard let path = newMasterKeyFile, FileManager.default.fileExists(atPath: path) else {
            throw CLIError(exitCode: Exit.usage, message: "no new master key file")
        }
        return try MasterKey(contentsOfFile: path)
    }

    private func rotate(_ access: StoreAccess) async throws {
        let given = [newMasterKeyFile != nil, newMasterKeyURI != nil, newMasterKeyCommand != nil].filter { $0 }.count
        guard given == 1 else {
            throw CLIError(exitCode: Exit.usage,
                message: "give the new master key with one of --new-master-key-file, --new-master-key-uri or --new-master-key-command")
        }
        var chosen: (any KeyEncryptionKey)?
        // The store and the current key are checked first, and an unfinished rotation to
        // another key is refused, before any key file is written or the store is opened for writing.
        try await access.withSession(.readWrite, beforeWriting: { _, key, checks in
            chosen = try newKey(access, current: key, checks: checks)
        }) { session in
            guard let newKey = chosen else { return }
            let old = session.keyring.primaryMasterKeyID
            let total = try await countKeys(session.store)
            let progress = Progress("rewrapping", total: total)
            // Ctrl-C is caught before the line below says it is safe.
            let interrupt = await Interrupt.install(progress: progress, message: """
                interrupted: the rotation from master key \(old) to \(newKey.id) is unfinished; every data key still opens \
                with one of the two keys. Run the same command again to finish it \
                (esctl keys rotate-master \(newKeyArgument) with the old key)
                """)
            defer { interrupt.remove() }
            Terminal.info("rewrapping \(total) data keys from master key \(old) to \(newKey.id); Ctrl-C is safe: run the same command again to finish")
            let result: Keyring.RotationProgress
            do {
                result = try await session.keyring.rotateMasterKey(to: newKey) { p in progress.update(p.rewrapped + p.alreadyCurrent) }
            } catch {
                progress.abandon()
                throw error
            }
            progress.finish(result.rewrapped + result.alreadyCurrent)
            print("master key \(old) -> \(newKey.id): rewrapped \(result.rewrapped), already current \(result.alreadyCurrent)")
            Terminal.info("the old master key no longer opens this store; destroy it once backups made with it have expired")
        }
    }

    /// The new key: read from the file, or created with --create. Refused, before anything is
    /// written, when it is the current key or when a rotation to another key is unfinished.
    private func newKey(_ access: StoreAccess, current: any KeyEncryptionKey, checks: [MasterKeyCheck]) throws -> any KeyEncryptionKey {
        let others = checks.filter { $0.kekID != current.id }
        let pending = others.map(\.kekID).joined(separator: ", ")
        guard let newMasterKeyFile else {
            // A token or a helper: the same refusals as for a file, before anything is written.
            let key = try loadNewKey(access, create: create)
            guard key.id != current.id else {
                throw CLIError(exitCode: Exit.usage, message: "the new master key is the current one (\(key.id))")
            }
            if !others.isEmpty, !others.contains(where: { $0.kekID == key.id }) {
                throw CLIError(exitCode: Exit.usage, message: """
                    a rotation to master key \(pending) is unfinished: finish it first by running rotate-master again with \
                    the key that holds \(pending). Nothing was changed
                    """)
            }
            return key
        }
        let exists = FileManager.default.fileExists(atPath: newMasterKeyFile)
        if !exists, !create {
            var message = "no key file at \(newMasterKeyFile): rotate-master reads the new key from an existing file; add --create to write a new random key there"
            if !others.isEmpty { message += " (a rotation to master key \(pending) is unfinished: give the file that holds it)" }
            throw CLIError(exitCode: Exit.usage, message: message)
        }
        let key = exists ? try MasterKey(contentsOfFile: newMasterKeyFile) : try MasterKey.generate()
        guard key.id != current.id else {
            var message = "the new master key is the current one"
            if !others.isEmpty {
                message += "; to finish the unfinished rotation from master key \(pending), give that key's file as --master-key-file"
            }
            throw CLIError(exitCode: Exit.usage, message: message)
        }
        if !others.isEmpty, !others.contains(where: { $0.kekID == key.id }) {
            throw CLIError(exitCode: Exit.usage, message: """
                a rotation to master key \(pending) is unfinished: finish it first by running rotate-master again with \
                --new-master-key-file naming the file that holds \(pending). Nothing was changed\(exists ? "" : " and no key file was written")
                """)
        }
        if !exists {
            try key.writeKeyFile(to: newMasterKeyFile)
            Terminal.info("new master key \(key.id) written to \(newMasterKeyFile) (mode 0600)")
        }
        return key
    }

    /// Whether `newKey` is the store's only master key and wraps every data key.
    private func alreadyRotated(_ access: StoreAccess, to newKey: any KeyEncryptionKey) async throws -> Bool {
        // Only reads: a SQLite store is opened read-only.
        let store = try await access.openStore(readOnly: true)
        do {
            var done = try await store.masterKeyChecks().map(\.kekID) == [newKey.id]
            if done { done = (try? await Keyring.open(store: store, masterKeys: [newKey])) != nil }
            if done { done = try await allWrapped(by: newKey.id, in: store) }
            await store.close()
            return done
        } catch {
            await store.close()
            throw error
        }
    }

    private func allWrapped(by kekID: String, in store: any KeyStore) async throws -> Bool {
        var cursor: DataKeyCursor?
        while true {
            let page = try await store.dataKeys(after: cursor, limit: 5000)
            guard let last = page.last else { return true }
            if page.contains(where: { $0.kekID != kekID }) { return false }
            cursor = DataKeyCursor(scope: last.scope, version: last.version)
        }
    }

    private func countKeys(_ store: any KeyStore) async throws -> Int {
        var n = 0
        var cursor: DataKeyCursor?
        while true {
            let page = try await store.dataKeys(after: cursor, limit: 5000)
            guard let last = page.last else { return n }
            n += page.count
            cursor = DataKeyCursor(scope: last.scope, version: last.version)
        }
    }
}

struct KeysShred: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shred",
        abstract: "Crypto-shred a key scope: its events become unreadable for good.",
        discussion: """
            Deletes every version of the scope's data key, writes a tombstone (scope and time, no
            personal data), deletes the scope's snapshots, and prints the erasure receipt. Asks for
            confirmation on a terminal unless --yes; without a terminal, --yes is required.
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Argument(help: "The key scope to erase.") var scope: String
    @Flag(help: "Do not ask for confirmation.") var yes = false
    @Flag(help: "Print the receipt as JSON.") var json = false

    struct Receipt: Encodable {
        var scope: String
        var shreddedAt: String
        var destroyedKeyVersions: [Int]
        var eventsAffected: Int
        var snapshotsDeleted: Int
        var plaintextEventsInStore: Int?
        var residuePending: Bool
        var pendingResidue: String?
        enum CodingKeys: String, CodingKey {
            case scope, shreddedAt = "shredded_at", destroyedKeyVersions = "destroyed_key_versions"
            case eventsAffected = "events_affected", snapshotsDeleted = "snapshots_deleted"
            case plaintextEventsInStore = "plaintext_events_in_store"
            case residuePending = "residue_pending", pendingResidue = "pending_residue"
        }
    }

    func run() async throws {
        try await Esctl.guarded {
            // Every refusal (shredded, unknown, not confirmed) is made before the store is opened for writing.
            try await StoreAccess(options: global).withSession(.readWrite, beforeWriting: { session, _, _ in
                let summary = try await ScopeSummary.load(scope, from: session.store)
                if let t = summary.tombstone {
                    throw CLIError(exitCode: Exit.scopeShredded, message: "key scope \(scope) was already shredded at \(JSONOut.date(t.shreddedAt))")
                }
                guard !summary.versions.isEmpty else {
                    throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'")
                }
                if !yes {
                    guard Terminal.stdinIsTTY else {
                        throw CLIError(exitCode: Exit.usage, message: "refusing to shred without confirmation: pass --yes")
                    }
                    let events = try await session.store.countEvents(keyScope: scope)
                    Terminal.info("This destroys the data key of \(scope): \(events) events become unreadable for good.")
                    let answer = Terminal.readLine(prompt: "Type the scope to confirm: ", silent: false).map { String(decoding: $0, as: UTF8.self) }
                    guard answer == scope else { throw CLIError(exitCode: Exit.usage, message: "not confirmed; nothing was changed") }
                }
            }) { session in
                let r = try await session.app.shred(keyScope: scope)
                if let plaintext = r.plaintextEventsInStore, plaintext > 0 {
                    Terminal.error("warning: the store holds unencrypted (plaintext) events, which no shred erases and this receipt "
                        + "does not cover: \(plaintext) (see 'esctl verify')")
                }
                if json {
                    try JSONOut.print(Receipt(scope: r.keyScope, shreddedAt: JSONOut.date(r.shreddedAt),
                                              destroyedKeyVersions: r.destroyedKeyVersions.map(Int.init),
                                              eventsAffected: r.eventsAffected, snapshotsDeleted: r.snapshotsDeleted,
                                              plaintextEventsInStore: r.plaintextEventsInStore,
                                              residuePending: r.residuePending, pendingResidue: r.pendingResidue))
                } else {
                    print("erasure receipt")
                    print("  scope:                  \(r.keyScope)")
                    print("  shredded at:            \(JSONOut.date(r.shreddedAt))")
                    print("  key versions destroyed: \(r.destroyedKeyVersions.map(String.init).joined(separator: ", "))")
                    print("  events affected:        \(r.eventsAffected)")
                    print("  snapshots deleted:      \(r.snapshotsDeleted)")
                    if let plaintext = r.plaintextEventsInStore {
                        print("  plaintext events:       \(plaintext)" + (plaintext > 0 ? " (anywhere in the store; no shred erases them)" : ""))
                    }
                    print("  residue pending:        \(r.residuePending ? "yes: " + (r.pendingResidue ?? "run 'esctl scrub'") : "no")")
                }
            }
        }
    }
}
