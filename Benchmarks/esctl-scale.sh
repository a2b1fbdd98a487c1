#!/usr/bin/env bash
# How esctl's operator commands grow with the number of data subjects, on SQLite and PostgreSQL,
# in a release build. This is where esctl's speed is measured: the tests check what the commands
# print, never how long they take (a timed test fails on a loaded machine without anything being
# wrong).
#
#   Benchmarks/esctl-scale.sh [--backend sqlite|postgres|both] [--sets SET,…] [SCOPES ...]
#        default: --backend sqlite --sets flat,export,passes,listing 10000 100000
#        (1000000 takes about half an hour on SQLite; on PostgreSQL export and reencrypt take hours)
#
# For each backend and size it creates a store with `esctl init`, fills it with
# Benchmarks/EsctlScale's esctl-scale-seed (one aggregate and one event per key scope, every tenth
# scope with a second data-key version; 1,000 aggregates per save), keeps that store as the
# pristine copy, and measures on copies of it (a SQLite file copy; a PostgreSQL
# `CREATE DATABASE … TEMPLATE`), so every run of a command that changes the store starts from the
# same store:
#
#   flat     commands on ONE subject, each call on a different subject (RUNS subjects spread over
#            the store: the first, then one in each RUNS-th of it): `keys show`, `keys rotate`,
#            `keys shred --yes`. Time per call should not grow with the store.
#   export   `export SUBJECT`, the same way (one subject a call), in a set of its own: it also
#            searches every other record for the subject's personal fields, so it is a full pass.
#   passes   full passes, PASSES runs each (the store copied afresh before each run of a pass that
#            writes): `verify` (events/s), `keys rotate-master` (data keys/s: every key version is
#            rewrapped), `keys reencrypt --all` (events examined/s; the tenth of the events under an
#            older key version are rewritten). Time should grow linearly, max RSS not at all.
#            The sets verify, rotate-master and reencrypt name one pass each.
#   listing  `keys list`, `keys list --json`, `stats --json` (RUNS runs each on the pristine store).
#
# Each call is timed by a small Python runner: wall time (monotonic clock), the child's user and
# system CPU time and its max RSS (wait4's rusage). One JSON line per (backend, size, command) on
# stdout (appended to $OUT if set):
#
#   {"bench":"esctl-growth","backend":"sqlite","scopes":100000,"events":100000,"command":"keys show",
#    "kind":"flat","exit":0,"runs":3,"wall_s":[…],"wall_s_median":…,"cpu_s":[…],"cpu_s_median":…,
#    "user_s_median":…,"sys_s_median":…,"max_rss_kb":…,"units":1,"unit":"call",…}
#
# A pass adds "rate_per_s" (units / median wall) and "cpu_us_per_unit" (median user+sys / units).
# The seed adds its own line ("command":"seed") with its wall and CPU time and the store's size.
#
# Key source: the master key files `esctl init` writes in the work directory (--master-key-file;
# the new key of rotate-master is created with --create). No key is ever printed.
# PostgreSQL: ES_POSTGRES_URL (postgres://USER:PASSWORD@HOST:PORT/DB?…) names the server; each size
# gets databases of its own, ${PGPREFIX:-esctl_growth}_SIZE (pristine) and …_SIZE_w (the copy),
# dropped at the end unless KEEP=1. The password is handed to esctl and the seed in PGPASSWORD,
# never in an argument.
#
# Env: RUNS (3: calls per flat and listing command), PASSES (2: runs per full pass), WORK (a new
# directory under /tmp; removed at the end unless KEEP=1), ESCTL (an esctl binary to measure
# instead of building one; the seed is still built), OUT (a file the JSON lines are appended to).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[esctl-scale %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
runs=${RUNS:-3}
passes=${PASSES:-2}
backend_opt=sqlite
sets=flat,export,passes,listing
sizes=()
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend_opt=${2:?--backend needs sqlite, postgres or both}; shift 2 ;;
        --sets) sets=${2:?--sets needs a list}; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) sizes+=("$1"); shift ;;
    esac
