#!/usr/bin/env python3
"""The peer beside esbench's --system phase and the aggregate-cache phase: Python
`eventsourcing` 9.x (the venv run-workload.sh sets up) on the same workload, SQLite.

One invocation = one run on fresh database files; prints one JSON line whose fields are named
like esbench's:

  W1      the leader application ("Customers") alone saves the workload, one save per event
          (as bench_pyes.py's W1), then W3d reads and decodes its whole log (for the ratio).
  system  a ProcessApplication ("Invoices", its own SQLite file, the same cipher key) whose
          policy saves one new Invoice aggregate per upstream Customer Registered event and
          passes over every other event; System([[Customers, Invoices]]) run by a
          SingleThreadedRunner.
          catch-up: the follower pulls and processes the leader's whole log from position 0
            (system_catchup_ev_s: upstream events per second);
          live: --live-saves leader saves one after another. The single-threaded runner
            processes a save's events in the saving thread, after the leader's commit, before
            save() returns; the latency is timed from the runner being told of the commit to
            the follower having recorded the invoice with its tracking record (p50/p99).
  cache   repeated gets, as esbench --cache-rounds (CachePhase.swift): a fresh application gets
          every customer --cache-rounds times over, without an aggregate cache and with one big
          enough for all of them (AGGREGATE_CACHE_MAXSIZE; the library's defaults otherwise, so
          a cached get still fast-forwards from the database and returns a deep copy), in
          --cache-trials alternating pairs (off, on, off, on, ...); medians over the trials of
          gets/s over all rounds and over the warm rounds 2...N.

  venv/bin/python system_peer.py --workload W.jsonl.gz --variant aes-openssl --aggs 2000 --db-dir /tmp/x
  --variant: plain (JSON) | aes-openssl (ZlibCompressor + eventsourcing.cryptography:AESCipher)
  --sqlite-sync normal|full: PRAGMA synchronous on every connection (default: SQLite's own)
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System


class Customer(Aggregate):
    @event("Registered")
    def __init__(self, name: str, email: str, address: str) -> None:
        self.name = name
        self.email = email
        self.address = address

    @event("ContactUpdated")
    def update_contact(self, name: str, email: str, address: str) -> None:
        self.name = name
        self.email = email
        self.address = address


class Invoice(Aggregate):
    @event("Issued")
    def __init__(self, customer_id: str, name: str) -> None:
        self.customer_id = customer_id
        self.name = name


class Customers(Application):
    log_section_size = 500


class Invoices(ProcessApplication):
    # Pages of 100 notifications, as esbench's SystemRunner (batchSize 100); the library's
    # default is 10. Every topic is followed, as in esbench.
    pull_section_size = 100

    def policy(self, domain_event, processing_event) -> None:
        if isinstance(domain_event, Customer.Registered):
            invoice = Invoice(customer_id=str(domain_event.originator_id), name=domain_event.name)
            processing_event.collect_events(invoice)


class TimedRunner(SingleThreadedRunner):
    """Times each prompt from a leader's commit until its followers have processed it."""

    def __init__(self, system: System, env: dict[str, str]) -> None:
        super().__init__(system=system, env=env)
        self.latencies: list[float] = []

    def receive_recording_event(self, new_recording_event) -> None:
        t0 = time.perf_counter()
        super().receive_recording_event(new_recording_event)
        self.latencies.append(time.perf_counter() - t0)


def read_workload(path: str, aggs: int, per_agg: int) -> list[list[tuple[str, str, str]]]:
    """The shared workload: one JSON object per event (aggregate, event, name, email, address)."""
    customers: list[list[tuple[str, str, str]]] = []
    with gzip.open(path, "rt") as f:
        for text in f:
            row = json.loads(text)
            if row["aggregate"] >= aggs:
                break
            if row["event"] >= per_agg:
                continue
            if row["event"] == 0:
                customers.append([])
            customers[-1].append((row["name"], row["email"], row["address"]))
    return customers


