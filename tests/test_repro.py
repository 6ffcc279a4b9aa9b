#!/usr/bin/python3
"""test_repro.py QWEN3_DIFF [--gpu]: the first bad op as one small file (--repro, compare/qd_repro.h), and its
rerun from that file alone (`qwen3-diff replay REPRO.h5`), end to end.

- The seed (online-softmax-rescale@1 on knorm_extreme, 80 tokens): the layer 1 attn repro holds q_rope and the
  k_rope / v_proj history as emu tapped them (equal to the dump's tensors), no weight (attention reads none),
  the engine's, oracle's and contract's outputs, and the figures the run reported; its rerun names the blow-up
  (exit 1), the clean contract is within the floor (ratio <= 1: emu is its own contract), and --inject
  online-softmax-rescale makes the contract blow up from the file's inputs alone.
- A decode step (kv-cache-pos@1, --decode 2, gqa_tied): step 1, one row at position 12, the history of 13
  positions; --inject kv-cache-pos reproduces the run's ratio.
- An op with a weight (knorm-mul@1, gqa_tied): k_norm reads k_proj and the (HD,) k_norm weight.
- The offline compare writes the same kind of file (act-gelu@1, from a dump).
- Bad files (a missing input or weight, a wrong shape, a wrong schema, an unknown tap) are one-line errors,
  exit 2; --repro with no divergence writes nothing and says so.

--gpu (suite 'gpu'): the fused kernel's rerun of the same files; exits 77 (skipped) without a CUDA device.
"""
import json
import os
import shutil
import sys
import tempfile

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
GPU = "--gpu" in sys.argv[2:]
KN, GQ = os.path.join(FX, "knorm_extreme"), os.path.join(FX, "gqa_tied")
tmp = tempfile.mkdtemp(prefix="qd_repro.")


def run(*args):
    return qd_check.run(BIN, *args)


def one_line(err):
    return err.strip() != "" and "\n" not in err.strip()


def line(out, start):
    return next((l for l in out.splitlines() if l.startswith(start)), "")


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b))


# --- the seed -----------------------------------------------------------------------------------------
seed, dump, js = (os.path.join(tmp, n) for n in ("seed.h5", "seed_dump.h5", "seed.json"))
seed_args = ["--model", KN, "--tokens", "@" + os.path.join(KN, "seed_prompt.txt"), "--backends", "ref,emu",
             "--inject", "online-softmax-rescale@1"]
rc, out, err = run(*seed_args, "--repro", seed, "--dump", dump, "--json", js, "--no-color")

if GPU:
    # the fused kernel reruns the files the CPU part checks; without a device the rerun says so
    rc, out, err = run("replay", seed)
    if "fused: skipped" in out:
        print(f"skipped: no CUDA device ({line(out, '  fused:').strip()})")
        sys.exit(77)
    fl = line(out, "  fused ")
    check(rc == 1 and "rel_l2" in fl and "within the floor" in fl and "flash_attn_kernel" in fl,
          f"gpu: the seed's attn rerun on fused's prefill kernel is within the floor (exit {rc}): {fl}")
    kv = os.path.join(tmp, "kv.h5")
    run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu", "--inject",
        "kv-cache-pos@1", "--decode", "2", "--repro", kv, "--quiet")
    rc, out, err = run("replay", kv)
    fl = line(out, "  fused ")
    check(rc == 1 and "within the floor" in fl and "decode_attn_kernel" in fl,
          f"gpu: the decode step's attn rerun on fused's one-token kernel is within the floor: {fl}")
    rc, out, err = run("replay", kv, "--inject", "kv-cache-pos")
    check(rc == 1 and "the launchers take no fault" in out,
          f"gpu: --inject says the fused launchers take no fault: {line(out, '  fused')}")
    kn = os.path.join(tmp, "kn.h5")
    run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu", "--inject",
        "knorm-mul@1", "--repro", kn, "--quiet")
    rc, out, err = run("replay", kn)
    check(line(out, "  fused:") == "  fused: no kernel for k_norm", f"gpu: k_norm has no kernel of its own: {out}")
    finish()

