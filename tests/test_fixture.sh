#!/bin/bash
# test_fixture.sh QWEN3_FIXTURE: end-to-end checks of the synthetic-checkpoint tool.
#   - same seed twice gives byte-identical files; another seed gives other weights and prompt
#   - the committed fixtures are reproduced byte for byte by the commands in fixtures/README.md
#   - every safetensors file has the standard layout (u64 LE length, '{', header padded to 8, contiguous
#     data_offsets covering the data exactly)
#   - --shards 3 writes an index whose weight_map covers every tensor once, in the shard that holds it,
#     with metadata.total_size, and the same tensor bytes as the single file
#   - --force replaces an earlier run's outputs (no stale model.safetensors next to an index)
#   - bad usage exits 2 with one line on stderr and writes nothing; an I/O failure exits 3
#   - --k-norm-stats gives exactly the requested max and population std to 3 significant digits
# Exits 0 when every check passed, 1 otherwise (each failure printed).
set -u
FX=${1:?usage: test_fixture.sh path/to/qwen3-fixture}
PY=/usr/bin/python3 # the system python has numpy
SRC=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=${QD_FIXTURES:-$SRC/fixtures}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
ok() { echo "ok: $*"; }

# A small model with everything switched on: GQA, head_dim != hidden/heads, extreme k_norm, a prompt.
KSTATS=0:96.5:9.13,1:44.5:3.98,2:44.0:3.94
SMALL=(--vocab 300 --hidden 64 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 96 --layers 4
       --tied 1 --dialect hf5 --prompt-len 20 --k-norm-stats "$KSTATS")

# Checks the layout of every safetensors file named on the command line.
check_layout() {
    "$PY" - "$@" <<'EOF'
import json, struct, sys
for path in sys.argv[1:]:
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw), f"{path}: header length {n} past the end"
    assert (8 + n) % 8 == 0, f"{path}: data does not start 8-aligned"
    assert raw[8:9] == b"{", f"{path}: header does not start with '{{'"
    assert raw[8:8 + n].rstrip(b" ").endswith(b"}"), f"{path}: header padding is not spaces"
    h = json.loads(raw[8:8 + n])
    assert h.pop("__metadata__") == {"format": "pt"}, f"{path}: __metadata__"
    size = {"BF16": 2, "F16": 2, "F32": 4}
    end = 0
    for name, t in h.items():  # written in order, back to back
        b, e = t["data_offsets"]
        numel = 1
        for d in t["shape"]:
            numel *= d
        assert b == end, f"{path}: {name}: begins at {b}, previous ended at {end}"
        assert e - b == numel * size[t["dtype"]], f"{path}: {name}: size"
        end = e
    assert end == len(raw) - 8 - n, f"{path}: data section {len(raw) - 8 - n} bytes, offsets end at {end}"
EOF
}

# --- determinism
"$FX" --out "$tmp/a" --seed 7 "${SMALL[@]}" || fail "generation (seed 7) exited $?"
"$FX" --out "$tmp/b" --seed 7 "${SMALL[@]}" || fail "generation (seed 7, again) exited $?"
"$FX" --out "$tmp/c" --seed 8 "${SMALL[@]}" || fail "generation (seed 8) exited $?"
for f in config.json model.safetensors prompt.txt; do
    if cmp -s "$tmp/a/$f" "$tmp/b/$f"; then ok "same seed, identical $f"; else fail "same seed, $f differs"; fi
done
if cmp -s "$tmp/a/model.safetensors" "$tmp/c/model.safetensors"; then
    fail "seeds 7 and 8 give identical model.safetensors"
else
    ok "different seed, different weights"
fi
if cmp -s "$tmp/a/prompt.txt" "$tmp/c/prompt.txt"; then fail "seeds 7 and 8 give identical prompt.txt"; fi
if [ "$(wc -w < "$tmp/a/prompt.txt")" -eq 20 ]; then ok "prompt has 20 ids"; else fail "prompt.txt does not hold 20 ids"; fi
if check_layout "$tmp/a/model.safetensors"; then ok "single-file layout"; else fail "single-file layout"; fi

