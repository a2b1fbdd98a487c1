#!/usr/bin/env bash
# Runs the whole test suite, the PostgreSQL tests included, against a throwaway PostgreSQL
# cluster this script creates in a temporary directory, starts on a free loopback port, and
# stops and deletes afterwards (also on failure).
#
#   scripts/test.sh [extra swift test arguments]
#
# Environment:
#   CI=true              a missing PostgreSQL is a failure, never a skip
#   ES_POSTGRES_URL      use this server instead of starting one
#   ES_SKIP_POSTGRES=1   (not with CI) run without PostgreSQL; the PostgreSQL tests say so loudly
#   ES_SKIP_DOCS=1       (not with CI) skip generating the documentation (scripts/docs.sh)
#   (SoftHSM2: the PKCS#11 tests use tokens of their own in a temporary token directory, set up
#   here with SOFTHSM2_CONF; CI=true fails when softhsm2 is missing instead of skipping them)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

need_pkgs=()
for p in libssl-dev zlib1g-dev libsqlite3-dev pkg-config python3-cryptography softhsm2; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "${ES_POSTGRES_URL:-}" ] && [ -z "${ES_SKIP_POSTGRES:-}" ] && [ -z "$pg_bin" ]; then
    need_pkgs+=(postgresql)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${need_pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
        pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    else
        log "missing system packages: ${need_pkgs[*]} (install them with apt-get as root)"
    fi
fi

pg_dir=""
hsm_dir=""
cleanup() {
    if [ -n "$hsm_dir" ] && [ -d "$hsm_dir" ]; then rm -rf "$hsm_dir"; fi
    if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
        log "stopping PostgreSQL"
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    fi
}
trap cleanup EXIT INT TERM

# The server refuses to run as root: run it as the 'postgres' system user (created by the
# Debian package), or as ourselves when we are not root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi
}

if [ -z "${ES_POSTGRES_URL:-}" ] && [ -z "${ES_SKIP_POSTGRES:-}" ]; then
    if [ -z "$pg_bin" ]; then
        if [ "${CI:-}" = "true" ]; then log "PostgreSQL is not installed and CI=true: failing"; exit 1; fi
        log "!!! PostgreSQL is not installed: the PostgreSQL tests will be SKIPPED (set CI=true to fail instead) !!!"
    else
        pg_user=$(id -un)
        if [ "$(id -u)" = 0 ]; then
            pg_user=postgres
            id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        fi
        pg_dir=$(mktemp -d /tmp/es-pg.XXXXXX)
        chmod 755 "$pg_dir"
        [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir"
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
        printf '%s\n' "$password" > "$pg_dir/pw" && chmod 644 "$pg_dir/pw"
        [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir/pw"
        log "starting a throwaway PostgreSQL cluster on 127.0.0.1:$port"
        as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U estest --pwfile="$pg_dir/pw" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >"$pg_dir/initdb.log" 2>&1 \
            || { cat "$pg_dir/initdb.log" >&2; exit 1; }
        rm -f "$pg_dir/pw"
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
            -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=on" start >/dev/null \
            || { cat "$pg_dir/server.log" >&2; exit 1; }
        export ES_POSTGRES_URL="postgres://estest:$password@127.0.0.1:$port/postgres"
        # For tests that restart the server mid-run.
        export ES_POSTGRES_CTL="$pg_bin/pg_ctl"
        export ES_POSTGRES_DATA="$pg_dir/data"
        export ES_POSTGRES_RUN_AS="$pg_user"
    fi
fi

# SoftHSM2 reads SOFTHSM2_CONF when a test process first loads it, and the test processes never
# change their environment: the configuration, with a token directory of its own, is made here.
# The tests create their tokens in it (the esctl tests make their own per workspace).
softhsm_module=/usr/lib/softhsm/libsofthsm2.so
if [ -f "$softhsm_module" ] && command -v softhsm2-util >/dev/null; then
    hsm_dir=$(mktemp -d /tmp/es-softhsm.XXXXXX)
    mkdir "$hsm_dir/tokens"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$hsm_dir" > "$hsm_dir/softhsm2.conf"
    export SOFTHSM2_CONF="$hsm_dir/softhsm2.conf"
    export ES_SOFTHSM2_MODULE="$softhsm_module"
elif [ "${CI:-}" = "true" ]; then
    log "SoftHSM2 is not installed and CI=true: failing"; exit 1
else
    log "!!! SoftHSM2 is not installed: the PKCS#11 tests will be SKIPPED (set CI=true to fail instead) !!!"
fi

log "building (debug, with tests)"
swift build --build-tests
# The DocC documentation of every library module, warnings as errors: a broken symbol or
# article link fails the run. After the build, so the plugin finds the modules built.
if [ -n "${ES_SKIP_DOCS:-}" ] && [ "${CI:-}" != "true" ]; then
    log "!!! ES_SKIP_DOCS is set: the documentation is NOT checked !!!"
else
    log "generating the documentation (scripts/docs.sh)"
    scripts/docs.sh
fi
log "running tests"
if [ $# -gt 0 ]; then
    swift test --skip-build "$@"
else
    # The esctl suites spawn the esctl binary through Foundation's Process, whose run() crashed
    # (a memcpy into an unmapped page) when the other suites held ~1,350 descriptors open in the
    # same test process: they run in a test process of their own, after the rest.
    status=0
    swift test --skip-build --skip 'esctlTests\.' || status=$?
    swift test --skip-build --filter 'esctlTests\.' || status=$?
    # The quick start's demo builds esctl without the default trait PostgreSQL (no postgres-nio,
    # SwiftNIO or BoringSSL): that build must compile, run the demo, and refuse a PostgreSQL
    # store with a message saying how to build with it (exit 64), never crash or try to connect.
    # Last, because it replaces .build/debug/esctl with the build without PostgreSQL.
    scripts/check-sqlite-only-build.sh || status=$?
    exit $status
fi
