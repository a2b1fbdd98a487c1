#!/usr/bin/env bash
# Runs the shared workload through esbench and the peer (Python eventsourcing) side by side,
# with the raw SQLite commit limit probed on the same disk, in one run. Prints one JSON line
# per measurement to stdout (and to $OUT if set).
#
#   Benchmarks/run-workload.sh [--quick] [--pg-only]
#     --quick: 2,000 aggregates instead of 10,000 (500 on PostgreSQL)
#     --pg-only: only the PostgreSQL part (ours, the peer and the raw commit probes)
#
# Uses ../shared/bench (workload, peer, limits) beside the repository when it is there. Without
# it, the run still works: it generates an equivalent workload (generate-workload.py), probes
# the raw SQLite limit with its own probe (limits/sqlite_commits.c), and skips the peer with a
# loud line, so only our own figures and ratios are reported. The sqlite-encrypted-full and
# pg-encrypted runs add the projection phase (--projection): a read model's exactly-once catch-up
# over the log W1 wrote (events/s and the ratio to W3d of the same run) and the live latency
# from a save's commit to the projection having processed it (p50/p99 over 2,000 saves).
# The systems part runs esbench --system (a follower process application, "invoices", in a
# store of its own, saving one invoice per upstream Registered event: catch-up over the log W1
# wrote, upstream events/s, and live latency from a leader save's commit to the follower's
# commit) alternating with the peer's Benchmarks/peer/system_peer.py (its ProcessApplication,
# System and SingleThreadedRunner, and repeated gets with and without its aggregate cache),
# SQLite FULL encrypted and plaintext and NORMAL encrypted (where a commit is not an fsync), and
# on PostgreSQL our encrypted run alone. The SQLite runs add the aggregate-cache phase
# (--cache-rounds 5: every aggregate got 5 rounds in a row, cache off and on in alternating
# trials) beside the peer's same part.
# Two SQLite FULL runs give the mapper a preset compression dictionary (esbench --dictionary, built
# from the synthetic sample events of dictionary-samples.jsonl.gz), encrypted and plaintext.
#   --systems-only: only the systems part (SQLite, then PostgreSQL)
#   --no-systems: everything but the systems part (the workload table and its targets)
# Needs gcc, python3, and
# PostgreSQL's server binaries for the PostgreSQL part (skipped with a loud line if missing).
set -euo pipefail
cd "$(dirname "$0")"
log() { printf '[bench] %s\n' "$*" >&2; }
shared=$(cd ../.. && pwd)/shared/bench
[ -d "$shared" ] || shared=$(cd .. && pwd)/../shared/bench
work=$(mktemp -d /tmp/es-bench.XXXXXX)
workload="$shared/workload-10k-aggregates.jsonl.gz"
if [ ! -f "$workload" ]; then
    log "!!! ../shared/bench not found: generating an equivalent workload; the peer is SKIPPED !!!"
    workload="$work/workload-generated.jsonl.gz"
    python3 generate-workload.py "$workload" 10000
fi
have_peer=false; [ -f "$shared/peer/bench_pyes.py" ] && have_peer=true
aggs=10000; pg_aggs=2000; pg_only=false
sys_aggs=2000; sys_live=2000; sys_rounds=3; systems_only=false; no_systems=false
for a in "$@"; do
    case "$a" in
        --quick) aggs=2000; pg_aggs=500; sys_aggs=1000; sys_live=1000 ;;
        --pg-only) pg_only=true ;;
        --systems-only) systems_only=true ;;
        --no-systems) no_systems=true ;;
        *) echo "unknown argument $a" >&2; exit 64 ;;
    esac
done
out=${OUT:-$work/results.jsonl}
emit() { printf '%s\n' "$1" | tee -a "$out"; }

log "building esbench and pgraw (release)"
swift build -c release --product esbench >&2
swift build -c release --product pgraw >&2
esbench=.build/release/esbench

run() { emit "$("$esbench" --workload "$workload" "$@" 2>/dev/null)"; }

# The shared peer directory may be read-only: its venv lives in a cache directory of ours.
peer="${XDG_CACHE_HOME:-$HOME/.cache}/es-bench-peer"
if [ "$have_peer" = true ]; then
    mkdir -p "$peer"
    cp "$shared/peer/bench_pyes.py" "$shared/peer/setup.sh" "$peer/"
    if [ ! -x "$peer/venv/bin/python" ]; then log "setting up the peer venv in $peer"; bash "$peer/setup.sh" >&2; fi
fi
pyes() {
    if [ "$have_peer" = true ]; then "$peer/venv/bin/python" "$peer/bench_pyes.py" --workload "$workload" "$@"
    else log "!!! peer SKIPPED (no ../shared/bench/peer): $*"; echo '{"skipped":"peer"}'; fi
}

# The peer of the systems part: our own script, run with the peer's venv.
peer_system() {
    if [ "$have_peer" = true ]; then "$peer/venv/bin/python" peer/system_peer.py --workload "$workload" "$@"
    else log "!!! peer SKIPPED (no ../shared/bench/peer): system_peer.py $*"; echo '{"skipped":"peer"}'; fi
}