check(rc == 1 and f"repro: {seed} (layer 1, attn of emu (side B)" in out,
      f"seed: diverges and names the repro file on stdout (exit {rc}) {err.strip()}")
size = os.path.getsize(seed) if os.path.exists(seed) else 0
# 80 tokens of q_rope (4 heads) and k_rope / v_proj (2 KV heads) of head_dim 64, and three (80, 256) outputs:
# 410 KB as float32, less deflated; a few hundred KB at most is the point of the file
check(0 < size <= 300_000, f"seed: the repro file is small ({size} bytes)")
check(not [n for n in os.listdir(tmp) if ".tmp." in n], "seed: no temporary file left behind")

with open(js) as fh:
    fd = json.load(fh)["first_divergence"]
with h5py.File(seed, "r") as f, h5py.File(dump, "r") as d:
    a = f.attrs
    check(a["schema"] == "qwen3-diff-repro/1", f"seed: schema {a['schema']}")
    ident = {k: (a[k].item() if hasattr(a[k], "item") else a[k]) for k in
             ("tap", "layer", "step", "pos0", "T", "side", "engine", "precision", "accum", "mode")}
    check(ident == {"tap": "attn", "layer": 1, "step": 0, "pos0": 0, "T": 80, "side": "B", "engine": "emu",
                    "precision": "bf16", "accum": "f32", "mode": "free"}, f"seed: the op's identity {ident}")
    cfg = json.loads(a["config_json"])
    with open(os.path.join(KN, "config.json")) as fh:
        check(cfg == json.load(fh), "seed: config_json is the model's config.json")
    NH, NKV, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    shapes = {n: f["inputs"][n].shape for n in f["inputs"]}
    check(shapes == {"q_rope": (80, NH, HD), "k_rope": (80, NKV, HD), "v_proj": (80, NKV * HD)},
          f"seed: the inputs are attn's, every position of the history {shapes}")
    check("weights" not in f, "seed: attention reads no weight, the file holds none")
    same = all(np.array_equal(f["inputs"][n][:], d[f"emu/layers/001/{n}"][:]) for n in shapes)
    check(same, "seed: the inputs are emu's taps as the dump holds them, bit for bit")
    check(np.array_equal(f["engine/attn"][:], d["emu/layers/001/attn"][:]), "seed: /engine/attn is emu's attn tap")
    check(f["oracle/attn"].shape == (80, NH * HD) and f["contract/attn"].shape == (80, NH * HD),
          "seed: the oracle's and the contract's outputs are there")
    # the file's figures are the run's (the JSON writes 9 significant digits)
    figs = {k: float(a[k]) for k in ("local_rel_l2", "floor_rel_l2", "min_floor", "ratio", "local_max_abs")}
    check(all(close(figs[k], fd[k], 1e-8) for k in figs), f"seed: the figures are the run's {figs}")
    eng, ora, con = (f[g]["attn"][:].astype(np.float64) for g in ("engine", "oracle", "contract"))
    rel = lambda x: np.linalg.norm(x - ora) / np.linalg.norm(ora)
    # attention's floor is the wider of the stored (fused-form) contract and the eager form
    # (docs/TOLERANCES.md), so it is at least the stored contract's error
    check(close(rel(eng), figs["local_rel_l2"], 1e-9) and rel(con) <= figs["floor_rel_l2"] * (1 + 1e-9),
          "seed: local is the stored output's rel_l2 against the stored oracle, the floor at least the contract's")

rc, out, err = run("replay", seed)
stored = line(out, "stored emu output:")
check(rc == 1 and stored.endswith("FAILS (blow-up at layer 1, attn)"),
      f"replay seed: the stored output is a blow-up at layer 1 attn, exit 1 ({rc}): {stored}")
check(f"= {fd['ratio']:.3g}x the floor" in stored and f"max|emu| {fd['max_mag_test']:.3g}" in stored,
      f"replay seed: the rerun's figures are the run's ({fd['ratio']:.3g})")
contract = line(out, "  contract ")
check("x the floor: within the floor" in contract, f"replay seed: the clean contract is within the floor: {contract}")
check(line(out, "  fused") != "", f"replay seed: a line for the fused kernel ({line(out, '  fused')})")
check(line(out, "  +fault") == "", "replay seed: no fault line without --inject")

