#!/usr/bin/env python3
"""hf_golden.py: golden activations from Hugging Face transformers, in qwen3-diff's HDF5 schema v1.

Runs transformers' Qwen3ForCausalLM (by default eager attention, float32 end to end: loaded with
from_pretrained(dir, dtype=torch.float32), never cast to bf16 and back, see docs/QWEN3.md on RoPE's inv_freq)
on a checkpoint directory and its prompt, and writes every tap under /hf:

    python3 tools/hf_golden.py fixtures/gqa_tied [fixtures/... ...]      # writes DIR/golden.h5
    python3 tools/hf_golden.py DIR --tokens 5,17,3 --out other.h5

The same model as a user of transformers runs it in low precision, one group per attention
implementation (`hf_<dtype>_<attn>`, precision attribute = the dtype), e.g. on a GPU:

    python3 tools/hf_golden.py fixtures/knorm_extreme --device cuda --dtype bf16 --attn eager,sdpa
                                                                      # writes DIR/hf_bf16.h5

Taps come from forward hooks and pre-hooks on HF's own modules; q_rope/k_rope are the outputs of HF's own
apply_rotary_pos_emb, recorded by wrapping it (its values are the ones the attention then uses).
Runs on the CPU by default (float32, no TF32 anywhere); --device cuda runs there with TF32 disabled.
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
import torch
import transformers
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3

SCHEMA = "qwen3-diff/1"
LAYER_TAPS = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn",
              "o_proj", "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out"]


def read_tokens(spec):
    if spec.startswith("@"):
        with open(spec[1:]) as f:
            spec = f.read()
    return [int(t) for t in spec.replace(",", " ").split()]


def first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture(model, input_ids):
    """Runs one forward pass; returns {(layer, tap): np.float32 array without the batch dim}."""
    taps = {}
    hooks = []
    current = {"layer": None}

    def put(layer, name, t):
        a = first_tensor(t).detach().to("cpu", torch.float32).numpy()
        assert a.shape[0] == 1, "batch of one"
        assert (layer, name) not in taps, f"tap {name} of layer {layer} recorded twice"
        taps[(layer, name)] = np.ascontiguousarray(a[0])

    def out_hook(layer, name):
        return lambda mod, args, out: put(layer, name, out)

    def in_hook(layer, name):
        return lambda mod, args: put(layer, name, args[0])

    m = model.model
    rope_cs = {}
    hooks.append(m.rotary_emb.register_forward_hook(lambda mod, args, out: rope_cs.update(cos=out[0], sin=out[1])))
    hooks.append(m.embed_tokens.register_forward_hook(out_hook(-1, "embed")))
    hooks.append(m.norm.register_forward_hook(out_hook(-1, "final_norm")))
    hooks.append(model.lm_head.register_forward_hook(out_hook(-1, "logits")))
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        hooks.append(layer.register_forward_pre_hook(
            lambda mod, args, i=i: current.__setitem__("layer", i)))
        hooks.append(layer.input_layernorm.register_forward_hook(out_hook(i, "attn_norm")))
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            hooks.append(getattr(a, n).register_forward_hook(out_hook(i, n)))
        hooks.append(a.q_norm.register_forward_hook(out_hook(i, "q_norm")))  # (1, T, NH, HD)
        hooks.append(a.k_norm.register_forward_hook(out_hook(i, "k_norm")))  # (1, T, NKV, HD)
        hooks.append(a.o_proj.register_forward_pre_hook(in_hook(i, "attn")))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(in_hook(i, "attn_residual")))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(out_hook(i, "mlp_norm")))
        hooks.append(mlp.gate_proj.register_forward_hook(out_hook(i, "gate_proj")))
        hooks.append(mlp.up_proj.register_forward_hook(out_hook(i, "up_proj")))
        hooks.append(mlp.down_proj.register_forward_pre_hook(in_hook(i, "act")))
        hooks.append(mlp.down_proj.register_forward_hook(out_hook(i, "down_proj")))
        hooks.append(layer.register_forward_hook(out_hook(i, "out")))

    hf_rope = modeling_qwen3.apply_rotary_pos_emb

    def recording_rope(q, k, cos, sin, *args, **kwargs):
        q_embed, k_embed = hf_rope(q, k, cos, sin, *args, **kwargs)
        # HF's layout here is (batch, heads, T, head_dim); the schema's is (T, heads, head_dim).
        put(current["layer"], "q_rope", q_embed.transpose(1, 2))
        put(current["layer"], "k_rope", k_embed.transpose(1, 2))
        return q_embed, k_embed

    modeling_qwen3.apply_rotary_pos_emb = recording_rope
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        modeling_qwen3.apply_rotary_pos_emb = hf_rope
        for h in hooks:
            h.remove()
    if not any(name == "q_rope" for _, name in taps):
        # This transformers version dispatched RoPE through a kernel hook instead of the module-level
        # function: apply HF's own apply_rotary_pos_emb to the captured q_norm/k_norm and cos/sin.
        cos, sin = rope_cs["cos"], rope_cs["sin"]
        for i in range(len(m.layers)):
            q = torch.from_numpy(taps[(i, "q_norm")])[None].transpose(1, 2).to(cos.device)
            k = torch.from_numpy(taps[(i, "k_norm")])[None].transpose(1, 2).to(cos.device)
            qe, ke = hf_rope(q, k, cos, sin)
            put(i, "q_rope", qe.transpose(1, 2))
            put(i, "k_rope", ke.transpose(1, 2))
    return taps


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def group_name(dtype, attn):
    """The fp32 eager golden keeps the name it always had; every other run says what it is."""
    return "hf" if (dtype, attn) == ("fp32", "eager") else f"hf_{dtype}_{attn}"


def write_h5(path, model_dir, config_text, tokens, runs, n_layers, device, dtype):
    """runs: {attn implementation: taps}, one backend group each."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["model"] = model_dir
            f.attrs["config_json"] = config_text
            f.attrs["tool_version"] = (f"hf_golden.py (transformers {transformers.__version__}, "
                                       f"torch {torch.__version__})")
            f.create_dataset("input_ids", data=np.asarray(tokens, dtype=np.int32))
            opts = dict(compression="gzip", compression_opts=6, shuffle=True)
            for attn, taps in runs.items():
                g = f.create_group(group_name(dtype, attn))
                g.attrs["precision"] = dtype
                g.attrs["device"] = device
                g.attrs["attn_implementation"] = attn
                for name in ("embed", "final_norm", "logits"):
                    g.create_dataset(name, data=taps[(-1, name)], **opts)
                for i in range(n_layers):
                    lg = g.create_group(f"layers/{i:03d}")
                    for name in LAYER_TAPS:
                        lg.create_dataset(name, data=taps[(i, name)], **opts)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="checkpoint directories (config.json + safetensors)")
    ap.add_argument("--tokens", help="ids '5,17,3' or @FILE (default: DIR/prompt.txt)")
    ap.add_argument("--out", help="output file (default: DIR/golden.h5; only with one model)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                    help="the model's dtype (from_pretrained(dtype=...)); default fp32")
    ap.add_argument("--attn", default="eager",
                    help="attention implementation(s), comma-separated: eager (default), sdpa")
    args = ap.parse_args()
    if args.out and len(args.models) != 1:
        ap.error("--out needs exactly one model")
    attns = [a for a in args.attn.split(",") if a]
    if not attns or any(a not in ("eager", "sdpa") for a in attns) or len(set(attns)) != len(attns):
        ap.error(f"--attn: expected a list of eager, sdpa; got '{args.attn}'")
    default_out = "golden.h5" if [group_name(args.dtype, a) for a in attns] == ["hf"] else f"hf_{args.dtype}.h5"

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    for d in args.models:
        tokens = read_tokens(args.tokens or "@" + os.path.join(d, "prompt.txt"))
        with open(os.path.join(d, "config.json")) as f:
            config_text = f.read()
        runs = {}
        for attn in attns:
            model = Qwen3ForCausalLM.from_pretrained(d, dtype=DTYPES[args.dtype], attn_implementation=attn)
            model.eval().to(args.device)
            assert all(p.dtype == DTYPES[args.dtype] for p in model.parameters())
            ids = torch.tensor([tokens], dtype=torch.long, device=args.device)
            taps = capture(model, ids)
            n_layers = model.config.num_hidden_layers
            missing = [(i, t) for i in range(n_layers) for t in LAYER_TAPS if (i, t) not in taps]
            if missing:
                sys.exit(f"hf_golden: taps not captured ({attn}): {missing[:5]}")
            runs[attn] = taps
            print(f"{d} {args.dtype} {attn}: T={len(tokens)} layers={n_layers} "
                  f"max|logits|={np.abs(taps[(-1, 'logits')]).max():.4g}")
        out = args.out or os.path.join(d, default_out)
        write_h5(out, d.rstrip("/"), config_text, tokens, runs, n_layers, args.device, args.dtype)
        print(f"{out}: groups {', '.join(group_name(args.dtype, a) for a in runs)}")


if __name__ == "__main__":
    main()
