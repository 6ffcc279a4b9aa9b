#!/usr/bin/python3
"""test_hostile.py QWEN3_DIFF: qwen3-diff against hostile input (suite 'hostile'; in `./run test` also under
ASan+UBSan, where any memory error fails the run instead of passing by luck).

Dumps come from other engines and other people, so `compare` must refuse a crafted file with one line and
exit 2, never crash, allocate what a header declares, or pass with nothing compared. Each crafted file is
made here with h5py from a real dump (knorm_extreme, tokens 5,17,3, ref and emu):
  D1  the `schema` attribute, or a group's `precision`, stored as an array of 64 strings (variable or fixed
      length): was a stack/heap buffer overflow in H5Aread;
  D2  a tap declared (2^31, 2^31) with chunks (1, 256) and no data: wrapped the element count (heap overflow
      in H5Dread); declared 10^6 x 10^6: allocated 4 TB; a config_json claiming a huge vocabulary with the
      logits declared to match but never written: allocation must follow what the file holds;
  D3  a backend group with a precision and no taps: was "0 taps compared", pass, exit 0;
plus wrong ranks, types and values, external links and raw data, and non-regular input files (FIFO,
device, directory) for every input, size caps, outputs naming the same file, tolerance files that do not fit
an offline comparison, and SIGINT/SIGTERM during a --dump (no temp file survives, the final name never
appears, the exit status says which signal). Then: NaN and Inf in either side of another engine's dump
(float32 or float64 storage) are reported as a non-finite divergence at their own tap, under both verdicts;
a tap one dimension short and input_ids shorter than the taps are refused; float16 taps are read. Signals at
growing delays into a run with --dump, --json and --junit, into --calibrate/--write-tolerances and into
compare with --json, --junit and --repro: after each, no temp file and every file left parses. Two runs
with --dump and --json to the same paths at once: each file is one run's whole (its bytes, its JSON),
never a mix.
"""
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="qd_hostile.")
KN = os.path.join(FX, "knorm_extreme")
run = functools.partial(qd_check.run, BIN)


def run_t(*args, timeout=60):
    """run() with a time limit: a FIFO that blocks the reader must not hang the suite."""
    try:
        p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return "timeout", "", ""


def refused(what, needle, *args):
    """Exit 2 and exactly one line on stderr, "qwen3-diff: ...", containing needle."""
    rc, _, err = run_t(*args)
    lines = err.splitlines()
    ok = rc == 2 and len(lines) == 1 and lines[0].startswith("qwen3-diff: ") and needle in lines[0]
    check(ok, f"{what}: exit 2 and one line naming it (exit {rc}: {err.strip()[-400:]})")


base = os.path.join(tmp, "base.h5")
rc, _, err = run("--model", KN, "--tokens", "5,17,3", "--backends", "ref,emu", "--dump", base, "--quiet")
check(rc == 0 and os.path.exists(base), f"base dump written ({err.strip()})")


