#!/usr/bin/env bash
# test_bench_cli.sh QWEN3_BENCH TIMELINE: qwen3-bench's command line, on any machine.
#   - every bad argument exits 2 with exactly one line on stderr ("qwen3-bench: ...") naming it;
#   - --timeline in a build without -Dtimeline=true (TIMELINE = false) exits 2 saying how to get one;
#   - --help exits 0;
#   - a run without a CUDA device exits 77 ("skipped: no CUDA device"); with one, a model directory that
#     does not exist exits 2 naming it.
set -u
bin=${1:?usage: test_bench_cli.sh QWEN3_BENCH TIMELINE}
timeline=${2:?usage: test_bench_cli.sh QWEN3_BENCH TIMELINE}
prog=qwen3-bench
# shellcheck source=qd_cli.sh
. "$(dirname "$0")/qd_cli.sh"

expect 2 "--model is required" --
expect 2 "--runs" -- --model x --runs 0
expect 2 "--steps" -- --model x --steps abc
expect 2 "--warmup" -- --model x --warmup -1
expect 2 "--frobnicate" -- --model x --frobnicate
expect 2 "'y'" -- --model x y
expect 0 "--timeline FILE" -- --help
if [ "$timeline" = false ]; then
    expect 2 "-Dtimeline=true" -- --model x --timeline "$tmp/t.json"
fi
[ -e "$tmp/t.json" ] && fail "--timeline left a file behind"

rc=0
"$bin" --model "$tmp/no-such-model" --runs 1 --warmup 1 --steps 1 >"$tmp/out" 2>"$tmp/err" || rc=$?
if [ "$rc" -eq 77 ]; then
    grep -q "skipped: no CUDA device" "$tmp/out" || fail "exit 77 without 'skipped: no CUDA device'"
    echo "ok: exit 77 without a CUDA device"
elif [ "$rc" -eq 2 ]; then
    grep -qF "no-such-model" "$tmp/err" || fail "a missing model directory is not named: $(cat "$tmp/err")"
    echo "ok: exit 2 for a missing model directory"
else
    fail "a missing model directory -> exit $rc: $(cat "$tmp/err")"
fi

finish "qwen3-bench command-line"
