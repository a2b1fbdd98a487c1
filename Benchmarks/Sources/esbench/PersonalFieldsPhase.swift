// The personal-fields phase (--personal-fields, run on its own): the per-record cost of field-level
// personal data (issue 16) beside the whole-record pipeline.
//
// One event shape of five strings from the workload (name, e-mail, address, and a city and a
// phone number derived from them), written with 0, 1 or 5 of them `Personal` (sealed under the
// record's own data subject), and with 1 naming another subject (a courier's name in a
// customer's order: a second data key). Every record is the full encrypted pipeline (compact
// Codable -> zlib -> AES-256-GCM) under one data subject whose key is cached, so the difference
// between the rows is the fields' own cost. The workload's `Customer` event (three strings) is
// measured the same way, as the reference of the per-record stage table.
//
// Encode is a save of one new aggregate to the in-memory recorder (the mapper's encode is not
// public: the figure includes the save's own work, the same for every row); decode is
// `Mapper.decode` of the stored record. Rows alternate within each round (the machine is
// noisy); reported per record, as medians over the rounds: pf_encode_ns_<row>,
// pf_decode_ns_<row>, their ratios to the 0-field row, and the mean stored record size.
//
//   swift run -c release esbench --personal-fields [--pf-records 1000] [--pf-rounds 7] [--workload FILE.jsonl.gz]
import BenchDomain
import EventSourcing
import Foundation
import KeyManagement

/// The five strings, none personal.
struct PFNone: Aggregate {
    static var typeName: String { "PFNone" }
    enum Event: Codable, Sendable { case registered(name: String, email: String, address: String, city: String, phone: String) }
    var count = 0
    var dataSubject: String? { "bench-subject" }
    mutating func apply(_ event: Event) { count += 1 }
}

/// The name personal.
struct PFOne: Aggregate {
    static var typeName: String { "PFOne" }
    enum Event: Codable, Sendable {
        case registered(name: Personal<String>, email: String, address: String, city: String, phone: String)
    }
    var count = 0
    var dataSubject: String? { "bench-subject" }
    mutating func apply(_ event: Event) { count += 1 }
}

/// All five personal.
struct PFFive: Aggregate {
    static var typeName: String { "PFFive" }
    enum Event: Codable, Sendable {
        case registered(name: Personal<String>, email: Personal<String>, address: Personal<String>, city: Personal<String>,
                        phone: Personal<String>)
    }
    var count = 0
    var dataSubject: String? { "bench-subject" }
    mutating func apply(_ event: Event) { count += 1 }
}

/// Customer-shaped records in a fixed subject, for the reference row.
struct PFCustomer: Aggregate {
    static var typeName: String { "PFCustomer" }
    typealias Event = Customer.Event
    var count = 0
    var dataSubject: String? { "bench-subject" }
    mutating func apply(_ event: Event) { count += 1 }
}

private struct PFRow {
    let name: String
    /// Saves one aggregate per payload, one save each; returns the seconds spent saving.
    let encode: (Application, ArraySlice<Payload>) async throws -> Double
    /// Decodes the records of notification ids `ids`; returns the seconds spent decoding.
    let decode: (Application, [StoredEvent]) async throws -> Double
}

private func city(_ p: Payload) -> String { String(p.address.split(separator: ",").suffix(3).first ?? "") }
private func phone(_ i: Int) -> String { "+1 555 01\(String(format: "%02d", i % 100)) \(1000 + i % 9000)" }

private func row<A: Aggregate>(_ name: String, _ type: A.Type, _ make: @escaping @Sendable (Payload, Int) -> A.Event) -> PFRow {
    PFRow(name: name, encode: { app, payloads in
        var roots: [AggregateRoot<A>] = []
        roots.reserveCapacity(payloads.count)
        for (i, p) in payloads.enumerated() { roots.append(try AggregateRoot<A>(make(p, i))) }
        let t0 = now()
        for i in roots.indices { _ = try await app.save(&roots[i]) }
        return now() - t0
    }, decode: { app, stored in
        let t0 = now()
        for s in stored {
            let e = try await app.mapper.decode(s, as: A.self)
            guard e.originatorVersion == 1 else { throw EventSourcingError(.decodingFailed, "personal-fields phase: wrong record") }
        }
        return now() - t0
    })
}

