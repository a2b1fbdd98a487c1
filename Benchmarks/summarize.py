#!/usr/bin/env python3
"""Turns run-workload.sh's JSON lines into the Markdown tables of Docs/Performance.md."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
by = {r.get("tag"): r for r in rows}
probe = next((r for r in rows if r.get("probe") == "sqlite_raw"), {})
pgprobe = next((r for r in rows if r.get("probe") == "pg_raw"), {})
nioprobe = next((r for r in rows if r.get("probe") == "pg_raw_nio"), {})
fnprobe = next((r for r in rows if r.get("probe") == "pg_save_fn_libpq"), {})


def k(v):
    return "—" if v is None else (f"{v/1000:.1f}k" if v >= 1000 else f"{v:.0f}")


def mb(v):
    return "—" if not v else f"{v/1e6:.1f} MB"


def line(label, r, w1key="w1_ev_s"):
    if not r:
        return f"| {label} | (not run) | | | | | |"
    w1 = r.get(w1key) or r.get("w1c_ev_s")
    return (f"| {label} | {k(w1)} | {k(r.get('w2_ev_s'))} | {k(r.get('w3_ev_s'))} | {k(r.get('w3d_ev_s'))} "
            f"| {mb(r.get('size_bytes'))} | {mb(r.get('peak_rss_bytes'))} |")


print("| run | W1 ev/s | W2 ev/s | W3 ev/s | W3d ev/s | size | peak RSS (W2+W3d) |")
print("|---|---|---|---|---|---|---|")
for tag, label in [
    ("sqlite-encrypted-full", "ours, SQLite FULL, encrypted"),
    ("sqlite-plain-full", "ours, SQLite FULL, plaintext"),
    ("sqlite-encrypted-normal", "ours, SQLite NORMAL, encrypted"),
    ("sqlite-encrypted-full-8writers", "ours, SQLite FULL, encrypted, W1c 8 writers"),
    ("peer-sqlite-aes-openssl", "peer, SQLite FULL, zlib + AES (OpenSSL)"),
    ("peer-sqlite-plain", "peer, SQLite FULL, plain"),
    ("memory-encrypted", "ours, in-memory, encrypted"),
    ("memory-plain", "ours, in-memory, plaintext"),
    ("pg-encrypted", "ours, PostgreSQL, encrypted"),
    ("pg-encrypted-8writers", "ours, PostgreSQL, encrypted, W1c 8 writers"),
    ("pg-encrypted-8readers", "ours, PostgreSQL, encrypted, W2 8 readers"),
    ("pg-encrypted-32readers", "ours, PostgreSQL, encrypted, W2 32 readers"),
    ("pg-encrypted-store-executor", "ours, PostgreSQL, encrypted, caller on the store's executor"),
    ("pg-plain", "ours, PostgreSQL, plaintext"),
    ("peer-pg-aes-openssl", "peer, PostgreSQL, zlib + AES (OpenSSL)"),
    ("peer-pg-plain", "peer, PostgreSQL, plain"),
]:
    print(line(label, by.get(tag)))
print()
if probe:
    print(f"Raw SQLite single-row durable commits on the same disk: FULL {k(probe['single_row_full_rows_s'])}/s, "
          f"NORMAL {k(probe['single_row_normal_rows_s'])}/s.")
if pgprobe:
    print(f"Raw PostgreSQL single-row commits on the same server (pgbench, one INSERT per transaction): "
          f"{k(pgprobe['single_row_commits_s'])}/s"
          + (f"; the same INSERT through postgres-nio (`pgraw`): {k(nioprobe['single_row_commits_s'])}/s." if nioprobe else "."))
if fnprobe:
    print(f"The store's save function alone, one save per call through libpq (pgbench, prepared, no client work): "
          f"{k(fnprobe['saves_s'])}/s.")
print()


def ratio(a, b):
    return "—" if not a or not b else f"{a/b:.2f}×"


e, p, n, c = by.get("sqlite-encrypted-full", {}), by.get("sqlite-plain-full", {}), by.get("sqlite-encrypted-normal", {}), by.get("sqlite-encrypted-full-8writers", {})
ed, pd = by.get("sqlite-encrypted-full-dictionary", {}), by.get("sqlite-plain-full-dictionary", {})
peer = by.get("peer-sqlite-aes-openssl", {})
pge, pgc, pgpeer = by.get("pg-encrypted", {}), by.get("pg-encrypted-8writers", {}), by.get("peer-pg-aes-openssl", {})
pg8, pg32 = by.get("pg-encrypted-8readers", {}), by.get("pg-encrypted-32readers", {})
pgse = by.get("pg-encrypted-store-executor", {})
targets = [
    ("SQLite W1 durable encrypted / raw FULL single commits", ratio(e.get("w1_ev_s"), probe.get("single_row_full_rows_s")), "≥ 0.9×"),
    ("SQLite W1 NORMAL encrypted / raw NORMAL single commits", ratio(n.get("w1_ev_s"), probe.get("single_row_normal_rows_s")), "≥ 0.8×"),
    ("SQLite W1c 8 writers / raw FULL single commits", ratio(c.get("w1c_ev_s"), probe.get("single_row_full_rows_s")), "≥ 4×"),
    ("SQLite W2 encrypted / peer (OpenSSL AES + zlib)", ratio(e.get("w2_ev_s"), peer.get("w2_ev_s")), "≥ 10×"),
    ("SQLite W3d encrypted / peer", ratio(e.get("w3d_ev_s"), peer.get("w3d_ev_s")), "≥ 5×"),
    ("SQLite W2 encrypted / our plaintext W2", ratio(e.get("w2_ev_s"), p.get("w2_ev_s")), "≥ 0.75×"),
    ("SQLite file size encrypted / plaintext", ratio(e.get("size_bytes"), p.get("size_bytes")), "≤ 0.9×"),
    ("SQLite file size encrypted with a preset dictionary / plaintext", ratio(ed.get("size_bytes"), p.get("size_bytes")), "≤ 0.9×"),
    ("SQLite file size encrypted with a preset dictionary / plaintext with it", ratio(ed.get("size_bytes"), pd.get("size_bytes")), "—"),
    ("SQLite W1 durable encrypted with a preset dictionary / without", ratio(ed.get("w1_ev_s"), e.get("w1_ev_s")), "—"),
    ("SQLite W2 encrypted with a preset dictionary / without", ratio(ed.get("w2_ev_s"), e.get("w2_ev_s")), "—"),
    ("SQLite W3d encrypted with a preset dictionary / without", ratio(ed.get("w3d_ev_s"), e.get("w3d_ev_s")), "—"),
    ("SQLite peak RSS W2/W3d", mb(e.get("peak_rss_bytes")), "≤ 64 MiB"),
    ("PostgreSQL W1 / peer", ratio(pge.get("w1_ev_s"), pgpeer.get("w1_ev_s")), "≥ 3×"),
    ("PostgreSQL W1 / raw single-row commits, libpq (pgbench)", ratio(pge.get("w1_ev_s"), pgprobe.get("single_row_commits_s")), "—"),
    ("PostgreSQL W1 / raw single-row commits, postgres-nio (one writer's ceiling here)", ratio(pge.get("w1_ev_s"), nioprobe.get("single_row_commits_s")), "—"),
    ("PostgreSQL 3 × peer W1 / raw postgres-nio commits (what the target asks of the driver)", ratio(3 * (pgpeer.get("w1_ev_s") or 0), nioprobe.get("single_row_commits_s")), "≤ 1× to be possible"),
    ("PostgreSQL 3 × peer W1 / the save function alone through libpq", ratio(3 * (pgpeer.get("w1_ev_s") or 0), fnprobe.get("saves_s")), "≤ 1× to be possible"),
    ("PostgreSQL W2 / peer, one reader (as the peer)", ratio(pge.get("w2_ev_s"), pgpeer.get("w2_ev_s")), "≥ 5×"),
    ("PostgreSQL W2 / peer, one reader on the store's executor", ratio(pgse.get("w2_ev_s"), pgpeer.get("w2_ev_s")), "≥ 5×"),
    ("PostgreSQL W2 / peer, 8 concurrent readers (peer: one)", ratio(pg8.get("w2_ev_s"), pgpeer.get("w2_ev_s")), "≥ 5×"),
    ("PostgreSQL W2 / peer, 32 concurrent readers (peer: one)", ratio(pg32.get("w2_ev_s"), pgpeer.get("w2_ev_s")), "≥ 5×"),
    ("PostgreSQL W1c 8 writers / our W1", ratio(pgc.get("w1c_ev_s"), pge.get("w1_ev_s")), "≥ 4×"),
]
print("| target | measured | wanted |")
print("|---|---|---|")
for name, got, want in targets:
    print(f"| {name} | {got} | {want} |")

# The projection phase (esbench --projection): a customer-directory read model, exactly once.
proj = [(label, by.get(tag, {})) for tag, label in [("sqlite-encrypted-full", "SQLite FULL, encrypted (view in the store's file)"),
                                                     ("pg-encrypted", "PostgreSQL, encrypted (view in the store's schema)")]]
if any(r.get("projection_catchup_ev_s") for _, r in proj):
    print()
    print("| projection | catch-up ev/s | catch-up / W3d | decode-only catch-up ev/s | live p50 | live p99 | live max | saves |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in proj:
        if not r.get("projection_catchup_ev_s"):
            print(f"| {label} | (not run) | | | | | | |")
            continue
        print(f"| {label} | {k(r['projection_catchup_ev_s'])} | {ratio(r['projection_catchup_ev_s'], r.get('w3d_ev_s'))} "
              f"| {k(r.get('projection_decode_only_catchup_ev_s'))} "
              f"| {r['projection_live_p50_ms']:.2f} ms | {r['projection_live_p99_ms']:.2f} ms | {r['projection_live_max_ms']:.2f} ms "
              f"| {r['projection_live_saves']} |")
    print()
    print("Catch-up: from position 0 over the whole log W1 wrote, batches of "
          f"{next((r.get('projection_batch') for _, r in proj if r.get('projection_batch')), '?')} notifications per transaction. "
          "Decode-only: the same runner and store with a projection that decodes each event and writes no view row "
          "(the runner's own cost). Live: one save after another, each waiting until the projection has processed it; latency from save() returning "
          "(the commit) to the view's commit holding it.")

# The systems part (esbench --system beside the peer's system_peer.py, alternating rounds): a
# follower process application's catch-up and live latency, and the peer's aggregate cache.
many = {}
for r in rows:
    if r.get("tag"):
        many.setdefault(r["tag"], []).append(r)


def med(tag, field):
    """The median of `field` over the runs of `tag` (None if none has it)."""
    vals = sorted(r[field] for r in many.get(tag, []) if isinstance(r.get(field), (int, float)))
    return (vals[(len(vals) - 1) // 2] + vals[len(vals) // 2]) / 2 if vals else None


def span(tag, field, fmt):
    vals = sorted(r[field] for r in many.get(tag, []) if isinstance(r.get(field), (int, float)))
    if not vals:
        return "—"
    return fmt(vals[0]) if len(vals) == 1 else f"{fmt(med(tag, field))} ({fmt(vals[0])}–{fmt(vals[-1])})"


def ms(v):
    return f"{v:.2f} ms"


systems = [("SQLite FULL, encrypted", "sqlite-encrypted-full-system", "peer-sqlite-aes-openssl-system"),
           ("SQLite FULL, plaintext", "sqlite-plain-full-system", "peer-sqlite-plain-system"),
           ("SQLite NORMAL, encrypted", "sqlite-encrypted-normal-system", "peer-sqlite-aes-openssl-normal-system"),
           ("PostgreSQL, encrypted", "pg-encrypted-system", None)]
if any(many.get(ours) for _, ours, _ in systems):
    print()
    print("| follower (one invoice per Registered event) | measure | ours | peer | ours / peer |")
    print("|---|---|---|---|---|")
    for label, ours, peer in systems:
        if not many.get(ours):
            print(f"| {label} | (not run) | | | |")
            continue
        for name, field, fmt, better in [("catch-up, upstream ev/s", "system_catchup_ev_s", k, "higher"),
                                         ("catch-up / W3d of the same run", "system_catchup_vs_w3d", lambda v: f"{v:.3f}×", "higher"),
                                         ("live p50, leader commit → follower commit", "system_live_p50_ms", ms, "lower"),
                                         ("live p99", "system_live_p99_ms", ms, "lower"),
                                         ("leader save p50 (its own commit)", "system_live_save_p50_ms", ms, "lower")]:
            peer_cell = span(peer, field, fmt) if peer and many.get(peer) else "—"
            print(f"| {label} | {name} | {span(ours, field, fmt)} | {peer_cell} "
                  f"| {ratio(med(ours, field), med(peer, field)) if peer else '—'} |")
    runs = {t: len(many.get(t, [])) for _, o, p in systems for t in (o, p) if t}
    print()
    print("Medians over the runs (range in brackets): " + ", ".join(f"{t} ×{n}" for t, n in runs.items() if n) + ". "
          "Catch-up: the follower from position 0 over the leader's whole log, batches of "
          f"{int(med(systems[0][1], 'system_batch') or 0) or '?'}, one commit (invoice or none, with the tracking record) per upstream event. "
          "Live: one leader save after another, each waited on until the follower has committed it. "
          "For latencies a ratio below 1× is ours being faster.")

# Repeated gets with and without an aggregate cache (esbench --cache-rounds, CachePhase.swift,
# beside the peer's system_peer.py in the same alternating rounds): gains are medians over trials.
def gain(v):
    return f"{v:.2f}×"


if any(med(t, "cache_on_gets_s") for _, o, p in systems for t in (o, p) if t):
    print()
    print("| repeated gets (cache off → on) | side | cache off gets/s | cache on gets/s | gain, all rounds | gain, warm rounds | ours / peer, cache on |")
    print("|---|---|---|---|---|---|---|")
    for label, ours, peer in systems:
        for side, t in (("ours", ours), ("peer", peer)):
            if not t or not med(t, "cache_on_gets_s"):
                continue
            vs = ratio(med(ours, "cache_on_gets_s"), med(peer, "cache_on_gets_s")) if side == "ours" and peer else ""
            print(f"| {label} | {side} | {span(t, 'cache_off_gets_s', k)} | {span(t, 'cache_on_gets_s', k)} "
                  f"| {span(t, 'cache_gain', gain)} | {span(t, 'cache_warm_gain', gain)} | {vs} |")
    print()
    print(f"Each side gets every aggregate W1 wrote {int(med(systems[0][1], 'cache_rounds') or med(systems[0][2], 'cache_rounds') or 0)} "
          "rounds in a row from a fresh application, cache off and on in alternating trials; warm rounds are rounds 2 on "
          "(with the cache on, hits that still read the aggregate's newest records to fast-forward).")
