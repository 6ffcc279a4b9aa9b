#!/usr/bin/python3
"""test_compare.py QWEN3_DIFF CHECK_SCHEMA_PY: the comparator end to end, through the command line.

Runs qwen3-diff on the committed fixtures and checks, through the readers users have (h5py, json,
xml.etree): clean ref-vs-emu passes with default tolerances on every fixture (prompt, 4 decode steps,
free and isolated); the reference against transformers' goldens passes offline; injected faults are
localised to their exact layer and tap in both modes; the dump holds both backends and the /diff table;
JSON and JUnit say the same as the table; every exit code; the dump window and tap selection; calibration
produces a gate that passes the clean pair and stops a fault.
"""
import functools
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish, model_args

BIN, CHECK_SCHEMA = sys.argv[1], sys.argv[2]
FIXTURES = ["gqa_tied", "mha_untied", "knorm_extreme", "long_prompt"]
LAYER_TAPS = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn",
              "o_proj", "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out"]
tmp = tempfile.mkdtemp(prefix="qd_compare.")
run = functools.partial(qd_check.run, BIN)


def read_json(path):
    with open(path) as f:
        return json.load(f)


# --- clean ref vs emu: default tolerances, every fixture --------------------------------------------
for fx in FIXTURES:
    js = os.path.join(tmp, f"clean_{fx}.json")
    rc, out, err = run(*model_args(fx), "--backends", "ref,emu", "--isolate", "--decode", "4", "--json", js)
    check(rc == 0, f"{fx}: ref vs emu passes with default tolerances (exit {rc}) {err.strip()}")
    r = read_json(js)
    check(r["verdict"] == "pass" and r["first_divergence"] is None, f"{fx}: JSON verdict pass")
    modes = {t["mode"] for t in r["taps"]}
    steps = {t["step"] for t in r["taps"]}
    check(modes == {"free", "isolated"} and steps == {0, 1, 2, 3, 4}, f"{fx}: both modes and 5 steps in JSON")
    check("no divergence" in out, f"{fx}: the table says no divergence")

# --- the reference against transformers, offline -----------------------------------------------------
for fx in FIXTURES:
    dump = os.path.join(tmp, f"ref_{fx}.h5")
    rc, _, err = run(*model_args(fx), "--backends", "ref", "--dump", dump, "--quiet")
    check(rc == 0, f"{fx}: reference dump written {err.strip()}")
    js = os.path.join(tmp, f"hf_{fx}.json")
    rc, out, err = run("compare", os.path.join(FX, fx, "golden.h5") + ":hf", dump + ":ref", "--json", js)
    check(rc == 0, f"{fx}: reference vs transformers passes offline (exit {rc}) {err.strip()}")
    r = read_json(js)
    n_layers = json.load(open(os.path.join(FX, fx, "config.json")))["num_hidden_layers"]
    check(len(r["taps"]) == 17 * n_layers + 3, f"{fx}: offline compare covered every tap ({len(r['taps'])})")
    check(r["backends"]["reference"]["name"] == "hf", f"{fx}: the golden is the reference side")

# --- faults are localised, free-running and isolated --------------------------------------------------
for fault, layer, tap in [("rope-interleaved", 1, "q_rope"), ("residual-drop", 1, "attn_residual"),
                          ("act-gelu", 2, "act"), ("no-causal-mask", 0, "attn")]:
    for mode in ["free", "isolated"]:
        js = os.path.join(tmp, f"fault_{fault}_{mode}.json")
        rc, out, err = run("--backends", "ref,emu", "--inject", f"{fault}@{layer}", "--isolate", "--locate", mode,
                           "--json", js, "--no-color")
        fd = read_json(js)["first_divergence"] if os.path.exists(js) else None
        check(rc == 1 and fd is not None and fd["layer"] == layer and fd["tap"] == tap and fd["mode"] == mode,
              f"{fault}@{layer} ({mode}): first divergence at layer {layer}, {tap} (exit {rc}, got "
              f"{fd and (fd['layer'], fd['tap'], fd['mode'])})")
        check(f"first divergence ({'isolated' if mode == 'isolated' else 'free-running'}): layer {layer}, {tap}" in out,
              f"{fault}@{layer} ({mode}): printed first and plainly")

# --- the dump of a comparison ------------------------------------------------------------------------
dump = os.path.join(tmp, "cmp.h5")
js = os.path.join(tmp, "cmp.json")
junit = os.path.join(tmp, "cmp.xml")
rc, out, err = run("--backends", "ref,emu", "--inject", "residual-drop@1", "--isolate", "--dump", dump,
                   "--json", js, "--junit", junit)
