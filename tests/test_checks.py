#!/usr/bin/python3
"""test_checks.py QWEN3_DIFF: what is checked before any work, each in one line on stderr and exit 2.

- compare: the two dumps' model (config_json), prompt (/input_ids) and schema come first: different
  prompts name the first differing token and both ids; a prompt that is the other's without its leading
  token is called a missing BOS; different models name the first differing config field (shapes or not);
  --allow-mismatch compares the prompts' common first tokens, or configs that differ in values only, and
  says so in one warning line.
- compare --reference F[:G] --test F[:G] names the pair (the first operand is otherwise the reference),
  and every printout words the pair as "reference ... test ...".
- the run's limits, before any weight is loaded: prompt + decode steps against max_position_embeddings,
  the memory estimate against --max-memory (default MemAvailable), token ids against vocab_size.
- faults: --inject without --backends goes to B of the default pair; a fault that cannot fire with the
  given options (a layer past the model, kv-cache-pos without decode steps, gqa-mod without grouped KV
  heads, online-softmax-rescale within one key tile, into the reference) is refused naming why; a fault
  injected but not found is said in one line with the largest ratio at or after its layer.
"""
import functools
import json
import os
import shutil
import sys
import tempfile

import h5py

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="qd_checks.")
run = functools.partial(qd_check.run, BIN)
GQA = os.path.join(FX, "gqa_tied")


def path(name):
    return os.path.join(tmp, name)


def refused(what, needle, *args):
    """exit 2, one line on stderr that contains needle."""
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    check(rc == 2 and len(lines) == 1 and lines[0].startswith("qwen3-diff: ") and needle in err,
          f"{what}: exit 2 naming '{needle}' (exit {rc}: {err.strip()[:300]})")


def dump(name, tokens, backend="emu", model=GQA):
    rc, _, err = run("--model", model, "--tokens", tokens, "--backends", backend, "--dump", path(name), "--quiet")
    check(rc == 0, f"dump {name} of {os.path.basename(model)} on {tokens} ({err.strip()})")
    return path(name)


# --- the dumps: one model, several prompts; another model; the same shapes with another rope_theta -----
ref = dump("ref.h5", "5,17,3,9", "ref")
same = dump("same.h5", "5,17,3,9")
other_prompt = dump("other_prompt.h5", "5,17,4,9")
with_bos = dump("with_bos.h5", "7,5,17,3,9")
longer = dump("longer.h5", "5,17,3,9,11")
other_model = dump("other_model.h5", "5,17,3,9", "ref", os.path.join(FX, "mha_untied"))
theta_dir = path("gqa_theta")
shutil.copytree(GQA, theta_dir)
cfg = json.load(open(os.path.join(GQA, "config.json")))
cfg["rope_theta"] = 10000.0
if "rope_parameters" in cfg:
    cfg["rope_parameters"]["rope_theta"] = 10000.0
json.dump(cfg, open(os.path.join(theta_dir, "config.json"), "w"))
other_theta = dump("other_theta.h5", "5,17,3,9", "emu", theta_dir)
tol = path("tol.json")
rc, _, err = run("--model", GQA, "--tokens", "5,17,3,9", "--backends", "ref,emu", "--calibrate", "1",
                 "--write-tolerances", tol, "--quiet")
check(rc == 0, f"a tolerance file for the tolerance verdict ({err.strip()})")

# --- compare: model, prompt and schema before anything else, in both verdicts -------------------------
for verdict in ([], ["--tolerances", tol]):
    v = " ".join(verdict) or "replay"
    refused(f"different prompts ({v})", "ran different prompts ('/input_ids'): token 2 is id 3 in the reference, "
            "4 in the test (--allow-mismatch compares the common first tokens)", "compare", ref, other_prompt, *verdict)
    refused(f"a prompt with one more leading token ({v})", "the reference's is the test's without its leading token "
            "(id 7), so every position is shifted by one: a missing BOS token?", "compare", ref, with_bos, *verdict)
    refused(f"a missing BOS on the test side ({v})", "the test's is the reference's without its leading token (id 7)",
            "compare", with_bos, ref, *verdict)
    refused(f"a longer prompt ({v})", "4 vs 5 tokens, the first 4 the same", "compare", ref, longer, *verdict)
    refused(f"different models ({v})", "hold different models: config_json 'hidden_size' is 64 vs 96 (the tensors' "
            "shapes differ: nothing can be compared)", "compare", ref, other_model, *verdict)
    refused(f"different rope_theta, the same shapes ({v})", "config_json 'rope_theta' is 1000000 vs 10000 "
            "(--allow-mismatch compares them anyway)", "compare", ref, other_theta, *verdict)
