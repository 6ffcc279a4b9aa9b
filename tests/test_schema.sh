#!/usr/bin/env bash
# test_schema.sh QWEN3_DIFF CHECK_SCHEMA_PY: a dump written by the CLI, read back through h5py (the
# reader users have), passes tests/check_schema.py; and the checker itself catches a broken file (a
# missing tap, a wrong schema string, a wrong shape), so its "OK" means something.
# h5py must be importable by /usr/bin/python3 (Debian's python3-h5py); without it the test is skipped.
set -u
bin=${1:?usage: test_schema.sh QWEN3_DIFF CHECK_SCHEMA_PY}
check=${2:?usage: test_schema.sh QWEN3_DIFF CHECK_SCHEMA_PY}
fx=${QD_FIXTURES:-$(cd "$(dirname "$0")/../fixtures" && pwd)}
py=/usr/bin/python3
if ! "$py" -c 'import h5py, numpy' 2>/dev/null; then
    echo "SKIP: $py cannot import h5py and numpy (apt-get install python3-h5py)"
    exit 77
fi
prog=qwen3-diff
# shellcheck source=qd_cli.sh
. "$(dirname "$0")/qd_cli.sh"

for m in gqa_tied mha_untied; do
    model=$fx/$m
    for z in 0 5; do
        out=$tmp/$m.z$z.h5
        if ! "$bin" --model "$model" --tokens "@$model/prompt.txt" --dump "$out" --dump-compress $z --quiet; then
            fail "qwen3-diff on $m (compress $z) failed"
            continue
        fi
        "$py" "$check" "$out" "$model" --tokens "@$model/prompt.txt" --backend ref || fail "$m compress $z: schema check"
    done
done

# --summary reports the same run the dump holds: its per-layer columns and top-5 equal what h5py
# computes from the dump (compared to 1e-3 relative: the table prints 4 significant digits).
model=$fx/knorm_extreme
if "$bin" --model "$model" --tokens "@$model/prompt.txt" --dump "$tmp/k.h5" --summary >"$tmp/summary"; then
    "$py" - "$tmp/k.h5" "$tmp/summary" <<'PY' || fail "--summary does not match the dump"
import sys
import h5py
import numpy as np
f = h5py.File(sys.argv[1], "r")
rows = [l.split() for l in open(sys.argv[2]) if l[:5].strip().isdigit()]
L = len(f["ref/layers"])
assert len(rows) == L, f"{len(rows)} table rows for {L} layers"
for r in rows:
    g = f[f"ref/layers/{int(r[0]):03d}"]
    out = g["out"][...].astype(np.float64)
    want = [np.sqrt(np.mean(out ** 2)), np.abs(out).max(), np.abs(g["k_norm"][...]).max(),
            np.abs(g["attn"][...]).max(), np.abs(g["act"][...]).max()]
    got = [float(x) for x in r[1:6]]
    for name, a, b in zip(["rms(out)", "max|out|", "max|k_norm|", "max|attn|", "max|act|"], got, want):
        assert abs(a - b) <= 1e-3 * abs(b), f"layer {r[0]} {name}: summary {a}, dump {b}"
next_line = [l for l in open(sys.argv[2]) if l.startswith("next")][0]
ids = [int(x) for x in next_line.split(":", 1)[1].split()[0::2]]
want = np.argsort(-f["ref/logits"][-1], kind="stable")[:5].tolist()
assert ids == want, f"top-5 {ids}, dump {want}"
print(f"ok: --summary matches the dump ({L} layers, top-5 {ids})")
PY
else
    fail "qwen3-diff --summary --dump on knorm_extreme failed"
fi

# The checker must reject broken files, each with a message naming what is wrong.
good=$tmp/gqa_tied.z0.h5
model=$fx/gqa_tied
[ -f "$good" ] || { echo "FAIL: no dump to corrupt"; exit 1; }
breakage=(
    "del f['ref/layers/001/k_norm']|/ref/layers/001/k_norm is missing"
    "f.attrs['schema'] = 'qwen3-diff/0'|'schema'"
    "d = f['ref/logits'][:, :10]; del f['ref/logits']; f['ref/logits'] = d|/ref/logits has shape"
    "d = f['ref/embed'][...].astype('f8'); del f['ref/embed']; f['ref/embed'] = d|/ref/embed has dtype"
    "f['ref'].attrs['precision'] = 'int8'|'precision'"
    "f['ref/layers/005/out'] = f['ref/layers/000/out'][...]|/ref/layers/005 is not a layer"
    "f.attrs['schema'] = numpy.bytes_(b'qwen3-diff/1')|expected str"
    "del f['input_ids']; f['input_ids'] = [1, 2, 3]|/input_ids"
)
i=0
for b in "${breakage[@]}"; do
    code=${b%%|*}
    needle=${b#*|}
    i=$((i + 1))
    cp "$good" "$tmp/bad$i.h5"
    "$py" -c "import h5py, numpy
with h5py.File('$tmp/bad$i.h5', 'r+') as f:
    $code" || { fail "could not corrupt: $code"; continue; }
    if "$py" "$check" "$tmp/bad$i.h5" "$model" --tokens "@$model/prompt.txt" 2>"$tmp/err" >/dev/null; then
        fail "check_schema accepted a broken file ($code)"
    elif ! grep -qF -- "$needle" "$tmp/err"; then
        fail "check_schema on ($code) does not mention '$needle': $(cat "$tmp/err")"
    else
        echo "ok: rejected ($code): $(head -n 1 "$tmp/err")"
    fi
done
# config_json must match the model it claims
if "$py" "$check" "$good" "$fx/mha_untied" 2>"$tmp/err" >/dev/null || ! grep -qF config_json "$tmp/err"; then
    fail "check_schema did not flag a config_json from another model"
fi

finish "schema v1"