check(rc == 1, f"fault run exits 1 (got {rc})")
p = subprocess.run(["/usr/bin/python3", CHECK_SCHEMA, dump, os.path.join(FX, "knorm_extreme"),
                    "--backend", "ref", "--backend", "emu", "--backend", "emu-isolated", "--allow-missing"],
                   capture_output=True, text=True)
check(p.returncode == 0, f"comparison dump passes the schema check (the isolated group has no embed: it starts from the reference side's): {(p.stdout + p.stderr).strip()[-300:]}")
with h5py.File(dump, "r") as f:
    g = f["diff/ref-vs-emu"]
    m = g["metrics"][:]
    check(int(g.attrs["first_divergence_layer"]) == 1 and g.attrs["first_divergence_tap"] == "attn_residual",
          "diff attrs name the first divergence")
    names = m.dtype.names
    for field in ["layer", "tap", "mode", "pass", "max_abs", "max_rel", "rel_l2", "cosine", "sqnr_db", "nan_test",
                  "posinf_ref", "max_mag_test", "max_mag_ref", "mag_ratio", "token", "channel"]:
        check(field in names, f"metrics table has field {field}")
    r = read_json(js)
    check(len(m) == len(r["taps"]), f"metrics table has one row per compared tap ({len(m)})")
    row = [x for x in m if x["layer"] == 1 and x["tap"].decode() == "attn_residual" and x["mode"].decode() == "free"][0]
    check(not row["pass"], "the failing row is marked failed")
    # the numbers in the table are those of the tensors next to it
    a = f["ref/layers/001/attn_residual"][:]
    b = f["emu/layers/001/attn_residual"][:]
    check(abs(float(np.abs(a - b).max()) - row["max_abs"]) < 1e-6 * max(1, row["max_abs"]),
          "max_abs in the table matches the dumped tensors")
    check(f["emu-isolated"].attrs["isolated_from"] == "ref", "isolated group says what fed it")
# JSON and JUnit agree with the table
r = read_json(js)
check(r["verdict"] == "diverged" and r["first_divergence"]["tap"] == "attn_residual", "JSON names the divergence")
fd = r["first_divergence"]
for key in ["max_abs", "rel_l2", "cosine", "sqnr_db", "max_rel", "max_mag_test", "max_mag_ref", "nan_test", "coord"]:
    check(key in fd, f"first_divergence carries {key}")
suite = ET.parse(junit).getroot()
cases = suite.findall(".//testcase")
check(len(cases) == 4 + 2, f"JUnit: one case per layer plus embed and head ({len(cases)})")
failed = [c.get("name") for c in cases if c.find("failure") is not None]
check("layer 001" in failed, f"JUnit: layer 001 fails ({failed})")
check(suite.find("testsuite").get("failures") == str(len(failed)), "JUnit failure count")

# --- dump window and tap selection -------------------------------------------------------------------
dump = os.path.join(tmp, "window.h5")
rc, _, _ = run("--backends", "ref,emu", "--inject", "act-gelu@2", "--dump", dump, "--dump-on-divergence", "0", "--quiet")
with h5py.File(dump, "r") as f:
    layers = sorted(f["emu/layers"].keys())
    check(rc == 1 and layers == ["002"], f"--dump-on-divergence 0 keeps only the diverging layer ({layers})")
    check("embed" not in f["emu"] and "diff" in f, "stats kept for all, tensors only in the window")
dump = os.path.join(tmp, "taps.h5")
rc, _, _ = run("--backends", "ref,emu", "--dump", dump, "--dump-taps", "k_*,logits", "--quiet")
with h5py.File(dump, "r") as f:
    got = sorted(f["ref/layers/000"].keys())
    check(rc == 0 and got == ["k_norm", "k_proj", "k_rope"] and "logits" in f["ref"] and "embed" not in f["ref"],
          f"--dump-taps selects taps ({got})")

# --- calibration: bless, then gate ---------------------------------------------------------------------
tol = os.path.join(tmp, "tol.json")
rc, out, err = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--calibrate", "3", "--write-tolerances", tol)
check(rc == 0 and os.path.exists(tol), f"calibration writes tolerances (exit {rc}) {err.strip()}")
t = read_json(tol)
check(t["schema"] == "qwen3-diff-tolerances/1" and t["precision_pair"] == ["bf16", "fp32"] and t["margin"] == 2,
      "tolerance file: schema, pair, margin")
check(t["measured"]["prompts"] == 3, "tolerance file says how it was measured")
rc, _, err = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--tolerances", tol, "--quiet")
check(rc == 0, f"blessed tolerances pass the clean pair (exit {rc}) {err.strip()}")
rc, _, _ = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--tolerances", tol, "--inject", "knorm-mul@1", "--quiet")
check(rc == 1, f"blessed tolerances stop a fault the defaults are too loose for (exit {rc})")
rc, _, err = run(*model_args("gqa_tied"), "--backends", "ref,emu", "--tolerances", tol, "--act", "fp32", "--quiet")
check(rc == 2 and "precision_pair" in err, f"a tolerance file for another precision pair is refused ({err.strip()})")