done
[ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "esctl-scale: '$n' is not a number of scopes" >&2; exit 64; }
done
[[ "$runs" =~ ^[1-9][0-9]*$ && "$passes" =~ ^[1-9][0-9]*$ ]] || { echo "esctl-scale: RUNS and PASSES are positive numbers" >&2; exit 64; }
case "$backend_opt" in
    sqlite) backends=(sqlite) ;; postgres) backends=(postgres) ;; both) backends=(sqlite postgres) ;;
    *) echo "esctl-scale: --backend is sqlite, postgres or both" >&2; exit 64 ;;
esac
for s in ${sets//,/ }; do
    case "$s" in flat|export|passes|verify|rotate-master|reencrypt|listing) ;;
        *) echo "esctl-scale: unknown set '$s' (flat, export, passes, verify, rotate-master, reencrypt, listing)" >&2; exit 64 ;;
    esac
done
has_set() {
    [[ ",$sets," == *",$1,"* ]] && return 0
    case "$1" in verify|rotate-master|reencrypt) [[ ",$sets," == *",passes,"* ]] ;; *) return 1 ;; esac
}

work=${WORK:-$(mktemp -d /tmp/esctl-scale.XXXXXX)}
mkdir -p "$work"
pg_dbs=()
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        for db in "${pg_dbs[@]}"; do pg_admin "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" > /dev/null 2>&1 || true; done
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# PostgreSQL: split ES_POSTGRES_URL into a password (exported as PGPASSWORD) and the URL parts.
if [[ " ${backends[*]} " == *" postgres "* ]]; then
    [ -n "${ES_POSTGRES_URL:-}" ] || { echo "esctl-scale: --backend postgres needs ES_POSTGRES_URL" >&2; exit 64; }
    command -v psql > /dev/null || { echo "esctl-scale: --backend postgres needs psql" >&2; exit 69; }
    eval "$(python3 - <<'PY'
import os, shlex, urllib.parse
u = urllib.parse.urlsplit(os.environ["ES_POSTGRES_URL"])
print("pg_user=" + shlex.quote(urllib.parse.unquote(u.username or "")))
print("export PGPASSWORD=" + shlex.quote(urllib.parse.unquote(u.password or os.environ.get("PGPASSWORD", ""))))
print("pg_host=" + shlex.quote(u.hostname or "127.0.0.1"))
print("pg_port=" + shlex.quote(str(u.port or 5432)))
PY
)"
fi
pg_admin() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -Atc "$1"; }
pg_url() { printf 'postgres://%s@%s:%s/%s?sslmode=disable' "$pg_user" "$pg_host" "$pg_port" "$1"; }

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
commit=$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo unknown)