rc, out, err = run("replay", seed, "--inject", "online-softmax-rescale")
fault = line(out, "  +fault ")
check(rc == 1 and "FAILS (blow-up" in fault and "online-softmax-rescale" in fault,
      f"replay seed --inject: the contract blows up on the file's inputs alone: {fault}")
check(f"= {fd['ratio']:.3g}x the floor" in fault, "replay seed --inject: as badly as emu did in the run")
check("within the floor" in line(out, "  contract "), "replay seed --inject: the clean contract still passes")
rc, out, err = run("replay", seed, "--inject", "knorm-mul")
check(rc == 1 and "within the floor" in line(out, "  +fault "),
      f"replay seed --inject knorm-mul: a fault attention does not host changes nothing: {line(out, '  +fault')}")

# --- a decode step ------------------------------------------------------------------------------------
kv = os.path.join(tmp, "kv.h5")
rc, out, err = run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "kv-cache-pos@1", "--decode", "2", "--repro", kv, "--no-color")
check(rc == 1 and "(decode step 1, layer 1, attn of emu (side B)" in out, f"decode: the repro is step 1's attn ({rc})")
with h5py.File(kv, "r") as f:
    a = f.attrs
    cfg = json.loads(a["config_json"])
    NKV, HD = cfg["num_key_value_heads"], cfg["head_dim"]
    check((int(a["step"]), int(a["pos0"]), int(a["T"])) == (1, 12, 1),
          f"decode: step 1 is one row at position 12 ({a['step']}, {a['pos0']}, {a['T']})")
    check(f["inputs/k_rope"].shape == (13, NKV, HD) and f["inputs/v_proj"].shape == (13, NKV * HD) and
          f["inputs/q_rope"].shape[0] == 1, "decode: the history holds every position 0..12, q_rope this one")
    kv_ratio = float(a["ratio"])
rc, out, err = run("replay", kv)
check(rc == 1 and line(out, "stored emu output:").endswith("FAILS (local error at decode step 1, layer 1, attn)"),
      f"replay decode: the stored output fails ({rc})")
rc, out, err = run("replay", kv, "--inject", "kv-cache-pos")
check(rc == 1 and "FAILS (local error" in line(out, "  +fault ") and f"= {kv_ratio:.3g}x" in line(out, "  +fault "),
      f"replay decode --inject kv-cache-pos: the early cache write reproduces ({line(out, '  +fault')})")

# --- an op with a weight --------------------------------------------------------------------------------
kn = os.path.join(tmp, "kn.h5")
rc, out, err = run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "knorm-mul@1", "--repro", kn, "--quiet")
with h5py.File(kn, "r") as f:
    cfg = json.loads(f.attrs["config_json"])
    T, NKV, HD = int(f.attrs["T"]), cfg["num_key_value_heads"], cfg["head_dim"]
    got = ({n: f["inputs"][n].shape for n in f["inputs"]}, {n: f["weights"][n].shape for n in f["weights"]})
    check(f.attrs["tap"] == "k_norm" and got == ({"k_proj": (T, NKV * HD)}, {"k_norm": (HD,)}),
          f"k_norm: reads k_proj and the layer's k_norm weight only {got}")
rc, out, err = run("replay", kn, "--inject", "knorm-mul")
check(rc == 1 and "FAILS" in line(out, "  +fault ") and "within the floor" in line(out, "  contract "),
      f"replay k_norm --inject knorm-mul: reproduced, the clean contract passes ({rc})")

# --- offline compare --------------------------------------------------------------------------------------
gd, off = os.path.join(tmp, "gelu.h5"), os.path.join(tmp, "off.h5")
run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu", "--inject",
    "act-gelu@1", "--dump", gd, "--quiet")
rc, out, err = run("compare", gd + ":ref", gd + ":emu", "--model", GQ, "--repro", off)
check(rc == 1 and f"repro: {off} (layer 1, act of emu (side B)" in out, f"compare --repro: writes act's repro ({rc})")
with h5py.File(off, "r") as f, h5py.File(gd, "r") as d:
    check(sorted(f["inputs"]) == ["gate_proj", "up_proj"] and
          all(np.array_equal(f["inputs"][n][:], d[f"emu/layers/001/{n}"][:]) for n in f["inputs"]),
          "compare --repro: act reads gate_proj and up_proj, as the dump holds them")
