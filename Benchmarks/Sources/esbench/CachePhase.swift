// The aggregate-cache phase (--cache-rounds N): W2-style repeated gets, the same aggregates got
// again and again, with the application's aggregate cache off and on.
//
// Each trial is a fresh Application over the same store and mapper (so the same, warm keyring:
// the comparison is of the aggregate cache alone) that gets every aggregate W1 wrote, N rounds
// in a row; trials alternate off, on, off, on, … (--cache-trials pairs, 3 by default) because
// the machine is noisy. With the cache on, the first round misses (a full read, then cached) and
// later rounds hit (one indexed read of the aggregate's newest record and a key-cache look-up
// instead of reading, decrypting and decoding its ten records). Reported, as medians over the
// trials: gets/s over all rounds (cache_off_gets_s, cache_on_gets_s, their ratio cache_gain)
// and over the warm rounds 2…N only (cache_off_warm_gets_s, cache_on_warm_gets_s,
// cache_warm_gain). Every get is checked: the versions got must sum to the events written.
import BenchDomain
import EventSourcing
import Foundation

func cachePhase(_ o: Options, store: any BenchStore, app: Application, ids: [UUID], events: Int,
                res: inout [String: Any]) async throws {
    let rounds = max(2, o.cacheRounds)
    var all: [Bool: [Double]] = [false: [], true: []]
    var warm: [Bool: [Double]] = [false: [], true: []]
    for trial in 0..<(2 * max(1, o.cacheTrials)) {
        let cached = trial % 2 == 1
        let application = Application(recorder: store, mapper: app.mapper,
                                      cache: cached ? .lru(maxEntries: ids.count) : .off)
        var firstRound = 0.0
        let t0 = now()
        for round in 0..<rounds {
            var versions = 0
            for id in ids { versions += try await application.repository.get(Customer.self, id: id).version }
            guard versions == events else {
                throw EventSourcingError(.recorderFailure, "cache phase: round \(round) got \(versions) of \(events) events")
            }
            if round == 0 { firstRound = now() - t0 }
        }
        let total = now() - t0
        all[cached, default: []].append(Double(rounds * ids.count) / total)
        warm[cached, default: []].append(Double((rounds - 1) * ids.count) / (total - firstRound))
    }
    func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
    let (off, on) = (median(all[false] ?? [0]), median(all[true] ?? [0]))
    let (warmOff, warmOn) = (median(warm[false] ?? [0]), median(warm[true] ?? [0]))
    res["cache_rounds"] = rounds
    res["cache_trials"] = max(1, o.cacheTrials)
    res["cache_off_gets_s"] = off
    res["cache_on_gets_s"] = on
    res["cache_gain"] = on / off
    res["cache_off_warm_gets_s"] = warmOff
    res["cache_on_warm_gets_s"] = warmOn
    res["cache_warm_gain"] = warmOn / warmOff
    res["cache_off_gets_s_trials"] = all[false]
    res["cache_on_gets_s_trials"] = all[true]
}