# Runs one command; appends {"wall":…,"user":…,"sys":…,"rss_kb":…,"exit":…} to $samples, its
# stdout to $work/out, its stderr to $work/err.
cat > "$work/timed.py" <<'PY'
import json, os, subprocess, sys, time
samples, out, err = sys.argv[1:4]
with open(out, "wb") as o, open(err, "wb") as e:
    start = time.monotonic()
    p = subprocess.Popen(sys.argv[4:], stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
code = os.waitstatus_to_exitcode(status)
with open(samples, "a") as f:
    f.write(json.dumps({"wall": round(wall, 4), "user": round(ru.ru_utime, 4), "sys": round(ru.ru_stime, 4),
                        "rss_kb": ru.ru_maxrss, "exit": code}) + "\n")
sys.exit(0)
PY
# Summarises $samples into the JSON line: summarize KIND LABEL UNITS UNIT [EXTRA-JSON]
cat > "$work/summarize.py" <<'PY'
import json, statistics, sys
samples, backend, n, events, label, kind, units, unit, commit, extra = sys.argv[1:11]
rows = [json.loads(l) for l in open(samples) if l.strip()]
med = lambda xs: statistics.median(xs)
wall = [r["wall"] for r in rows]; cpu = [round(r["user"] + r["sys"], 4) for r in rows]
units = int(units)
line = {"bench": "esctl-growth", "backend": backend, "scopes": int(n), "events": int(events), "command": label,
        "kind": kind, "exit": max((r["exit"] for r in rows), key=abs), "runs": len(rows),
        "wall_s": wall, "wall_s_median": round(med(wall), 4), "cpu_s": cpu, "cpu_s_median": round(med(cpu), 4),
        "user_s_median": round(med(r["user"] for r in rows), 4), "sys_s_median": round(med(r["sys"] for r in rows), 4),
        "max_rss_kb": max(r["rss_kb"] for r in rows), "units": units, "unit": unit}
if kind == "pass":
    line["rate_per_s"] = round(units / med(wall), 1)
    line["cpu_us_per_unit"] = round(med(cpu) / units * 1e6, 2)
line.update(json.loads(extra or "{}"))
line.update({"build": "release", "commit": commit})
print(json.dumps(line))
PY

emit() {
    printf '%s\n' "$1"
    if [ -n "${OUT:-}" ]; then printf '%s\n' "$1" >> "$OUT"; fi
}

# Per backend and size: $store (the pristine store's URL), $work_store (the copy's), restore().
setup_names() {
    local b=$1 n=$2
    dir="$work/$b-$n"
    key=(--master-key-file "$dir/master.key")
    if [ "$b" = sqlite ]; then
        store="sqlite:$dir/pristine.sqlite"; work_store="sqlite:$dir/work.sqlite"
    else
        db="${PGPREFIX:-esctl_growth}_$n"; store=$(pg_url "$db"); work_store=$(pg_url "${db}_w")
    fi
}
restore() {
    if [ "$backend" = sqlite ]; then
        rm -f "$dir/work.sqlite" "$dir/work.sqlite-wal" "$dir/work.sqlite-shm"
        cp "$dir/pristine.sqlite" "$dir/work.sqlite"
    else
        pg_admin "DROP DATABASE IF EXISTS \"${db}_w\" WITH (FORCE)"
        pg_admin "CREATE DATABASE \"${db}_w\" TEMPLATE \"$db\" STRATEGY FILE_COPY"
    fi
}
store_bytes() {
    if [ "$backend" = sqlite ]; then stat -c %s "$dir/pristine.sqlite"
    else pg_admin "SELECT pg_database_size('$db')"; fi
}

# measure KIND LABEL UNITS UNIT BEFORE ARGS…: runs `esctl ARGS…` (RUNS times for flat and listing,
# PASSES times for a pass); `{S}` in ARGS is the call's subject (a different one each call);
# BEFORE is `restore` (untimed, before each call) or `-`. Prints the JSON line.
measure() {
    local kind=$1 label=$2 units=$3 unit=$4 before=$5; shift 5
    local samples="$work/samples" count=$runs i extra="{}"
    [ "$kind" = pass ] && count=$passes
    : > "$samples"
    for i in $(seq 0 $((count - 1))); do
        local args=() a
        for a in "$@"; do args+=("${a//\{S\}/${subjects[$((i % ${#subjects[@]}))]}}"); done
        [ "$before" = - ] || "$before"
        python3 "$work/timed.py" "$samples" "$work/out" "$work/err" "$esctl" "${args[@]}"
        if [ "$(tail -n 1 "$samples" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exit"])')" != 0 ]; then
            log "esctl $label failed: $(tail -n 2 "$work/err" | tr '\n' ' ')"
        fi
    done
    case "$label" in
        "keys reencrypt --all --json")
            extra=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d.get(k) for k in ("events_examined","events_rewritten","skipped_shredded","conflicts_left")}))' "$work/out" 2> /dev/null || echo '{}') ;;
        "keys rotate-master")
            extra=$(python3 -c 'import json,sys; print(json.dumps({"result": open(sys.argv[1]).read().strip().split(": ",1)[-1]}))' "$work/out") ;;
        "verify --json")
            extra=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({"verified": d.get("events")}))' "$work/out" 2> /dev/null || echo '{}') ;;
    esac
    python3 "$work/summarize.py" "$samples" "$backend" "$n" "$((n))" "$label" "$kind" "$units" "$unit" "$commit" "$extra"
}

