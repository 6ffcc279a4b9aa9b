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

Taps are recorded by tools/qd_capture.py with its default mapping (HF's module names): forward hooks and
pre-hooks on HF's own modules; q_rope/k_rope are the outputs of HF's own apply_rotary_pos_emb, recorded by
wrapping it (its values are the ones the attention then uses). A tap the capture cannot record is an error.
Runs on the CPU by default (float32, no TF32 anywhere); --device cuda runs there with TF32 disabled.
"""
import argparse
import os
import sys

import numpy as np
import torch
import transformers
from transformers import Qwen3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qd_capture  # noqa: E402  (beside this file)


def read_tokens(spec):
    if spec.startswith("@"):
        with open(spec[1:]) as f:
            spec = f.read()
    return [int(t) for t in spec.replace(",", " ").split()]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def group_name(dtype, attn):
    """The fp32 eager golden keeps the name it always had; every other run says what it is."""
    return "hf" if (dtype, attn) == ("fp32", "eager") else f"hf_{dtype}_{attn}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="checkpoint directories (config.json + safetensors)")
    ap.add_argument("--tokens", help="ids '5,17,3' or @FILE (default: DIR/prompt.txt)")
    ap.add_argument("--out", help="output file (default: DIR/golden.h5; only with one model)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                    help="the model's dtype (from_pretrained(dtype=...)); default fp32")
    ap.add_argument("--attn", default="eager",
                    help="attention implementation: eager (default) or sdpa; eager,sdpa writes one group each")
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

    jobs = []
    for d in args.models:  # bad input is found before anything runs: one line, exit 2
        if not os.path.isfile(os.path.join(d, "config.json")):
            fail(2, f"{d}: not a checkpoint directory (no config.json)")
        spec = args.tokens or "@" + os.path.join(d, "prompt.txt")
        try:
            tokens = read_tokens(spec)
        except (OSError, ValueError) as e:
            fail(2, f"--tokens {spec}: {e}")
        if not tokens:
            fail(2, f"--tokens {spec}: no token ids")
        vocab = qd_capture.read_config(d)[1]["V"]
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            fail(2, f"--tokens {spec}: id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
        jobs.append((d, tokens))

    for d, tokens in jobs:
        groups = {}
        for attn in attns:
            model = Qwen3ForCausalLM.from_pretrained(d, dtype=DTYPES[args.dtype], attn_implementation=attn)
            model.eval().to(args.device)
            assert all(p.dtype == DTYPES[args.dtype] for p in model.parameters())
            ids = torch.tensor([tokens], dtype=torch.long, device=args.device)
            with torch.no_grad(), qd_capture.Capture(model, d) as cap:
                model(input_ids=ids, use_cache=False)
            taps = cap.taps()
            if cap.absent:
                sys.exit(f"hf_golden: taps not captured ({attn}): "
                         + "; ".join(f"{k}: {why}" for k, why in list(cap.absent.items())[:5]))
            groups[group_name(args.dtype, attn)] = (cap, {"precision": args.dtype, "device": args.device,
                                                          "attn_implementation": attn})
            print(f"{d} {args.dtype} {attn}: T={len(tokens)} layers={model.config.num_hidden_layers} "
                  f"max|logits|={np.abs(taps[(-1, 'logits')]).max():.4g}")
        out = args.out or os.path.join(d, default_out)
        qd_capture.write_dump(out, groups, model=d.rstrip("/"), compression=6,
                              tool_version=f"hf_golden.py (transformers {transformers.__version__}, "
                                           f"torch {torch.__version__})")
        print(f"{out}: groups {', '.join(groups)}")


def fail(code, msg):
    print(f"hf_golden: {msg}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    try:
        main()
    except qd_capture.CaptureError as e:
        fail(2, str(e))
    except OSError as e:  # I/O: the checkpoint's files, the output file
        fail(3, f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
