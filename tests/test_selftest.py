#!/usr/bin/python3
"""test_selftest.py QWEN3_DIFF: the harness proves itself (docs/FAULTS.md).

Checks: `qwen3-diff selftest` exits 0 and its JSON has every fault of the catalog found at its expected
step, layer and tap in both modes, clean runs that flag nothing, and the sweep verdicts; a deliberately
wrong expectation (--shift-expectation) makes it exit 1; the seed (online-softmax-rescale) through the
CLI is a blow-up at layer 1 attn, and its dump holds ~1e29 at layer 1 and zeros after (h5py); the
precision sweep's verdicts for faults 3, 6 and 8 through the CLI; kv-cache-pos is found at a decode step.
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
tmp = tempfile.mkdtemp(prefix="qd_selftest.")
SUBLAYER = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "mlp_norm",
            "gate_proj", "up_proj", "act", "down_proj"]


run = functools.partial(qd_check.run, BIN)


# --- the selftest itself -------------------------------------------------------------------------------
js = os.path.join(tmp, "selftest.json")
rc, out, err = run("selftest", "--fixtures", FX, "--json", js)  # the table on stdout (--quiet: below)
check(rc == 0, f"selftest exits 0 (got {rc}) {err.strip()[-300:]}")
st = json.load(open(js))
check(st["schema"] == "qwen3-diff-selftest/1" and st["pass"] is True, "selftest JSON: schema, pass")
check(st["calibration_prompts"] >= 5 and st["margin"] == 2, "blessed over >= 5 prompts with margin 2")
rows = st["rows"]
faults = [r for r in rows if r["kind"] == "fault"]
names = {r["fault"].split("@")[0] for r in faults}
rc_h, help_out, _ = run("--inject", "help")
catalog = [line.split()[1] for line in help_out.splitlines() if line[:5].strip().isdigit()]  # "  13 name ..."
check(len(catalog) == 13 and set(catalog) == names, f"every fault of the catalog is exercised ({sorted(set(catalog) - names)} missing)")
for r in faults:
    check(r["ok"] and r["found"] == r["expected"], f"{r['fault']} on {r['fixture']} ({r['mode']}): {r['found']}")
for name in names:
    modes = {r["mode"] for r in faults if r["fault"].startswith(name + "@")}
    check(modes == {"free", "isolated"}, f"{name}: free-running and isolated")
clean = [r for r in rows if r["kind"] == "clean"]
check(len(clean) >= 2 * 4 and all(r["ok"] and r["found"] == "no divergence" for r in clean),
      f"clean runs flag nothing ({len(clean)} rows)")
sweeps = {(r["fault"], r["fixture"]): r for r in rows if r["kind"] == "sweep"}
check(len(sweeps) >= 3 and all(r["ok"] for r in sweeps.values()), "sweep rows as expected")
check("MISS" not in out and "selftest: " in out, "table printed, no miss")

# a wrong expectation must fail: the checker is not a rubber stamp
rc, out, _ = run("selftest", "--fixtures", FX, "--quiet", "--shift-expectation", "residual-drop")
check(rc == 1 and "MISS" in out, f"a shifted expectation makes selftest exit 1 (got {rc})")
miss = [l for l in out.splitlines() if "MISS" in l]
check(miss and all(l.startswith("residual-drop@") for l in miss), f"only the shifted fault misses ({len(miss)} rows)")
check(out.strip() and all("MISS" in l for l in out.splitlines()),
      "--quiet: no table, no summary, only the rows that missed")
rc, _, err = run("selftest", "--fixtures", os.path.join(tmp, "nowhere"))
check(rc == 2 and "nowhere" in err, f"selftest on a missing fixtures directory: exit 2 ({err.strip()})")

# --- the seed: a blow-up at layer 1, ~1e29 then zeros ------------------------------------------------------
seed = [r for r in faults if r["fault"] == "online-softmax-rescale@1" and r["fixture"].startswith("knorm_extreme")][0]
tokens = ",".join(str(t) for t in seed["tokens"])
dump = os.path.join(tmp, "seed.h5")
rj = os.path.join(tmp, "seed.json")
rc, out, err = run("--model", os.path.join(FX, "knorm_extreme"), "--tokens", tokens, "--backends", "ref,emu",
                   "--inject", "online-softmax-rescale@1", "--dump", dump, "--json", rj, "--no-color")
check(rc == 1, f"seed run exits 1 (got {rc}) {err.strip()}")
first = [l for l in out.splitlines() if l.startswith("first divergence")]
check(first and "layer 1, attn " in first[0] and first[0].endswith("(blow-up)"),
      "the seed is printed as the first divergence at layer 1, attn, and called a blow-up")
fd = json.load(open(rj))["first_divergence"]
check(fd["layer"] == 1 and fd["tap"] == "attn" and "blowup_mag" in fd["flags"], f"JSON: blowup_mag ({fd['flags']})")
with h5py.File(dump, "r") as f:
    out1 = f["emu/layers/001/out"][:]
    blown = np.abs(out1).max(axis=1) > 1e20  # the query rows whose last key tile lies far below the row max
    mx = float(np.abs(out1).max())
    check(blown.any() and 1e28 <= mx <= 1e30, f"layer 1 out reaches ~1e29 ({mx:.3g}) on tokens {np.where(blown)[0]}")
    check(float(np.abs(f["emu/layers/001/attn"][:]).max()) > 1e28, "layer 1 attn ~1e29")
    check(bool(np.isfinite(out1).all()), "finite: no NaN/Inf detector would fire")
    zero = True
    for l in [1, 2, 3]:
        for tap in SUBLAYER:
            if l == 1 and tap in SUBLAYER[:8]:
                continue  # before the blow-up
            zero &= bool((f[f"emu/layers/{l:03d}/{tap}"][:][blown] == 0).all())
    check(zero, "every norm-fed sublayer output after the blow-up is exactly zero on the blown tokens")
    resid = all(float(np.abs(f[f"emu/layers/{l:03d}/out"][:][blown]).min()) > 1e20 for l in [2, 3])
    check(resid, "the residual stream stays ~1e29")
    check(bool((f["emu/final_norm"][:][blown] == 0).all()) and bool((f["emu/logits"][:][blown] == 0).all()),
          "final_norm and logits are exactly zero there")
    check(float(np.abs(f["emu/logits"][:][~blown]).max()) > 1, "the other tokens' logits are ordinary")
    check(float(np.abs(f["ref/layers/001/out"][:]).max()) < 100, "the reference stays coherent")

# --- the precision sweep through the CLI -----------------------------------------------------------------
def sweep_verdict(out):
    for line in out.splitlines():
        if line.startswith("precision sweep verdict: "):
            return line.split(": ")[1]
    return None


tol_lp = os.path.join(tmp, "tol_long.json")
rc, _, err = run(*model_args("long_prompt"), "--backends", "ref,emu", "--calibrate", "5", "--write-tolerances", tol_lp)
check(rc == 0, f"long_prompt blessed {err.strip()}")
rc, out, err = run(*model_args("long_prompt"), "--backends", "ref,emu", "--tolerances", tol_lp, "--inject",
                   "rope-freq-bf16@0", "--precision-sweep", "--no-color")
check(rc == 1 and sweep_verdict(out) == "bug", f"rope-freq-bf16: verdict bug (got {sweep_verdict(out)}) {err.strip()}")
check("fp32  diverges" in out, "rope-freq-bf16 stays in fp32: inv_freq is bf16 whatever the activations")

tol_kn = os.path.join(tmp, "tol_knorm.json")
rc, _, err = run(*model_args("knorm_extreme"), "--backends", "ref,emu", "--calibrate", "5", "--write-tolerances", tol_kn)
check(rc == 0, f"knorm_extreme blessed {err.strip()}")
rc, out, _ = run(*model_args("knorm_extreme"), "--backends", "ref,emu", "--tolerances", tol_kn, "--inject",
                 "norm-sumsq-lowp@0", "--precision-sweep", "--no-color")
check(rc == 1 and sweep_verdict(out) == "precision" and "fp32  clean" in out,
      f"norm-sumsq-lowp: clean in fp32, verdict precision (got {sweep_verdict(out)})")

scores = [r for r in faults if r["fault"] == "softmax-no-max@0"][0]
rc, out, _ = run("--model", os.path.join(FX, "knorm_extreme"), "--tokens", ",".join(map(str, scores["tokens"])),
                 "--backends", "ref,emu", "--inject", "softmax-no-max@0", "--precision-sweep", "--no-color")
check(rc == 1 and sweep_verdict(out) == "bug", f"softmax-no-max, score 104: verdict bug (got {sweep_verdict(out)})")
rc, out, _ = run(*model_args("knorm_extreme"), "--backends", "ref,emu", "--act", "fp16", "--inject",
                 "softmax-no-max@0", "--precision-sweep", "--no-color")
check(rc == 1 and sweep_verdict(out) == "range-fp16",
      f"softmax-no-max, scores up to 83: fp16's range only (got {sweep_verdict(out)})")
rc, out, _ = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--precision-sweep", "--no-color")
check(rc == 0 and "no divergence to explain" in out, "no divergence: the sweep has nothing to explain")

# --- kv-cache-pos at its decode step ----------------------------------------------------------------------
kj = os.path.join(tmp, "kv.json")
rc, out, _ = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--decode", "2", "--inject", "kv-cache-pos@1",
                 "--json", kj, "--no-color")
fd = json.load(open(kj))["first_divergence"]
check(rc == 1 and fd["step"] >= 1 and fd["layer"] == 1 and fd["tap"] == "attn",
      f"kv-cache-pos: first divergence at decode step {fd['step']}, layer {fd['layer']}, {fd['tap']}")

finish()
