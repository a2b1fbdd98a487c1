import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// A python3 helper that holds a read transaction on argv[1] (as a long report or a backup
/// would): says "reading", then keeps it until the file argv[2] exists (or 300 s pass).
private let holdReader = """
    import os, sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM data_keys").fetchone()
    print("reading", flush=True)
    deadline = time.time() + 300
    while not os.path.exists(sys.argv[2]) and time.time() < deadline:
        time.sleep(0.02)
    db.execute("COMMIT")
    db.close()
    print("done", flush=True)
    """

/// The wrapped data keys of `scope`, read with python3 (hex, so no key byte reaches any output).
private func wrappedKeys(_ ws: Workspace, _ scope: String) async throws -> [[UInt8]] {
    let hex = try await Py.run(Py.query, [ws.storePath, "SELECT group_concat(hex(wrapped), ',') FROM data_keys WHERE scope = '\(scope)'"], in: ws)
    return hex.split(separator: ",").map { h in
        stride(from: 0, to: h.count, by: 2).compactMap { i -> UInt8? in
            let a = h.index(h.startIndex, offsetBy: i)
            return UInt8(h[a...h.index(after: a)], radix: 16)
        }
    }
}

/// Whether any of `needles` (byte strings) is in the store's database, -wal or -shm file.
private func anyOnDisk(_ ws: Workspace, _ needles: [[UInt8]]) -> Bool {
    ["", "-wal", "-shm"].contains { suffix in
        guard let d = ws.bytes(ws.storePath + suffix) else { return false }
        return needles.contains { d.range(of: Data($0)) != nil }
    }
}

@Suite("esctl scrub finishes a shred that a long read transaction held up", .tags(.multiProcess))
struct ScrubCommandTests {
    @Test("Behind a reader, keys shred returns promptly and warns that residue is pending; scrub exits 70 while the reader stays, then 0 and the key bytes are gone",
          .timeLimit(.minutes(5)))
    func shredBehindReaderThenScrub() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let keys = try await wrappedKeys(ws, s.bobScope)
        try #require(keys.count == 1 && keys[0].count == 60)
        let needles = keys + keys.map { Array($0[20..<36]) }
        // Start from a checkpointed store: the key is in the database file.
        _ = try await ws.esctl(["--store", ws.storeURL, "scrub", "--wait", "5"])

        let release = ws.path("release-reader")
        let reader = try CLI.start(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-u", "-c", holdReader, ws.storePath, release],
                                   env: CLI.cleanEnvironment(home: ws.dir.path), cwd: ws.dir, scratch: ws.dir)
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, (try? String(contentsOf: reader.outURL, encoding: .utf8))?.contains("reading") != true,
              reader.process.isRunning {
            try await Task.sleep(for: .milliseconds(20))
        }
        // bob has a snapshot: the shred and the snapshot deletion each end with a checkpoint.
        let shred = try await ws.esctl(ws.with() + ["keys", "shred", s.bobScope, "--yes"])
        #expect(shred.status == 0, "\(shred.summary)")
        // A second or so of waiting for the reader, not minutes (it was 20 × 5 s per checkpoint).
        #expect(shred.seconds < 30, "keys shred took \(shred.seconds) s behind a reader")
        #expect(shred.stderr.contains("esctl scrub"), "the shred says residue is pending and how to finish: \(shred.summary)")
        #expect(anyOnDisk(ws, needles), "while the reader holds the checkpoint, the old page is still in the files")

        let blocked = try await ws.esctl(["--store", ws.storeURL, "scrub", "--wait", "1", "--json"])
        #expect(blocked.status == CLI.Code.storeLocked, "\(blocked.summary)")
        let pending = try #require(try parseJSON(blocked) as? [String: Any])
        #expect(pending["residue_pending"] as? Bool == true)
        #expect(blocked.stderr.contains("read transaction"))

        FileManager.default.createFile(atPath: release, contents: Data())
        let ended = await reader.wait()
        #expect(ended.status == 0 && ended.stdout.contains("done"), "the reader ends")

        let done = try await ws.esctl(["--store", ws.storeURL, "scrub", "--wait", "30", "--json"])
        #expect(done.status == 0, "\(done.summary)")
        let clean = try #require(try parseJSON(done) as? [String: Any])
        #expect(clean["residue_pending"] as? Bool == false)
        #expect(clean["wal_bytes"] as? Int == 0)
        #expect(!anyOnDisk(ws, needles), "a copy of the shredded key is still in the database, -wal or -shm")

        // Text output, nothing pending: exit 0 at once.
        let again = try await ws.esctl(["--store", ws.storeURL, "scrub", "--wait", "0"])
        #expect(again.status == 0 && again.stdout.hasPrefix("no residue"), "\(again.summary)")
        // The rest of the store is intact.
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0, "\(verify.summary)")
    }

    @Test("scrub refuses PostgreSQL (64), a missing store (66) and a --wait outside 0…86400 (64), and changes nothing")
    func refusals() async throws {
        let ws = try Workspace()
        let pg = try await ws.esctl(["--store", "postgres://user@127.0.0.1:1/db", "scrub"])
        #expect(pg.status == CLI.Code.usage && pg.stderr.contains("VACUUM"), "\(pg.summary)")
        let missing = try await ws.esctl(["--store", ws.storeURL, "scrub"])
        #expect(missing.status == CLI.Code.storeUnavailable, "\(missing.summary)")
        #expect(!FileManager.default.fileExists(atPath: ws.storePath))
        try await ws.initStore()
        let before = ["", "-wal", "-shm"].map { ws.bytes(ws.storePath + $0) }
        for bad in ["-1", "86401", "nan", "soon"] {
            let r = try await ws.esctl(["--store", ws.storeURL, "scrub", "--wait", bad])
            #expect(r.status == CLI.Code.usage, "--wait \(bad): \(r.summary)")
        }
        #expect(["", "-wal", "-shm"].map { ws.bytes(ws.storePath + $0) } == before)
    }
}