# first: before the group is looked for (the model mismatch, not "no group 'nosuch'")
refused("the model is checked before the groups", "config_json 'hidden_size'", "compare", ref + ":nosuch", other_model)
# the schema
bad_schema = path("schema2.h5")
shutil.copy(same, bad_schema)
with h5py.File(bad_schema, "r+") as f:
    f.attrs["schema"] = "qwen3-diff/2"
refused("another schema", "attribute 'schema': expected \"qwen3-diff/1\", found \"qwen3-diff/2\"", "compare", ref,
        bad_schema)
# the replay's model must be the dumps'
refused("a replay model that is not the dumps'", "the replay's model (--model or", "compare", ref, same, "--model",
        os.path.join(FX, "mha_untied"))

# --- --allow-mismatch: where something is comparable, compared and said ------------------------------
js = path("allowed.json")
rc, out, err = run("compare", ref, other_prompt, "--allow-mismatch", "--json", js)
lines = err.strip().splitlines()
check(rc == 0 and len(lines) == 1 and "only the first 2 tokens are compared" in err,
      f"--allow-mismatch on different prompts: the common 2 tokens compared, one warning (exit {rc}: {err.strip()})")
taps = json.load(open(js))["taps"] if rc in (0, 1) else []
check(len(taps) == 37, f"--allow-mismatch: every tap compared ({len(taps)})")
rc, out, err = run("compare", ref, longer, "--allow-mismatch", "--tolerances", tol)
check(rc == 0 and "only the first 4 tokens are compared" in err, f"--allow-mismatch on a longer prompt (exit {rc})")
rc, out, err = run("compare", ref, other_theta, "--allow-mismatch", "--tolerances", tol)
check(rc in (0, 1) and "different models allowed: config_json 'rope_theta' is 1000000 vs 10000" in err,
      f"--allow-mismatch on another rope_theta: compared, and said (exit {rc}: {err.strip()[:200]})")
refused("--allow-mismatch cannot compare shifted positions", "missing BOS token", "compare", ref, with_bos,
        "--allow-mismatch")
refused("--allow-mismatch cannot compare other shapes", "'hidden_size' is 64 vs 96", "compare", ref, other_model,
        "--allow-mismatch")

# --- the pair by name, and its wording -------------------------------------------------------------------
outs = {}
for label, args in [("positional", [ref, same]), ("named", ["--reference", ref, "--test", same]),
                    ("named, test first", ["--test", same, "--reference", ref]), ("mixed", ["--test", same, ref])]:
    js = path(f"pair_{len(outs)}.json")
    rc, out, err = run("compare", *args, "--tolerances", tol, "--json", js)
    be = json.load(open(js))["backends"] if rc in (0, 1) else {}
    check(rc == 0 and be.get("reference", {}).get("name") == "ref" and be.get("test", {}).get("name") == "emu",
          f"compare {label}: ref.h5 is the reference, same.h5 the test (exit {rc}, {be}) {err.strip()}")
    check(f"compare: reference {ref}, test {same}" in out and "reference ref (fp32) vs test emu (bf16)" in out
          and "every shared tap of ref vs emu" in out, f"compare {label}: worded reference first: {out[:300]}")
    outs[label] = out
check(len(set(outs.values())) == 1, "the same comparison, however the pair is named")
refused("a tolerance file of another precision pair, worded reference first", "field 'precision_pair': written for "
        "reference fp32, test bf16; this comparison is reference ref (fp32), test ref (fp32)", "--model", GQA,
        "--tokens", "5,17,3,9", "--backends", "ref,ref", "--tolerances", tol)
rc, out, err = run("compare", ref, same)
check(rc == 0 and "reference ref (fp32) vs test emu (bf16)" in out
      and "inherited: largest ref vs emu error" in out, f"the replay verdict's wording: reference first ({out[:400]})")
