#!/usr/bin/env bash
# Builds the fuzz targets (libFuzzer + AddressSanitizer) and runs each on its corpus.
#
#   Fuzz/run.sh [target] [seconds]        # all targets, 60 s each, by default
#   Fuzz/run.sh compact 600               # one target (name without the fuzz- prefix)
#   FUZZ_JOBS=2 Fuzz/run.sh               # libFuzzer workers per target
#   Fuzz/run.sh --seeds                   # rewrite the seed corpora with the real encoder
#
# Targets: state-header, mapper, compact, key-file, store-file, pkcs11-uri. New inputs that
# reach new code go to Fuzz/corpus/<target>/new/ (not committed); crashes to
# Fuzz/artifacts/<target>/, with the command that reproduces them printed at the end. The build
# goes to .build-fuzz at the package root, away from the library's own .build.
set -euo pipefail
cd "$(dirname "$0")"

targets=(state-header mapper compact key-file store-file pkcs11-uri)
seeds=false
if [ "${1:-}" = "--seeds" ]; then seeds=true; shift; fi
if [ $# -gt 0 ] && [[ " ${targets[*]} " == *" $1 "* ]]; then targets=("$1"); shift; fi
seconds=${1:-60}
jobs=${FUZZ_JOBS:-1}

scratch=../.build-fuzz
mkdir -p artifacts
if ! swift build -c debug --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address > artifacts/build.txt 2>&1; then
    grep -E "error" artifacts/build.txt | head -20 || true
    echo "build failed: see Fuzz/artifacts/build.txt"
    exit 1
fi
bin=$(swift build -c debug --scratch-path "$scratch" --show-bin-path)

# The Swift runtime's backtracer and AddressSanitizer both want a crashing process; let
# AddressSanitizer report (the backtracer can hang under it).
export SWIFT_BACKTRACE=enable=no
# Leak checks off: the Swift runtime's caches and the concurrency runtime look like leaks to it.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

status=0
for t in "${targets[@]}"; do
    corpus=corpus/$t
    if $seeds; then
        rm -rf "$corpus/seeds"
        FUZZ_WRITE_SEEDS="$corpus/seeds" "$bin/fuzz-$t"
        continue
    fi
    mkdir -p "$corpus/new" "artifacts/$t"
    echo "== fuzz-$t for ${seconds}s"
    parallel=()
    if [ "$jobs" -gt 1 ]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
    # A single allocation or the whole process above 2 GiB is a finding (-malloc_limit_mb
    # follows -rss_limit_mb): no input may make the library allocate without bound.
    if ! "$bin/fuzz-$t" "$corpus/new" "$corpus/seeds" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        ${parallel[@]+"${parallel[@]}"} -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        > "artifacts/$t/log.txt" 2>&1; then
        status=1
        echo "fuzz-$t FAILED: see Fuzz/artifacts/$t/log.txt"
        grep -E "invariant broken|ERROR:|SUMMARY" "artifacts/$t/log.txt" | head -5 || true
        for a in artifacts/$t/crash-* artifacts/$t/timeout-* artifacts/$t/oom-*; do
            [ -e "$a" ] && echo "   reproduce: SWIFT_BACKTRACE=enable=no $bin/fuzz-$t Fuzz/$a"
        done
    else
        grep -E "^stat::number_of_executed_units|^Done|cov:" "artifacts/$t/log.txt" | tail -2 || true
    fi
done
exit $status
