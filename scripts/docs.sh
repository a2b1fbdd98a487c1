#!/usr/bin/env bash
# Generates the DocC documentation of every library module (the targets of the package's
# library products, read from Package.swift) with swift-docc-plugin, warnings treated as
# errors: a broken ``Symbol`` or <doc:Article> link, an undocumented parameter or a
# documented parameter that does not exist fails the run. CI runs it from scripts/test.sh.
#
#   scripts/docs.sh [extra generate-documentation arguments]
#
# The archives are written to .build/plugins/Swift-DocC Convert/outputs/<Module>.doccarchive.
# Environment:
#   ES_DOCS_SCRATCH   a scratch path for the plugin's build (default: SwiftPM's, .build)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[docs.sh] %s\n' "$*" >&2; }

targets=$(swift package dump-package | python3 -c '
import json, sys
package = json.load(sys.stdin)
seen = []
for product in package["products"]:
    if "library" in product["type"]:
        for target in product["targets"]:
            if target not in seen:
                seen.append(target)
print(" ".join(seen))
')
[ -n "$targets" ] || { log "no library targets found in Package.swift"; exit 1; }

args=()
for t in $targets; do args+=(--target "$t"); done
scratch=()
[ -n "${ES_DOCS_SCRATCH:-}" ] && scratch=(--scratch-path "$ES_DOCS_SCRATCH")

log "generating documentation for: $targets"
start=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
swift package "${scratch[@]}" generate-documentation "${args[@]}" --warnings-as-errors "$@" 2>&1 | tee "$out" || status=$?
# The plugin reports a failed `docc convert` as an error diagnostic (and docc prints each
# warning as `error: …` under --warnings-as-errors); do not rely on the exit status alone.
if [ "$status" -ne 0 ] || grep -q '^error: ' "$out"; then
    log "FAILED after $(( $(date +%s) - start )) s: fix the diagnostics above (docc treats warnings as errors here)"
    exit 1
fi
log "documentation generated in $(( $(date +%s) - start )) s"
