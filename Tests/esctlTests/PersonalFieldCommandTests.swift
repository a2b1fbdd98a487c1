import ESTestTags
import EventSourcing
import EventSourcingPostgres
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// A delivery naming two people: its customer (the aggregate's data subject, so the record's own
/// key scope) and its courier (a subject of its own). For esctl's handling of personal fields.
struct Delivery: Aggregate {
    static var typeName: String { "Delivery" }

    enum Event: Codable, Sendable {
        case placed(customerID: String, customer: Personal<String>, address: Personal<String>, courier: Personal<String>, amount: Int)
        case rerouted(courier: Personal<String>)
        /// A sealed field copied in as plain data: how a tampered or moved field looks to a reader.
        case copied(field: JSONValue)
        /// Several personal values in one array (their items share a path).
        case noted(names: [Personal<String>])
    }

    var customerID = ""
    var customer: Personal<String>?
    var address: Personal<String>?
    var courier: Personal<String>?
    var amount = 0

    var dataSubject: String? { customerID.isEmpty ? nil : customerID }

    mutating func apply(_ event: Event) {
        switch event {
        case .placed(let id, let customer, let address, let courier, let amount):
            customerID = id
            self.customer = customer
            self.address = address
            self.courier = courier
            self.amount = amount
        case .rerouted(let courier):
            self.courier = courier
        case .copied, .noted:
            break
        }
    }

    static func placed(_ customerID: String, _ name: String, _ address: String, courier: String, _ courierName: String,
                       amount: Int) -> Event {
        .placed(customerID: customerID, customer: Personal(name), address: Personal(address),
                courier: Personal(courierName, subject: courier), amount: amount)
    }
}

/// What `PersonalFieldStore.seed` wrote.
struct Deliveries {
    static let ada = "cust-ada", eve = "cust-eve", bob = "courier-bob", kim = "courier-kim"
    /// Ada's first order (Bob, then rerouted to Kim), her second (Kim), Eve's (Bob, snapshotted).
    var adaFirst = UUID(), adaSecond = UUID(), eveOrder = UUID()
    /// notification id of (aggregate, version).
    var ids: [String: Int64] = [:]

    func id(_ aggregate: UUID, _ version: Int) -> Int64 { ids["\(aggregate) \(version)"] ?? -1 }
}

enum PersonalFieldStore {
    /// Initialises the workspace's store and seeds it.
    static func seeded(_ ws: Workspace) async throws -> (Deliveries, MasterKey) {
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        return (try await seed(ws.storePath, key: key), key)
    }

