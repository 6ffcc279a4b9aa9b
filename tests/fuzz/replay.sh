#!/usr/bin/env bash
# replay.sh FUZZ_REPLAY [--seeds QWEN3_DIFF QWEN3_FIXTURE SEEDS_DIR] DIR...: runs a fuzz target's entry point
# (built with replay.c, no libFuzzer) over every file in DIRs (committed seeds, regression inputs); with
# --seeds, first makes the h5read seed dumps in SEEDS_DIR (make_corpus.py) and replays them too. Fails on a
# crash or a sanitizer report (the sanitizer runtime's exit status), or if no input ran.
set -euo pipefail
replay=$1
shift
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
# HDF5 1.10 leaks its own free-list blocks on some corrupt files (lsan.supp); a full unwind at each malloc
# lets the suppressions see those frames, and costs little over a small corpus
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$here/lsan.supp"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
"$replay" "${dirs[@]}"