rc, out, err = run("replay", off, "--inject", "act-gelu")
check(rc == 1 and "FAILS" in line(out, "  +fault ") and "FAILS" in line(out, "stored emu output:"),
      f"replay of the offline repro: stored output fails, the fault reproduces ({rc})")

# --- no divergence: nothing written -------------------------------------------------------------------------
none = os.path.join(tmp, "none.h5")
rc, out, err = run("--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref,emu",
                   "--repro", none)
check(rc == 0 and not os.path.exists(none) and "no divergence, so no repro file was written" in err,
      f"clean: no file, said on stderr ({rc}) {err.strip()}")
rc, out, err = run("compare", os.path.join(GQ, "golden.h5"), os.path.join(GQ, "golden.h5"), "--repro", none)
check(rc == 0 and not os.path.exists(none), f"compare clean: no file ({rc})")

# --- bad files and uses: one line, exit 2 --------------------------------------------------------------------


def broken(name, edit, src=seed):
    p = os.path.join(tmp, name)
    shutil.copy(src, p)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def reshape(f, path, shape):
    del f[path]
    f[path] = np.zeros(shape, np.float32)


cases = [
    ("missing input", broken("no_k.h5", lambda f: f.__delitem__("inputs/k_rope")), "no dataset '/inputs/k_rope'"),
    ("missing engine output", broken("no_eng.h5", lambda f: f.__delitem__("engine/attn")), "no dataset '/engine/attn'"),
    ("wrong input shape", broken("shape.h5", lambda f: reshape(f, "inputs/q_rope", (79, 4, 64))),
     "dataset '/inputs/q_rope' has shape (79, 4, 64), expected (80, 4, 64)"),
    ("short history", broken("hist.h5", lambda f: reshape(f, "inputs/v_proj", (80, 64))),
     "dataset '/inputs/v_proj' has shape (80, 64), expected (80, 128)"),
    ("missing weight", broken("no_w.h5", lambda f: f.__delitem__("weights/k_norm"), kn), "no dataset '/weights/k_norm'"),
    ("wrong weight shape", broken("w_shape.h5", lambda f: reshape(f, "weights/k_norm", (HD + 1,)), kn),
     f"dataset '/weights/k_norm' has shape ({HD + 1},), expected ({HD},)"),
    ("wrong schema", broken("schema.h5", lambda f: f.attrs.__setitem__("schema", "qwen3-diff-repro/9")),
     "attribute 'schema': expected \"qwen3-diff-repro/1\", found \"qwen3-diff-repro/9\""),
    ("unknown tap", broken("tap.h5", lambda f: f.attrs.__setitem__("tap", "attn2")), "'tap' = 'attn2' is not a layer tap"),
    ("layer out of range", broken("layer.h5", lambda f: f.attrs.__setitem__("layer", 9)), "'layer' = 9 is outside"),
]
for what, path, msg in cases:
    rc, out, err = run("replay", path)
    check(rc == 2 and one_line(err) and msg in err, f"bad repro, {what}: exit 2, one line ({rc}) {err.strip()}")
rc, out, err = run("replay", os.path.join(KN, "golden.h5"), "--inject", "knorm-mul")
check(rc == 2 and one_line(err) and "only a repro file's op" in err, f"--inject on a dump: exit 2 ({err.strip()})")
rc, out, err = run(*seed_args, "--tolerances", os.path.join(tmp, "t.json"), "--repro", os.path.join(tmp, "x.h5"))
check(rc == 2 and one_line(err) and "--repro" in err, f"--repro with --tolerances: exit 2 ({err.strip()})")
rc, out, err = run("replay", seed, "--inject", "no-such-fault")
check(rc == 2 and one_line(err), f"replay --inject with an unknown fault: exit 2 ({err.strip()})")

shutil.rmtree(tmp, ignore_errors=True)
finish()