    /// Seeds three deliveries: 4 events (10 personal fields) and a snapshot of Eve's (3 fields).
    static func seed(_ path: String, key: MasterKey) async throws -> Deliveries {
        let (store, _, app) = try await Stores.open(path, keys: [key])
        var d = Deliveries()
        do {
            var first = try AggregateRoot<Delivery>(Delivery.placed(Deliveries.ada, "Ada Lovelace", "12 Analytical Row",
                                                                    courier: Deliveries.bob, "Bob Courier", amount: 120))
            try first.record(.rerouted(courier: Personal("Kim Rider", subject: Deliveries.kim)))
            var second = try AggregateRoot<Delivery>(Delivery.placed(Deliveries.ada, "Ada Lovelace", "12 Analytical Row",
                                                                     courier: Deliveries.kim, "Kim Rider", amount: 80))
            var eve = try AggregateRoot<Delivery>(Delivery.placed(Deliveries.eve, "Eve Online", "3 Byte Street",
                                                                  courier: Deliveries.bob, "Bob Courier", amount: 50))
            var saved = try await app.save(&first)
            saved += try await app.save(&second)
            saved += try await app.save(&eve)
            try await app.takeSnapshot(Delivery.self, id: eve.id)
            (d.adaFirst, d.adaSecond, d.eveOrder) = (first.id, second.id, eve.id)
            for r in saved { d.ids["\(r.originatorID) \(r.originatorVersion)"] = r.notificationID }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        return d
    }

    /// The sealed-field object at `e.<case>.<field>` of event `version` of `aggregate`, as stored.
    static func sealedField(_ path: String, key: MasterKey, aggregate: UUID, version: Int, case name: String,
                            field: String) async throws -> JSONValue {
        let (store, _, app) = try await Stores.open(path, keys: [key])
        do {
            let stored = try #require(try await store.selectEvents(originatorID: aggregate).first { $0.originatorVersion == version })
            let text = try await app.mapper.open(stored, snapshot: false)
            await store.close()
            let envelope = try JSONDecoder().decode(JSONValue.self, from: Data(text))
            let sealed = try #require(envelope["e"]?[name]?[field])
            try #require(sealed["$pf"] != nil, "not a sealed field: the record's personal fields are not stored sealed")
            return sealed
        } catch {
            await store.close()
            throw error
        }
    }

    /// Appends a `copied` event holding `field` to `aggregate`; returns its notification id.
    static func appendCopy(_ path: String, key: MasterKey, aggregate: UUID, field: JSONValue) async throws -> Int64 {
        let (store, _, app) = try await Stores.open(path, keys: [key])
        do {
            var root = try await app.repository.get(Delivery.self, id: aggregate)
            try root.record(.copied(field: field))
            let saved = try await app.save(&root)
            await store.close()
            return try #require(saved.last?.notificationID)
        } catch {
            await store.close()
            throw error
        }
    }

    /// Appends `event` to `aggregate` with a mapper of `encoding`; returns its notification id.
    static func append(_ path: String, key: MasterKey, aggregate: UUID, _ event: Delivery.Event,
                       encoding: Mapper.PayloadEncoding = .compact) async throws -> Int64 {
        let (store, keyring, _) = try await Stores.open(path, keys: [key])
        do {
            let app = Application(recorder: store, snapshots: store,
                                  mapper: Mapper(keyring: keyring, configuration: .init(encoding: encoding)), logger: Stores.quiet)
            var root = try await app.repository.get(Delivery.self, id: aggregate)
            try root.record(event)
            let saved = try await app.save(&root)
            await store.close()
            return try #require(saved.last?.notificationID)
        } catch {
            await store.close()
            throw error
        }
    }

    static func shred(_ path: String, key: MasterKey, scope: String) async throws {
        let (store, _, app) = try await Stores.open(path, keys: [key])
        do { _ = try await app.shred(keyScope: scope) } catch {
            await store.close()
            throw error
        }
        await store.close()
    }
}

/// Issue 16 in esctl: `export` includes the subject's personal fields in other subjects'
/// aggregates and never another subject's; `verify` counts redacted fields as such and names a
/// field that does not open.
@Suite("esctl and personal fields", .tags(.multiProcess))
struct PersonalFieldCommandTests {
    static func seeded(_ name: String = #function) async throws -> (Workspace, Deliveries, MasterKey) {
        let ws = try Workspace(name)
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let d = try await PersonalFieldStore.seed(ws.storePath, key: key)
        return (ws, d, key)
    }

    static func lines(_ r: CLI.Result) throws -> [[String: Any]] {
        try r.stdout.split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
        }
    }

    // MARK: export

