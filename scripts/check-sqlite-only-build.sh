#!/usr/bin/env bash
# Builds esctl as the quick start's demo does (`swift run --disable-default-traits esctl demo`:
# without the package trait PostgreSQL, so postgres-nio, SwiftNIO and BoringSSL are not built)
# and checks that build: the demo runs to the end, and a PostgreSQL store is refused with exit
# 64 and the message naming the trait, without the URL's password in it.
# scripts/test.sh runs it last (it replaces .build/debug/esctl).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[sqlite-only] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

log "building esctl without the default traits"
swift build --disable-default-traits --product esctl >&2
esctl=.build/debug/esctl

# Nothing of the PostgreSQL client may be linked in.
if nm "$esctl" 2>/dev/null | grep -q 'PostgresNIO'; then
    fail "the build without the trait PostgreSQL still links PostgresNIO"
fi

work=$(mktemp -d /tmp/es-sqlite-only.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$work" && "$OLDPWD/$esctl" demo > "$work/demo.out" 2>&1) || { cat "$work/demo.out" >&2; fail "esctl demo exited non-zero"; }
grep -q 'shredded' "$work/demo.out" || { cat "$work/demo.out" >&2; fail "the demo did not reach its shred"; }
# Its closing hint runs the same build (no rebuild with PostgreSQL when followed).
grep -q 'try:  swift run --disable-default-traits esctl ' "$work/demo.out" || { cat "$work/demo.out" >&2; fail "the demo's hint is not for the build without PostgreSQL"; }

status=0
"$esctl" verify --store 'postgres://user:hunter2secret@127.0.0.1:1/db' > "$work/pg.out" 2>&1 || status=$?
[ "$status" = 64 ] || { cat "$work/pg.out" >&2; fail "a PostgreSQL store exited $status, not 64"; }
grep -q 'built without the package trait PostgreSQL' "$work/pg.out" || { cat "$work/pg.out" >&2; fail "the refusal does not name the trait"; }
if grep -q 'hunter2secret' "$work/pg.out"; then fail "the refusal repeats the URL's password"; fi

status=0
ESCTL_STORE='postgresql://user@127.0.0.1:1/db' "$esctl" keys list > "$work/pg2.out" 2>&1 || status=$?
[ "$status" = 64 ] || { cat "$work/pg2.out" >&2; fail "ESCTL_STORE=postgresql://… exited $status, not 64"; }
log "ok: the demo runs, and PostgreSQL stores are refused with the trait named (exit 64)"
