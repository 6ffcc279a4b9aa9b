#!/usr/bin/env python3
"""bench_peer_hf.py: Hugging Face transformers timed the way qwen3-bench times the fused path.

The peer that `qwen3-bench --peer hf` runs after its own timings, on the same checkpoint directory, the
same token ids (qwen3-bench's generator and seed) and the same contexts and prompt lengths:

  decode    ms/token at each --ctx: bf16, batch 1, sdpa attention, a StaticCache (max_cache_len = the
            largest context + --steps) and the one-token step compiled with
            torch.compile(model.forward, mode="reduce-overhead", fullgraph=True), transformers' fast
            decode recipe (CUDA graphs of the compiled step). Each run fills the cache to ctx - warmup
            positions with an (uncompiled) prefill, runs --warmup steps, then times --steps steps at
            positions ctx .. ctx + steps - 1, as qwen3-bench does; the median of --runs.
  prefill   tokens/s at each --prefill-T: one uncompiled forward of T tokens (sdpa, the default
            DynamicCache filled, logits of the last position only), --warmup untimed calls first, the
            median of --runs.

The compiled step is compiled and its CUDA graph recorded before anything is timed. Times are CUDA
events around the calls (time.perf_counter on the CPU). One JSON object on stdout:

    {"engine": "transformers", "torch": ..., "transformers": ..., "device": ..., "dtype": "bfloat16",
     "attn_implementation": "sdpa", "compile_mode": "reduce-overhead", "fullgraph": true,
     "decode_cache": "StaticCache", "max_cache_len": N, "prefill_compiled": false,
     "prefill_cache": "DynamicCache", "runs": R, "warmup": W, "steps": S, "timer": "cuda events",
     "compile_s": seconds, "decode": [{"ctx": 512, "ms_per_token": x}, ...],
     "prefill": [{"T": 128, "ms": x, "tok_per_s": y}, ...]}

--check N adds "check": the compiled StaticCache decode's logits for N steps after a prompt of the first
--ctx tokens, beside the logits of one uncompiled forward over all of those tokens without a cache
(tests/test_bench_peer.py compares them). --device cpu and --compile default|none are for testing
(on a CPU "reduce-overhead" has no CUDA graphs to record).

    python3 tools/bench_peer_hf.py --model DIR [--ctx 512,4096] [--prefill-T 128,512,2048] [--steps 32]
                                   [--runs 7] [--warmup 2] [--device cuda|cpu]
                                   [--compile reduce-overhead|default|none] [--check N]

Exit codes: 0 ok, 2 bad usage or input (one line on stderr), 3 runtime failure (one line on stderr).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

PROG = "bench_peer_hf.py"


class BadInput(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line of our own instead of argparse's usage block
        raise BadInput(message)


def int_list(opt):
    def parse(s):
        if s == "none":
            return []
        out = []
        for part in s.split(","):
            if not part.isdigit() or not 1 <= int(part) <= 100000:
                raise BadInput(f"{opt}: '{s}' is not 'none' or a comma-separated list of integers in [1, 100000]")
            if int(part) in out:
                raise BadInput(f"{opt}: '{s}' names {int(part)} twice")
            out.append(int(part))
        return out

    return parse


def positive(opt, lo=1):
    def parse(s):
        if not s.isdigit() or not lo <= int(s) <= 100000:
            raise BadInput(f"{opt}: '{s}' is not an integer in [{lo}, 100000]")
        return int(s)

    return parse


def parse_args(argv):
    ap = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--ctx", type=int_list("--ctx"), default=[512, 4096], help="decode contexts, or none")
    ap.add_argument("--prefill-T", type=int_list("--prefill-T"), default=[128, 512, 2048],
                    help="prefill lengths, or none")
    ap.add_argument("--steps", type=positive("--steps"), default=32, help="decode steps per timed run")
    ap.add_argument("--runs", type=positive("--runs"), default=7, help="timed runs, the median is reported")
    ap.add_argument("--warmup", type=positive("--warmup"), default=2, help="untimed runs / steps first")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: for testing only")
    ap.add_argument("--compile", choices=["reduce-overhead", "default", "none"], default="reduce-overhead",
                    help="torch.compile mode of the decode step (none: eager)")
    ap.add_argument("--check", type=positive("--check"), default=0, metavar="N",
                    help="also report N compiled decode steps' logits beside an uncompiled full forward")
    a = ap.parse_args(argv)
    if not a.ctx and not a.prefill_T:
        raise BadInput("--ctx none and --prefill-T none: nothing to time")
    if a.ctx and a.warmup >= min(a.ctx):
        raise BadInput(f"--warmup {a.warmup}: must be below the smallest decode context {min(a.ctx)}")
    if a.check and not a.ctx:
        raise BadInput("--check: needs a decode context (--ctx) for its prompt")
    if not os.path.isdir(a.model):
        raise BadInput(f"--model {a.model}: not a directory")
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        raise BadInput(f"--model {a.model}: no config.json")
    return a


def token_ids(n, vocab):
    """qwen3-bench's token ids: its 64-bit LCG from seed 12345, (state >> 33) % vocab."""
    s, out = 12345, []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append((s >> 33) % vocab)
    return out