    @Test("export of a courier lists its name in the customers' orders (record, path, value) and nothing of theirs")
    func exportFieldsElsewhere() async throws {
        let (ws, d, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["export", Deliveries.bob])
        #expect(r.status == 0, "\(r.summary)")
        let lines = try Self.lines(r)
        #expect(lines.allSatisfy { $0["kind"] as? String == "personal_field" }, "the courier has no events of its own: \(r.stdout)")
        let found = lines.map { ($0["notification_id"] as? Int).map(Int64.init) ?? -1 }
        #expect(found == [d.id(d.adaFirst, 1), d.id(d.eveOrder, 1)], "both orders Bob delivered, in log order: \(r.stdout)")
        for (line, order) in zip(lines, [d.adaFirst, d.eveOrder]) {
            #expect(line["originator_id"] as? String == order.uuidString.lowercased())
            #expect(line["originator_version"] as? Int == 1)
            #expect(line["topic"] as? String == "Delivery.placed")
            #expect(line["path"] as? [String] == ["e", "placed", "courier"])
            #expect(line["value"] as? String == "Bob Courier")
            #expect(line["redacted"] as? Bool == false)
            #expect(isISODate(line["recorded_at"]))
        }
        for other in ["Ada", "Eve", "Kim", "Analytical", "Byte Street", "$pf"] {
            #expect(!r.stdout.contains(other), "another subject's data (or a sealed field) in Bob's export: \(other)")
        }

        // Kim: the rerouting in Ada's first order and Ada's second order; never Bob's field there.
        let kim = try Self.lines(try await ws.esctl(ws.with() + ["export", Deliveries.kim]))
        #expect(kim.map { $0["notification_id"] as? Int } == [Int(d.id(d.adaFirst, 2)), Int(d.id(d.adaSecond, 1))])
        #expect(kim.map { $0["path"] as? [String] } == [["e", "rerouted", "courier"], ["e", "placed", "courier"]])
        #expect(kim.allSatisfy { $0["value"] as? String == "Kim Rider" })

        // The same in one document, with its members.
        let doc = try parseJSONObject(try await ws.esctl(ws.with() + ["export", Deliveries.bob, "--json"]))
        #expect((doc["events"] as? [Any])?.isEmpty == true)
        let fields = try #require(doc["personal_fields"] as? [[String: Any]])
        #expect(fields.map { $0["value"] as? String } == ["Bob Courier", "Bob Courier"])
        #expect(doc["records_not_searched"] as? Int == 0)
    }

    @Test("export of a customer shows her own personal fields in her events and withholds the courier's")
    func exportOwnFields() async throws {
        let (ws, d, _) = try await Self.seeded()
        let r = try await ws.esctl(ws.with() + ["export", Deliveries.ada])
        #expect(r.status == 0, "\(r.summary)")
        let lines = try Self.lines(r)
        #expect(lines.map { $0["kind"] as? String } == ["event", "event", "event"], "her three events and no field elsewhere")
        let first = try #require(lines.first { $0["notification_id"] as? Int == Int(d.id(d.adaFirst, 1)) })
        let placed = try #require((first["event"] as? [String: Any])?["placed"] as? [String: Any])
        #expect(placed["customer"] as? String == "Ada Lovelace")
        #expect(placed["address"] as? String == "12 Analytical Row")
        #expect(placed["amount"] as? Int == 120)
        #expect(placed["customerID"] as? String == Deliveries.ada)
        let withheld = try #require(placed["courier"] as? [String: Any], "the courier's field is withheld: \(placed)")
        #expect(withheld["withheld"] as? String == "personal data of another data subject")
        for other in ["Bob", "Kim", "Eve", "$pf"] {
            #expect(!r.stdout.contains(other), "another subject's data (or a sealed field) in Ada's export: \(other)")
        }
    }

    @Test("export: one of the subject's fields that does not open (copied from another record) exits 67 naming the record and field")
    func exportTamperedOwnField() async throws {
        let (ws, d, key) = try await Self.seeded()
        // Ada's name, sealed for her first order, copied into her second: its tag binds it to the first.
        let sealed = try await PersonalFieldStore.sealedField(ws.storePath, key: key, aggregate: d.adaFirst, version: 1,
                                                              case: "placed", field: "customer")
        let nid = try await PersonalFieldStore.appendCopy(ws.storePath, key: key, aggregate: d.adaSecond, field: sealed)
        for extra in [[], ["--json"]] {
            let r = try await ws.esctl(ws.with() + ["export", Deliveries.ada] + extra)
            #expect(r.status == CLI.Code.verificationFailed, "\(extra): \(r.summary)")
            #expect(r.stderrLines.count == 1, "\(r.summary)")
            #expect(r.stderr.contains("notification \(nid)") && r.stderr.contains("version 2")
                        && r.stderr.contains("field e.placed.customer") && r.stderr.contains("integrityFailure"), "\(r.summary)")
        }
        let out = ws.path("sar.json")
        let file = try await ws.esctl(ws.with() + ["export", Deliveries.ada, "--output", out])
        #expect(file.status == CLI.Code.verificationFailed, "\(file.summary)")
        #expect(!FileManager.default.fileExists(atPath: out), "a partial export file was left behind")

