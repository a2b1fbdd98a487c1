import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// Unencrypted (plaintext) records, written by an application without its keyring through a
/// store opened for a migration, are reported: `verify` counts them in a column of their own
/// and fails (67); `keys shred` and `export` say the store holds them.
@Suite("esctl reports plaintext records", .tags(.multiProcess))
struct PlaintextReportingTests {
    /// A seeded store with 3 plaintext events (one of the subject's first account) and 1 plaintext snapshot.
    static func withPlaintext(_ name: String = #function) async throws -> (Workspace, Seeded) {
        let (ws, s, _) = try await CommandTests.seeded(name)
        try await Stores.seedPlaintext(ws.storePath, seeded: s)
        return (ws, s)
    }

    @Test("verify counts plaintext events and snapshots in their own column, names none as failing, and exits 67")
    func verifyCountsPlaintext() async throws {
        let (ws, s) = try await Self.withPlaintext()
        let text = try await ws.esctl(ws.with() + ["verify"])
        #expect(text.status == CLI.Code.verificationFailed, "\(text.summary)")
        #expect(text.stdout.contains("events:    \(s.totalEvents) ok, 0 shredded, 3 plaintext, 0 failing"), "\(text.stdout)")
        #expect(text.stdout.contains("snapshots: \(s.snapshots) ok, 0 shredded, 1 plaintext, 0 failing"), "\(text.stdout)")
        #expect(!text.stdout.contains("FAIL"), "\(text.stdout)")
        #expect(text.stderrLines.count == 1 && text.stderr.contains("esctl: unencrypted (plaintext) records, which no shred can erase: 4"), "\(text.summary)")

        let r = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        let j = try parseJSONObject(r)
        let events = try #require(j["events"] as? [String: Any])
        let snapshots = try #require(j["snapshots"] as? [String: Any])
        #expect(events["plaintext"] as? Int == 3 && events["ok"] as? Int == s.totalEvents && events["failing"] as? Int == 0, "\(events)")
        #expect(snapshots["plaintext"] as? Int == 1 && snapshots["ok"] as? Int == s.snapshots, "\(snapshots)")
        #expect((j["failures"] as? [Any])?.isEmpty == true)
    }

    @Test("verify: a plaintext record that does not open is failing, not plaintext")
    func brokenPlaintextIsFailing() async throws {
        let (ws, s) = try await Self.withPlaintext()
        // The plaintext event of the subject's account, cut short: its payload no longer decodes.
        let nid = try await Py.run(Py.query, [ws.storePath, "SELECT notification_id FROM events WHERE key_scope IS NULL AND originator_version = 4"], in: ws)
        _ = try await Py.run(Py.execute, [ws.storePath, "UPDATE events SET state = substr(state, 1, length(state) - 3) WHERE notification_id = \(nid)"], in: ws)
        let r = try await ws.esctl(ws.with() + ["verify"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        #expect(r.stdout.contains("events:    \(s.totalEvents) ok, 0 shredded, 2 plaintext, 1 failing"), "\(r.stdout)")
        let fail = r.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(fail.count == 1 && fail.first?.contains("notification \(nid)") == true && fail.first?.contains("scope -") == true, "\(r.stdout)")
    }

    @Test("keys shred says the store holds plaintext events: a stderr warning, a JSON field and a receipt line")
    func shredSaysPlaintext() async throws {
        let (ws, s) = try await Self.withPlaintext()
        let r = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["plaintext_events_in_store"] as? Int == 3, "\(j)")
        #expect(j["events_affected"] as? Int == s.subjectEvents)
        #expect(r.stderrLines.contains { $0.hasPrefix("esctl: warning: the store holds unencrypted (plaintext) events")
                                         && $0.contains("this receipt does not cover: 3") }, "\(r.summary)")

        let text = try await ws.esctl(ws.with() + ["keys", "shred", s.bobScope, "--yes"])
        #expect(text.status == 0, "\(text.summary)")
        #expect(text.stdout.contains("  plaintext events:       3 (anywhere in the store; no shred erases them)"), "\(text.stdout)")
        #expect(text.stderr.contains("esctl: warning: the store holds unencrypted (plaintext) events"), "\(text.summary)")
    }

    @Test("keys shred on a store without plaintext: the field is 0 and there is no warning")
    func shredWithoutPlaintext() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let r = try await ws.esctl(ws.with() + ["keys", "shred", s.subject, "--yes", "--json"])
        #expect(r.status == 0, "\(r.summary)")
        #expect(try parseJSONObject(r)["plaintext_events_in_store"] as? Int == 0)
        #expect(!r.stderr.contains("warning: the store holds"), "\(r.summary)")
    }

    @Test("export says how many plaintext events the store holds and how many belong to the exported aggregates")
    func exportSaysPlaintext() async throws {
        let (ws, s) = try await Self.withPlaintext()
        // The subject: one plaintext event belongs to one of its accounts, and is not exported.
        let alice = try await ws.esctl(ws.with() + ["export", s.subject, "--json"])
        #expect(alice.status == 0, "\(alice.summary)")
        let aj = try parseJSONObject(alice)
        #expect((aj["events"] as? [Any])?.count == s.subjectEvents)
        #expect(aj["plaintext_events_in_store"] as? Int == 3, "\(aj)")
        #expect(aj["plaintext_events_of_exported_aggregates"] as? Int == 1, "\(aj)")
        #expect(!alice.stdout.contains("Ada in the clear"))
        #expect(alice.stderrLines == ["esctl: warning: this export is not all of the subject's data: unencrypted (plaintext) events "
                                      + "of the exported aggregates are not in it (they are under no scope): 1 (3 in the whole store)"],
                "\(alice.summary)")

        // Bob: none of them is his (his scope is his aggregate id); the warning says so.
        let bob = try await ws.esctl(ws.with() + ["export", s.bobScope, "--format", "json"])
        #expect(bob.status == 0, "\(bob.summary)")
        let bj = try parseJSONObject(bob)
        #expect(bj["plaintext_events_in_store"] as? Int == 3 && bj["plaintext_events_of_exported_aggregates"] as? Int == 0, "\(bj)")
        #expect(bob.stderr.contains("esctl: warning: the store holds unencrypted (plaintext) events, which are under no scope and in no export: 3; none belongs to an exported aggregate"), "\(bob.summary)")

        // JSON Lines has no document to carry the counts: the warning is on stderr all the same.
        let lines = try await ws.esctl(ws.with() + ["export", s.subject])
        #expect(lines.status == 0, "\(lines.summary)")
        #expect(lines.stdout.split(separator: "\n").count == s.subjectEvents)
        #expect(lines.stderr.contains("esctl: warning: this export is not all of the subject's data"), "\(lines.summary)")
    }

    @Test("export on a store without plaintext: both counts are 0 and there is no warning")
    func exportWithoutPlaintext() async throws {
        let (ws, s, _) = try await CommandTests.seeded()
        let r = try await ws.esctl(ws.with() + ["export", s.subject, "--json"])
        #expect(r.status == 0, "\(r.summary)")
        let j = try parseJSONObject(r)
        #expect(j["plaintext_events_in_store"] as? Int == 0 && j["plaintext_events_of_exported_aggregates"] as? Int == 0, "\(j)")
        #expect(r.stderr.isEmpty, "\(r.summary)")
    }
}
