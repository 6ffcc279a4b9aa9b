#!/usr/bin/python3
"""test_bisect_cli.py QWEN3_DIFF: per-op precision through the command line (docs/FAULTS.md, "The precision
bisection"; docs/PRECISION.md, "Per-op precision").

Checks: --precision-bisect names attn_norm for norm-sumsq-lowp (a precision fault) and softmax for
softmax-no-max in fp16, says "no set fixes it" for rope-interleaved and rope-freq-bf16 (bugs), finds the
four-op set a q_rope-only gate needs and agrees with --fp32-ops run by hand; its JSON field; --fp32-ops
leaves the chosen op unrounded in the dump and an empty set changes nothing.
"""
import functools
import json
import os
import sys
import tempfile

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish, model_args

BIN = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="qd_bisect.")
run = functools.partial(qd_check.run, BIN)


def verdict(out):
    for line in out.splitlines():
        if line.startswith("precision bisect verdict: "):
            return line[len("precision bisect verdict: "):]
    return ""


def bless(fixture):
    path = os.path.join(tmp, f"tol_{fixture}.json")
    rc, _, err = run(*model_args(fixture), "--backends", "ref,emu", "--calibrate", "5", "--write-tolerances", path)
    check(rc == 0, f"{fixture} blessed {err.strip()}")
    return path


def bisect(fixture, *args):
    """(exit code, stdout, the JSON report's precision_bisect, its first_divergence)"""
    js = os.path.join(tmp, "r.json")
    if os.path.exists(js):
        os.remove(js)
    rc, out, err = run(*model_args(fixture), "--backends", "ref,emu", *args, "--precision-bisect", "--json", js,
                       "--no-color")
    rep = json.load(open(js)) if os.path.exists(js) else {}
    return rc, out + err, rep.get("precision_bisect"), rep.get("first_divergence")


# --- a precision fault: the accumulator of the norm in the activation dtype ------------------------------
tol_kn = bless("knorm_extreme")
rc, out, b, fd = bisect("knorm_extreme", "--tolerances", tol_kn, "--inject", "norm-sumsq-lowp@0")
check(rc == 1 and verdict(out).startswith("keeping attn_norm in fp32 fixes layer 0, attn_norm"),
      f"norm-sumsq-lowp: attn_norm in fp32 fixes it ({verdict(out)})")
check(b is not None and b["outcome"] == "minimal" and b["set"] == ["attn_norm"] and b["stands_in_for"] is None,
      f"JSON: outcome minimal, set [attn_norm] ({b and (b['outcome'], b['set'])})")
check(b["flagged"] == {"step": 0, "layer": 0, "tap": "attn_norm", "mode": "free"}, f"JSON: flagged {b['flagged']}")
run_row = b["tried"][0]
check(run_row["stage"] == "run" and not run_row["pass"] and run_row["rel_l2"] == fd["rel_l2"],
      "JSON: the run's own row first, failing, with the first divergence's rel_l2")
check(b["reruns"] == len(b["tried"]) - 1 and all(t["stage"] != "run" for t in b["tried"][1:]),
      f"JSON: reruns ({b['reruns']}) count every tried set but the run's")
check(any(t["stage"] == "all" and t["pass"] for t in b["tried"]), "JSON: every reachable op in fp32 passes")

# fp16's range: P = exp(s) without the max overflows fp16 (scores up to 83), fp32 P holds it
rc, out, b, _ = bisect("knorm_extreme", "--act", "fp16", "--inject", "softmax-no-max@0")
check(rc == 1 and b and b["set"] == ["softmax"] and "keeping softmax in fp32 fixes layer 0, attn" in verdict(out),
      f"softmax-no-max in fp16: softmax in fp32 fixes it ({verdict(out)})")

# --- bugs: nothing fixes them ------------------------------------------------------------------------------
rc, out, b, _ = bisect("gqa_tied", "--inject", "rope-interleaved@1")
check(rc == 1 and verdict(out).startswith("no set of precision changes fixes layer 1, q_rope") and "a bug, not precision"
      in verdict(out), f"rope-interleaved: no set fixes it ({verdict(out)})")