        // Bob's export does not depend on Ada's field; his own copied into another order fails his.
        #expect(try await ws.esctl(ws.with() + ["export", Deliveries.bob]).status == 0)
        let bobs = try await PersonalFieldStore.sealedField(ws.storePath, key: key, aggregate: d.eveOrder, version: 1,
                                                            case: "placed", field: "courier")
        let moved = try await PersonalFieldStore.appendCopy(ws.storePath, key: key, aggregate: d.adaFirst, field: bobs)
        let bob = try await ws.esctl(ws.with() + ["export", Deliveries.bob])
        #expect(bob.status == CLI.Code.verificationFailed, "\(bob.summary)")
        #expect(bob.stderr.contains("notification \(moved)") && bob.stderr.contains("field e.placed.courier"), "\(bob.summary)")
        #expect(!bob.stderr.contains("Bob Courier"), "an error message quotes the field's plaintext")
        // Ada's export withholds Bob's (failing) field in her order: it is not hers.
        let ada = try await ws.esctl(ws.with() + ["export", Deliveries.ada, "--json"])
        #expect(ada.status == CLI.Code.verificationFailed, "her own copied field still fails it: \(ada.summary)")
        #expect(ada.stderr.contains("notification \(nid)"), "\(ada.summary)")
    }

    @Test("export: another subject's record that cannot be read is reported (warning, count), and the search goes on")
    func exportUnreadableOtherRecord() async throws {
        let (ws, d, _) = try await Self.seeded()
        // Ada's second order (Kim's field in it) is corrupted: Bob's export cannot have a field there.
        let bad = d.id(d.adaSecond, 1)
        _ = try await Py.run(Py.corrupt, [ws.storePath, "\(bad)", "3"], in: ws)
        let r = try await ws.esctl(ws.with() + ["export", Deliveries.bob])
        #expect(r.status == 0, "\(r.summary)")
        #expect(try Self.lines(r).count == 2, "both of Bob's fields are still found")
        #expect(r.stderr.contains("warning: this export may not hold all of the subject's personal fields: 1 record")
                    && r.stderr.contains("notification \(bad)"), "\(r.summary)")
        let doc = try parseJSONObject(try await ws.esctl(ws.with() + ["export", Deliveries.bob, "--json"]))
        #expect(doc["records_not_searched"] as? Int == 1)
        #expect((doc["personal_fields"] as? [Any])?.count == 2)
    }

    @Test("export of a subject known only from fields of a shredded subject exits 69; a shredded courier stays withheld in the customer's")
    func exportAfterShred() async throws {
        let (ws, _, key) = try await Self.seeded()
        try await PersonalFieldStore.shred(ws.storePath, key: key, scope: Deliveries.bob)
        let bob = try await ws.esctl(ws.with() + ["export", Deliveries.bob])
        #expect(bob.status == CLI.Code.scopeShredded, "\(bob.summary)")
        #expect(bob.stdout.isEmpty)
        let ada = try await ws.esctl(ws.with() + ["export", Deliveries.ada])
        #expect(ada.status == 0, "\(ada.summary)")
        #expect(ada.stdout.contains("Ada Lovelace") && !ada.stdout.contains("Bob"))
        #expect(try Self.lines(ada).count == 3)
    }

    @Test("export: items of one array of personal fields, of two subjects, in a JSON-encoded record, each in its place")
    func exportArrayAndJSON() async throws {
        let (ws, d, key) = try await Self.seeded()
        let names: [Personal<String>] = [Personal("Ada Alias"), Personal("Kim Karma", subject: Deliveries.kim), Personal("Ada Again"),
                                         Personal("Kim Kestrel", subject: Deliveries.kim)]
        let compact = try await PersonalFieldStore.append(ws.storePath, key: key, aggregate: d.adaSecond, .noted(names: names))
        let json = try await PersonalFieldStore.append(ws.storePath, key: key, aggregate: d.adaFirst, .noted(names: names), encoding: .json)
        let ada = try Self.lines(try await ws.esctl(ws.with() + ["export", Deliveries.ada]))
        let withheld: [String: Any] = ["withheld": "personal data of another data subject"]
        for nid in [compact, json] {
            let line = try #require(ada.first { $0["notification_id"] as? Int == Int(nid) }, "notification \(nid) not exported")
            let items = try #require((line["event"] as? [String: Any])?["noted"] as? [String: Any])["names"] as? [Any]
            #expect(items?.count == 4)
            #expect(items?[0] as? String == "Ada Alias" && items?[2] as? String == "Ada Again", "\(line)")
            #expect((items?[1] as? [String: String]) == (withheld as? [String: String]) && (items?[3] as? [String: String]) == (withheld as? [String: String]))
        }
        let kim = try Self.lines(try await ws.esctl(ws.with() + ["export", Deliveries.kim]))
        let noted = kim.filter { $0["topic"] as? String == "Delivery.noted" }
        #expect(noted.map { $0["notification_id"] as? Int } == [Int(compact), Int(compact), Int(json), Int(json)])
        #expect(noted.map { $0["value"] as? String } == ["Kim Karma", "Kim Kestrel", "Kim Karma", "Kim Kestrel"])
        #expect(noted.allSatisfy { $0["path"] as? [String] == ["e", "noted", "names"] })
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0 && verify.stdout.contains("fields:    21 ok, 0 redacted, 0 failing"), "\(verify.summary) \(verify.stdout)")
    }

    @Test("export: a field written redacted (copied after its subject's shred, in an array) is withheld in the customer's export, not a failure")
    func exportWrittenRedacted() async throws {
        let (ws, d, key) = try await Self.seeded()
        try await PersonalFieldStore.shred(ws.storePath, key: key, scope: Deliveries.bob)
        // Eve's order read after Bob's shred: its courier is redacted; copied into Ada's order, in an array.
        let (store, _, app) = try await Stores.open(ws.storePath, keys: [key])
        let courier: Personal<String>
        do {
            courier = try #require(try await app.repository.get(Delivery.self, id: d.eveOrder).state.courier)
            await store.close()
        } catch {
            await store.close()
            throw error
        }
        #expect(courier.isRedacted)
        let nid = try await PersonalFieldStore.append(ws.storePath, key: key, aggregate: d.adaSecond,
                                                      .noted(names: [Personal("Ada Alias"), courier]))
        let r = try await ws.esctl(ws.with() + ["export", Deliveries.ada])
        #expect(r.status == 0, "\(r.summary)")
        let line = try #require(try Self.lines(r).first { $0["notification_id"] as? Int == Int(nid) })
        let items = ((line["event"] as? [String: Any])?["noted"] as? [String: Any])?["names"] as? [Any]
        #expect(items?.first as? String == "Ada Alias")
        #expect((items?.last as? [String: Any])?["withheld"] as? String == "personal data of another data subject", "\(line)")
        let verify = try await ws.esctl(ws.with() + ["verify"])
        #expect(verify.status == 0 && verify.stdout.contains(", 4 redacted, 0 failing"), "\(verify.stdout)")
    }

    // MARK: verify

    @Test("verify counts personal fields; after a shred they are counted and named as redacted, not as failures")
    func verifyRedacted() async throws {
        let (ws, d, key) = try await Self.seeded()
        let before = try await ws.esctl(ws.with() + ["verify"])
        #expect(before.status == 0, "\(before.summary)")
        #expect(before.stdout.contains("events:    4 ok, 0 shredded, 0 plaintext, 0 failing"), "\(before.stdout)")
        #expect(before.stdout.contains("fields:    13 ok, 0 redacted, 0 failing"), "\(before.stdout)")

        try await PersonalFieldStore.shred(ws.storePath, key: key, scope: Deliveries.bob)
        let r = try await ws.esctl(ws.with() + ["verify"])
        #expect(r.status == 0, "redacted fields are not failures: \(r.summary)")
        #expect(r.stdout.contains("events:    4 ok, 0 shredded, 0 plaintext, 0 failing, 1 erasure record"), "\(r.stdout)")
        #expect(r.stdout.contains("snapshots: 1 ok, 0 shredded, 0 plaintext, 0 failing"), "\(r.stdout)")
        #expect(r.stdout.contains("fields:    10 ok, 3 redacted, 0 failing"), "\(r.stdout)")
        let redacted = r.stdout.split(separator: "\n").filter { $0.hasPrefix("REDACTED") }
        #expect(redacted.count == 3, "\(r.stdout)")
        #expect(redacted.contains { $0.hasPrefix("REDACTED event notification \(d.id(d.adaFirst, 1)),") && $0.contains("field e.placed.courier") })
        #expect(redacted.contains { $0.hasPrefix("REDACTED event notification \(d.id(d.eveOrder, 1)),") && $0.contains("field e.placed.courier") })
        #expect(redacted.contains { $0.hasPrefix("REDACTED snapshot aggregate \(d.eveOrder.uuidString.lowercased())") && $0.contains("field s.courier") })
        #expect(redacted.allSatisfy { $0.contains("subject \(Deliveries.bob) shredded at ") }, "\(redacted)")
        #expect(!r.stdout.contains("FAIL"))

        let j = try parseJSONObject(try await ws.esctl(ws.with() + ["verify", "--json"]))
        let fields = try #require(j["fields"] as? [String: Any])
        #expect(fields["ok"] as? Int == 10 && fields["redacted"] as? Int == 3 && fields["failing"] as? Int == 0, "\(fields)")
        let list = try #require(j["redacted_fields"] as? [[String: Any]])
        #expect(list.count == 3)
        #expect(list.allSatisfy { $0["subject"] as? String == Deliveries.bob && isISODate($0["shredded_at"]) })
        #expect(Set(list.compactMap { $0["notification_id"] as? Int }) == [Int(d.id(d.adaFirst, 1)), Int(d.id(d.eveOrder, 1))])
        #expect(list.contains { $0["kind"] as? String == "snapshot" && $0["field"] as? [String] == ["s", "courier"] })
        #expect((j["failures"] as? [Any])?.isEmpty == true)
    }

    @Test("verify: a sealed field copied to another record is a failure naming the record and the field; the rest is counted")
    func verifyTamperedField() async throws {
        let (ws, d, key) = try await Self.seeded()
        let sealed = try await PersonalFieldStore.sealedField(ws.storePath, key: key, aggregate: d.adaFirst, version: 1,
                                                              case: "placed", field: "courier")
        let nid = try await PersonalFieldStore.appendCopy(ws.storePath, key: key, aggregate: d.eveOrder, field: sealed)
        let r = try await ws.esctl(ws.with() + ["verify"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        #expect(r.stdout.contains("events:    4 ok, 0 shredded, 0 plaintext, 1 failing"), "\(r.stdout)")
        #expect(r.stdout.contains("fields:    13 ok, 0 redacted, 1 failing"), "\(r.stdout)")
        let fail = r.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(fail.count == 1, "\(r.stdout)")
        let line = try #require(fail.first)
        #expect(line.hasPrefix("FAIL event notification \(nid), aggregate \(d.eveOrder.uuidString.lowercased()), version 2, topic Delivery.copied"),
                "\(line)")
        #expect(line.contains("scope \(Deliveries.bob), field e.placed.courier: integrityFailure"), "\(line)")
        #expect(!r.stdout.contains("Bob Courier"))

        let j = try parseJSONObject(try await ws.esctl(ws.with() + ["verify", "--json"]))
        let failures = try #require(j["failures"] as? [[String: Any]])
        #expect(failures.count == 1)
        #expect(failures.first?["notification_id"] as? Int == Int(nid))
        #expect(failures.first?["field"] as? [String] == ["e", "placed", "courier"])
        #expect(failures.first?["error"] as? String == "integrityFailure")
        #expect((j["fields"] as? [String: Any])?["failing"] as? Int == 1)
    }

    @Test("verify: a sealed-field object that is not one (no key version, no ciphertext) is a failure, not a crash")
    func verifyMalformedField() async throws {
        let (ws, d, key) = try await Self.seeded()
        let forged: JSONValue = .object(["$pf": .int(1), "s": .string(Deliveries.kim), "k": .string("one"), "p": .array([.string("e")])])
        let nid = try await PersonalFieldStore.appendCopy(ws.storePath, key: key, aggregate: d.adaSecond, field: forged)
        let r = try await ws.esctl(ws.with() + ["verify", "--json"])
        #expect(r.status == CLI.Code.verificationFailed, "\(r.summary)")
        let j = try parseJSONObject(r)
        let failures = try #require(j["failures"] as? [[String: Any]])
        #expect(failures.map { $0["notification_id"] as? Int } == [Int(nid)])
        #expect(failures.first?["error"] as? String == "decodingFailed")
        // Kim's export fails on it too: it claims to be hers and does not open.
        let kim = try await ws.esctl(ws.with() + ["export", Deliveries.kim])
        #expect(kim.status == CLI.Code.verificationFailed && kim.stderr.contains("notification \(nid)"), "\(kim.summary)")
    }
}

