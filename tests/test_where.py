#!/usr/bin/python3
"""test_where.py QWEN3_DIFF: where inside the first divergence's tap the error lives, end to end
(compare/qd_localise.h): the terminal's `where:` line, JSON's first_divergence.where and the dump's
/diff/<A>-vs-<B>/where table, each checked against the dumped tensors themselves.

- The seed (online-softmax-rescale@1 on knorm_extreme, 80 tokens): layer 1 attn blows up at position 64,
  the first query whose keys span two 64-key tiles, and every later position is wrong by far more than its
  own size (measured: relative error 3e4 .. 4e28), while positions < 64 carry only rounding (< 0.5);
  head 1 carries ~100 % of the energy.
- gqa-mod@1 on knorm_extreme (4 query heads, 2 KV heads): query head h reads KV head h mod 2 instead of
  h / 2, which is wrong for heads 1 and 2 only.
- The offline compare of the seed's dump says the same (head_dim from the dump's config_json).
"""
import json
import os
import sys
import tempfile

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
KN = os.path.join(FX, "knorm_extreme")
tmp = tempfile.mkdtemp(prefix="qd_where.")


def run(*args):
    return qd_check.run(BIN, *args)


def where_lines(out):
    lines = out.splitlines()
    i = next((k for k, l in enumerate(lines) if l.startswith("first divergence")), None)
    return lines[i:i + 4] if i is not None else []


# --- the seed -----------------------------------------------------------------------------------------
dump, js = os.path.join(tmp, "seed.h5"), os.path.join(tmp, "seed.json")
rc, out, err = run("--model", KN, "--tokens", "@" + os.path.join(KN, "seed_prompt.txt"), "--backends", "ref,emu",
                   "--inject", "online-softmax-rescale@1", "--dump", dump, "--json", js, "--no-color")
lines = where_lines(out)
check(rc == 1 and len(lines) == 4 and lines[0].startswith("first divergence: layer 1, attn") and
      lines[1].startswith("  why: "), f"seed: diverges at layer 1 attn, why line next (exit {rc}) {err.strip()}")
SEED_WHERE = "  where: head 1 carries 100 % of the error; positions >= 64 carry 100 % (token 64 alone 100 %)"
check(len(lines) > 2 and lines[2] == SEED_WHERE, f"seed: the where line names positions >= 64 ({lines[2:3]})")
check(len(lines) > 3 and lines[3].startswith("  top: head 1 100 % (rms error ") and "token 64 100 %" in lines[3],
      f"seed: the top line names head 1 and token 64 ({lines[3:4]})")

with h5py.File(dump, "r") as f:
    cfg = json.loads(f.attrs["config_json"])
    HD, NH = cfg["head_dim"], cfg["num_attention_heads"]
    ref = f["ref/layers/001/attn"][:].astype(np.float64)
    emu = f["emu/layers/001/attn"][:].astype(np.float64)
    T = ref.shape[0]
    d2 = (emu - ref) ** 2
    rel = np.sqrt(d2.sum(1) / (ref ** 2).sum(1))
    # what it really is: clean before 64, every position from 64 on wrong by more than its own size
    check(T == 80 and rel[:64].max() < 0.5 and rel[64:].min() > 1e3,
          f"seed tensors: positions < 64 within rounding (max relative error {rel[:64].max():.2g}), "
          f"positions >= 64 blown up (min {rel[64:].min():.2g})")
    share_head = d2.reshape(T, NH, HD).sum((0, 2)) / d2.sum()
    check(share_head.argmax() == 1 and share_head[1] > 0.999, f"seed tensors: head 1 carries the energy ({share_head})")
    g = f["diff/ref-vs-emu"]
    check(g.attrs["first_divergence_where"] == SEED_WHERE[len("  where: "):], "seed dump: first_divergence_where attr")
    w = g["where"][:]
    tok = [r for r in w if r["axis"] == b"token"]
    check(len(tok) == 5 and tok[0]["rank"] == 0 and tok[0]["index"] == 64,
          f"seed dump: the where table's heaviest token is 64 ({[int(r['index']) for r in tok]})")
    share64 = d2[64].sum() / d2.sum()
    rms64 = np.sqrt(d2[64].mean())
    check(abs(tok[0]["share"] - share64) <= 1e-9 and abs(tok[0]["rms_err"] / rms64 - 1) < 1e-9,
          "seed dump: the table's share and rms error of token 64 are the tensors'")
    check(sorted({r["axis"].decode() for r in w}) == ["channel", "head", "token"], "seed dump: one block per axis")

