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
tmp=$(mktemp -d /tmp/qd_bench_cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() {
    echo "FAIL: $*"
    fails=$((fails + 1))
}

# expect CODE NEEDLE -- ARGS...
expect() {
    local code=$1 needle=$2
    shift 3
    local rc=0
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -ne "$code" ]; then
        fail "$* -> exit $rc, expected $code; stderr: $(cat "$tmp/err")"
    elif [ "$code" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -ne 1 ]; then
        fail "$* -> $(wc -l <"$tmp/err") lines on stderr, expected 1: $(cat "$tmp/err")"
    elif [ "$code" -eq 2 ] && ! grep -q '^qwen3-bench: ' "$tmp/err"; then
        fail "$* -> stderr does not start with 'qwen3-bench: ': $(cat "$tmp/err")"
    elif [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/err" "$tmp/out"; then
        fail "$* -> output does not mention '$needle': $(cat "$tmp/err" "$tmp/out")"
    else
        echo "ok: exit $rc: $*"
    fi
}

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

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all qwen3-bench command-line checks passed"