check(b and b["outcome"] == "no-set" and b["set"] == [] and b["reruns"] == 1, "JSON: outcome no-set after one rerun")
tol_lp = bless("long_prompt")
rc, out, b, _ = bisect("long_prompt", "--tolerances", tol_lp, "--inject", "rope-freq-bf16@0")
check(rc == 1 and b and b["outcome"] == "no-set",
      f"rope-freq-bf16: inv_freq is no activation, no set of them fixes it ({verdict(out)})")

# --- a set of four, and --fp32-ops by hand agrees -----------------------------------------------------------
tight = os.path.join(tmp, "tight.json")
with open(tight, "w") as f:
    # every tap unbounded except layer 0 q_rope, at a tenth of one bf16 rounding's relative error
    json.dump({"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"],
               "default": {"rel_l2": 1, "atol": 1e9, "rtol": 1e9}, "growth_factor": 1e9,
               "layers": {"0/q_rope": {"rel_l2": 1e-4}}}, f)
want = ["attn_norm", "q_proj", "q_norm", "q_rope"]
rc, out, b, _ = bisect("gqa_tied", "--tolerances", tight)
check(rc == 1 and b and b["outcome"] == "minimal" and b["set"] == want,
      f"q_rope-only gate: the 1-minimal set is {want} ({b and b['set']})")
check("(1-minimal: each of them is needed" in verdict(out), f"printed as 1-minimal ({verdict(out)})")
rc, _, _ = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--tolerances", tight, "--fp32-ops", ",".join(want))
check(rc == 0, f"--fp32-ops {','.join(want)} passes that gate (exit {rc})")
js = os.path.join(tmp, "less.json")
rc, _, _ = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--tolerances", tight, "--fp32-ops",
               "attn_norm,q_proj,q_rope", "--json", js)
fd = json.load(open(js))["first_divergence"] if rc == 1 else None
check(fd and (fd["layer"], fd["tap"]) == (0, "q_rope"), f"without q_norm it fails at layer 0 q_rope again (exit {rc})")

# --- nothing to explain ---------------------------------------------------------------------------------------
rc, out, b, _ = bisect("gqa_tied")
check(rc == 0 and "precision bisect: no divergence to explain" in out and b is None,
      "no divergence: nothing to bisect, no JSON field")

# --- --fp32-ops in the dump: the op stays unrounded, the rest bf16; an empty set changes nothing --------------
def dump(name, *args):
    path = os.path.join(tmp, name)
    rc, _, err = run(*model_args("gqa_tied"), "--backends", "emu", "--dump", path, *args)
    check(rc == 0, f"emu run {' '.join(args)} {err.strip()}")
    return h5py.File(path, "r")


def is_bf16(x):
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return bool(((bits & 0xFFFF) == 0).all())


with dump("plain.h5") as p, dump("knorm.h5", "--fp32-ops", "knorm") as k, dump("none.h5", "--fp32-ops", "none") as n:
    check(not is_bf16(k["emu/layers/000/k_norm"][:]) and is_bf16(k["emu/layers/000/q_norm"][:]),
          "--fp32-ops knorm: k_norm holds non-bf16 values, q_norm only bf16 ones")
    check(np.array_equal(k["emu/layers/000/k_proj"][:], p["emu/layers/000/k_proj"][:]),
          "--fp32-ops knorm: what comes before k_norm is unchanged")
    same = all(np.array_equal(n[f"emu/layers/{l:03d}/{t}"][:], p[f"emu/layers/{l:03d}/{t}"][:], equal_nan=True)
               for l in range(len(p["emu/layers"])) for t in p[f"emu/layers/{l:03d}"])
    check(same and np.array_equal(n["emu/logits"][:], p["emu/logits"][:]), "--fp32-ops none: bitwise the plain run")

finish()