@Suite("esctl and personal fields on PostgreSQL", .enabled(if: PostgresServer.enabled), .tags(.postgres, .multiProcess))
struct PersonalFieldPostgresCommandTests {
    @Test("export finds a courier's fields in customers' orders and verify counts them redacted after the courier's shred, on PostgreSQL")
    func exportAndVerify() async throws {
        let base = try #require(PostgresServer.url, "CI=true but ES_POSTGRES_URL is not set")
        let schema = "esctl_pf_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        var config = try PostgresStore.Configuration(url: base)
        config.tls = .disable
        config.schema = schema
        let password = try #require(config.password)
        let storeURL = "postgres://\(config.username)@\(config.host):\(config.port)/\(config.database)?sslmode=disable&schema=\(schema)"
        let ws = try Workspace()
        let env = ["PGPASSWORD": password]
        let opts = ["--store", storeURL, "--master-key-file", ws.keyPath]
        let initResult = try await ws.esctl(["--store", storeURL, "init", "--new-master-key-file", ws.keyPath], env: env)
        try #require(initResult.status == 0, "\(initResult.summary)")
        ws.learnKeyFiles()
        let key = try MasterKey(contentsOfFile: ws.keyPath)

        let store = try await PostgresStore(configuration: config)
        let keyring = try await Keyring.open(store: store, masterKeys: [key])
        let app = Application(recorder: store, snapshots: store, mapper: Mapper(keyring: keyring))
        var ada = try AggregateRoot<Delivery>(Delivery.placed(Deliveries.ada, "Ada Lovelace", "12 Analytical Row",
                                                              courier: Deliveries.bob, "Bob Courier", amount: 120))
        var eve = try AggregateRoot<Delivery>(Delivery.placed(Deliveries.eve, "Eve Online", "3 Byte Street",
                                                              courier: Deliveries.bob, "Bob Courier", amount: 50))
        do {
            try await app.save(&ada, &eve)
        } catch {
            await store.close()
            throw error
        }

        let bob = try await ws.esctl(opts + ["export", Deliveries.bob], env: env)
        #expect(bob.status == 0, "\(bob.summary)")
        let fields = try PersonalFieldCommandTests.lines(bob)
        #expect(fields.map { $0["originator_id"] as? String } == [ada.id, eve.id].map { $0.uuidString.lowercased() })
        #expect(fields.allSatisfy { $0["value"] as? String == "Bob Courier" && $0["kind"] as? String == "personal_field" })
        #expect(!bob.stdout.contains("Ada") && !bob.stdout.contains("Eve"))
        let adaExport = try await ws.esctl(opts + ["export", Deliveries.ada], env: env)
        #expect(adaExport.status == 0 && adaExport.stdout.contains("Ada Lovelace") && !adaExport.stdout.contains("Bob"), "\(adaExport.summary)")

        do {
            _ = try await app.shred(keyScope: Deliveries.bob)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        let verify = try await ws.esctl(opts + ["verify"], env: env)
        #expect(verify.status == 0, "\(verify.summary)")
        #expect(verify.stdout.contains("fields:    4 ok, 2 redacted, 0 failing"), "\(verify.stdout)")
        #expect(verify.stdout.split(separator: "\n").filter { $0.hasPrefix("REDACTED event") }.count == 2, "\(verify.stdout)")
    }
}
