#!/usr/bin/env bash
# run_fuzz.sh FUZZER WORKDIR [--seeds QWEN3_DIFF QWEN3_FIXTURE SEEDS_DIR] DIR...: a bounded libFuzzer run of
# one target (the 'fuzz' suite). Starts from WORKDIR/corpus (what earlier runs found; new inputs go there),
# the DIRs (committed seeds and regressions, read only) and, with --seeds, the h5read dumps make_corpus.py
# writes to SEEDS_DIR. A crash's input lands in WORKDIR/artifacts/. QD_FUZZ_SECONDS (default 60) bounds the
# run, QD_FUZZ_JOBS (default 1) the parallel children; QD_FUZZ_ARGS adds libFuzzer options.
# Fails when libFuzzer finds a crash of ours (triage.py), a sanitizer report or a runaway allocation.
set -euo pipefail
fuzzer=$1 work=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
dirs=()
if [ "${1:-}" = --seeds ]; then
    /usr/bin/python3 "$here/make_corpus.py" "$2" "$3" "$4"
    dirs+=("$4")
    shift 4
fi
for d in "$@"; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then dirs+=("$d"); fi
done
mkdir -p "$work/corpus" "$work/artifacts"
# the format's tokens (dict/<name>.dict), where the target has them: mutations that splice in a known key
# reach past the first "unknown key" refusal far sooner
name=${fuzzer##*/fuzz_}
dict=()
[ -f "$here/dict/$name.dict" ] && dict=(-dict="$here/dict/$name.dict")
# -fork: inputs run in child processes, so a crash or hang inside HDF5 itself (tests/fuzz/README.md,
# "HDF5's own bugs") is recorded in WORKDIR/artifacts/ and fuzzing goes on (-ignore_crashes=1); each crash
# is then triaged (triage.py): one whose bad memory or crashing frame is ours fails the run, one wholly
# inside HDF5 is listed. -timeout: one input, all its reads, takes milliseconds under ASan; 3 s is a hang.
# -rss_limit_mb: the targets' models are tiny; 2 GB is a runaway allocation. -detect_leaks=0 (and
# in ASAN_OPTIONS, for the children's exit): HDF5 1.10 leaks its own free-list blocks when it gives up
# on a corrupt object header (H5O_protect); the replay in the hostile suite checks leaks with those
# allocators suppressed (lsan.supp), so ours are still caught.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fuzz_rc=0
# shellcheck disable=SC2086
"$fuzzer" -fork="${QD_FUZZ_JOBS:-1}" -ignore_crashes=1 -max_total_time="${QD_FUZZ_SECONDS:-60}" -timeout=3 \
    -rss_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "${dict[@]}" ${QD_FUZZ_ARGS:-} "$work/corpus" "${dirs[@]}" || fuzz_rc=$?
# In fork mode libFuzzer exits 1 whenever a child crashed, HDF5's crashes included: the verdict is the
# triage's. A failure with nothing recorded (bad flags, no corpus) fails the run.
rc=0
if [ "$fuzz_rc" -ne 0 ] && [ -z "$(ls -A "$work/artifacts")" ]; then
    echo "run_fuzz: FAIL: libFuzzer exited $fuzz_rc with no crash recorded"
    rc=1
fi
for t in "$work"/artifacts/timeout-*; do
    [ -e "$t" ] && echo "run_fuzz: $t: a hang (inside HDF5 so far, see tests/fuzz/README.md); not a failure"
done
"$here/clean_scratch.sh"
crashes=()
for c in "$work"/artifacts/crash-* "$work"/artifacts/oom-*; do [ -e "$c" ] && crashes+=("$c"); done
if [ ${#crashes[@]} -gt 0 ]; then
    /usr/bin/python3 "$here/triage.py" "$fuzzer" "${crashes[@]}" || rc=1
fi
exit $rc
