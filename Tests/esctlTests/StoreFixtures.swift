import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Logging
import Testing

/// A tiny aggregate for seeding stores: an account owned by a data subject (or by itself).
struct Account: Aggregate {
    static var typeName: String { "Account" }

    enum Event: Codable, Sendable {
        case opened(owner: String, name: String)
        case renamed(name: String)
    }

    var owner = ""
    var name = ""

    var dataSubject: String? { owner.isEmpty ? nil : owner }

    mutating func apply(_ event: Event) {
        switch event {
        case .opened(let owner, let name):
            self.owner = owner
            self.name = name
        case .renamed(let name):
            self.name = name
        }
    }
}

/// An aggregate whose events carry unlabeled associated values (Swift encodes them under
/// `_0`, `_1`, …), for the export's readable names.
struct Note: Aggregate {
    static var typeName: String { "Note" }

    enum Event: Codable, Sendable {
        case titled(String)
        case written(String, Int)
        case tagged(tags: [String])
    }

    var title = ""
    var lines: [String] = []

    var dataSubject: String? { "subject-notes" }

    mutating func apply(_ event: Event) {
        switch event {
        case .titled(let t): title = t
        case .written(let text, _): lines.append(text)
        case .tagged: break
        }
    }
}

/// What a seeded store holds.
struct Seeded {
    /// Data subject with two accounts: 3 + 2 events.
    var subject = "subject-alice"
    var aliceAccounts: [UUID] = []
    /// An account keyed by its own id (scope = its lowercased id), with a snapshot.
    var bob = UUID()
    var bobScope: String { bob.uuidString.lowercased() }
    /// Events in the store, and of the subject.
    var totalEvents = 0
    var subjectEvents = 0
    var snapshots = 0
    /// notification id → (aggregate id, version) for every event.
    var notifications: [Int64: (UUID, Int)] = [:]
    /// A name that appears in the subject's plaintext (for export checks).
    var subjectName = "Ada Lovelace"
}

enum Stores {
    static var quiet: Logger {
        var l = Logger(label: "esctlTests")
        l.logLevel = .critical
        return l
    }

