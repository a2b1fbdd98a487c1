#!/usr/bin/env bash
# Growth curves of the data path (issue 18): how W2, W3d, their peak memory and a projection's
# catch-up grow as an encrypted store fills, on SQLite and PostgreSQL. For each size it seeds a
# new store with esbench --growth seed (SIZE events, ten per aggregate, one data subject per
# aggregate, the workload's payloads reused cyclically), then runs each measuring step in a
# process of its own, RUNS times, each step on every size in turn (GrowthPhase.swift says what
# each step does):
#
#   w2-sample  W2 of a fixed random sample of 1,000 aggregates (10,000 events; the 10^4 store
#              holds only 1,000), 3 rounds, each with a cold key cache: events/s, µs/event
#   w2-full    W2 of every aggregate: events/s and the process's peak RSS (VmHWM)
#   w3d        a window of 100,000 events (all of a smaller store) at the start and at the end
#              of the log, read in pages of 500 and decoded, 3 rounds each
#   w3d-full   the whole log read and decoded: events/s and peak RSS
#   catchup    a decode-only projection and the customer directory catching up over the log
#
#   Benchmarks/run-growth.sh [--sizes "10000 100000 1000000"] [--backends "sqlite postgres"] [--runs 2]
#                            [--steps "w2-sample w2-full w3d w3d-full catchup"] [--wait-timeout 1]
#   --wait-timeout S: the catch-up is waited for in ProjectionRunner.wait calls of S seconds;
#   a long one (7200) shows the memory each wake-up of a long wait holds (Performance.md)
#
# Prints one JSON line per (backend, size, step) on stdout, and appends it to $OUT if set. CPU
# figures are user+sys of the esbench process (getrusage); on PostgreSQL the runner starts a
# throwaway cluster of its own (nothing else uses it) and esbench adds the server's CPU per event
# (server_cpu_us_ev, from /proc). Uses ../shared/bench's workload when it is there; without it it
# generates an equivalent one (generate-workload.py). Needs python3, and PostgreSQL's server
# binaries for the PostgreSQL part (skipped with a loud line when missing).
# Env: WORK (a new directory under /tmp, removed at the end unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")"
log() { printf '[growth] %s\n' "$*" >&2; }
sizes="10000 100000 1000000"; backends="sqlite postgres"; runs=2
steps="w2-sample w2-full w3d w3d-full catchup"; wait_timeout=1
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes=$2; shift 2 ;;
        --backends) backends=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --wait-timeout) wait_timeout=$2; shift 2 ;;
        *) echo "run-growth: unknown argument $1" >&2; exit 64 ;;
    esac
done
for n in $sizes; do
    [[ "$n" =~ ^[1-9][0-9]*0$ ]] || { echo "run-growth: size '$n' is not a multiple of 10 events" >&2; exit 64; }
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "run-growth: --runs '$runs' is not a number" >&2; exit 64; }

work=${WORK:-$(mktemp -d /tmp/es-growth.XXXXXX)}
mkdir -p "$work"
pg_dir=""; pg_bin=""; pg_user=$(id -un)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi; }
cleanup() {
    if [ -n "$pg_dir" ]; then as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; fi
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

shared=$(cd ../.. && pwd)/shared/bench
workload="$shared/workload-10k-aggregates.jsonl.gz"
if [ ! -f "$workload" ]; then
    log "!!! ../shared/bench not found: generating an equivalent workload !!!"
    workload="$work/workload-generated.jsonl.gz"
    python3 generate-workload.py "$workload" 10000
fi
out=${OUT:-/dev/null}

log "building esbench (release)"
swift build -c release --product esbench >&2
esbench=.build/release/esbench
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# PostgreSQL: a throwaway cluster of our own, so the server's CPU is ours alone.
pg_url=""; pg_pid=""
if [[ " $backends " == *" postgres "* ]]; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        log "!!! PostgreSQL is not installed: the PostgreSQL part is SKIPPED !!!"
        backends=${backends//postgres/}
    else
        if [ "$(id -u)" = 0 ]; then pg_user=postgres; fi
        pg_dir=$(mktemp -d /tmp/es-growth-pg.XXXXXX)
        chmod 755 "$pg_dir"; [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir"
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
        printf '%s\n' "$password" > "$pg_dir/pw"; [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir/pw"
        as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U growth --pwfile="$pg_dir/pw" --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log" >&2; exit 1; }
        rm -f "$pg_dir/pw"
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
            -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" start >/dev/null || { cat "$pg_dir/server.log" >&2; exit 1; }
        pg_url="postgres://growth:$password@127.0.0.1:$port/postgres"
        pg_pid=$(head -n 1 "$pg_dir/data/postmaster.pid")
        log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $port (defaults: shared_buffers 128MB)"
    fi
fi

step() {  # step BACKEND SIZE DIR STEP RUN
    local backend=$1 size=$2 dir=$3 what=$4 run=$5 extra=()
    if [ "$backend" = postgres ]; then extra=(--pg-url "$pg_url" --pg-schema "growth_$size" --server-pid "$pg_pid"); fi
    local line
    line=$("$esbench" --backend "$backend" "${extra[@]}" --workload "$workload" --growth "$what" --growth-dir "$dir" \
        --aggs $((size / 10)) --per-agg 10 --tag "r$run" --wait-timeout "$wait_timeout")
    while IFS= read -r l; do
        l="{\"run\":$run,\"commit\":\"$commit\",${l#\{}"
        printf '%s\n' "$l"; printf '%s\n' "$l" >> "$out"
    done <<< "$line"
}

# Every size is seeded first; then each step runs on each size in turn, so the sizes of one run
# are measured minutes apart under the same load (the machine is shared: compare within a run).
for backend in $backends; do
    for size in $sizes; do
        mkdir -p "$work/$backend-$size"
        log "$backend, $size events: seeding"
        step "$backend" "$size" "$work/$backend-$size" seed 0
    done
    for run in $(seq 1 "$runs"); do
        for what in $steps; do
            for size in $sizes; do
                log "$backend, run $run: $what, $size events"
                step "$backend" "$size" "$work/$backend-$size" "$what" "$run"
            done
        done
    done
    for size in $sizes; do
        rm -rf "${work:?}/$backend-$size"
        if [ "$backend" = postgres ]; then
            as_pg "$pg_bin/psql" -q -h "$pg_dir" -p "$port" -U growth -d postgres -c "SET client_min_messages = warning" \
                -c "DROP SCHEMA growth_$size CASCADE" >/dev/null
        fi
    done
done
