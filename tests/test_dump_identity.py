"""test_dump_identity.py: the dumps the CLI writes on the fixtures have exactly the content recorded in
tests/data/dump_digests.json: every dataset's dtype, shape and bytes, and every attribute, of every object.

Why: restructuring the code (tap identity, error route, where the writers live) must not change a single
value, name or attribute of a dump. HDF5's own layout (object addresses, chunk placement, timestamps) is
not content and is not compared; the root attribute `model` (the path given on the command line) is
compared by its last component only, so the test does not depend on where the tree is checked out.

Each run is deterministic: the reference and emu are bitwise identical for any thread count, so two
threads here give the bytes one thread gives (the first run below checks that too).

    python3 tests/test_dump_identity.py QWEN3_DIFF             # check
    python3 tests/test_dump_identity.py QWEN3_DIFF --update    # record (only for an intended change of
                                                               # the dumps' content; say why in the commit)
"""
import hashlib
import json
import os
import sys
import tempfile

import h5py
import numpy as np

from qd_check import FX, check, finish, run

DIGESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dump_digests.json")

# name -> arguments (after --model/--tokens). Together they cover: two backends with the isolated
# group and decode steps, the /diff metrics table, a fault's divergence, a single backend with the f64
# oracle, tap globs with a divergence window, and gzip compression.
RUNS = {
    "knorm_extreme_ref_emu_isolate_decode2": ("knorm_extreme",
        ["--backends", "ref,emu", "--isolate", "--decode", "2"]),
    "gqa_tied_rope_interleaved_at1": ("gqa_tied",
        ["--backends", "ref,emu", "--isolate", "--inject", "rope-interleaved@1"]),
    "mha_untied_ref_f64": ("mha_untied",
        ["--backends", "ref", "--ref-accum", "f64"]),
    "long_prompt_taps_window_gzip": ("long_prompt",
        ["--backends", "ref,emu", "--inject", "knorm-mul@1", "--dump-taps", "k_*,q_rope,attn,out,logits",
         "--dump-on-divergence", "1", "--dump-compress", "4"]),
}


def value_digest(v):
    if isinstance(v, bytes):
        return "b:" + v.decode("utf-8", "replace")
    if isinstance(v, str):
        return "s:" + v
    a = np.asarray(v)
    if a.dtype.kind == "O":
        return "o:" + repr([x.decode() if isinstance(x, bytes) else x for x in a.ravel().tolist()])
    return f"{a.dtype.str}{a.shape}:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def file_digest(path):
    """{object path: {"attrs": {...}, "dtype", "shape", "sha256"}} for every group and dataset."""
    out = {}
    with h5py.File(path, "r") as f:
        def attrs(obj, name):
            d = {}
            for k in sorted(obj.attrs):
                v = obj.attrs[k]
                if name == "/" and k == "model":
                    v = os.path.basename(str(v.decode() if isinstance(v, bytes) else v).rstrip("/"))
                d[k] = value_digest(v)
            return d

        out["/"] = {"attrs": attrs(f, "/")}

        def visit(name, obj):
            e = {"attrs": attrs(obj, name)}
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                e["dtype"] = str(obj.dtype)
                e["shape"] = list(obj.shape)
                e["sha256"] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
            out["/" + name] = e

        f.visititems(visit)
    return out


def dump(qd, name, threads, tmp):
    fixture, args = RUNS[name]
    d = os.path.join(FX, fixture)
    path = os.path.join(tmp, f"{name}.t{threads}.h5")
    rc, _, err = run(qd, "--model", d, "--tokens", "@" + os.path.join(d, "prompt.txt"), *args,
                     "--threads", str(threads), "--dump", path, "--quiet")
    return rc, err, path


def main():
    qd = sys.argv[1]
    update = "--update" in sys.argv[2:]
    recorded = {}
    if not update:
        with open(DIGESTS) as fh:
            recorded = json.load(fh)
        check(sorted(recorded) == sorted(RUNS), "the recorded runs are the runs of this test")
    new = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(RUNS):
            rc, err, path = dump(qd, name, 2, tmp)
            ok = rc in (0, 1) and os.path.exists(path)
            check(ok, f"{name}: dump written (exit {rc}{': ' + err.strip() if err.strip() else ''})")
            if not ok:
                continue
            new[name] = {"exit": rc, "objects": file_digest(path)}
            if i == 0:
                rc1, _, path1 = dump(qd, name, 1, tmp)
                check(rc1 == rc and file_digest(path1) == new[name]["objects"],
                      f"{name}: one thread writes the content two threads write")
            if update:
                continue
            want = recorded.get(name)
            if want is None:
                continue
            check(rc == want["exit"], f"{name}: exit status {rc} (recorded {want['exit']})")
            got = new[name]["objects"]
            missing = sorted(set(want["objects"]) - set(got))
            extra = sorted(set(got) - set(want["objects"]))
            changed = sorted(k for k in set(got) & set(want["objects"]) if got[k] != want["objects"][k])
            check(not missing and not extra and not changed,
                  f"{name}: {len(got)} objects identical in content"
                  + (f"; missing {missing[:5]}" if missing else "")
                  + (f"; unexpected {extra[:5]}" if extra else "")
                  + (f"; changed {changed[:5]}" if changed else ""))
    if update:
        os.makedirs(os.path.dirname(DIGESTS), exist_ok=True)
        tmp_path = DIGESTS + ".tmp"
        with open(tmp_path, "w") as fh:
            json.dump(new, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp_path, DIGESTS)
        print(f"recorded {len(new)} runs in {DIGESTS}")
    finish()


if __name__ == "__main__":
    main()