def crafted(name, edit):
    path = os.path.join(tmp, name)
    shutil.copy(base, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def compare(path, *extra):
    return ("compare", path + ":ref", path + ":emu", *extra)


# --- D1: string arrays where one string belongs ----------------------------------------------------
def str_array(obj, key, value, fixed):
    del obj.attrs[key]
    if fixed:
        obj.attrs.create(key, np.array([value.encode()] * 64, dtype=f"S{len(value) + 1}"))
    else:
        obj.attrs.create(key, [value] * 64, dtype=h5py.string_dtype())


for fixed in (False, True):
    kind = "fixed-length" if fixed else "variable-length"
    p = crafted(f"d1_schema_{int(fixed)}.h5", lambda f: str_array(f, "schema", "qwen3-diff/1", fixed))
    refused(f"D1 schema as 64 {kind} strings", "attribute 'schema' on '/' holds 64 strings", *compare(p))
    p = crafted(f"d1_precision_{int(fixed)}.h5", lambda f: str_array(f["emu"], "precision", "bf16", fixed))
    refused(f"D1 precision as 64 {kind} strings", "attribute 'precision' on '/emu' holds 64 strings", *compare(p))
p = crafted("d1_schema_null.h5", lambda f: (f.attrs.__delitem__("schema"),
                                           f.attrs.create("schema", h5py.Empty(h5py.string_dtype()))))
refused("schema with an empty (null) dataspace", "holds 0 strings", *compare(p))
p = crafted("schema_int.h5", lambda f: (f.attrs.__delitem__("schema"), f.attrs.create("schema", 1)))
refused("schema as an integer", "is not a string", *compare(p))
p = crafted("schema_other.h5", lambda f: f.attrs.__setitem__("schema", "qwen3-diff/2"))
refused("schema of another version", "expected \"qwen3-diff/1\"", *compare(p))
p = crafted("schema_long.h5", lambda f: (f.attrs.__delitem__("schema"),
                                        f.attrs.create("schema", np.bytes_(b"q" * 60000))))
refused("a 60 kB fixed-length schema", "more than 64", *compare(p))
p = crafted("precision_other.h5", lambda f: f["emu"].attrs.__setitem__("precision", "int8"))
refused("a precision outside the schema", "expected fp64, fp32, bf16 or fp16", *compare(p))

# --- D2: declared sizes against the model, and against what the file holds -----------------------------
def declare(tap, shape, chunks):
    def edit(f):
        del f["emu/" + tap]
        f["emu"].create_dataset(tap, shape=shape, chunks=chunks, dtype="f4")
    return edit


p = crafted("d2_wrap.h5", declare("logits", (2**31, 2**31), (1, 256)))
refused("D2 logits declared (2^31, 2^31), no data", "shape (2147483648, 2147483648), expected (3, 1024)", *compare(p))
p = crafted("d2_huge.h5", declare("logits", (10**6, 10**6), (1, 256)))
refused("D2 logits declared 10^6 x 10^6, no data", "shape (1000000, 1000000), expected (3, 1024)", *compare(p))
p = crafted("d2_unwritten.h5", declare("logits", (3, 1024), (1, 256)))
refused("D2 logits of the right shape, never written", "declared but not written", *compare(p))


def huge_model(f):
    cfg = json.loads(f.attrs["config_json"])
    cfg["vocab_size"] = 2**30  # logits (3, 2^30): 12 GB if the declaration were believed
    f.attrs["config_json"] = json.dumps(cfg)
    for g in ("ref", "emu"):
        del f[g + "/logits"]
        f[g].create_dataset("logits", shape=(3, 2**30), chunks=(1, 2**18), dtype="f4")


p = crafted("d2_huge_config.h5", huge_model)
# the tolerance verdict: the replay's checkpoint (vocab 1024) would be refused first as not the dump's model
d2_tol = os.path.join(tmp, "d2_tol.json")
with open(d2_tol, "w") as f:
    f.write('{"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"]}')
refused("D2 config_json vocab 2^30 with logits declared to match, never written", "declared but not written",
        *compare(p, "--tolerances", d2_tol))
refused("a dump whose config_json is not the replay's model", "config_json 'vocab_size' is 1073741824 in", *compare(p))
p = crafted("rank.h5", lambda f: (f["emu/layers/000"].__delitem__("k_norm"),
                                  f["emu/layers/000"].create_dataset("k_norm", data=np.zeros((3, 128), "f4"))))
refused("k_norm stored 2-D", "rank 2, expected 3", *compare(p))
p = crafted("tap_int.h5", lambda f: (f["emu"].__delitem__("embed"),
                                     f["emu"].create_dataset("embed", data=np.zeros((3, 128), "i4"))))
refused("embed stored as integers", "expected a float type", *compare(p))
p = crafted("tap_group.h5", lambda f: (f["emu"].__delitem__("embed"), f["emu"].create_group("embed")))
refused("embed is a group", "is not a dataset", *compare(p))
p = crafted("ids_float.h5", lambda f: (f.__delitem__("input_ids"), f.create_dataset("input_ids", data=[5.0, 17, 3])))
refused("input_ids as floats", "expected an integer type", *compare(p))
p = crafted("ids_vocab.h5", lambda f: f["input_ids"].__setitem__(1, 5000))
refused("an input id past vocab_size", "id 5000 at position 1", *compare(p))
p = crafted("ids_2d.h5", lambda f: (f.__delitem__("input_ids"), f.create_dataset("input_ids", data=[[5, 17, 3]])))
refused("input_ids 2-D", "expected 1", *compare(p))
p = crafted("no_config.h5", lambda f: f.attrs.__delitem__("config_json"))
refused("no config_json", "attribute 'config_json' missing", *compare(p))
p = crafted("bad_config.h5", lambda f: f.attrs.__setitem__("config_json", "{not json"))
refused("config_json not JSON", "attribute 'config_json': invalid JSON", *compare(p))
p = crafted("layer_past.h5", lambda f: f.copy(f["emu/layers/000"], "emu/layers/004"))
refused("a layer group past config_json's layers", "'/emu/layers/004' is not a layer of the model", *compare(p))
p = crafted("layer_name.h5", lambda f: f.copy(f["emu/layers/000"], "emu/layers/x1"))
refused("a stray name among the layer groups", "'/emu/layers/x1' is not a layer", *compare(p))


def external_raw(f):
    del f["emu/embed"]
    f["emu"].create_dataset("embed", shape=(3, 128), dtype="<f4", external=[(os.path.join(tmp, "raw.bin"), 0, 3 * 128 * 4)])


p = crafted("external_raw.h5", external_raw)
refused("raw data in an external file", "raw data in external files", *compare(p))
fifo = os.path.join(tmp, "fifo")
os.mkfifo(fifo)


def external_link(f):
    del f["emu/embed"]
    f["emu/embed"] = h5py.ExternalLink(fifo, "/emu/embed")  # followed, it would block on the FIFO


p = crafted("external_link.h5", external_link)
refused("an external link (to a FIFO)", "is an external link", *compare(p))

# --- D3: nothing compared is not a pass -----------------------------------------------------------------
p = crafted("d3.h5", lambda f: f.create_group("empty").attrs.__setitem__("precision", "fp32"))
junit = os.path.join(tmp, "d3.xml")
refused("D3 a backend group with no taps", "nothing was compared", "compare", p + ":ref", p + ":empty", "--junit", junit)
check(not os.path.exists(junit), "D3: no JUnit file claiming tests=0 passed")
rc, out, _ = run(*compare(base))
check(rc == 0 and "71 taps compared" in out, f"the uncrafted dump still compares (exit {rc})")

# --- input files: regular files only, size-capped -------------------------------------------------------
refused("a FIFO as a dump", "is a FIFO", "compare", fifo, base + ":ref")
refused("a directory as a dump", "is a directory", "compare", tmp, base + ":ref")
refused("a device as a dump", "is a character device", "compare", "/dev/zero", base + ":ref")
refused("--tokens @/dev/zero", "is a character device", "--model", KN, "--tokens", "@/dev/zero")
refused("--tokens @FIFO", "is a FIFO", "--model", KN, "--tokens", "@" + fifo)
big = os.path.join(tmp, "big_tokens.txt")
with open(big, "w") as f:
    f.write("1 " * 400000)  # 800 kB: more than 40960 ids (max_position_embeddings) of 16 bytes
refused("a tokens file over its cap", "max_position_embeddings", "--model", KN, "--tokens", "@" + big)
refused("--tolerances /dev/zero", "is a character device", "--backends", "ref,emu", "--tolerances", "/dev/zero")
refused("--tolerances FIFO", "is a FIFO", *compare(base, "--tolerances", fifo))
fifo_model = os.path.join(tmp, "fifo_model")
os.mkdir(fifo_model)
os.mkfifo(os.path.join(fifo_model, "config.json"))
refused("config.json as a FIFO", "is a FIFO", "--model", fifo_model, "--tokens", "1,2")

# --- outputs: never the same file twice, never an input ----------------------------------------------------
same = os.path.join(tmp, "same.out")
refused("--dump X --json X", "name the same file", "--backends", "ref,emu", "--dump", same, "--json", same)
check(not os.path.exists(same), "--dump X --json X: nothing written")
refused("--json X --junit X", "name the same file", *compare(base, "--json", same, "--junit", same))
refused("--json over the dump being compared", "would overwrite the input", *compare(base, "--json", base))
refused("--json ./X vs --junit X", "name the same file", *compare(base, "--json", same, "--junit",
                                                                  os.path.join(tmp, ".", "same.out")))
refused("--json to a directory", "is a directory", *compare(base, "--json", tmp))

# --- compare --tolerances fits the comparison, as in lockstep --------------------------------------------------
head = '{"schema": "qwen3-diff-tolerances/1", "precision_pair": '
for name, body, needle in [("pair", '["fp32", "fp32"]}', "field 'precision_pair'"),
                           ("layers", '["bf16", "fp32"], "layers": {"4/attn": {"rel_l2": 0.1}}}', "an entry for layer 4"),
                           ("iso", '["bf16", "fp32"], "isolated": {"layers": {"7": {"rel_l2": 0.1}}}}',
                            "'isolated.layers': an entry for layer 7")]:
    t = os.path.join(tmp, f"tol_{name}.json")
    with open(t, "w") as f:
        f.write(head + body)
    refused(f"compare --tolerances: {name} does not fit", needle, *compare(base, "--tolerances", t))

# --- signals during --dump: the temporary file goes, the final name never appears ------------------------------
LP = os.path.join(FX, "long_prompt")
for sig in (signal.SIGINT, signal.SIGTERM):
    out = os.path.join(tmp, f"sig{int(sig)}", "x.h5")
    os.makedirs(os.path.dirname(out))
    p = subprocess.Popen([BIN, "--model", LP, "--tokens", "@" + os.path.join(LP, "prompt.txt"), "--backends", "ref,emu",
                          "--decode", "30000", "--dump", out, "--quiet"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not glob.glob(out + ".tmp.*") and p.poll() is None:
        time.sleep(0.05)
    had_tmp = bool(glob.glob(out + ".tmp.*"))
    time.sleep(0.5)  # into the run: weights loaded, taps being written
    p.send_signal(sig)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    left = os.listdir(os.path.dirname(out))
    check(had_tmp and p.returncode == -sig and left == [],
          f"{sig.name} during --dump: killed by {sig.name} (status {p.returncode}), temp file seen ({had_tmp}), "
          f"nothing left ({left})")

# --- dumps from other engines: non-finite values are reported at their tap, wrong sizes refused ------------------
def poke(group, tap, index, value, dtype=None):
    """Sets one value of group/tap (as another engine would have written it; dtype: stored as that type)."""
    def edit(f):
        a = f[f"{group}/{tap}"][...]
        a = a.astype(dtype) if dtype else a
        a[index] = value
        del f[f"{group}/{tap}"]
        f.create_dataset(f"{group}/{tap}", data=a)
    return edit


tol_default = os.path.join(tmp, "tol_default.json")
with open(tol_default, "w") as f:
    f.write(head + '["bf16", "fp32"]}')
for name, edit, where, side in [
        ("NaN in the test side's k_norm", poke("emu", "layers/001/k_norm", (1, 0, 3), np.nan), "layer 1, k_norm",
         "emu"),
        ("+Inf in the test side's attn", poke("emu", "layers/002/attn", (2, 5), np.inf), "layer 2, attn", "emu"),
        ("-Inf in the test side's logits", poke("emu", "logits", (0, 7), -np.inf), "logits", "emu"),
        ("NaN in a float64 tap", poke("emu", "layers/001/k_norm", (0, 0, 0), np.nan, "f8"), "layer 1, k_norm", "emu"),
        ("NaN in the reference side's k_norm", poke("ref", "layers/001/k_norm", (1, 0, 3), np.nan), "layer 1, k_norm",
         "ref")]:
    p = crafted(name.replace(" ", "_").replace("'", "").replace("+", "p").replace("-", "m") + ".h5", edit)
    js = p + ".json"
    rc, out, err = run_t(*compare(p, "--json", js))
    fd = json.load(open(js))["first_divergence"] if os.path.exists(js) else None
    check(rc == 1 and f"first divergence: {where} — on {side}" in out and "non-finite" in out and fd is not None
          and fd.get("side") in (None, side) and "nonfinite" in json.dumps(fd),
          f"{name}: diverged (exit 1) at {where} on {side}, non-finite, in the JSON too "
          f"(exit {rc}: {out.strip()[:400]} {err.strip()[-200:]})")
    rc, out, err = run_t(*compare(p, "--tolerances", tol_default))
    check(rc == 1 and f"first divergence: {where}" in out and "non-finite" in out,
          f"{name}, --tolerances: diverged (exit 1) at {where}, non-finite (exit {rc}: {out.strip()[:300]})")
p = crafted("short_dim.h5", lambda f: (f["emu/layers/001"].__delitem__("k_norm"), f["emu/layers/001"].create_dataset(
    "k_norm", data=np.zeros((3, 2, 32), "f4"))))
refused("k_norm with a head_dim of 32, not 64", "shape (3, 2, 32), expected (3, 2, 64)", *compare(p))
p = crafted("ids_short.h5", lambda f: (f.__delitem__("input_ids"), f.create_dataset("input_ids", data=[5, 17])))
refused("input_ids of 2 tokens, taps of 3", "expected (2,", *compare(p))
p = crafted("f16_taps.h5", lambda f: [poke("emu", t, (0, 0), 0.5, "f2")(f) for t in ("embed", "final_norm")])
rc, out, err = run_t(*compare(p))
check(rc in (0, 1) and "taps compared" in out, f"float16 taps from another engine are read (exit {rc}: {err.strip()})")


# --- signals: no temp file, no partial output, for every output and the compare path ---------------------------
def only_complete(d):
    """The files left in d: none a temp file, each one complete (it parses). Returns (ok, names)."""
    left = sorted(os.listdir(d))
    ok = True
    for n in left:
        path = os.path.join(d, n)
        try:
            if ".tmp." in n:
                ok = False
            elif n.endswith(".json"):
                json.load(open(path))
            elif n.endswith(".xml"):
                import xml.etree.ElementTree as ET
                ET.parse(path)
            elif n.endswith(".h5"):
                with h5py.File(path, "r") as f:
                    f.attrs["schema"]
        except Exception:  # noqa: BLE001: any unreadable output is a partial one
            ok = False
    return ok, left


def signal_sweep(what, argv, outdir, keep=()):
    """Signals (SIGINT and SIGTERM, alternately) at growing delays into runs of argv until a run finishes
    first: each run killed by its signal, or exited 0/1 before it; after each, only complete outputs."""
    delay, n, killed = 0.05, 0, 0
    while n < 12:
        for name in os.listdir(outdir):
            if name not in keep:
                os.unlink(os.path.join(outdir, name))
        sig = (signal.SIGINT, signal.SIGTERM)[n % 2]
        p = subprocess.Popen([BIN, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(sig)
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        ok, left = only_complete(outdir)
        check(ok and p.returncode in (-sig, 0, 1),
              f"{what}: {sig.name} after {delay:.2f} s: status {p.returncode}, left {left} (temp or partial files?)")
        n += 1
        if p.returncode in (0, 1):
            break
        killed += 1
        delay *= 1.6
    check(killed >= 2, f"{what}: the signals came during the run ({killed} runs killed of {n})")


sig_dir = os.path.join(tmp, "sig_outputs")
os.makedirs(sig_dir)
signal_sweep("a run with --dump, --json and --junit",
             ["--model", LP, "--tokens", "@" + os.path.join(LP, "prompt.txt"), "--backends", "ref,emu", "--decode",
              "20", "--dump", os.path.join(sig_dir, "x.h5"), "--json", os.path.join(sig_dir, "x.json"), "--junit",
              os.path.join(sig_dir, "x.xml"), "--quiet"], sig_dir)
signal_sweep("--calibrate with --write-tolerances",
             ["--model", KN, "--tokens", "5,17,3,9,1,2", "--backends", "ref,emu", "--calibrate", "6",
              "--write-tolerances", os.path.join(sig_dir, "tol.json"), "--quiet"], sig_dir)
long_dump = os.path.join(sig_dir, "long.h5")
rc, _, err = run("--model", LP, "--tokens", "@" + os.path.join(LP, "prompt.txt"), "--backends", "ref,emu", "--decode",
                 "20", "--dump", long_dump, "--quiet")
check(rc == 0, f"a long dump to compare ({err.strip()})")
signal_sweep("compare with --json, --junit and --repro",
             ["compare", long_dump + ":ref", long_dump + ":emu", "--json", os.path.join(sig_dir, "c.json"), "--junit",
              os.path.join(sig_dir, "c.xml"), "--repro", os.path.join(sig_dir, "c_repro.h5"), "--quiet"], sig_dir,
             keep=("long.h5",))

# --- two processes writing one path: one complete file from one of them, never a mix --------------------------
race = os.path.join(tmp, "race")
os.makedirs(race)
solo = {}
for toks in ("5,17,3", "5,17,4"):
    d, j = os.path.join(race, f"solo_{toks}.h5"), os.path.join(race, f"solo_{toks}.json")
    rc, _, err = run("--model", KN, "--tokens", toks, "--backends", "ref,emu", "--dump", d, "--json", j, "--quiet")
    check(rc == 0, f"solo run {toks} ({err.strip()})")
    with h5py.File(d, "r") as f:
        data = {}
        f.visititems(lambda n, o: data.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
    solo[toks] = (data, json.load(open(j)))
shared_dump, shared_json = os.path.join(race, "shared.h5"), os.path.join(race, "shared.json")
for rnd in range(4):
    procs = [subprocess.Popen([BIN, "--model", KN, "--tokens", toks, "--backends", "ref,emu", "--dump", shared_dump,
                               "--json", shared_json, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for toks in (("5,17,3", "5,17,4") if rnd % 2 == 0 else ("5,17,4", "5,17,3"))]
    codes = [p.wait(timeout=300) for p in procs]
    with h5py.File(shared_dump, "r") as f:
        data = {}
        f.visititems(lambda n, o: data.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
    # bytes, not values: the metrics table holds NaN (no previous layer) in a compound type
    whose = [t for t, (d, _) in solo.items() if d.keys() == data.keys() and all(
             d[k].dtype == data[k].dtype and d[k].shape == data[k].shape and d[k].tobytes() == data[k].tobytes()
             for k in d)]
    js = json.load(open(shared_json))
    whose_json = [t for t, (_, j) in solo.items() if j == js]
    check(codes == [0, 0] and len(whose) == 1 and len(whose_json) == 1 and sorted(os.listdir(race)) == sorted(
          ["shared.h5", "shared.json"] + [f"solo_{t}.{e}" for t in solo for e in ("h5", "json")]),
          f"two concurrent runs --dump/--json to one path (round {rnd}): both exit 0 ({codes}), the dump is one run's "
          f"whole ({whose}), the JSON one run's whole ({whose_json}), no temp file left")

shutil.rmtree(tmp, ignore_errors=True)
finish()
