#!/usr/bin/env bash
# test_bench_cli.sh QWEN3_BENCH TIMELINE: qwen3-bench's command line, on any machine.
#   - every bad argument exits 2 with exactly one line on stderr ("qwen3-bench: ...") naming it, the run
#     selection's (--prefill-T, --ctx, --variants) and --peer's included: all are checked before the device;
#   - --peer hf with a Python that cannot import torch and transformers (a stand-in that fails, by --python
#     and by QD_PYTHON), one that cannot be started, or a missing peer script (QD_PEER_HF_SCRIPT) exits 2
#     naming it; a Python that imports them gets past the check;
#   - --timeline in a build without -Dtimeline=true (TIMELINE = false) exits 2 saying how to get one;
#   - --help exits 0 and names the new options;
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
for opt in "--prefill-T LIST" "--ctx LIST" "--variants LIST" "--peer hf" "--python PATH" QD_PEER_HF_SCRIPT; do
    expect 0 "$opt" -- --help
done

# the run selection
expect 2 "--prefill-T: '0'" -- --model x --prefill-T 0
expect 2 "--prefill-T: '128,abc'" -- --model x --prefill-T 128,abc
expect 2 "--prefill-T: '128,'" -- --model x --prefill-T 128,
expect 2 "--prefill-T: ''" -- --model x --prefill-T ""
expect 2 "--prefill-T: '100001'" -- --model x --prefill-T 100001
expect 2 "names 512 twice" -- --model x --prefill-T 512,128,512
expect 2 "more than 16" -- --model x --prefill-T 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17
expect 2 "--ctx: '-512'" -- --model x --ctx -512
expect 2 "--ctx: '512,,4096'" -- --model x --ctx 512,,4096
expect 2 "--ctx: 'nothing'" -- --model x --ctx nothing
expect 2 "names 4096 twice" -- --model x --ctx 4096,4096
expect 2 "--variants: 'fast'" -- --model x --variants fast
expect 2 "--variants: 'fused,fused'" -- --model x --variants fused,fused
expect 2 "--variants: 'fused,'" -- --model x --variants fused,
expect 2 "--variants: ''" -- --model x --variants ""
expect 2 "nothing to time" -- --model x --prefill-T none --ctx none
expect 2 "--ctx none with --variants cublas" -- --model x --variants cublas --ctx none
expect 2 "--prefill-T: only the fused and unfused variants" -- --model x --variants cublas --prefill-T 128
expect 2 "--warmup 8: must be below the smallest decode context 8" -- --model x --ctx 4096,8 --warmup 8
if [ "$timeline" = true ]; then  # (without the stamps, --timeline is refused for that first)
    expect 2 "--timeline: needs a decode context" -- --model x --ctx none --timeline "$tmp/t.json"
    expect 2 "--timeline: needs a decode context" -- --model x --variants unfused,cublas --timeline "$tmp/t.json"
fi

# --peer: what it accepts and what it needs, checked before the device
expect 2 "--peer: 'vllm'" -- --model x --peer vllm
expect 2 "--peer" -- --model x --peer
expect 2 "--python: only used with --peer hf" -- --model x --python python3
printf '#!/bin/sh\nexit 1\n' >"$tmp/nopy"  # a Python whose imports all fail
printf '#!/bin/sh\nexit 0\n' >"$tmp/okpy"  # one whose imports all succeed
chmod +x "$tmp/nopy" "$tmp/okpy"
expect 2 "'$tmp/nopy' cannot import torch and transformers" -- --model x --peer hf --python "$tmp/nopy"
QD_PYTHON=$tmp/nopy expect 2 "'$tmp/nopy' cannot import" -- --model x --peer hf
QD_PYTHON=$tmp/okpy expect 2 "'$tmp/nopy' cannot import" -- --model x --peer hf --python "$tmp/nopy"
expect 2 "cannot run the Python '$tmp/no-such-python'" -- --model x --peer hf --python "$tmp/no-such-python"
QD_PEER_HF_SCRIPT=$tmp/no-such-script.py expect 2 "$tmp/no-such-script.py is not a readable file" -- \
    --model x --peer hf --python "$tmp/okpy"
QD_PEER_HF_SCRIPT=$tmp expect 2 "$tmp is not a readable file" -- --model x --peer hf --python "$tmp/okpy"
# a real Python without torch (Debian's /usr/bin/python3 has none), naming the module it lacks
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
    expect 2 "'/usr/bin/python3' cannot import torch" -- --model x --peer hf --python /usr/bin/python3
fi
# the built-in script path (this source tree's tools/bench_peer_hf.py) exists: a Python that imports
# torch and transformers gets past the check to the device (77 without one; 2 for the missing model)
rc=0
env -u QD_PEER_HF_SCRIPT "$bin" --model "$tmp/no-such-model" --peer hf --python "$tmp/okpy" >"$tmp/out" 2>"$tmp/err" ||
    rc=$?
if [ "$rc" -eq 77 ] || { [ "$rc" -eq 2 ] && grep -qF "no-such-model" "$tmp/err"; }; then
    echo "ok: --peer hf with a Python that imports torch and transformers passes the check (exit $rc)"
else
    fail "--peer hf with a Python that imports torch and transformers -> exit $rc: $(cat "$tmp/err")"
fi
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