    /// Opens the store at `path` with `keys` (library side).
    static func open(_ path: String, keys: [MasterKey], synchronous: SQLiteStore.Synchronous = .full)
        async throws -> (SQLiteStore, Keyring, Application) {
        let store = try SQLiteStore(path: path, configuration: .init(synchronous: synchronous), logger: quiet)
        do {
            let keyring = try await Keyring.open(store: store, masterKeys: keys, logger: quiet)
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring), logger: quiet)
            return (store, keyring, app)
        } catch {
            await store.close()
            throw error
        }
    }

    /// Adds a known set of events to an initialised store (`esctl init` ran), with `key`.
    static func seed(_ path: String, key: MasterKey) async throws -> Seeded {
        let (store, _, app) = try await open(path, keys: [key])
        var s = Seeded()
        do {
            var a1 = try AggregateRoot<Account>(.opened(owner: s.subject, name: s.subjectName))
            try a1.record(.renamed(name: "Ada King"))
            try a1.record(.renamed(name: "Ada, Countess of Lovelace"))
            var a2 = try AggregateRoot<Account>(.opened(owner: s.subject, name: "Ada's savings"))
            try a2.record(.renamed(name: "Ada's pension"))
            var bob = try AggregateRoot<Account>(.opened(owner: "", name: "Bob Builder"))
            try bob.record(.renamed(name: "Robert Builder"))
            var rec = try await app.save(&a1)
            rec += try await app.save(&a2, &bob)
            try await app.takeSnapshot(Account.self, id: bob.id)
            s.aliceAccounts = [a1.id, a2.id]
            s.bob = bob.id
            s.subjectEvents = 5
            s.totalEvents = rec.count
            s.snapshots = 1
            for r in rec { s.notifications[r.notificationID] = (r.originatorID, r.originatorVersion) }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        return s
    }

    /// Adds `count` accounts, each under its own key scope (one data key each), in batches.
    static func seedMany(_ path: String, key: MasterKey, count: Int) async throws {
        let (store, _, app) = try await open(path, keys: [key], synchronous: .normal)
        do {
            var made = 0
            while made < count {
                let n = min(500, count - made)
                var roots = try (0..<n).map { i in try AggregateRoot<Account>(.opened(owner: "", name: "account \(made + i)")) }
                try await app.save(&roots)
                made += n
            }
            await store.checkpointTruncate()
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    /// Adds unencrypted records next to the encrypted ones of a seeded store, as an application
    /// without its keyring would write them (through a store opened with `allowsPlaintextWrites`):
    /// an account of its own (2 events, and a snapshot of it), and version 4 of the subject's
    /// first account. So the store then holds 3 plaintext events (1 of them of an aggregate the
    /// subject's export covers) and 1 plaintext snapshot.
    /// - Returns: the id of the plaintext account.
    @discardableResult
    static func seedPlaintext(_ path: String, seeded s: Seeded) async throws -> UUID {
        let store = try SQLiteStore(path: path, configuration: .init(allowsPlaintextWrites: true), logger: quiet)
        do {
            let app = Application(recorder: store, snapshots: store, mapper: Mapper(), logger: quiet)
            var carol = try AggregateRoot<Account>(.opened(owner: "", name: "Carol Clear"))
            try carol.record(.renamed(name: "Carol Plain"))
            try await app.save(&carol)
            try await app.takeSnapshot(Account.self, id: carol.id)
            let event = DomainEvent<Account.Event>(originatorID: s.aliceAccounts[0], originatorVersion: 4, timestamp: Date(),
                                                   event: .renamed(name: "Ada in the clear"))
            let batch = try await Mapper().encode([event], of: Account.self, keyScope: s.subject)
            try #require(batch.events.allSatisfy { $0.keyScope == nil }, "the records are not plaintext")
            _ = try await store.insertEvents(batch.events)
            await store.close()
            return carol.id
        } catch {
            await store.close()
            throw error
        }
    }

    /// Adds one Note with unlabeled payloads (scope `subject-notes`), with `key`.
    static func seedNotes(_ path: String, key: MasterKey) async throws {
        let (store, _, app) = try await open(path, keys: [key])
        do {
            var note = try AggregateRoot<Note>(.titled("Shopping"))
            try note.record(.written("milk", 2))
            try note.record(.tagged(tags: ["home"]))
            try await app.save(&note)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    /// Every stored data key, in (scope, version) order.
    static func allDataKeys(_ store: SQLiteStore) async throws -> [WrappedDataKey] {
        var out: [WrappedDataKey] = []
        var cursor: DataKeyCursor?
        while true {
            let page = try await store.dataKeys(after: cursor, limit: 1000)
            guard let last = page.last else { return out }
            out += page
            cursor = DataKeyCursor(scope: last.scope, version: last.version)
        }
    }
}

/// Helpers that touch the database with python3's sqlite3 module, outside the library.
enum Py {
    /// Flips bit 0 of byte `len(state) - fromEnd` of the `state` of event `notificationID`.
    static let corrupt = """
        import sqlite3, sys
        db = sqlite3.connect(sys.argv[1])
        nid = int(sys.argv[2]); back = int(sys.argv[3])
        row = db.execute("SELECT state FROM events WHERE notification_id = ?", (nid,)).fetchone()
        b = bytearray(row[0]); b[len(b) - back] ^= 0x01
        db.execute("UPDATE events SET state = ? WHERE notification_id = ?", (bytes(b), nid))
        db.commit()
        db.close()
        print("corrupted")
        """

    /// Takes an exclusive lock, says "locked", holds it for argv[2] seconds, then releases.
    static let holdLock = """
        import sqlite3, sys, time
        db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
        db.execute("BEGIN EXCLUSIVE")
        db.execute("UPDATE es_meta SET value = value WHERE key = 'schema_version'")
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
        db.execute("ROLLBACK")
        db.close()
        print("released", flush=True)
        """

    /// Opens argv[1] with automatic checkpoints off, commits a write (so its WAL holds a
    /// commit no checkpoint has copied), then: argv[2] "copy" copies the database, its -wal and
    /// -shm to the path argv[3] (and "copy-wal" the database and -wal only) and exits; "hold"
    /// says "ready" and keeps the connection open for argv[3] seconds. An argv[4], if given, is
    /// SQL committed in the WAL too.
    static let liveWAL = """
        import shutil, sqlite3, sys, time
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("INSERT OR REPLACE INTO es_meta (key, value) VALUES ('esctl_test_marker', 1)")
        if len(sys.argv) > 4:
            db.executescript(sys.argv[4])
        if sys.argv[2] in ("copy", "copy-wal"):
            suffixes = ["", "-wal", "-shm"] if sys.argv[2] == "copy" else ["", "-wal"]
            for suffix in suffixes:
                shutil.copyfile(sys.argv[1] + suffix, sys.argv[3] + suffix)
            print("copied", flush=True)
        else:
            print("ready", flush=True)
            time.sleep(float(sys.argv[3]))
        db.close()
        """

    /// Runs argv[2] (one SQL statement, or several separated by ';') on argv[1] and commits.
    static let execute = """
        import sqlite3, sys
        db = sqlite3.connect(sys.argv[1])
        db.executescript(sys.argv[2])
        db.commit()
        db.close()
        print("done")
        """

    /// Prints one scalar query result.
    static let query = """
        import sqlite3, sys
        db = sqlite3.connect(sys.argv[1])
        print(db.execute(sys.argv[2]).fetchone()[0])
        db.close()
        """

    /// Watches the store argv[1]: says "ready" once it reads it, then, as soon as some but not
    /// all of its argv[3] data keys are wrapped by master key argv[2], sends signal argv[4] to
    /// the process whose id is in the file argv[5] and prints "signalled N"; prints "gone" if
    /// that process ended first, "timeout" after argv[6] seconds.
    static let signalWhenMidway = """
        import os, sqlite3, sys, time
        db, new_id, total, signo, pidfile, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
        conn = sqlite3.connect(db, timeout=1)
        count = lambda: conn.execute("SELECT count(*) FROM data_keys WHERE kek_id = ?", (new_id,)).fetchone()[0]
        count()
        print("ready", flush=True)
        def read_pid():
            text = open(pidfile).read().strip() if os.path.exists(pidfile) else ""
            return int(text) if text.isdigit() else None
        deadline = time.time() + limit
        pid = None
        while time.time() < deadline:
            pid = pid or read_pid()
            try:
                n = count()
            except sqlite3.Error:
                n = -1
            if 0 < n < total:
                while pid is None and time.time() < deadline:
                    pid = read_pid()
                os.kill(pid, signo)
                print("signalled", n, flush=True)
                sys.exit(0)
            if pid is not None:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    print("gone", n, flush=True)
                    sys.exit(0)
            time.sleep(0.0005)
        print("timeout", flush=True)
        """

    static func run(_ script: String, _ args: [String], in ws: Workspace,
                    sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let r = try await CLI.python(script, args, scratch: ws.dir)
        try #require(r.status == 0, "python3 failed: \(r.summary)", sourceLocation: sourceLocation)
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

extension Workspace {
    /// Runs esctl with `args` (a master-key rotation of the store at `path`) and sends it
    /// `signal` the moment the store holds some, not all, of its `total` data keys under master
    /// key `newKeyID`: a watcher process polls the store from before esctl starts, so the moment
    /// does not depend on how fast the rotation is or how loaded the machine is.
    /// - Returns: esctl's result, and the watcher's last line (`signalled N` when it signalled).
    func runSignalledMidway(_ args: [String], store path: String, newKeyID: String, total: Int, signal: Int32,
                            sourceLocation: SourceLocation = #_sourceLocation) async throws -> (CLI.Result, String) {
        let pidFile = self.path(".pid-\(UUID().uuidString.prefix(8))")
        let watcher = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"),
                                    ["python3", "-u", "-c", Py.signalWhenMidway, path, newKeyID, "\(total)", "\(signal)", pidFile, "120"],
                                    env: CLI.cleanEnvironment(home: dir.path), cwd: dir, scratch: dir)
        // A deadline only for a watcher that never gets ready (its last line then says so).
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, watcher.process.isRunning,
              (try? String(contentsOf: watcher.outURL, encoding: .utf8))?.contains("ready") != true {
            try await Task.sleep(for: .milliseconds(5))
        }
        let running = try start(args)
        try "\(running.pid)".write(toFile: pidFile, atomically: true, encoding: .utf8)
        let watched = await watcher.wait()
        let result = await finish(running, args: args, sourceLocation: sourceLocation)
        try? FileManager.default.removeItem(atPath: pidFile)
        let last = watched.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return (result, last + (watched.stderr.isEmpty ? "" : "; stderr: " + watched.stderr.prefix(300)))
    }
}
