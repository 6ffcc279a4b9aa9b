#!/usr/bin/python3
"""make_corpus.py QWEN3_DIFF QWEN3_FIXTURE OUTDIR: the fuzz target's seed corpus, made at test time.

Small schema-v1 dumps of a tiny synthetic model (1 layer, hidden 8, vocab 16), so that mutations stay
cheap: qwen3-diff's own dumps (a compared pair, a tap selection, gzip, one backend) and hand-written
h5py files covering what other engines write (compact and chunked layouts, float16, bfloat16-free
float64, big-endian, fixed-length string attributes, int64 input_ids), plus the crafted files of the
hostile suite in miniature (string arrays for scalar attributes, declared-but-unwritten and wrapping
shapes, a group without taps, external links and external raw data). Every file is a regular file under
OUTDIR; the directory is emptied first.
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

diff, fixture, out = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
work = out + ".work"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)

LAYER_TAPS = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn",
              "o_proj", "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out"]


def sh(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    if p.returncode not in (0, 1):
        sys.exit(f"make_corpus: {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")


model = os.path.join(work, "tiny")
sh(fixture, "--out", model, "--seed", "3", "--vocab", "16", "--hidden", "8", "--heads", "2", "--kv-heads", "1",
   "--head-dim", "4", "--intermediate", "16", "--layers", "1", "--max-pos", "64", "--prompt-len", "2")
toks = "@" + os.path.join(model, "prompt.txt")
run = [diff, "--model", model, "--tokens", toks, "--quiet"]
sh(*run, "--backends", "ref,emu", "--dump", os.path.join(out, "pair.h5"))
sh(*run, "--backends", "ref,emu", "--dump", os.path.join(out, "taps.h5"), "--dump-taps", "k_norm,logits")
sh(*run, "--backends", "ref,emu", "--dump", os.path.join(out, "gzip.h5"), "--dump-taps", "attn,out,embed",
   "--dump-compress", "1")
sh(*run, "--backends", "ref", "--dump", os.path.join(out, "single.h5"))

cfg_text = open(os.path.join(model, "config.json")).read()
cfg = json.loads(cfg_text)
C, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
NH, NKV, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
T = 2
SHAPES = {"q_proj": (T, NH * HD), "attn": (T, NH * HD), "k_proj": (T, NKV * HD), "v_proj": (T, NKV * HD),
          "q_norm": (T, NH, HD), "q_rope": (T, NH, HD), "k_norm": (T, NKV, HD), "k_rope": (T, NKV, HD),
          "gate_proj": (T, I), "up_proj": (T, I), "act": (T, I)}
rng = np.random.default_rng(1)


def handmade(name, dtype="<f4", layout="compact", taps=("embed", "k_norm", "out", "logits"), fixed_attrs=False,
             ids_dtype="<i4", groups=("a", "b")):
    """A dump as another engine would write it with h5py; libver latest keeps the file small."""
    path = os.path.join(out, name)
    with h5py.File(path, "w", libver="latest") as f:
        for k, v in {"schema": "qwen3-diff/1", "model": "tiny", "config_json": cfg_text, "tool_version": "h5py"}.items():
            if fixed_attrs:
                f.attrs.create(k, np.bytes_(v))
            else:
                f.attrs[k] = v
        f.create_dataset("input_ids", data=np.array([3, 7], dtype=ids_dtype))
        for g in groups:
            grp = f.create_group(g)
            grp.attrs["precision"] = "fp32"
            for tap in taps:
                shape = (T, V) if tap == "logits" else (T, C) if tap in ("embed", "final_norm") else SHAPES.get(tap, (T, C))
                where = tap if tap in ("embed", "final_norm", "logits") else f"layers/000/{tap}"
                a = rng.standard_normal(shape).astype(dtype)
                kw = {"chunks": True, "compression": "gzip", "shuffle": True} if layout == "gzip" else \
                     {"chunks": (1,) + shape[1:]} if layout == "chunked" else {}
                if layout == "compact":
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_layout(h5py.h5d.COMPACT)
                    space = h5py.h5s.create_simple(shape)
                    parent = grp.require_group(os.path.dirname(where)) if "/" in where else grp
                    ds = h5py.h5d.create(parent.id, os.path.basename(where).encode(),
                                         h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)
                    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, a)
                else:
                    grp.create_dataset(where, data=a, **kw)
    return path


handmade("hand_compact.h5")
handmade("hand_all_taps.h5", taps=["embed", "final_norm", "logits"] + LAYER_TAPS, layout="contiguous", groups=("hf",))
handmade("hand_chunked.h5", layout="chunked", dtype=">f4")
handmade("hand_gzip.h5", layout="gzip", dtype="<f8")
handmade("hand_f16.h5", dtype="<f2", ids_dtype="<i8")
handmade("hand_fixed_attrs.h5", fixed_attrs=True)


def crafted(name, edit, base="hand_compact.h5"):
    path = os.path.join(out, name)
    shutil.copy(os.path.join(out, base), path)
    with h5py.File(path, "r+") as f:
        edit(f)


def str_array(f, key, value, fixed):
    del f.attrs[key]
    if fixed:
        f.attrs.create(key, np.array([value.encode()] * 64, dtype=f"S{len(value)}"))
    else:
        f.attrs.create(key, [value] * 64, dtype=h5py.string_dtype())


crafted("d1_schema_vlen_array.h5", lambda f: str_array(f, "schema", "qwen3-diff/1", False))
crafted("d1_schema_fixed_array.h5", lambda f: str_array(f, "schema", "qwen3-diff/1", True))
crafted("d1_precision_array.h5", lambda f: str_array(f["b"], "precision", "fp32", False))


def declare(shape, chunks):
    def edit(f):
        del f["b/logits"]
        f["b"].create_dataset("logits", shape=shape, chunks=chunks, dtype="f4")
    return edit


crafted("d2_wrap.h5", declare((2**31, 2**31), (1, 256)))
crafted("d2_huge.h5", declare((10**6, 10**6), (1, 256)))
crafted("d2_unwritten.h5", declare((T, V), (1, V)))
crafted("d3_no_taps.h5", lambda f: f.create_group("c").attrs.__setitem__("precision", "fp32"))


def external_link(f):
    del f["b/logits"]
    f["b/logits"] = h5py.ExternalLink("/nonexistent/other.h5", "/b/logits")


crafted("external_link.h5", external_link)


def external_raw(f):
    del f["b/logits"]
    f["b"].create_dataset("logits", shape=(T, V), dtype="<f4", external=[("/nonexistent/raw.bin", 0, T * V * 4)])


crafted("external_raw.h5", external_raw)
shutil.rmtree(work)
print(f"make_corpus: {len(os.listdir(out))} seeds in {out}")
