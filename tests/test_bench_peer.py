"""test_bench_peer.py: tools/bench_peer_hf.py (the peer of `qwen3-bench --peer hf`) on the CPU, on a fixture.

  1. Its command line: every bad argument exits 2 with one line on stderr naming it, before torch is
     imported; a checkpoint that cannot be loaded exits 3 with one line.
  2. A run (eager step, two contexts, two prefill lengths): one JSON object on stdout, nothing else; the
     versions and the recipe named; every figure present, positive and finite, for exactly the contexts and
     lengths asked; the token ids are qwen3-bench's.
  3. The step it times computes transformers' logits: with --compile reduce-overhead (the GPU run's mode,
     fullgraph=True; on a CPU there are no CUDA graphs to record, so this is inductor's compiled step) and
     --check, the compiled StaticCache decode's logits of 4 steps after a 16-token prompt match an
     uncompiled full forward over the same tokens without a cache, within the tolerance below; against the
     full forward's logits one position off they do not (the check can fail).

The CPU times themselves mean nothing (the GPU run's do); the compile takes tens of seconds on a small
machine, the reason for the one compiled run. Runs under /usr/bin/python3 and starts the script in a Python
that has torch and transformers: $QD_PYTHON, else $QD_BUILD/.venv/bin/python3 (`./run venv` makes it from
tests/requirements.txt). Without one, the test is skipped (exit 77) with a message.

    python3 tests/test_bench_peer.py
"""
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "tools", "bench_peer_hf.py")
sys.path.insert(0, HERE)
from qd_check import FX, check, finish, parse_json, require_python  # noqa: E402

# qwen3-bench's first token ids for a vocabulary of 512 (its LCG in tools/qwen3-bench.c main, seed 12345,
# (state >> 33) % vocab), computed by the C code
QWEN3_BENCH_IDS_V512 = [504, 311, 130, 389, 340, 470, 283, 166]


