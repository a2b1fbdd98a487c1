#!/usr/bin/env bash
# How long the everyday esctl commands take on large SQLite stores, in a release build:
# `keys list` (text and JSON), `keys show`, `verify` (text and JSON) and `stats` (text and JSON).
# This is where esctl's speed is measured: the tests check what the commands print, never how
# long they take (a timed test fails on a loaded machine without anything being wrong).
#
#   Benchmarks/esctl-scale.sh [SCOPES ...]        # default: 1000 60000; 1000000 takes minutes
#
# For each size it creates a store with `esctl init`, fills it with Benchmarks/EsctlScale's
# esctl-scale-seed (one aggregate and event per key scope, every tenth scope with a second
# data-key version), then runs each command RUNS times (default 3) under /usr/bin/time. Prints
# one JSON line per command and size on stdout (and appends it to $OUT if set):
#
#   {"bench":"esctl-scale","scopes":60000,"command":"keys list --json","exit":0,"runs":3,
#    "wall_s":[…],"wall_s_median":…,"user_s_median":…,"sys_s_median":…,"max_rss_kb":…,"output_bytes":…}
#
# Env: RUNS (3), WORK (a new directory under /tmp; removed at the end unless KEEP=1),
# ESCTL (an esctl binary to measure instead of building one; the seed is still built).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[esctl-scale] %s\n' "$*" >&2; }
runs=${RUNS:-3}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 60000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "esctl-scale: '$n' is not a number of scopes" >&2; exit 64; }
done
[ -x /usr/bin/time ] || { echo "esctl-scale: needs /usr/bin/time (GNU time)" >&2; exit 69; }
work=${WORK:-$(mktemp -d /tmp/esctl-scale.XXXXXX)}
mkdir -p "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ -n "${ESCTL:-}" ]; then
    esctl=$ESCTL
else
    log "building esctl (release)"
    swift build -c release --package-path "$root" --product esctl >&2
    esctl=$root/.build/release/esctl
fi
log "building esctl-scale-seed (release)"
swift build -c release --package-path "$root/Benchmarks/EsctlScale" --product esctl-scale-seed >&2
seed=$root/Benchmarks/EsctlScale/.build/release/esctl-scale-seed

emit() {
    printf '%s\n' "$1"
    if [ -n "${OUT:-}" ]; then printf '%s\n' "$1" >> "$OUT"; fi
}

# Runs esctl RUNS times with the given arguments; prints the JSON line.
measure() {
    local n=$1 label=$2; shift 2
    local samples="$work/samples" out="$work/out" err="$work/err" status=0
    : > "$samples"
    for _ in $(seq "$runs"); do
        status=0
        /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$esctl" "$@" > "$out" 2> "$err" || status=$?
        cat "$work/time" >> "$samples"
    done
    if [ "$status" -ne 0 ]; then log "esctl $label exited $status: $(tail -n 1 "$err")"; fi
    python3 - "$samples" "$n" "$label" "$status" "$runs" "$(stat -c %s "$out")" <<'PY'
import json, statistics, sys
path, n, label, status, runs, size = sys.argv[1:7]
rows = [line.split() for line in open(path) if line.strip() and line.split()[0][0].isdigit()]
wall = [float(r[0]) for r in rows]
med = lambda i: round(statistics.median(float(r[i]) for r in rows), 3)
print(json.dumps({"bench": "esctl-scale", "scopes": int(n), "command": label, "exit": int(status), "runs": int(runs),
                  "wall_s": wall, "wall_s_median": med(0), "user_s_median": med(1), "sys_s_median": med(2),
                  "max_rss_kb": max(int(r[3]) for r in rows), "output_bytes": int(size), "build": "release"}))
PY
}

for n in "${sizes[@]}"; do
    dir="$work/$n"
    rm -rf "$dir" && mkdir -p "$dir"
    store="sqlite:$dir/store.sqlite"
    "$esctl" --store "$store" init --new-master-key-file "$dir/master.key" 2> /dev/null
    log "seeding $n scopes"
    start=$(date +%s.%N)
    scope=$("$seed" --db "$dir/store.sqlite" --master-key-file "$dir/master.key" --scopes "$n")
    seeded=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$start" "$(date +%s.%N)")
    emit "{\"bench\":\"esctl-scale\",\"scopes\":$n,\"command\":\"seed\",\"wall_s\":$seeded,\"store_bytes\":$(stat -c %s "$dir/store.sqlite")}"
    key=(--store "$store" --master-key-file "$dir/master.key")
    emit "$(measure "$n" "keys list" "${key[@]}" keys list)"
    emit "$(measure "$n" "keys list --json" "${key[@]}" keys list --json)"
    emit "$(measure "$n" "keys show" "${key[@]}" keys show "$scope")"
    emit "$(measure "$n" "verify" "${key[@]}" verify)"
    emit "$(measure "$n" "verify --json" "${key[@]}" verify --json)"
    emit "$(measure "$n" "stats" --store "$store" stats)"
    emit "$(measure "$n" "stats --json" --store "$store" stats --json)"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
done