r = json.load(open(js))
wj = r["first_divergence"]["where"]
check(wj["summary"] == SEED_WHERE[len("  where: "):] and wj["view"] == [80, NH, HD] and wj["shares_of"] == "energy",
      f"seed JSON: summary and the per-head view ({wj['view']})")
ts = wj["token"]["set"]
check(ts["lo"] == 64 and ts["hi"] == 79 and ts["size"] == 16 and wj["token"]["peak"]["index"] == [64],
      f"seed JSON: positions 64..79 with token 64 as the peak ({ts})")
check(wj["head"]["set"]["index"] == [1] and wj["channel"]["set"] is None, "seed JSON: head 1; channels spread")

# --- the same dump, offline ----------------------------------------------------------------------------
rc, out, err = run("compare", dump + ":ref", dump + ":emu", "--no-color")
lines = where_lines(out)
check(rc == 1 and len(lines) > 2 and lines[2] == SEED_WHERE, f"offline compare: the same where line ({lines[2:3]})")

# --- a fault in some heads only ------------------------------------------------------------------------
dump, js = os.path.join(tmp, "gqa.h5"), os.path.join(tmp, "gqa.json")
rc, out, err = run("--model", KN, "--tokens", "@" + os.path.join(KN, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "gqa-mod@1", "--dump", dump, "--json", js, "--no-color")
NKV = cfg["num_key_value_heads"]
wrong = [h for h in range(NH) if h % NKV != h // (NH // NKV)]
lines = where_lines(out)
check(rc == 1 and lines and lines[0].startswith("first divergence: layer 1, attn"), f"gqa-mod@1: layer 1 attn (exit {rc})")
check(wrong == [1, 2] and len(lines) > 2 and lines[2] == "  where: heads 1 and 2 carry 100 % of the error",
      f"gqa-mod@1: the heads that read the wrong KV head, {wrong}, are named ({lines[2:3]})")
with h5py.File(dump, "r") as f:
    ref = f["ref/layers/001/attn"][:].astype(np.float64)
    emu = f["emu/layers/001/attn"][:].astype(np.float64)
    d2 = ((emu - ref) ** 2).reshape(ref.shape[0], NH, HD).sum((0, 2))
    check(d2[wrong].sum() / d2.sum() > 0.999, f"gqa-mod@1 tensors: heads {wrong} carry the energy")
check(json.load(open(js))["first_divergence"]["where"]["head"]["set"]["index"] == wrong, "gqa-mod@1 JSON: the set")

# --- no divergence: no where line, an empty table, an empty attribute --------------------------------------
dump, js = os.path.join(tmp, "clean.h5"), os.path.join(tmp, "clean.json")
rc, out, err = run("--model", KN, "--tokens", "@" + os.path.join(KN, "prompt.txt"), "--backends", "ref,emu",
                   "--dump", dump, "--json", js, "--no-color")
with h5py.File(dump, "r") as f:
    g = f["diff/ref-vs-emu"]
    check(rc == 0 and "where:" not in out and g.attrs["first_divergence_where"] == "" and len(g["where"]) == 0,
          f"clean: no where line, empty attribute and table (exit {rc})")
check(json.load(open(js))["first_divergence"] is None, "clean JSON: no first divergence")

finish()