def run(py, *args):
    p = subprocess.run([py, SCRIPT, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def one_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("bench_peer_hf.py: ")


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def bf16_ulp(x):
    """The spacing of bf16 values (8 significant bits) at magnitude x."""
    return 2.0 ** (math.floor(math.log2(x)) - 7)


def main():
    py = require_python("torch, transformers")
    fx = os.path.join(FX, "gqa_tied")
    cpu = ["--device", "cpu"]

    # 1. the command line
    for needle, args in [
        ("--model", []),
        ("--ctx", ["--model", fx, "--ctx", "0"]),
        ("--ctx", ["--model", fx, "--ctx", "16,,32"]),
        ("--prefill-T", ["--model", fx, "--prefill-T", "8,8"]),
        ("--prefill-T", ["--model", fx, "--prefill-T", "abc"]),
        ("--steps", ["--model", fx, "--steps", "0"]),
        ("--runs", ["--model", fx, "--runs", "x"]),
        ("--warmup 16", ["--model", fx, "--ctx", "16", "--warmup", "16"]),
        ("--device", ["--model", fx, "--device", "tpu"]),
        ("--compile", ["--model", fx, "--compile", "max-autotune"]),
        ("nothing to time", ["--model", fx, "--ctx", "none", "--prefill-T", "none"]),
        ("--check", ["--model", fx, "--ctx", "none", "--check", "2"]),
        ("--frobnicate", ["--model", fx, "--frobnicate"]),
        ("not a directory", ["--model", os.path.join(fx, "no-such-dir")]),
        ("no config.json", ["--model", HERE]),
    ]:
        rc, out, err = run(py, *args)
        check(rc == 2 and one_line(err) and needle in err and out == "",
              f"{' '.join(args) or '(no arguments)'} -> exit 2, one line naming {needle!r} (exit {rc}: {err.strip()})")
    with tempfile.TemporaryDirectory(prefix="qd-peer-") as tmp:
        shutil.copy(os.path.join(fx, "config.json"), tmp)  # a config without weights
        rc, out, err = run(py, "--model", tmp, *cpu, "--ctx", "16", "--prefill-T", "8", "--runs", "1")
        check(rc == 3 and one_line(err) and "runtime failure" in err and out == "",
              f"a checkpoint without weights -> exit 3, one line (exit {rc}: {err.strip()[-300:]})")

    # 2. a run: every figure asked for, and nothing else on stdout
    rc, out, err = run(py, "--model", fx, *cpu, "--ctx", "16,24", "--prefill-T", "8,12", "--steps", "2",
                       "--runs", "1", "--warmup", "1", "--compile", "none")
    check(rc == 0, f"an eager run exits 0 (exit {rc}: {err.strip()[-500:]})")
    d = parse_json(out)
    for key in ["torch", "transformers"]:
        check(isinstance(d.get(key), str) and d[key][:1].isdigit(), f"the {key} version is named: {d.get(key)!r}")
    for key, want in [("compile_mode", "none"), ("fullgraph", False), ("dtype", "bfloat16"), ("batch", 1),
                      ("attn_implementation", "sdpa"), ("decode_cache", "StaticCache"), ("prefill_compiled", False),
                      ("max_cache_len", 24 + 2), ("steps", 2), ("runs", 1), ("warmup", 1)]:
        check(d.get(key) == want, f"{key} = {want!r} (got {d.get(key)!r})")
    dec, pre = d.get("decode", []), d.get("prefill", [])
    check([r.get("ctx") for r in dec] == [16, 24], f"decode rows for ctx 16 and 24: {dec}")
    check(all(positive(r.get("ms_per_token")) for r in dec), f"every ms_per_token positive and finite: {dec}")
    check([r.get("T") for r in pre] == [8, 12], f"prefill rows for T 8 and 12: {pre}")
    check(all(positive(r.get("ms")) and positive(r.get("tok_per_s")) for r in pre),
          f"every prefill ms and tok_per_s positive and finite: {pre}")
    check(all(positive(r.get("ms")) and abs(r["tok_per_s"] - r["T"] / (r["ms"] * 1e-3)) <= 1e-6 * r["tok_per_s"]
              for r in pre), "tok_per_s = T / ms")

    # 3. the compiled step computes transformers' logits
    P, N = 16, 4
    rc, out, err = run(py, "--model", fx, *cpu, "--ctx", str(P), "--prefill-T", "none", "--steps", "2",
                       "--runs", "1", "--warmup", "1", "--compile", "reduce-overhead", "--check", str(N))
    check(rc == 0, f"a compiled run with --check exits 0 (exit {rc}: {err.strip()[-500:]})")
    d = parse_json(out)
    check(d.get("compile_mode") == "reduce-overhead" and d.get("fullgraph") is True,
          f"compiled with mode reduce-overhead, fullgraph=True: {d.get('compile_mode')!r}, {d.get('fullgraph')!r}")
    check(positive(d.get("compile_s")), f"compile time reported: {d.get('compile_s')!r}")
    check(d.get("prefill") == [] and [r.get("ctx") for r in d.get("decode", [])] == [P],
          "--prefill-T none: no prefill rows, one decode row")
    c = d.get("check", {})
    got, ref, toks = c.get("decode_logits", []), c.get("full_logits", []), c.get("tokens", [])
    check(toks[:8] == QWEN3_BENCH_IDS_V512, f"the token ids are qwen3-bench's: {toks[:8]}")
    check(len(got) == N and len(ref) == N and len(toks) == P + N and all(len(g) == 512 for g in got + ref),
          f"{N} steps of 512 logits each side, {P + N} tokens")
    if len(got) == N and len(ref) == N:
        # Tolerance: both sides are transformers' bf16 model on the same tokens, but not the same kernels:
        # one-token matmuls against a T-token GEMM (another accumulation order), inductor's fused RMSNorm,
        # RoPE and SwiGLU keeping fp32 between ops where eager rounds each result to bf16, and attention
        # over a zero-padded, masked static cache against causal attention. Each of those moves a bf16
        # result by a rounding (2^-8 relative) now and then, through 2 layers; the logits are themselves
        # rounded to bf16. 4 bf16 ulps at the step's largest logit (1.0 at |logit| 32..64, ~2 %) covers
        # that (measured: one ulp); a step at the wrong position or with a stale cache is off by O(1) of
        # the logits' scale (the shifted comparison below: ~100 %).
        worst_ratio, shifted_min = 0.0, math.inf
        for i in range(N):
            scale = max(abs(x) for x in ref[i])
            tol = 4 * bf16_ulp(scale)
            err_i = max(abs(a - b) for a, b in zip(got[i], ref[i]))
            worst_ratio = max(worst_ratio, err_i / tol)
            check(err_i <= tol, f"step {i}: max |compiled decode - full forward| {err_i:.4g} <= {tol:.4g} "
                                f"(max |logit| {scale:.4g})")
            top = sorted(range(512), key=lambda k: -ref[i][k])
            if ref[i][top[0]] - ref[i][top[1]] > 2 * tol:  # a clear winner: both sides pick it
                check(max(range(512), key=lambda k: got[i][k]) == top[0], f"step {i}: the same next token")
            if i:
                shifted = max(abs(a - b) for a, b in zip(got[i], ref[i - 1]))
                shifted_min = min(shifted_min, shifted / (4 * bf16_ulp(max(abs(x) for x in ref[i - 1]))))
        check(shifted_min > 4, f"one position off, the same comparison fails by a wide margin "
                               f"({shifted_min:.3g}x the tolerance; the worst true step is {worst_ratio:.3g}x)")
    finish()


if __name__ == "__main__":
    main()