# --- calibration with --isolate: a teacher-forced section, tight where the free-running gate cannot be --
# knorm_extreme with 64 decode steps: free-running ref vs emu decorrelates (docs/TOLERANCES.md), so the
# free-running tolerances bless to rel_l2 > 1 from layer 2 on; the teacher-forced ones stay below 0.3.
KN = model_args("knorm_extreme") + ["--backends", "ref,emu", "--decode", "64"]
tol_free, tol_iso = os.path.join(tmp, "kn_free.json"), os.path.join(tmp, "kn_iso.json")
rc1, _, err1 = run(*KN, "--calibrate", "16", "--margin", "3", "--write-tolerances", tol_free)
rc2, _, err2 = run(*KN, "--isolate", "--calibrate", "16", "--margin", "3", "--write-tolerances", tol_iso)
check(rc1 == 0 and rc2 == 0, f"knorm_extreme blessed with and without --isolate ({err1.strip()} {err2.strip()})")
tf, ti = read_json(tol_free), read_json(tol_iso)
check("isolated" not in tf and "isolated" in ti, "only --isolate writes an isolated section")
top, iso = ti["layers"]["2/attn"]["rel_l2"], ti["isolated"]["layers"]["2/attn"]["rel_l2"]
check(top > 1 and iso < 0.3 and ti["layers"] == tf["layers"],
      f"layer 2 attn: free-running {top}, teacher-forced {iso}; the top level is the same as without --isolate")
rc, _, err = run(*KN, "--isolate", "--locate", "isolated", "--tolerances", tol_iso, "--quiet")
check(rc == 0, f"the isolated section passes the clean pair teacher-forced (exit {rc}) {err.strip()}")
for fault in ("knorm-mul@2", "no-attn-scale@2"):  # found with 10.7x and 3.2x over the isolated tolerance
    rc1, _, _ = run(*KN, "--isolate", "--locate", "isolated", "--tolerances", tol_free, "--inject", fault, "--quiet")
    js = os.path.join(tmp, f"kn_{fault}.json")
    rc2, _, _ = run(*KN, "--isolate", "--locate", "isolated", "--tolerances", tol_iso, "--inject", fault, "--json", js)
    fd = read_json(js)["first_divergence"] if rc2 == 1 else None
    check(rc1 == 0 and rc2 == 1 and fd and fd["layer"] == 2,
          f"{fault}: missed under the free-running tolerances (exit {rc1}), found at layer 2 teacher-forced under "
          f"the isolated section (exit {rc2}, {fd and (fd['layer'], fd['tap'])})")

# --- the replay verdict (the default): local error over the noise floor, each side on its own ----------
KN16 = model_args("knorm_extreme") + ["--backends", "ref,emu", "--isolate", "--decode", "16"]
js = os.path.join(tmp, "kn16.json")
rc, out, err = run(*KN16, "--json", js, "--no-color")
r = read_json(js)
wi = r["worst_inherited"]
check(rc == 0 and r["judge"] == "replay" and r["first_divergence"] is None,
      f"knorm_extreme clean, --isolate --decode 16: no divergence by the replay verdict (exit {rc}) {err.strip()}")
check(wi is not None and wi["rel_l2"] > 0.05 and "inherited: largest ref vs emu error" in out and "carried in" in out,
      f"its free-running drift is reported as inherited only (rel_l2 {wi and wi['rel_l2']})")
emu_rows = [(t["tap"], t["replay"]["emu"]) for t in r["taps"] if "emu" in t["replay"]]
# attention's floor is the wider of the fused and the eager forms (docs/TOLERANCES.md): emu is the fused one,
# so there its local error is at most the floor; everywhere else it is the floor, bit for bit
check(len(emu_rows) == len(r["taps"]) and
      all(x["local_rel_l2"] == x["floor_rel_l2"] if tap != "attn" else x["local_rel_l2"] <= x["floor_rel_l2"]
          for tap, x in emu_rows),
      "emu replayed by its own contract: local error == noise floor on every row (attn: <=)")
check(all(t["ratio"] <= 1.0 for t in r["taps"]) and all("local_rel_l2" in t and "floor_rel_l2" in t for t in r["taps"]),
      "JSON rows carry local_rel_l2, floor_rel_l2 and ratio; every ratio <= 1")
deflt = os.path.join(tmp, "defaults.json")
with open(deflt, "w") as f:
    json.dump({"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"]}, f)
