#!/usr/bin/env bash
# Checks the per-stage pipeline benchmarks (Benchmarks/PipelineBenchmarks) against the committed
# baselines, so that a regression in a stage shows: exits non-zero, naming the benchmark and the
# metric, when a stage got worse than its baseline by more than the tolerance written in
# PipelineBenchmarks.swift (malloc count: 0.1 a record; bytes allocated: 3%; CPU time: 50%; all
# on the p90 of 1,000 records an iteration). Wall-clock time is reported, not checked: on the
# shared 2-core machine it moved 3-4x with the load of other processes.
#
#   Benchmarks/check-thresholds.sh            run the benchmarks (release build) and check them
#   Benchmarks/check-thresholds.sh --update   run them and write new baselines (commit them)
#   Benchmarks/check-thresholds.sh --read     print the baselines
#   Extra arguments go to the benchmark tool, e.g. --filter 'Pipeline\..*'.
#
# Exit status: 0 no stage worse than its baseline (also when some are better by more than the
# tolerance: it says so; update the baselines then); 2 regression; 1 anything else (build
# failure, no baselines, a benchmark that threw: the tool itself would report that as equal).
#
# Baselines: Benchmarks/Thresholds/<workload>/PipelineBenchmarks.<benchmark>.p90.json, where
# <workload> is `shared` (the first 1,000 records of ../shared/bench) or `generated` (the same
# count from generate-workload.py, used when ../shared is not there). ES_PIPELINE_WORKLOAD=shared
# or =generated picks one explicitly. Baselines hold this machine's and toolchain's figures: after
# a change of either, or a deliberate change of a stage, run --update and commit the files.
# For developers only: neither the library's build nor CI runs it.
set -uo pipefail
cd "$(dirname "$0")"

mode=check
args=()
for a in "$@"; do
    case "$a" in
        --update) mode=update ;;
        --read) mode=read ;;
        *) args+=("$a") ;;
    esac
done

workload=${ES_PIPELINE_WORKLOAD:-}
if [ -z "$workload" ]; then
    if [ -f ../../shared/bench/workload-10k-aggregates.jsonl.gz ]; then workload=shared; else workload=generated; fi
fi
case "$workload" in
    shared|generated) ;;
    *) echo "check-thresholds: ES_PIPELINE_WORKLOAD must be shared or generated, not $workload" >&2; exit 1 ;;
esac
export ES_PIPELINE_WORKLOAD=$workload
path=Thresholds/$workload
echo "check-thresholds: workload $workload, baselines $path" >&2

log=$(mktemp /tmp/check-thresholds.XXXXXX)
trap 'rm -f "$log"' EXIT

case "$mode" in
    update)
        swift package --allow-writing-to-package-directory benchmark thresholds update \
            --target PipelineBenchmarks --path "$path" --no-progress "${args[@]}" || exit 1
        # Wall-clock time is reported but not checked: on a shared machine it moves 3-4x with
        # the load. The check compares only the metrics a baseline file holds.
        python3 - "$path" <<'PY' || exit 1
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/PipelineBenchmarks.*.p90.json")):
    d = json.load(open(f))
    d.pop("wallClock", None)
    with open(f, "w") as out:
        json.dump(d, out, indent=2, sort_keys=True)
        out.write("\n")
PY
        echo "check-thresholds: baselines written to $path (commit them)"
        exit 0
        ;;
    read)
        swift package benchmark thresholds read --target PipelineBenchmarks --path "$path" "${args[@]}"
        exit $?
        ;;
esac

if ! ls "$path"/PipelineBenchmarks.*.p90.json >/dev/null 2>&1; then
    echo "check-thresholds: no baselines in $path: run $0 --update first" >&2
    exit 1
fi
swift package benchmark thresholds check --target PipelineBenchmarks --path "$path" --no-progress \
    "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# A benchmark that throws leaves no result, and the tool then finds nothing to compare for it.
if grep -aq "^Benchmark .* failed" "$log"; then
    echo "check-thresholds: ERROR: a benchmark failed (see above), so it was not checked" >&2
    exit 1
fi
# The plugin's own exit status is 1 for every outcome but success; its message says which.
if [ "$rc" -eq 0 ]; then
    echo "check-thresholds: PASS (every stage within its tolerance of the baselines)"
    exit 0
elif grep -q "benchmarkThresholdRegression\|is WORSE than the defined thresholds" "$log"; then
    echo "check-thresholds: FAIL: a stage regressed (the table above names the benchmark and metric)" >&2
    exit 2
elif grep -q "benchmarkThresholdImprovement\|is BETTER than the defined thresholds" "$log"; then
    echo "check-thresholds: PASS, and some stages are better than the baselines by more than the" \
         "tolerance (table above): update them with $0 --update once the change is intended"
    exit 0
else
    echo "check-thresholds: ERROR: the benchmark run failed (exit status $rc, see above)" >&2
    exit 1
fi