for backend in "${backends[@]}"; do
    for n in "${sizes[@]}"; do
        setup_names "$backend" "$n"
        rm -rf "$dir" && mkdir -p "$dir"
        if [ "$backend" = postgres ]; then
            pg_dbs+=("$db" "${db}_w")
            pg_admin "DROP DATABASE IF EXISTS \"${db}_w\" WITH (FORCE)"
            pg_admin "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
            pg_admin "CREATE DATABASE \"$db\""
        fi
        ESCTL_STORE=$store "$esctl" init --new-master-key-file "$dir/master.key" > /dev/null 2>&1
        log "$backend: seeding $n scopes"
        : > "$work/seed-samples"
        python3 "$work/timed.py" "$work/seed-samples" "$dir/subjects" "$work/err" \
            "$seed" --store "$store" --master-key-file "$dir/master.key" --scopes "$n" --sample "$runs"
        seed_line=$(python3 - "$work/seed-samples" "$backend" "$n" "$(store_bytes)" "$commit" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(json.dumps({"bench": "esctl-growth", "backend": sys.argv[2], "scopes": int(sys.argv[3]), "events": int(sys.argv[3]),
                  "command": "seed", "kind": "seed", "exit": r["exit"], "wall_s": r["wall"], "cpu_s": round(r["user"] + r["sys"], 3),
                  "max_rss_kb": r["rss_kb"], "store_bytes": int(sys.argv[4]), "build": "release", "commit": sys.argv[5]}))
PY
)
        emit "$seed_line"
        [[ "$seed_line" == *'"exit": 0,'* ]] || { log "seed failed: $(tail -n 3 "$work/err")"; exit 1; }
        mapfile -t subjects < "$dir/subjects"
        keys=$((n + (n + 9) / 10))   # data-key versions: one per scope, a second for every tenth

        export ESCTL_STORE=$store
        if has_set listing; then
            emit "$(measure listing "keys list" "$n" scope - "${key[@]}" keys list)"
            emit "$(measure listing "keys list --json" "$n" scope - "${key[@]}" keys list --json)"
            emit "$(measure listing "stats --json" 1 call - stats --json)"
        fi
        if has_set verify; then
            emit "$(measure pass "verify --json" "$n" event - "${key[@]}" verify --json)"
        fi
        if has_set export; then
            emit "$(measure flat "export" 1 call - "${key[@]}" export '{S}')"
        fi
        if has_set flat; then
            emit "$(measure flat "keys show" 1 call - "${key[@]}" keys show '{S}')"
            restore
            export ESCTL_STORE=$work_store
            emit "$(measure flat "keys rotate" 1 call - "${key[@]}" keys rotate '{S}')"
            emit "$(measure flat "keys shred" 1 call - "${key[@]}" keys shred '{S}' --yes --json)"
        fi
        export ESCTL_STORE=$work_store
        if has_set rotate-master; then
            emit "$(measure pass "keys rotate-master" "$keys" key restore "${key[@]}" keys rotate-master --new-master-key-file "$dir/new.key" --create)"
        fi
        if has_set reencrypt; then
            emit "$(measure pass "keys reencrypt --all --json" "$n" event restore "${key[@]}" keys reencrypt --all --json)"
        fi
        unset ESCTL_STORE
        if [ "${KEEP:-0}" != 1 ]; then
            rm -rf "$dir"
            if [ "$backend" = postgres ]; then
                pg_admin "DROP DATABASE IF EXISTS \"${db}_w\" WITH (FORCE)"; pg_admin "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
            fi
        fi
    done
done
