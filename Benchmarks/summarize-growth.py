#!/usr/bin/env python3
"""Tables of run-growth.sh's JSON lines: per backend, sizes across, measures down; each cell the
runs' values (min-max when they differ). CPU is the esbench process's user+sys per event; on
PostgreSQL "+ server" adds the server's.

    summarize-growth.py results-2026-11-30-growth*.jsonl
"""
import json, sys
from collections import defaultdict

rows = defaultdict(list)   # (backend, events, measure) -> [line]
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("bench") == "growth":
                m = r["measure"]
                # Catch-ups waited for in one long ProjectionRunner.wait (no wait_timeout_s) are
                # kept apart: that wait holds memory per batch (Performance.md).
                if m.startswith("catchup") and "wait_timeout_s" not in r:
                    m += "_long_wait"
                rows[(r["backend"], r["events"], m)].append(r)

def span(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"

def k(v): return f"{v / 1000:.0f}k" if v >= 10000 else f"{v / 1000:.1f}k"
def us(v): return f"{v:.1f}"
def mb(v): return f"{v:.0f}"
def r2(v): return f"{v:.2f}"

measures = [
    ("w2_sample", "W2, fixed sample of 1,000 aggregates: ev/s", "ev_s", k),
    ("w2_sample", "  CPU µs/event", "cpu_us_ev", us),
    ("w2_sample", "  read system calls/event", "read_syscalls_ev", r2),
    ("w2_full", "W2, every aggregate: ev/s", "ev_s", k),
    ("w2_full", "  CPU µs/event", "cpu_us_ev", us),
    ("w2_full", "  peak RSS, MB", "peak_rss_mb", mb),
    ("w3d_window_start", "W3d, first 100k events (all if fewer): ev/s", "ev_s", k),
    ("w3d_window_start", "  CPU µs/event", "cpu_us_ev", us),
    ("w3d_window_end", "W3d, last 100k events: ev/s", "ev_s", k),
    ("w3d_window_end", "  CPU µs/event", "cpu_us_ev", us),
    ("w3d_full", "W3d, whole log: ev/s", "ev_s", k),
    ("w3d_full", "  CPU µs/event", "cpu_us_ev", us),
    ("w3d_full", "  peak RSS, MB", "peak_rss_mb", mb),
    ("catchup_decode_only", "catch-up, decode-only projection: ev/s", "ev_s", k),
    ("catchup_decode_only", "  CPU µs/event", "cpu_us_ev", us),
    ("catchup_decode_only", "  resident set growth over the pass, MB", "rss_growth", mb),
    ("catchup_directory", "catch-up, customer directory: ev/s", "ev_s", k),
    ("catchup_directory", "  CPU µs/event", "cpu_us_ev", us),
    ("catchup_directory", "  read system calls/event", "read_syscalls_ev", r2),
    ("catchup_directory", "  peak RSS of the process (both catch-ups), MB", "peak_rss_mb", mb),
    ("catchup_decode_only_long_wait", "decode-only, one 2-hour wait: resident set growth over the pass, MB", "rss_growth", mb),
    ("catchup_directory_long_wait", "directory, one 2-hour wait: peak RSS, MB", "peak_rss_mb", mb),
]
for backend in sorted({b for b, _, _ in rows}, key=lambda b: b != "sqlite"):
    sizes = sorted({e for b, e, _ in rows if b == backend})
    print(f"\n{backend}\n")
    print("| measure | " + " | ".join(f"{s:,} events" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for m, label, field, fmt in measures:
        cells = []
        for s in sizes:
            rs = rows.get((backend, s, m), [])
            if field == "rss_growth":
                cell = span([r["rss_mb_tenths"][-1] - r["rss_mb_tenths"][0] for r in rs if r.get("rss_mb_tenths")], mb)
            else:
                cell = span([r.get(field) for r in rs], fmt)
            if field == "cpu_us_ev" and any("server_cpu_us_ev" in r for r in rs):
                cell += " + " + span([r.get("server_cpu_us_ev") for r in rs], us) + " server"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")
    seeds = {s: rows.get((backend, s, "seed"), []) for s in sizes}
    print("| store size, MB | " + " | ".join(span([r["size_bytes"] / 1048576 for r in seeds[s]], mb) for s in sizes) + " |")