func personalFieldsPhase(_ o: Options) async throws {
    let records = max(10, o.pfRecords)
    let rounds = max(1, o.pfRounds)
    let payloads = Array(try loadWorkload(o.workload, aggs: (records + 9) / 10, perAgg: 10).joined().prefix(records))
    guard payloads.count == records else {
        throw EventSourcingError(.invalidArgument, "the workload has \(payloads.count) events, not \(records)")
    }
    let recorder = InMemoryRecorder()
    let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
    let app = Application(recorder: recorder, mapper: Mapper(keyring: keyring))
    let rows: [PFRow] = [
        row("customer", PFCustomer.self) { p, _ in .registered(name: p.name, email: p.email, address: p.address) },
        row("0", PFNone.self) { p, i in .registered(name: p.name, email: p.email, address: p.address, city: city(p), phone: phone(i)) },
        row("1", PFOne.self) { p, i in
            .registered(name: Personal(p.name), email: p.email, address: p.address, city: city(p), phone: phone(i))
        },
        row("1_other_subject", PFOne.self) { p, i in
            .registered(name: Personal(p.name, subject: "bench-courier"), email: p.email, address: p.address, city: city(p),
                        phone: phone(i))
        },
        row("5", PFFive.self) { p, i in
            .registered(name: Personal(p.name), email: Personal(p.email), address: Personal(p.address), city: Personal(city(p)),
                        phone: Personal(phone(i)))
        },
    ]
    var encode: [String: [Double]] = [:]
    var decode: [String: [Double]] = [:]
    var bytes: [String: Double] = [:]
    // Round 0 warms up (keys minted and cached, code paths faulted in) and is not reported.
    for round in 0...rounds {
        for r in rows {
            let first = (try await recorder.maxNotificationID() ?? 0) + 1
            let seconds = try await r.encode(app, payloads[...])
            let stored = try await recorder.selectNotifications(start: first, limit: records, stop: nil, topics: []).map(\.storedEvent)
            guard stored.count == records else {
                throw EventSourcingError(.recorderFailure, "personal-fields phase: \(stored.count) of \(records) records stored")
            }
            let decoding = try await r.decode(app, stored)
            guard round > 0 else { continue }
            encode[r.name, default: []].append(seconds * 1e9 / Double(records))
            decode[r.name, default: []].append(decoding * 1e9 / Double(records))
            bytes[r.name] = Double(stored.reduce(0) { $0 + $1.state.count }) / Double(records)
        }
    }
    func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
    var res: [String: Any] = ["phase": "personal_fields", "tag": o.tag, "pf_records": records, "pf_rounds": rounds]
    let base = (median(encode["0"] ?? [1]), median(decode["0"] ?? [1]))
    for r in rows {
        let (e, d) = (median(encode[r.name] ?? [0]), median(decode[r.name] ?? [0]))
        res["pf_encode_ns_\(r.name)"] = e.rounded()
        res["pf_decode_ns_\(r.name)"] = d.rounded()
        res["pf_encode_ratio_\(r.name)"] = (e / base.0 * 100).rounded() / 100
        res["pf_decode_ratio_\(r.name)"] = (d / base.1 * 100).rounded() / 100
        res["pf_bytes_\(r.name)"] = (bytes[r.name] ?? 0).rounded()
        res["pf_encode_ns_\(r.name)_rounds"] = encode[r.name]?.map { $0.rounded() }
        res["pf_decode_ns_\(r.name)_rounds"] = decode[r.name]?.map { $0.rounded() }
    }
    let data = try JSONSerialization.data(withJSONObject: res, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}