# a fault on the reference side is named as such
rc, out, err = run("--model", GQA, "--tokens", "@" + os.path.join(GQA, "prompt.txt"), "--backends", "emu,emu",
                   "--inject-a", "knorm-mul@1")
check(rc == 1 and "on emu (the reference side)" in out and "inherited: emu vs emu2" in out,
      f"a faulty reference side is named the reference side (exit {rc}: {out[:300]})")

# --- limits, before any work --------------------------------------------------------------------------
short_dir = path("gqa_short")  # the same model with max_position_embeddings 8
shutil.copytree(GQA, short_dir)
cfg = json.load(open(os.path.join(GQA, "config.json")))
cfg["max_position_embeddings"] = 8
json.dump(cfg, open(os.path.join(short_dir, "config.json"), "w"))
refused("decode steps past max_position_embeddings", "--decode 10: 3 prompt tokens + 10 decode steps = 13 positions, "
        "past the model's max_position_embeddings 8", "--model", short_dir, "--tokens", "1,2,3", "--backends", "ref,emu",
        "--decode", "10")
refused("--decode 50000 on a 40960-position model", "= 50002 positions, past the model's max_position_embeddings 40960",
        "--model", GQA, "--tokens", "1,2", "--decode", "50000")
rc, out, err = run("--model", short_dir, "--tokens", "1,2,3", "--backends", "ref,emu", "--decode", "5", "--quiet")
check(rc == 0, f"3 tokens + 5 decode steps fit 8 positions (exit {rc}: {err.strip()})")
refused("a prompt past max_position_embeddings", "max_position_embeddings", "--model", short_dir, "--tokens",
        "1,2,3,4,5,6,7,8,9")
refused("a token id past vocab_size", "token id 600 at position 2 is >= vocab_size 512", "--model", GQA, "--tokens",
        "1,2,600", "--backends", "ref,emu")
# memory: the estimate against a limit (gqa_tied needs ~0.55 MiB: 0.0001 GiB = 0.1 MiB is too little)
refused("a run larger than --max-memory", "this run needs about", "--model", GQA, "--tokens", "1,2", "--backends",
        "ref,emu", "--max-memory", "0.0001")
refused("a one-backend run larger than --max-memory", "more than the 0.0001 GiB of --max-memory", "--model", GQA,
        "--tokens", "1,2", "--max-memory", "0.0001")
rc, out, err = run("--model", GQA, "--tokens", "1,2", "--max-memory", "0", "--quiet")
check(rc == 0, f"--max-memory 0: no check (exit {rc}: {err.strip()})")
# the weights as the run holds them: a CPU run reads the matrices in place (docs/REFERENCE.md), so a 32B-shaped
# checkpoint's estimate is its largest matrix (lm_head, 151936 x 5120 BF16 = 1.45 GiB) plus the norms, not the
# 122 GiB of an fp32 copy; emu on an F32 checkpoint gets that copy. config.json only: the check comes first.
big = path("shape32b")
os.mkdir(big)
cfg32 = json.load(open(os.path.join(GQA, "config.json")))
cfg32.update(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
             num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
             max_position_embeddings=40960)
cfg32.pop("layer_types", None)  # one entry per layer: the 64 layers' would all be full attention
json.dump(cfg32, open(os.path.join(big, "config.json"), "w"))
for backends in ("ref", "ref,emu"):
    rc, out, err = run("--model", big, "--tokens", "1,2", "--backends", backends, "--max-memory", "4")
    est = [x for x in err.splitlines() if "memory: this run needs about" in x]
    weights = float(est[0].split("(weights ")[1].split(",")[0]) if est else -1
    check(rc == 2 and "more than the" not in err and 1.4 < weights < 1.6,
          f"32B shape, BF16, --backends {backends}: the estimate counts the mapped weights, lm_head's 1.45 GiB "
          f"(weights {weights} GiB; exit {rc}: {err.strip()[:300]})")
cfg32["dtype" if "dtype" in cfg32 else "torch_dtype"] = "float32"
json.dump(cfg32, open(os.path.join(big, "config.json"), "w"))
refused("32B shape, F32, ref,emu: emu's bf16-rounded fp32 copy of every weight counted", "(weights 12", "--model", big,
        "--tokens", "1,2", "--backends", "ref,emu", "--max-memory", "64")
