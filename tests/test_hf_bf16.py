"""test_hf_bf16.py: transformers' own bf16 model (fixtures/*/hf_bf16.h5, eager and sdpa attention, made on a
GPU by tools/hf_golden.py --dtype bf16) is a correct engine: compared with the fp32 goldens under the default
verdict (each op replayed on each side's own inputs, judged against its noise floor) it must pass on every
fixture. Absolute tolerances flag knorm_extreme's (layer 1 attn): the case the replay verdict exists for.

And a real fault in such an engine is found at its own op, not at the noisy one: the bf16 dump edited so that
layer 2 of knorm_extreme loses its MLP residual (out = down_proj) is reported at layer 2 out.

    python3 tests/test_hf_bf16.py QWEN3_DIFF
"""
import json
import os
import shutil
import sys
import tempfile

import h5py

from qd_check import FX, check, finish, run

FIXTURES = ["gqa_tied", "mha_untied", "knorm_extreme", "long_prompt"]
ATTNS = ["eager", "sdpa"]


def main():
    qd = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        for f in FIXTURES:
            d = os.path.join(FX, f)
            for attn in ATTNS:
                js = os.path.join(tmp, f"{f}_{attn}.json")
                rc, out, err = run(qd, "compare", os.path.join(d, "golden.h5"),
                                   os.path.join(d, "hf_bf16.h5") + f":hf_bf16_{attn}", "--model", d, "--json", js)
                worst = None
                if rc == 0 and os.path.exists(js):
                    rows = json.load(open(js))["taps"]
                    ratios = [r.get("ratio") for r in rows if isinstance(r.get("ratio"), (int, float))]
                    worst = max(ratios) if ratios else None
                check(rc == 0 and worst is not None and worst < 4,
                      f"{f}, transformers bf16 {attn} vs fp32: no divergence under the default verdict "
                      f"(exit {rc}, worst ratio {worst}){': ' + err.strip() if rc else ''}")

        # knorm_extreme under absolute tolerances: flagged, which is why they are not the default
        d = os.path.join(FX, "knorm_extreme")
        tol = os.path.join(tmp, "defaults.json")
        rc, out, err = run(qd, "compare", os.path.join(d, "golden.h5"), os.path.join(d, "hf_bf16.h5") + ":hf_bf16_sdpa",
                           "--model", d, "--tolerances", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                       "data", "bf16_defaults.json"))
        check(rc == 1 and "first divergence" in out,
              f"knorm_extreme, transformers bf16 sdpa under the bf16 default tolerances: flagged (exit {rc})")

        # the missing MLP residual at layer 2, planted in transformers' bf16 dump
        bad = os.path.join(tmp, "hf_bf16_no_residual.h5")
        shutil.copy(os.path.join(d, "hf_bf16.h5"), bad)
        with h5py.File(bad, "r+") as h:
            g = h["hf_bf16_sdpa/layers/002"]
            g["out"][...] = g["down_proj"][()]
        js = os.path.join(tmp, "bad.json")
        rc, out, err = run(qd, "compare", os.path.join(d, "golden.h5"), bad + ":hf_bf16_sdpa", "--model", d,
                           "--json", js)
        fd = json.load(open(js))["first_divergence"] if os.path.exists(js) else None
        check(rc == 1 and fd is not None and fd.get("layer") == 2 and fd.get("tap") == "out",
              f"a missing MLP residual at layer 2 of transformers' bf16 model is found at layer 2 out "
              f"(exit {rc}, found {fd and (fd.get('layer'), fd.get('tap'))})")
    finish()


if __name__ == "__main__":
    main()