rc_abs, _, _ = run(*KN16, "--tolerances", deflt, "--quiet")
print(f"note: the same run under the absolute bf16 defaults exits {rc_abs}")
check(rc_abs in (0, 1), "the absolute defaults stay available through --tolerances")
# a faulty reference side is named: A = emu fp32 with a fault, B = emu bf16 clean
js = os.path.join(tmp, "a_side.json")
rc, out, _ = run(*model_args("gqa_tied"), "--backends", "emu,emu", "--act-a", "fp32", "--inject-a", "act-gelu@1",
                 "--isolate", "--decode", "2", "--json", js, "--no-color")
r = read_json(js)
fd = r["first_divergence"]
check(rc == 1 and fd and fd["layer"] == 1 and fd["tap"] == "act" and fd["side"] == "emu" and r["first_divergence_side"] == "emu"
      and "(the reference side)" in out, f"a fault on the reference side is flagged on A (exit {rc}, {fd and (fd['layer'], fd['tap'], fd['side'])})")
# replay of one dump, offline: the faulty group flagged at its layer and op, the clean one passes
dump = os.path.join(tmp, "replay_src.h5")
run(*model_args("gqa_tied"), "--backends", "ref,emu", "--inject", "residual-drop@1", "--dump", dump, "--quiet")
rc, out, err = run("replay", dump + ":emu", "--no-color", "--json", os.path.join(tmp, "replay.json"))
fd = read_json(os.path.join(tmp, "replay.json"))["first_divergence"]
check(rc == 1 and fd and fd["layer"] == 1 and fd["tap"] == "attn_residual" and "first divergence: layer 1, attn_residual" in out,
      f"replay of emu's dump alone finds residual-drop@1 (exit {rc}) {err.strip()}")
rc, out, err = run("replay", "--model", os.path.join(FX, "gqa_tied"), dump + ":ref", "--no-color")
check(rc == 0 and "no divergence" in out and "attn_norm" in out, f"replay of ref's dump: no divergence (exit {rc}) {err.strip()}")
with h5py.File(dump, "r") as f:
    m = f["diff/ref-vs-emu/metrics"][:]
    check(all(x in m.dtype.names for x in ["local_rel_l2", "floor_rel_l2", "ratio", "judged"])
          and f["diff/ref-vs-emu"].attrs["verdict"] == "replay", "the /diff table carries the replay's columns")
rc, _, err = run("replay", os.path.join(tmp, "cmp.h5"))
check(rc == 2 and "several backend groups" in err, f"replay needs a group when a file has several ({err.strip()})")
rc, _, err = run("replay", "--model", os.path.join(tmp, "nowhere"), dump + ":emu")
check(rc == 2 and "nowhere" in err, f"replay with a missing model: exit 2 ({err.strip()})")
rc, _, err = run("replay")
check(rc == 2 and "expected one dump" in err, f"replay without a dump: exit 2 ({err.strip()})")

# --- exit codes and determinism ------------------------------------------------------------------------
rc, out, _ = run(*model_args("gqa_tied"), "--backends", "ref,ref", "--json", os.path.join(tmp, "rr.json"))
rr = read_json(os.path.join(tmp, "rr.json"))
check(rc == 0 and all(float(t["rel_l2"]) == 0 for t in rr["taps"]), "ref vs ref: exit 0, every error exactly 0")
rc, _, err = run("--backends", "ref,emu", "--dump", os.path.join(tmp, "no", "such", "dir", "x.h5"))
check(rc == 3 and err.count("\n") == 1, f"unwritable dump: exit 3, one line ({err.strip()})")
rc, _, err = run("--backends", "ref,emu", "--inject", "no-such-fault")
check(rc == 2 and "knorm-mul" in err, "unknown fault: exit 2, lists the known ones")
rc, _, err = run("--backends", "ref,emu", "--tolerances", os.path.join(tmp, "missing.json"))
check(rc == 2 and "missing.json" in err, f"missing tolerance file: exit 2 ({err.strip()})")
# (the same file twice: the model and the prompt, checked first, agree)
rc, _, err = run("compare", os.path.join(tmp, "cmp.h5"), os.path.join(tmp, "cmp.h5"))
check(rc == 2 and "several backend groups" in err, f"compare needs a group when a file has several ({err.strip()})")
rc, _, err = run("compare", os.path.join(FX, "gqa_tied", "config.json"), os.path.join(FX, "gqa_tied", "golden.h5"))
check(rc == 2 and "config.json" in err, f"compare of a non-HDF5 file: exit 2 ({err.strip()})")
rc, out, _ = run("--inject", "help")
check(rc == 0 and "online-softmax-rescale" in out, "--inject help lists the catalog")

finish()