# --- the committed fixtures come back byte for byte from the commands in fixtures/README.md
regen() { # name, args...
    local name=$1
    shift
    "$FX" --out "$tmp/fx_$name" "$@" || { fail "regenerating $name exited $?"; return; }
    for f in config.json model.safetensors prompt.txt; do
        if ! cmp -s "$tmp/fx_$name/$f" "$FIXTURES/$name/$f"; then
            fail "fixtures/$name/$f differs from the tool's output: regenerate it (fixtures/README.md)"
            return
        fi
    done
    check_layout "$FIXTURES/$name/model.safetensors" || { fail "fixtures/$name layout"; return; }
    ok "fixtures/$name reproduced"
}
regen gqa_tied --seed 1 --vocab 512 --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --intermediate 160 \
    --layers 2 --theta 1e6 --eps 1e-6 --tied 1 --dialect hf5 --prompt-len 12
regen mha_untied --seed 1 --vocab 384 --hidden 96 --heads 4 --kv-heads 4 --head-dim 32 --intermediate 192 \
    --layers 2 --theta 1e4 --eps 1e-6 --tied 0 --dialect released --prompt-len 10
regen knorm_extreme --seed 1 --vocab 1024 --hidden 128 --heads 4 --kv-heads 2 --head-dim 64 \
    --intermediate 256 --layers 4 --theta 1e6 --eps 1e-6 --tied 1 --dialect hf5 --prompt-len 16 \
    --k-norm-stats 0:96.5:9.13,1:44.5:3.98,2:44.0:3.94
regen long_prompt --seed 1 --vocab 512 --hidden 64 --heads 4 --kv-heads 1 --head-dim 16 --intermediate 128 \
    --layers 2 --theta 1e6 --eps 1e-6 --tied 1 --dialect released --prompt-len 300

# --- sharding
if "$FX" --out "$tmp/s" --seed 7 --shards 3 "${SMALL[@]}"; then
    if check_layout "$tmp"/s/model-0000?-of-00003.safetensors &&
        "$PY" - "$tmp/s" "$tmp/a/model.safetensors" <<'EOF'
import json, os, struct, sys
d, single = sys.argv[1], sys.argv[2]
def tensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    h.pop("__metadata__", None)
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
wm = idx["weight_map"]
shards = [f"model-{i:05d}-of-00003.safetensors" for i in range(1, 4)]
assert sorted(os.listdir(d)) == sorted(["config.json", "prompt.txt", "model.safetensors.index.json"] + shards), os.listdir(d)
seen = {}
for s in shards:
    t = tensors(os.path.join(d, s))
    assert t, f"{s} is empty"
    for k, v in t.items():
        assert k not in seen, f"{k} in two shards"
        assert wm.get(k) == s, f"weight_map[{k}] = {wm.get(k)}, but it is in {s}"
        seen[k] = v
ref = tensors(single)
assert set(wm) == set(seen) == set(ref), "weight_map, shards and single file name different tensors"
assert idx["metadata"]["total_size"] == sum(len(v) for v in seen.values()), "total_size"
for k in ref:
    assert ref[k] == seen[k], f"{k}: sharded bytes differ from the single file"
EOF
    then ok "--shards 3: index covers every tensor"; else fail "--shards 3 index/shards"; fi
else
    fail "--shards 3 exited $?"
fi

# --- --force over an earlier run removes its outputs first
if "$FX" --out "$tmp/s" --force --seed 7 "${SMALL[@]}" && [ -f "$tmp/s/model.safetensors" ] &&
    [ ! -e "$tmp/s/model.safetensors.index.json" ] && [ ! -e "$tmp/s/model-00001-of-00003.safetensors" ] &&
    cmp -s "$tmp/s/model.safetensors" "$tmp/a/model.safetensors"; then
    ok "--force replaces a sharded run"
else
    fail "--force over a sharded run left stale files or differs"
fi

