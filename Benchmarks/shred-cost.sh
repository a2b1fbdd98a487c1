#!/usr/bin/env bash
# How long a SQLite shred takes as the store grows, in a release build: for each size, a new
# store of N key scopes, then SQLiteStore.shred timed on 20 of them (one JSON line per size on
# stdout, from Benchmarks/ShredCost). A measurement to run, not a test: shred times are mostly
# fsync, so they move with the disk's load; pages_changed (database pages one shred changes)
# does not.
#
#   Benchmarks/shred-cost.sh [SCOPES ...]          # default: 1000 60000; 1000000 takes minutes
#   OLD=/path/to/older/checkout Benchmarks/shred-cost.sh 1000   # the same measurement of older code
#
# OLD: a checkout (or `git archive` export) of an earlier commit; Benchmarks/ShredCost is copied
# into it and built there (it uses only API that existed before schema 3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 60000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "shred-cost: '$n' is not a number of scopes" >&2; exit 64; }
done
target=$root
if [ -n "${OLD:-}" ]; then
    target=$(cd "$OLD" && pwd)
    mkdir -p "$target/Benchmarks/ShredCost"
    cp -R "$root/Benchmarks/ShredCost/Package.swift" "$root/Benchmarks/ShredCost/Sources" "$target/Benchmarks/ShredCost/"
fi
echo "[shred-cost] building (release) in $target" >&2
swift build -c release --package-path "$target/Benchmarks/ShredCost" --product shred-cost >&2
bin=$target/Benchmarks/ShredCost/.build/release/shred-cost
for n in "${sizes[@]}"; do
    "$bin" --scopes "$n" --shreds 20
done
