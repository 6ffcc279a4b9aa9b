#!/usr/bin/python3
"""check_schema.py: checks an HDF5 dump against schema v1 (docs/SCHEMA.md), read through h5py.

    /usr/bin/python3 tests/check_schema.py DUMP.h5 MODEL_DIR [--tokens LIST|@FILE] [--backend NAME ...]
                                           [--allow-missing]

Checks: root attributes schema/model/config_json/tool_version are str and schema == "qwen3-diff/1";
config_json parses and equals MODEL_DIR/config.json; /input_ids is int32 (T,) and equals --tokens when
given; every backend group has a valid precision and every tap dataset the schema names (embed,
final_norm, logits, layers/NNN/<tap> for every layer) with the right shape and dtype float32; no
dataset or group outside the schema. Every problem is listed; the exit status is 1 if there was any.
"""
import argparse
import json
import os
import re
import sys

import h5py
import numpy as np

SCHEMA = "qwen3-diff/1"
PRECISIONS = {"fp64", "fp32", "bf16", "fp16"}
ROOT_ATTRS = ["schema", "model", "config_json", "tool_version"]
RESERVED = {"input_ids", "diff"}  # /diff/<A>-vs-<B>/ is reserved for the comparator's metrics
LAYER_TAPS = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn",
              "o_proj", "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out"]
MODEL_TAPS = ["embed", "final_norm", "logits"]


def tap_shapes(cfg, T):
    """Shapes of every tap for T tokens, from config.json (qd_taps.h is the C side of this table)."""
    C, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    NH, NKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    HD = cfg.get("head_dim") or C // NH  # absent head_dim defaults as transformers does
    layer = {"attn_norm": (T, C), "q_proj": (T, NH * HD), "k_proj": (T, NKV * HD), "v_proj": (T, NKV * HD),
             "q_norm": (T, NH, HD), "k_norm": (T, NKV, HD), "q_rope": (T, NH, HD), "k_rope": (T, NKV, HD),
             "attn": (T, NH * HD), "o_proj": (T, C), "attn_residual": (T, C), "mlp_norm": (T, C),
             "gate_proj": (T, I), "up_proj": (T, I), "act": (T, I), "down_proj": (T, C), "out": (T, C)}
    model = {"embed": (T, C), "final_norm": (T, C), "logits": (T, V)}
    return layer, model


def parse_tokens(arg):
    text = open(arg[1:]).read() if arg.startswith("@") else arg
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


def check(path, model_dir, tokens, backends, allow_missing):
    problems = []
    bad = problems.append
    with open(os.path.join(model_dir, "config.json")) as fh:
        cfg = json.load(fh)
    with h5py.File(path, "r") as f:
        for key in ROOT_ATTRS:
            if key not in f.attrs:
                bad(f"root attribute '{key}' is missing")
            elif not isinstance(f.attrs[key], str):
                bad(f"root attribute '{key}' is {type(f.attrs[key]).__name__}, expected str "
                    "(a variable-length UTF-8 string)")
        if f.attrs.get("schema") != SCHEMA:
            bad(f"root attribute 'schema' is {f.attrs.get('schema')!r}, expected {SCHEMA!r}")
        if isinstance(f.attrs.get("config_json"), str):
            try:
                if json.loads(f.attrs["config_json"]) != cfg:
                    bad(f"root attribute 'config_json' differs from {model_dir}/config.json")
            except json.JSONDecodeError as ex:
                bad(f"root attribute 'config_json' is not JSON: {ex}")

        T = None
        if "input_ids" not in f or not isinstance(f["input_ids"], h5py.Dataset):
            bad("dataset /input_ids is missing")
        else:
            ids = f["input_ids"]
            if ids.dtype != np.dtype("<i4") or ids.ndim != 1 or ids.shape[0] < 1:
                bad(f"/input_ids is {ids.dtype} {ids.shape}, expected int32 (T,) with T >= 1")
            else:
                T = ids.shape[0]
                if tokens is not None and list(ids[...]) != tokens:
                    bad(f"/input_ids {list(ids[...])} differs from the tokens given {tokens}")
        if T is None:
            return problems

        layer_shapes, model_shapes = tap_shapes(cfg, T)
        L = cfg["num_hidden_layers"]
        groups = [k for k in f if k not in RESERVED]
        for name in backends:
            if name not in f:
                bad(f"backend group /{name} is missing")
        if not groups:
            bad("no backend group")

        def check_ds(g, name, shape, where):
            if name not in g:
                if not allow_missing:
                    bad(f"dataset {where} is missing")
                return
            ds = g[name]
            if not isinstance(ds, h5py.Dataset):
                bad(f"{where} is not a dataset")
            elif ds.dtype != np.dtype("<f4"):
                bad(f"dataset {where} has dtype {ds.dtype}, expected float32 (<f4)")
            elif ds.shape != shape:
                bad(f"dataset {where} has shape {ds.shape}, expected {shape}")

        for b in groups:
            g = f[b]
            if not isinstance(g, h5py.Group):
                bad(f"/{b} is not a group (only /input_ids is a root dataset)")
                continue
            prec = g.attrs.get("precision")
            if prec not in PRECISIONS:
                bad(f"/{b}: attribute 'precision' is {prec!r}, expected one of {sorted(PRECISIONS)}")
            for k in g:
                if k != "layers" and k not in model_shapes:
                    bad(f"/{b}/{k} is not in the schema")
            for name, shape in model_shapes.items():
                check_ds(g, name, shape, f"/{b}/{name}")
            if "layers" not in g:
                if not allow_missing:
                    bad(f"group /{b}/layers is missing")
                continue
            lg = g["layers"]
            want = {f"{i:03d}" for i in range(L)}
            for k in lg:
                if k not in want:
                    bad(f"/{b}/layers/{k} is not a layer of this model (expected 000..{L - 1:03d})")
            for i in range(L):
                key = f"{i:03d}"
                if key not in lg:
                    if not allow_missing:
                        bad(f"group /{b}/layers/{key} is missing")
                    continue
                for k in lg[key]:
                    if k not in layer_shapes:
                        bad(f"/{b}/layers/{key}/{k} is not in the schema")
                for name, shape in layer_shapes.items():
                    check_ds(lg[key], name, shape, f"/{b}/layers/{key}/{name}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("model_dir")
    ap.add_argument("--tokens", help="expected input ids: LIST or @FILE")
    ap.add_argument("--backend", action="append", default=[], help="a backend group that must be present")
    ap.add_argument("--allow-missing", action="store_true",
                    help="accept a backend that omits taps (the schema allows it; qwen3-diff writes all)")
    a = ap.parse_args()
    try:
        tokens = parse_tokens(a.tokens) if a.tokens else None
        problems = check(a.dump, a.model_dir, tokens, a.backend, a.allow_missing)
    except (OSError, ValueError, KeyError) as ex:
        print(f"check_schema: {a.dump}: {ex}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"check_schema: {a.dump}: {p}", file=sys.stderr)
    if problems:
        print(f"check_schema: {a.dump}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_schema: {a.dump}: schema v1 OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
