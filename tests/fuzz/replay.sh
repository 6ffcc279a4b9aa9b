#!/usr/bin/env bash
# replay.sh FUZZ_REPLAY QWEN3_DIFF QWEN3_FIXTURE SEEDS_DIR [MORE_DIRS...]: makes the seed corpus, then runs
# the fuzz target's entry point over it and over MORE_DIRS (committed reproducers). Fails on a crash or a
# sanitizer report (the sanitizer runtime's exit status), or if no input ran.
set -euo pipefail
replay=$1 diff=$2 fixture=$3 seeds=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
/usr/bin/python3 "$here/make_corpus.py" "$diff" "$fixture" "$seeds"
dirs=("$seeds")
for d in "$@"; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then dirs+=("$d"); fi
done
# HDF5 1.10 leaks its own free-list blocks on some corrupt files (lsan.supp); a full unwind at each malloc
# lets the suppressions see those frames, and costs little over a small corpus
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$here/lsan.supp"
"$replay" "${dirs[@]}"