def environment(variant: str, db_dir: str) -> dict[str, str]:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        # Each application's own file (the library reads <NAME>_<KEY> before <KEY>).
        "CUSTOMERS_SQLITE_DBNAME": os.path.join(db_dir, "customers.db"),
        "INVOICES_SQLITE_DBNAME": os.path.join(db_dir, "invoices.db"),
    }
    if variant == "aes-openssl":
        from eventsourcing.cryptography import AESCipher

        env["CIPHER_TOPIC"] = "eventsourcing.cryptography:AESCipher"
        env["CIPHER_KEY"] = AESCipher.create_key(32)
        env["COMPRESSOR_TOPIC"] = "eventsourcing.compressor:ZlibCompressor"
    elif variant != "plain":
        raise SystemExit(f"unknown variant {variant}")
    return env


def set_synchronous(mode: str) -> None:
    """Every SQLite connection the library opens from now on gets PRAGMA synchronous=<mode>
    (the library sets none, so SQLite's default applies: FULL on Debian's libsqlite3)."""
    from eventsourcing.sqlite import SQLiteConnectionPool

    create = SQLiteConnectionPool._create_connection

    def create_with_mode(pool):
        connection = create(pool)
        connection._sqlite_conn.execute(f"PRAGMA synchronous={mode}")
        return connection

    SQLiteConnectionPool._create_connection = create_with_mode


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as esbench's quantile."""
    if not sorted_values:
        return 0.0
    rank = min(max(math.ceil(q * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]


def decode_log(app: Application) -> int:
    start, count = 1, 0
    while True:
        page = app.notification_log.select(start, 500)
        if not page:
            return count
        for n in page:
            app.mapper.to_domain_event(n)
        count += len(page)
        start = page[-1].id + 1


def repeated_gets(env: dict[str, str], ids: list, rounds: int, per_agg: int, cache_size: int | None) -> tuple[float, float]:
    """Gets every id `rounds` times from a fresh application; returns (all rounds' seconds,
    the seconds of the rounds after the first)."""
    env = dict(env)
    if cache_size:
        env["AGGREGATE_CACHE_MAXSIZE"] = str(cache_size)
    app = Customers(env=env)
    get = app.repository.get
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        replayed = 0
        for i in ids:
            replayed += get(i).version
        times.append(time.perf_counter() - t0)
        assert replayed >= len(ids) * per_agg, (replayed, len(ids) * per_agg)
    app.close()
    return sum(times), sum(times[1:])


def run(args) -> dict:
    os.makedirs(args.db_dir, exist_ok=True)
    for name in ("customers.db", "invoices.db"):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(os.path.join(args.db_dir, name + suffix))
            except FileNotFoundError:
                pass
    env = environment(args.variant, args.db_dir)
    if args.sqlite_sync != "default":
        set_synchronous(args.sqlite_sync.upper())
    payloads = read_workload(args.workload, args.aggs, args.per_agg)
    n_events = sum(len(p) for p in payloads)
    res: dict = {"backend": "sqlite", "variant": args.variant, "aggs": len(payloads), "events": n_events,
                 "sqlite_sync": args.sqlite_sync, "peer": "eventsourcing"}

    # W1: the leader alone (not yet in a system), one save per event.
    app = Customers(env=env)
    ids = []
    t0 = time.perf_counter()
    for per in payloads:
        c = Customer(*per[0])
        app.save(c)
        for p in per[1:]:
            c.update_contact(*p)
            app.save(c)
        ids.append(c.id)
    t1 = time.perf_counter()
    res["w1_s"] = t1 - t0
    res["w1_ev_s"] = n_events / (t1 - t0)
    t0 = time.perf_counter()
    decoded = decode_log(app)
    t1 = time.perf_counter()
    assert decoded == n_events, (decoded, n_events)
    res["w3d_ev_s"] = decoded / (t1 - t0)
    last = app.recorder.max_notification_id()
    app.close()

    # The system: catch-up from position 0, then live saves.
    system = System(pipes=[[Customers, Invoices]])
    runner = TimedRunner(system, env=env)
    runner.start()
    try:
        customers = runner.get(Customers)
        invoices = runner.get(Invoices)
        t0 = time.process_time(), time.perf_counter()
        invoices.pull_and_process(Customers.name)
        t1 = time.process_time(), time.perf_counter()
        assert invoices.recorder.max_tracking_id(Customers.name) == last
        made = invoices.recorder.max_notification_id() or 0
        assert made == len(payloads), (made, len(payloads))
        res["system_batch"] = Invoices.pull_section_size
        res["system_upstream_events"] = last
        res["system_catchup_s"] = t1[1] - t0[1]
        res["system_catchup_ev_s"] = last / (t1[1] - t0[1])
        res["system_catchup_proc_cpu_s"] = t1[0] - t0[0]
        res["system_catchup_vs_w3d"] = res["system_catchup_ev_s"] / res["w3d_ev_s"]

        runner.latencies.clear()
        saves = []
        for i in range(args.live_saves):
            c = Customer(f"System Customer {i}", f"system{i}@example.org", f"{i} System Street")
            s0 = time.perf_counter()
            customers.save(c)
            saves.append(time.perf_counter() - s0 - runner.latencies[-1])
        assert len(runner.latencies) == args.live_saves
        made = invoices.recorder.max_notification_id() or 0
        assert made == len(payloads) + args.live_saves, (made, len(payloads) + args.live_saves)
        lat = sorted(runner.latencies)
        saves.sort()
        res["system_live_saves"] = args.live_saves
        res["system_live_p50_ms"] = quantile(lat, 0.50) * 1000
        res["system_live_p99_ms"] = quantile(lat, 0.99) * 1000
        res["system_live_max_ms"] = lat[-1] * 1000
        res["system_live_save_p50_ms"] = quantile(saves, 0.50) * 1000
    finally:
        runner.stop()
    res["system_follower_size_bytes"] = os.path.getsize(os.path.join(args.db_dir, "invoices.db"))

    # Repeated gets of the W1 customers, without and with an aggregate cache, in alternating
    # trials, each from a fresh application.
    if args.cache_rounds > 0:
        rounds = max(2, args.cache_rounds)
        gets, warm = len(ids) * rounds, len(ids) * (rounds - 1)
        rates: dict[bool, list[float]] = {False: [], True: []}
        warm_rates: dict[bool, list[float]] = {False: [], True: []}
        for trial in range(2 * args.cache_trials):
            cached = trial % 2 == 1
            total, warm_s = repeated_gets(env, ids, rounds, args.per_agg, len(ids) if cached else None)
            rates[cached].append(gets / total)
            warm_rates[cached].append(warm / warm_s)

        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        res["cache_rounds"] = rounds
        res["cache_trials"] = args.cache_trials
        res["cache_off_gets_s"] = median(rates[False])
        res["cache_on_gets_s"] = median(rates[True])
        res["cache_gain"] = res["cache_on_gets_s"] / res["cache_off_gets_s"]
        res["cache_off_warm_gets_s"] = median(warm_rates[False])
        res["cache_on_warm_gets_s"] = median(warm_rates[True])
        res["cache_warm_gain"] = res["cache_on_warm_gets_s"] / res["cache_off_warm_gets_s"]
        res["cache_off_gets_s_trials"] = rates[False]
        res["cache_on_gets_s_trials"] = rates[True]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--variant", choices=["plain", "aes-openssl"], default="aes-openssl")
    ap.add_argument("--aggs", type=int, default=2000)
    ap.add_argument("--per-agg", type=int, default=10)
    ap.add_argument("--db-dir", default="/tmp/es-system-peer")
    ap.add_argument("--sqlite-sync", choices=["default", "normal", "full"], default="default",
                    help="PRAGMA synchronous on every connection (default: the library sets none)")
    ap.add_argument("--live-saves", type=int, default=2000)
    ap.add_argument("--cache-rounds", type=int, default=5, help="0: no cache part; else at least 2")
    ap.add_argument("--cache-trials", type=int, default=3, help="pairs of trials, cache off then on")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.aggs < 1 or args.live_saves < 1 or args.cache_rounds < 0 or args.cache_trials < 1:
        raise SystemExit("--aggs, --live-saves and --cache-trials must be at least 1, --cache-rounds at least 0")
    res = run(args)
    res["tag"] = args.tag
    print(json.dumps(res, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