def run(a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, StaticCache

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch")
    dev = torch.device(a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(dev).eval()
    cfg = model.config
    if getattr(cfg, "_attn_implementation", "sdpa") != "sdpa":
        raise RuntimeError(f"transformers chose attention '{cfg._attn_implementation}', not sdpa")

    max_ctx = max(a.ctx, default=0)
    check_len = (min(a.ctx) + a.check) if a.check else 0
    max_cache_len = max(max_ctx + a.steps, check_len, 1)
    ntok = max(max_cache_len, max(a.prefill_T, default=0))
    tok = torch.tensor([token_ids(ntok, cfg.vocab_size)], dtype=torch.long, device=dev)
    cuda = dev.type == "cuda"

    if cuda:
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def tic():
            ev0.record()

        def toc_ms():
            ev1.record()
            ev1.synchronize()
            return ev0.elapsed_time(ev1)
    else:
        t0 = [0.0]

        def tic():
            t0[0] = time.perf_counter()

        def toc_ms():
            return (time.perf_counter() - t0[0]) * 1e3

    out = {
        "engine": "transformers",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "model": a.model,
        "dtype": "bfloat16",
        "batch": 1,
        "attn_implementation": "sdpa",
        "compile_mode": a.compile,
        "fullgraph": a.compile != "none",
        "decode_cache": "StaticCache",
        "max_cache_len": max_cache_len,
        "prefill_compiled": False,
        "prefill_cache": "DynamicCache",
        "prefill_logits": "last position",
        "runs": a.runs,
        "warmup": a.warmup,
        "steps": a.steps,
        "timer": "cuda events" if cuda else "perf_counter",
        "tokens": "qwen3-bench's: 64-bit LCG, seed 12345",
    }

    with torch.no_grad():
        # prefill: eager, as transformers runs a prompt, T tokens in, the next token's logits out
        prefill = []
        for T in a.prefill_T:
            ids = tok[:, :T]
            for _ in range(a.warmup):
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
            t = []
            for _ in range(a.runs):
                tic()
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
                t.append(toc_ms())
            ms = statistics.median(t)
            prefill.append({"T": T, "ms": ms, "tok_per_s": T / (ms * 1e-3)})
        out["prefill"] = prefill

        # decode: one StaticCache for every context (reset in place: the compiled graph keeps its addresses)
        decode = []
        if a.ctx:
            cache = StaticCache(config=cfg, max_cache_len=max_cache_len)
            step_fn = model.forward
            if a.compile != "none":
                step_fn = torch.compile(model.forward, mode=a.compile, fullgraph=True)

            def fill(n):  # the cache holds positions 0 .. n - 1 (eager prefill, as generate's)
                cache.reset()
                model(input_ids=tok[:, :n], past_key_values=cache, use_cache=True, logits_to_keep=1)

            def step(pos):  # one token at position pos; the cache's own length gives the position
                return step_fn(input_ids=tok[:, pos:pos + 1], past_key_values=cache, use_cache=True).logits

            # compile, CUDA graph warm-up and recording, before anything is timed
            t_compile = time.perf_counter()
            fill(1)
            for p in range(1, 4):
                step(p)
            if cuda:
                torch.cuda.synchronize()
            out["compile_s"] = time.perf_counter() - t_compile

            for ctx in a.ctx:
                t = []
                for _ in range(a.runs):
                    fill(ctx - a.warmup)
                    for s in range(a.warmup):
                        step(ctx - a.warmup + s)
                    tic()
                    for s in range(a.steps):
                        step(ctx + s)
                    t.append(toc_ms() / a.steps)
                decode.append({"ctx": ctx, "ms_per_token": statistics.median(t)})

            if a.check:
                P = min(a.ctx)
                fill(P)
                got = []
                for i in range(a.check):
                    got.append(step(P + i)[0, -1].float().cpu().tolist())  # copied before the next replay
                full = model(input_ids=tok[:, :P + a.check], use_cache=False).logits[0, P:P + a.check]
                out["check"] = {"prompt": P, "steps": a.check, "tokens": tok[0, :P + a.check].tolist(),
                                "decode_logits": got, "full_logits": full.float().cpu().tolist()}
        out["decode"] = decode
    for row in out["decode"] + out["prefill"]:
        for k, v in row.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise RuntimeError(f"{k} = {v} is not a positive finite figure")
    return out


def main(argv):
    try:
        a = parse_args(argv)
    except BadInput as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    stdout = sys.stdout
    sys.stdout = sys.stderr  # whatever the libraries print stays off the JSON
    try:
        out = run(a)
    except ImportError as e:
        print(f"{PROG}: {e.name or 'an import'} cannot be imported: {str(e).splitlines()[0]}", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 (any failure is one line and exit 3)
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{PROG}: runtime failure: {type(e).__name__}: {msg}", file=sys.stderr)
        return 3
    finally:
        sys.stdout = stdout
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
