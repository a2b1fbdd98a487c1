import ArgumentParser
import EventSourcing
import Foundation
import KeyManagement

/// Everything known about one key scope.
struct ScopeSummary {
    var scope: String
    var versions: [WrappedDataKey] = []
    var tombstone: Tombstone?

    var json: [String: Any] {
        var j: [String: Any] = ["scope": scope, "status": tombstone == nil ? "active" : "shredded"]
        j["versions"] = versions.map { ["version": Int($0.version), "kek_id": $0.kekID, "created_at": JSONOut.date($0.createdAt)] as [String: Any] }
        j["current_version"] = versions.last.map { Int($0.version) } ?? NSNull()
        j["kek_ids"] = Array(Set(versions.map(\.kekID))).sorted()
        j["created_at"] = versions.first.map { JSONOut.date($0.createdAt) } ?? NSNull()
        j["rotated_at"] = versions.count > 1 ? versions.last.map { JSONOut.date($0.createdAt) } ?? NSNull() : NSNull()
        j["shredded_at"] = tombstone.map { JSONOut.date($0.shreddedAt) } ?? NSNull()
        if let t = tombstone { j["destroyed_versions"] = t.destroyedVersions.map(Int.init) }
        return j
    }

    var line: String {
        if let t = tombstone {
            return "\(scope)  shredded \(JSONOut.date(t.shreddedAt))  (versions destroyed: \(t.destroyedVersions.map(String.init).joined(separator: ",")))"
        }
        let kek = Set(versions.map(\.kekID)).sorted().joined(separator: ",")
        let created = versions.first.map { JSONOut.date($0.createdAt) } ?? "-"
        let rotated = versions.count > 1 ? versions.last.map { JSONOut.date($0.createdAt) } ?? "-" : "-"
        return "\(scope)  v\(versions.last?.version ?? 0)  kek \(kek)  created \(created)  rotated \(rotated)"
    }

    static func load(_ scope: String, from store: any KeyStore) async throws -> ScopeSummary {
        ScopeSummary(scope: scope, versions: try await store.dataKeys(scope: scope), tombstone: try await store.tombstone(scope: scope))
    }
}

struct KeysList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list",
        abstract: "List key scopes: key versions, master key id, created, rotated, shredded.")

    @ParentCommand var root: Esctl
    @Flag(help: "Print JSON (stable: see Docs/Operations.md).") var json = false

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: root).withSession { session in
                var summaries: [String: ScopeSummary] = [:]
                var cursor: DataKeyCursor?
                while true {
                    let page = try await session.store.dataKeys(after: cursor, limit: 1000)
                    guard let last = page.last else { break }
                    cursor = DataKeyCursor(scope: last.scope, version: last.version)
                    for k in page { summaries[k.scope, default: ScopeSummary(scope: k.scope)].versions.append(k) }
                }
                for t in try await session.store.tombstones() { summaries[t.scope, default: ScopeSummary(scope: t.scope)].tombstone = t }
                let sorted = summaries.values.sorted { $0.scope < $1.scope }
                if json {
                    try JSONOut.print(["master_key_id": session.keyring.primaryMasterKeyID, "scopes": sorted.map(\.json)])
                } else {
                    for s in sorted { print(s.line) }
                    Terminal.info("\(sorted.count) scopes (\(sorted.filter { $0.tombstone != nil }.count) shredded), master key \(session.keyring.primaryMasterKeyID)")
                }
            }
        }
    }
}

struct KeysShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one key scope.")

    @ParentCommand var root: Esctl
    @Argument(help: "The key scope (a data-subject id or an aggregate id).") var scope: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: root).withSession { session in
                let s = try await ScopeSummary.load(scope, from: session.store)
                guard !s.versions.isEmpty || s.tombstone != nil else {
                    throw CLIError(exitCode: Exit.scopeNotFound, message: "no key scope '\(scope)'")
                }
                let events = try await session.store.countEvents(keyScope: scope)
                if json {
                    var j = s.json
                    j["events"] = events
                    try JSONOut.print(j)
                } else {
                    print(s.line)
                    print("events: \(events)")
                }
            }
        }
    }
}