refused("--max-memory not a number", "--max-memory: 'lots' is not a number of GiB", "--model", GQA, "--tokens", "1,2",
        "--max-memory", "lots")

# --- faults that cannot fire, and faults not found ------------------------------------------------------
KN = os.path.join(FX, "knorm_extreme")
refused("--inject past the bundled model's layers, no --backends", "--inject rope-interleaved@9: the fault cannot fire "
        "in this run: layer 9, but the model has 4 layers", "--inject", "rope-interleaved@9")
refused("kv-cache-pos without decode steps", "kv-cache-pos needs decode steps (--decode N)", "--inject", "kv-cache-pos@1")
refused("kv-cache-pos without decode steps, --backends given", "kv-cache-pos needs decode steps (--decode N)", "--model",
        GQA, "--tokens", "1,2,3", "--backends", "ref,emu", "--inject", "kv-cache-pos@1")
refused("gqa-mod without grouped KV heads", "gqa-mod needs grouped KV heads", "--model", os.path.join(FX, "mha_untied"),
        "--tokens", "1,2,3", "--backends", "ref,emu", "--inject", "gqa-mod@1")
refused("online-softmax-rescale within one key tile", "needs more than one key tile of 64 positions; this run has 3",
        "--model", GQA, "--tokens", "1,2,3", "--backends", "ref,emu", "--inject", "online-softmax-rescale@1")
refused("a fault into the reference side", "the fault goes to the side under test B, here ref, the reference",
        "--model", GQA, "--tokens", "1,2,3", "--backends", "emu,ref", "--inject", "knorm-mul@1")
refused("a fault into a one-backend reference run", "the fault goes to the backend run, here ref", "--model", GQA,
        "--tokens", "1,2,3", "--backends", "ref", "--inject", "knorm-mul@1")
# (no other option that implies two backends: --json, --decode, ... did already)
rc, out, err = run("--inject", "knorm-mul@1")
check(rc == 1 and "first divergence: layer 1, k_norm — on " in out and "(the test side)" in out,
      f"--inject without --backends: into B of the default pair, found at layer 1, k_norm (exit {rc}: {err.strip()})")
rc, out, err = run("--model", GQA, "--tokens", "@" + os.path.join(GQA, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "kv-cache-pos@1", "--decode", "2")
check(rc == 1 and "decode step 1, layer 1, attn" in out, f"kv-cache-pos with --decode 2: found (exit {rc}: {err.strip()})")
# injected, not found: said, the verdict unchanged (long_prompt's rope-freq-bf16 under the default tolerances)
deftol = path("default_tol.json")
json.dump({"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"]}, open(deftol, "w"))
LP = os.path.join(FX, "long_prompt")
rc, out, err = run("--model", LP, "--tokens", "@" + os.path.join(LP, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "rope-freq-bf16@0", "--tolerances", deftol)
# the hand-written file records no model: the one note saying so is not the line under test
lines = [ln for ln in err.strip().splitlines() if "has no field 'model'" not in ln]
check(rc == 0 and len(lines) == 1 and "--inject rope-freq-bf16@0 was injected but not found: the largest rel_l2 at or "
      "after its layer is" in err and "x its tolerance (layer" in err and "under 1" in err,
      f"rope-freq-bf16@0 on long_prompt, tolerance verdict: not found, and said (exit {rc}: {err.strip()})")
rc, out, err = run("--model", GQA, "--tokens", "@" + os.path.join(GQA, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "rope-freq-bf16@0")
check(rc == 0 and "was injected but not found: the largest local error at or after its layer is" in err
      and "under the threshold 4x" in err, f"rope-freq-bf16@0 on gqa_tied, replay verdict: said (exit {rc}: {err.strip()})")
rc, out, err = run("--model", GQA, "--tokens", "@" + os.path.join(GQA, "prompt.txt"), "--backends", "ref,emu",
                   "--inject", "rope-freq-bf16@0", "--quiet")
check(rc == 0 and err == "" and out == "", f"--quiet: nothing printed (exit {rc}: {err.strip()})")

shutil.rmtree(tmp)
finish()
