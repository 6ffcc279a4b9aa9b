#!/usr/bin/env bash
# run_all.sh TARGET_DIR SECONDS JOBS: every libFuzzer target in TARGET_DIR (the executables fuzz_<name>, not
# fuzz_replay_*) at once, for SECONDS each, JOBS processes in all (split evenly over the targets, at least
# one each: libFuzzer's -fork=N per target). Then prints, per target, the executions libFuzzer counted, the
# rate, and what it recorded (crashes, timeouts, out-of-memory inputs).
#
# Needs neither meson nor the build tree: only the target binaries, the libraries they link (point
# LD_LIBRARY_PATH at them; bundle.sh gathers both) and, next to this script, corpus/ and regressions/.
# Works in $QD_FUZZ_WORK (default ./fuzz-work): WORK/<name>/corpus keeps what the runs found (the next run
# starts from there), WORK/<name>/artifacts the crash inputs, WORK/<name>/fuzz.log libFuzzer's output.
# QD_FUZZ_ARGS adds libFuzzer options (e.g. -timeout=1 for long h5read runs, tests/fuzz/README.md);
# QD_FUZZ_TARGETS="h5read safetensors" runs only those (the slow ones can then get more cores).
# Exit status: 0 when no target recorded a crash or an out-of-memory input (h5read's: those triage.py
# does not class as HDF5's own), 1 otherwise, 2 on bad usage.
set -uo pipefail
if [ $# -ne 3 ] || [ ! -d "$1" ] || ! [[ $2 =~ ^[1-9][0-9]*$ && $3 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: run_all.sh TARGET_DIR SECONDS JOBS" >&2
    exit 2
fi
dir=$1 seconds=$2 jobs=$3
here=$(cd "$(dirname "$0")" && pwd)
work=${QD_FUZZ_WORK:-fuzz-work}
targets=()
for f in "$dir"/fuzz_*; do
    n=${f##*/fuzz_}
    [ -x "$f" ] && [ -f "$f" ] && [[ $n != replay* ]] || continue
    [ -z "${QD_FUZZ_TARGETS:-}" ] || [[ " $QD_FUZZ_TARGETS " == *" $n "* ]] || continue
    targets+=("$n")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "run_all: no fuzz_<name> executable in $dir" >&2
    exit 2
fi
nt=${#targets[@]}
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" # HDF5's own leaks: run_fuzz.sh says why
echo "run_all: ${targets[*]}: $seconds s each, $jobs processes in all"
pids=()
for i in "${!targets[@]}"; do
    t=${targets[$i]}
    j=$((jobs / nt + (i < jobs % nt ? 1 : 0)))
    [ "$j" -ge 1 ] || j=1
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    seeds=()
    for d in "$here/corpus/$t" "$here/regressions/$t"; do
        if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then seeds+=("$d"); fi
    done
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    # the options of run_fuzz.sh (its comments say why each)
    # shellcheck disable=SC2086
    "$dir/fuzz_$t" -fork="$j" -ignore_crashes=1 -max_total_time="$seconds" -timeout=3 -rss_limit_mb=2048 \
        -detect_leaks=0 -artifact_prefix="$work/$t/artifacts/" "${dict[@]}" ${QD_FUZZ_ARGS:-} "$work/$t/corpus" \
        "${seeds[@]}" \
        >"$work/$t/fuzz.log" 2>&1 &
    pids+=($!)
    echo "run_all: fuzz_$t: $j processes, log $work/$t/fuzz.log"
done
for p in "${pids[@]}"; do wait "$p"; done
"$here/clean_scratch.sh"

rc=0
printf '%-12s %6s %8s %14s %10s %8s %8s %6s\n' target jobs seconds executions exec/s crashes timeouts ooms
for i in "${!targets[@]}"; do
    t=${targets[$i]}
    j=$((jobs / nt + (i < jobs % nt ? 1 : 0)))
    [ "$j" -ge 1 ] || j=1
    # fork mode: the parent's status lines "#N: cov: ... time: Ss ..." count every child's executions
    last=$(grep -E '^#[0-9]+: cov:' "$work/$t/fuzz.log" | tail -1)
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
    secs=$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")
    execs=${execs:-0} secs=${secs:-0}
    rate=$((secs > 0 ? execs / secs : 0))
    crashes=$(find "$work/$t/artifacts" -name 'crash-*' | wc -l)
    timeouts=$(find "$work/$t/artifacts" -name 'timeout-*' | wc -l)
    ooms=$(find "$work/$t/artifacts" -name 'oom-*' | wc -l)
    printf '%-12s %6d %8d %14d %10d %8d %8d %6d\n' "$t" "$j" "$secs" "$execs" "$rate" "$crashes" "$timeouts" "$ooms"
    if [ "$execs" -eq 0 ]; then
        echo "run_all: fuzz_$t: no status line in its log (it did not run?): tail of $work/$t/fuzz.log:" >&2
        tail -5 "$work/$t/fuzz.log" >&2
        rc=1
    fi
    found=$(find "$work/$t/artifacts" -name 'crash-*' -o -name 'oom-*')
    [ -n "$found" ] || continue
    if [ "$t" = h5read ] && { [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && ! command -v llvm-symbolizer >/dev/null; }; then
        # without symbols triage.py cannot tell ASan's own frames from ours and calls every crash ours
        echo "run_all: fuzz_h5read recorded $(wc -w <<<"$found") crash/oom inputs; no llvm-symbolizer here to" \
            "triage them: copy $work/h5read/artifacts to the build machine and run tests/fuzz/triage.py there" >&2
        rc=1
    elif [ "$t" = h5read ] && command -v python3 >/dev/null; then
        # shellcheck disable=SC2086
        python3 "$here/triage.py" "$dir/fuzz_$t" $found || rc=1 # HDF5's own crashes are listed, not failures
    else
        echo "run_all: fuzz_$t recorded crashes (rerun one with: $dir/fuzz_$t ARTIFACT):" $found >&2
        rc=1
    fi
done
exit $rc