if [ "$pg_only" = false ] && [ "$no_systems" = false ]; then
log "systems: esbench --system and the peer's system_peer.py, alternating ($sys_rounds rounds, $sys_aggs aggregates, $sys_live live saves)"
for round in $(seq 1 "$sys_rounds"); do
    emit "$("$esbench" --workload "$workload" --db "$work/sys-enc.sqlite" --variant encrypted --sync full --aggs $sys_aggs --w2-rounds 1 --system --live-saves $sys_live --cache-rounds 5 --tag sqlite-encrypted-full-system 2>/dev/null)"
    emit "$(peer_system --variant aes-openssl --aggs $sys_aggs --live-saves $sys_live --cache-rounds 5 --db-dir "$work/peer-sys" --tag peer-sqlite-aes-openssl-system)"
    emit "$("$esbench" --workload "$workload" --db "$work/sys-plain.sqlite" --variant plain --sync full --aggs $sys_aggs --w2-rounds 1 --system --live-saves $sys_live --cache-rounds 5 --tag sqlite-plain-full-system 2>/dev/null)"
    emit "$(peer_system --variant plain --aggs $sys_aggs --live-saves $sys_live --cache-rounds 5 --db-dir "$work/peer-sys" --tag peer-sqlite-plain-system)"
    emit "$("$esbench" --workload "$workload" --db "$work/sys-encn.sqlite" --variant encrypted --sync normal --aggs $sys_aggs --w2-rounds 1 --system --live-saves $sys_live --cache-rounds 5 --tag sqlite-encrypted-normal-system 2>/dev/null)"
    emit "$(peer_system --variant aes-openssl --sqlite-sync normal --aggs $sys_aggs --live-saves $sys_live --cache-rounds 5 --db-dir "$work/peer-sys" --tag peer-sqlite-aes-openssl-normal-system)"
done
fi

if [ "$pg_only" = false ] && [ "$systems_only" = false ]; then
log "raw SQLite limits on this disk"
if [ -f "$shared/limits/sqlite_raw.c" ]; then
    gcc -O2 -o "$work/sqlite_raw" "$shared/limits/sqlite_raw.c" -lsqlite3
    raw_full=$("$work/sqlite_raw" "$work/raw.db" 5000 1 FULL | sed -E 's/.*rows_per_s=([0-9.]+).*/\1/')
    raw_normal=$("$work/sqlite_raw" "$work/raw.db" 30000 1 NORMAL | sed -E 's/.*rows_per_s=([0-9.]+).*/\1/')
else
    gcc -O2 -o "$work/sqlite_commits" limits/sqlite_commits.c -lsqlite3
    raw_full=$("$work/sqlite_commits" "$work/raw.db" 5000 FULL | sed -E 's/.*rows_per_s=([0-9.]+).*/\1/')
    raw_normal=$("$work/sqlite_commits" "$work/raw.db" 30000 NORMAL | sed -E 's/.*rows_per_s=([0-9.]+).*/\1/')
fi
emit "{\"probe\":\"sqlite_raw\",\"single_row_full_rows_s\":$raw_full,\"single_row_normal_rows_s\":$raw_normal}"

log "esbench SQLite"
run --db "$work/enc.sqlite" --variant encrypted --sync full --aggs $aggs --projection --live-saves 2000 --tag sqlite-encrypted-full
run --db "$work/plain.sqlite" --variant plain --sync full --aggs $aggs --tag sqlite-plain-full
run --db "$work/encn.sqlite" --variant encrypted --sync normal --aggs $aggs --tag sqlite-encrypted-normal
# The same with W2's loop on the store's reader executor: its reads run inline, no hand-over.
run --db "$work/encx.sqlite" --variant encrypted --sync normal --store-executor --aggs $aggs --tag sqlite-encrypted-normal-store-executor
run --db "$work/encr.sqlite" --variant encrypted --sync normal --readers 4 --aggs $aggs --tag sqlite-encrypted-normal-4readers
run --db "$work/encc.sqlite" --variant encrypted --sync full --writers 8 --aggs $aggs --tag sqlite-encrypted-full-8writers
# With a preset compression dictionary built from synthetic sample events (dictionary-samples.jsonl.gz,
# generate-workload.py with another seed; never the events measured), encrypted and plaintext.
run --db "$work/encd.sqlite" --variant encrypted --sync full --dictionary dictionary-samples.jsonl.gz --aggs $aggs --tag sqlite-encrypted-full-dictionary
run --db "$work/plaind.sqlite" --variant plain --sync full --dictionary dictionary-samples.jsonl.gz --aggs $aggs --tag sqlite-plain-full-dictionary
run --backend memory --variant encrypted --aggs $aggs --tag memory-encrypted
run --backend memory --variant plain --aggs $aggs --tag memory-plain