# --- usage errors: exit 2, exactly one line on stderr, nothing written
expect_exit() { # code, description, args...
    local want=$1 what=$2
    shift 2
    "$FX" "$@" > "$tmp/stdout" 2> "$tmp/stderr"
    local rc=$? lines
    lines=$(wc -l < "$tmp/stderr")
    if [ "$rc" -ne "$want" ]; then
        fail "$what: exit $rc, want $want ($(head -c 200 "$tmp/stderr"))"
    elif [ "$lines" -ne 1 ]; then
        fail "$what: $lines lines on stderr, want 1"
    else
        ok "$what: exit $want, $(cat "$tmp/stderr")"
    fi
}
expect_exit 2 "heads not a multiple of kv-heads" --out "$tmp/u1" --heads 3 --kv-heads 2
expect_exit 2 "unknown dtype" --out "$tmp/u2" --dtype q4
expect_exit 2 "unknown option" --out "$tmp/u3" --bogus
expect_exit 2 "missing --out" --vocab 10
expect_exit 2 "option without its value" --out
expect_exit 2 "non-numeric size" --out "$tmp/u4" --hidden 64x
expect_exit 2 "odd head_dim" --out "$tmp/u5" --head-dim 33
expect_exit 2 "zero shards" --out "$tmp/u6" --shards 0
expect_exit 2 "k_norm layer out of range" --out "$tmp/u7" --layers 2 --k-norm-stats 2:1.5:0.2
expect_exit 2 "k_norm max not representable in bf16" --out "$tmp/u8" --k-norm-stats 0:96.3:9.13
expect_exit 2 "malformed k_norm item" --out "$tmp/u9" --k-norm-stats 0:96.5
expect_exit 2 "non-empty directory without --force" --out "$tmp/a"
for u in u1 u2 u3 u4 u5 u6 u7 u8 u9; do
    [ -e "$tmp/$u" ] && fail "usage error still created $u"
done
expect_exit 3 "unwritable output directory" --out /dev/null/sub

# --- k_norm statistics, read back with numpy from bf16 and from f16
"$FX" --out "$tmp/k16" --seed 7 --dtype f16 "${SMALL[@]}" || fail "f16 generation exited $?"
for d in "$tmp/a" "$tmp/k16" "$FIXTURES/knorm_extreme"; do
    if "$PY" - "$d/model.safetensors" "$KSTATS" <<'EOF'
import json, struct, sys
import numpy as np
path, spec = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
def get(name):
    t = h[name]
    b, e = t["data_offsets"]
    buf = raw[8 + n + b:8 + n + e]
    if t["dtype"] == "BF16":  # bf16 is the high half of an fp32
        return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(buf, {"F16": "<f2", "F32": "<f4"}[t["dtype"]]).astype(np.float64)
asked = {}
for item in spec.split(","):
    l, mx, sd = item.split(":")
    asked[int(l)] = (float(mx), float(sd))
layers = sum(1 for k in h if k.endswith("self_attn.k_norm.weight"))
for l in range(layers):
    w = get(f"model.layers.{l}.self_attn.k_norm.weight")
    if l in asked:
        mx, sd = asked[l]
        # "to 3 significant digits": the printed values must agree
        assert f"{w.max():.3g}" == f"{mx:.3g}", f"layer {l}: max {w.max()} != {mx}"
        assert f"{w.std():.3g}" == f"{sd:.3g}", f"layer {l}: std {w.std()} != {sd}"
        assert (w > 0).mean() >= 0.9, f"layer {l}: not mostly positive"
        assert len(np.unique(w)) >= len(w) // 4, f"layer {l}: too few distinct values"
    else:  # default norm weights: 1 + N(0, 0.2); bounds are > 5 sigma of the sample mean/std
        assert abs(w.mean() - 1) < 0.2 and 0.08 < w.std() < 0.4, f"layer {l}: k_norm {w.mean()} {w.std()}"
for name in ["model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight"]:
    w = get(name)
    assert w.std() > 0.08, f"{name}: looks constant (std {w.std()})"  # a missing weight multiply must show
EOF
    then ok "k_norm statistics in $d"; else fail "k_norm statistics in $d"; fi
done

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all checks passed"