struct KeysRotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate",
        abstract: "Create a new data-key version for a scope; new events use it, old ones still read.")

    @ParentCommand var root: Esctl
    @Argument(help: "The key scope.") var scope: String

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: root).withSession { session in
                let version = try await session.keyring.rotate(scope: scope)
                print("\(scope) v\(version)")
            }
        }
    }
}

struct KeysRotateMaster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate-master",
        abstract: "Rewrap every data key under a new master key; no event is rewritten.",
        discussion: """
            If the new key file does not exist, a fresh random key is written there (mode 0600).
            Safe to interrupt: run the same command again to finish. Until it finishes, every
            data key opens with either the old or the new master key; afterwards only the new one
            opens the store, and the old key can be destroyed.
            """)

    @ParentCommand var root: Esctl
    @Option(help: ArgumentHelp("File with the new master key (created if missing).", valueName: "path"))
    var newMasterKeyFile: String

    func run() async throws {
        try await Esctl.guarded {
            let access = StoreAccess(options: root)
            do {
                try await rotate(access)
            } catch let e as KeyManagementError where e.code == .wrongMasterKey {
                // An earlier run may have finished, or been interrupted just after retiring the
                // old key: if the new key alone opens the store and wraps every data key, the
                // job is done and rerunning the same command succeeds.
                guard FileManager.default.fileExists(atPath: newMasterKeyFile),
                      let newKey = try? MasterKey(contentsOfFile: newMasterKeyFile),
                      try await alreadyRotated(access, to: newKey) else { throw e }
                print("master key already rotated to \(newKey.id): nothing left to rewrap")
            }
        }
    }

    private func rotate(_ access: StoreAccess) async throws {
        // The store and the current key are checked first, so a missing store or a wrong key
        // fails with its one line and leaves no new key file behind.
        try await access.withSession { session in
            let newKey: MasterKey
            if FileManager.default.fileExists(atPath: newMasterKeyFile) {
                newKey = try MasterKey(contentsOfFile: newMasterKeyFile)
            } else {
                newKey = try MasterKey.generate()
                try newKey.writeKeyFile(to: newMasterKeyFile)
                Terminal.info("new master key \(newKey.id) written to \(newMasterKeyFile) (mode 0600)")
            }
            let old = session.keyring.primaryMasterKeyID
            guard old != newKey.id else {
                throw CLIError(exitCode: Exit.usage, message: "the new master key is the current one")
            }
            let total = try await countKeys(session.store)
            let progress = Progress("rewrapping", total: total)
            let result = try await session.keyring.rotateMasterKey(to: newKey) { p in progress.update(p.rewrapped + p.alreadyCurrent) }
            progress.finish(result.rewrapped + result.alreadyCurrent)
            print("master key \(old) -> \(newKey.id): rewrapped \(result.rewrapped), already current \(result.alreadyCurrent)")
            Terminal.info("the old master key no longer opens this store; destroy it once backups made with it have expired")
        }
    }

    /// Whether `newKey` is the store's only master key and wraps every data key.
    private func alreadyRotated(_ access: StoreAccess, to newKey: MasterKey) async throws -> Bool {
        let store = try await access.openStore()
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

    @ParentCommand var root: Esctl
    @Argument(help: "The key scope to erase.") var scope: String
    @Flag(help: "Do not ask for confirmation.") var yes = false
    @Flag(help: "Print the receipt as JSON.") var json = false

    func run() async throws {
        try await Esctl.guarded {
            try await StoreAccess(options: root).withSession { session in
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
                let r = try await session.app.shred(keyScope: scope)
                if json {
                    try JSONOut.print(["scope": r.keyScope, "shredded_at": JSONOut.date(r.shreddedAt),
                                       "destroyed_key_versions": r.destroyedKeyVersions.map(Int.init),
                                       "events_affected": r.eventsAffected, "snapshots_deleted": r.snapshotsDeleted])
                } else {
                    print("erasure receipt")
                    print("  scope:                  \(r.keyScope)")
                    print("  shredded at:            \(JSONOut.date(r.shreddedAt))")
                    print("  key versions destroyed: \(r.destroyedKeyVersions.map(String.init).joined(separator: ", "))")
                    print("  events affected:        \(r.eventsAffected)")
                    print("  snapshots deleted:      \(r.snapshotsDeleted)")
                }
            }
        }
    }
}