log "peer SQLite"
emit "$(pyes --backend sqlite --variant aes-openssl --sqlite-db "$work/peer-enc.db" --aggs $aggs --tag peer-sqlite-aes-openssl)"
emit "$(pyes --backend sqlite --variant plain --sqlite-db "$work/peer-plain.db" --aggs $aggs --tag peer-sqlite-plain)"
fi

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ]; then
    log "!!! PostgreSQL server binaries not found: PostgreSQL benchmarks SKIPPED !!!"
else
    pg_user=$(id -un); [ "$(id -u)" = 0 ] && pg_user=postgres
    as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi; }
    pgdir="$work/pg"; mkdir -p "$pgdir"; chmod 755 "$work" "$pgdir"; [ "$(id -u)" = 0 ] && chown "$pg_user" "$pgdir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo bench > "$pgdir/pw"; chmod 644 "$pgdir/pw"
    as_pg "$pg_bin/initdb" -D "$pgdir/data" -U bench --pwfile="$pgdir/pw" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1" start >/dev/null
    trap 'as_pg "$pg_bin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true' EXIT
    url="postgres://bench:bench@127.0.0.1:$port/postgres?sslmode=disable"
    if [ "$no_systems" = false ]; then
    log "systems on PostgreSQL: esbench --system (the follower in a second schema; no peer run)"
    run --backend postgres --pg-url "$url" --variant encrypted --aggs $pg_aggs --system --live-saves $sys_live --tag pg-encrypted-system
    fi
    if [ "$systems_only" = false ]; then
    log "raw PostgreSQL single-row commits (pgbench, same server)"
    printf '%s\n' "CREATE TABLE IF NOT EXISTS raw_probe (id bigserial PRIMARY KEY, oid uuid, v bigint, topic text, state bytea);" |
        PGPASSWORD=bench "$pg_bin/psql" -q -h 127.0.0.1 -p "$port" -U bench postgres >/dev/null
    echo "INSERT INTO raw_probe (oid, v, topic, state) VALUES (gen_random_uuid(), 1, 'Customer.Registered', decode(repeat('ab', 280), 'hex'));" > "$work/raw.sql"
    raw_pg=$(PGPASSWORD=bench "$pg_bin/pgbench" -n -h 127.0.0.1 -p "$port" -U bench -f "$work/raw.sql" -T 10 postgres 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    emit "{\"probe\":\"pg_raw\",\"single_row_commits_s\":${raw_pg:-0}}"
    log "raw PostgreSQL single-row commits through postgres-nio (the store's driver)"
    emit "$(.build/release/pgraw "postgres://bench:bench@127.0.0.1:$port/postgres" 10)"
    log "esbench PostgreSQL ($pg_aggs aggregates)"
    run --backend postgres --pg-url "$url" --variant encrypted --aggs $pg_aggs --w2-rounds 3 --projection --live-saves 2000 --tag pg-encrypted
    run --backend postgres --pg-url "$url" --variant encrypted --writers 8 --aggs $pg_aggs --w2-rounds 3 --tag pg-encrypted-8writers
    run --backend postgres --pg-url "$url" --variant encrypted --readers 8 --aggs $pg_aggs --w2-rounds 3 --tag pg-encrypted-8readers
    run --backend postgres --pg-url "$url" --variant encrypted --readers 32 --aggs $pg_aggs --w2-rounds 3 --tag pg-encrypted-32readers
    run --backend postgres --pg-url "$url" --variant encrypted --store-executor --aggs $pg_aggs --w2-rounds 3 --tag pg-encrypted-store-executor
    run --backend postgres --pg-url "$url" --variant plain --aggs $pg_aggs --w2-rounds 3 --tag pg-plain
    log "the store's save function alone, through libpq (pgbench, prepared): one writer's ceiling without any client work"
    "$esbench" --workload "$workload" --backend postgres --pg-url "$url" --pg-schema esbench_fn --aggs 10 >/dev/null 2>&1
    echo "SELECT * FROM esbench_fn.insert_saves(5000, ARRAY[1], ARRAY[gen_random_uuid()], ARRAY[1::bigint], ARRAY['Customer.ContactUpdated'], ARRAY[decode(repeat('ab', 280), 'hex')], ARRAY['scope-' || (random() * 1e9)::bigint], ARRAY[0], '{}'::text[], '{}'::bigint[], '{}'::text[], '{}'::bytea[], '{}'::float8[]);" > "$work/fn.sql"
    fn_pg=$(PGPASSWORD=bench "$pg_bin/pgbench" -n -M prepared -h 127.0.0.1 -p "$port" -U bench -f "$work/fn.sql" -T 10 postgres 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    emit "{\"probe\":\"pg_save_fn_libpq\",\"saves_s\":${fn_pg:-0}}"
    log "peer PostgreSQL"
    emit "$(pyes --backend postgres --variant aes-openssl --pg-host 127.0.0.1 --pg-port $port --pg-user bench --pg-password bench --pg-db peerbench --aggs $pg_aggs --tag peer-pg-aes-openssl)"
    emit "$(pyes --backend postgres --variant plain --pg-host 127.0.0.1 --pg-port $port --pg-user bench --pg-password bench --pg-db peerbench --aggs $pg_aggs --tag peer-pg-plain)"
    fi
fi
log "results in $out"
