#!/usr/bin/env python3
"""test_cli_truth.py QWEN3_DIFF QWEN3_FIXTURE: the command line says what is true.

- a tolerance file records the model it was calibrated on (shape and config hash); applied to another model
  it warns in one line, and --strict makes that an error (exit 2, one line); a file without the record gets a
  one-line note; the same model gets nothing;
- the per-layer table names one tap per line: its "worst" column and its status agree;
- selftest --quiet prints no table; compare/replay/selftest --help print their own help and exit 0;
- what used to be accepted silently is an error (exit 2, one line): a --dump-taps glob matching no tap,
  --dump-compress / --dump-on-divergence / --dump-taps without --dump, --threads 0, an option given twice
  (also under its other name), --margin without a bless step;
- progress: lines with an ETA on stderr when not a terminal (QD_PROGRESS_INTERVAL=0 here, 10 s by default,
  so a short run stays silent), a live "\\r" line on a terminal, none with --quiet; qwen3-fixture too;
- colour: --color always|never|auto, NO_COLOR honoured on a terminal;
- --list-taps and --list-faults;
- --help describes JUnit per step and layer, and documents --margin;
- the JSON report names the model, the input ids and the precision sweep's verdict.
Fixtures come from $QD_FIXTURES."""
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qd_check import FX, check, finish, model_args  # noqa: E402

BIN, FIXTURE = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp(prefix="qd_truth.")
ANSI = "\033["


def run(*args, env=None, prog=None):
    e = dict(os.environ)
    e.pop("QD_PROGRESS_INTERVAL", None)
    e.pop("NO_COLOR", None)
    e.update(env or {})
    p = subprocess.run([prog or BIN, *args], capture_output=True, text=True, env=e)
    return p.returncode, p.stdout, p.stderr


def run_tty(*args, env=None):
    """(exit code, what the terminal showed) of BIN with stdout and stderr on a pseudo-terminal."""
    e = dict(os.environ)
    e.pop("NO_COLOR", None)
    e.update(env or {})
    master, slave = pty.openpty()
    p = subprocess.Popen([BIN, *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=e)
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the slave side closed: the program ended
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(), out.decode("utf-8", "replace")


def one_error_line(rc, err, needle, what):
    lines = err.splitlines()
    check(rc == 2 and len(lines) == 1 and lines[0].startswith("qwen3-diff: ") and needle in lines[0],
          f"{what}: exit 2, one line naming it (exit {rc}: {err.strip()[:200]})")


GQA, MHA = model_args("gqa_tied"), model_args("mha_untied")

# --- tolerance files carry the model ---
tol = os.path.join(tmp, "tol_gqa.json")
rc, _, err = run(*GQA, "--backends", "ref,emu", "--calibrate", "2", "--write-tolerances", tol, "--quiet")
check(rc == 0 and err == "", f"calibrate on gqa_tied (exit {rc}, {err.strip()})")
t = json.load(open(tol))
m = t.get("model", {})
check(m.get("layers") == 2 and m.get("hidden") == 64 and m.get("heads") == 4 and m.get("kv_heads") == 2
      and m.get("head_dim") == 32 and m.get("vocab") == 512, f"the file records the model's shape ({m})")
check(re.fullmatch(r"fnv1a64:[0-9a-f]{16}", m.get("config_hash", "")) is not None,
      f"the file records the config hash ({m.get('config_hash')})")
rc, _, err = run(*GQA, "--backends", "ref,emu", "--tolerances", tol, "--quiet")
check(rc == 0 and err == "", f"the same model: no warning (exit {rc}, {err.strip()})")
rc, _, err = run(*MHA, "--backends", "ref,emu", "--tolerances", tol, "--quiet")
lines = err.splitlines()
check(rc in (0, 1) and len(lines) == 1 and "warning" in lines[0] and "another model" in lines[0]
      and "hidden 64 vs 96" in lines[0] and "--strict" in lines[0],
      f"another model: one warning line naming what differs (exit {rc}: {err.strip()})")
rc, out, err = run(*MHA, "--backends", "ref,emu", "--tolerances", tol, "--strict")
one_error_line(rc, err, "calibrated on another model", "another model with --strict")
check(out == "", "--strict: nothing compared, nothing printed")
old = dict(t)
old.pop("model", None)
old_path = os.path.join(tmp, "tol_old.json")
json.dump(old, open(old_path, "w"))
rc, _, err = run(*GQA, "--backends", "ref,emu", "--tolerances", old_path, "--quiet", "--strict")
lines = err.splitlines()
check(rc == 0 and len(lines) == 1 and lines[0].startswith("qwen3-diff: note: ") and "'model'" in lines[0],
      f"a file without the model: a one-line note (exit {rc}: {err.strip()})")
# the same check on the offline compare, from the dump's config_json
dump = os.path.join(tmp, "mha.h5")
rc, _, _ = run(*MHA, "--backends", "ref,emu", "--dump", dump, "--quiet")
rc, _, err = run("compare", dump + ":ref", dump + ":emu", "--tolerances", tol, "--quiet")
check(rc in (0, 1) and len(err.splitlines()) == 1 and "another model" in err,
      f"compare --tolerances of another model: one warning line (exit {rc}: {err.strip()})")
rc, _, err = run("compare", dump + ":ref", dump + ":emu", "--tolerances", tol, "--strict")
one_error_line(rc, err, "calibrated on another model", "compare --strict, another model")
bad = dict(t, model=dict(m, config_hash="md5:0"))
bad_path = os.path.join(tmp, "tol_bad.json")
json.dump(bad, open(bad_path, "w"))
rc, _, err = run(*GQA, "--backends", "ref,emu", "--tolerances", bad_path)
one_error_line(rc, err, "model.config_hash", "a malformed config hash")

# --- the table: the "worst" column and the status name the same tap ---
deftol = os.path.join(tmp, "tol_default.json")
json.dump({"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"]}, open(deftol, "w"))
for args in (["--inject", "rope-interleaved@1", "--tolerances", deftol],
             ["--inject", "knorm-mul@1", "--tolerances", deftol, "--isolate"],
             ["--inject", "rope-interleaved@1"]):
    rc, out, _ = run("--backends", "ref,emu", *args)
    rows = [ln.split() for ln in out.splitlines() if re.match(r"^\s*(\d+|embed|head)\s", ln) and "FAIL" in ln]
    bad_rows = []
    for r in rows:
        status = r[r.index("FAIL") + 1].rstrip(":")
        named = {r[1]} | ({r[6]} if "--isolate" in args else set())  # the worst column, and isolated worst
        if status not in named:
            bad_rows.append(" ".join(r))
    check(rc == 1 and rows and not bad_rows, f"{' '.join(args)}: worst tap == status tap ({bad_rows})")

# --- help, quiet, silently accepted options ---
for cmd, first in (("compare", "usage: qwen3-diff compare"), ("replay", "usage: qwen3-diff replay"),
                   ("selftest", "usage: qwen3-diff selftest")):
    rc, out, err = run(cmd, "--help")
    check(rc == 0 and out.startswith(first) and err == "", f"{cmd} --help: its own help, exit 0 (exit {rc})")
rc, out, _ = run("compare", "--help")
check("--tolerances FILE" in out and "--strict" in out and "reference side" in out, "compare --help lists its options")
rc, out, _ = run("compare", "-h")
check(rc == 0 and out.startswith("usage: qwen3-diff compare"), "compare -h")

m_gqa = os.path.join(FX, "gqa_tied")
cases = [
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--dump", os.path.join(tmp, "x.h5"),
      "--dump-taps", "k_*,bogus*"], "'bogus*' matches no tap"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--dump-compress", "3"], "add --dump"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--dump-on-divergence", "1"], "add --dump"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--dump-taps", "attn"], "add --dump"),
    (["--model", m_gqa, "--tokens", "1,2", "--threads", "0"], "--threads: '0'"),
    (["--model", m_gqa, "--tokens", "1,2", "--tokens", "3,4"], "--tokens"),
    (["--model", m_gqa, "--model", m_gqa, "--tokens", "1,2"], "--model"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--act", "bf16", "--fused-precision", "fp16"],
     "--fused-precision"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--inject", "act-gelu@1", "--inject", "gqa-mod@1"],
     "--inject"),
    (["--model", m_gqa, "--tokens", "1,2", "--backends", "ref,emu", "--margin", "3"], "--margin"),
    (["selftest", "--threads", "0"], "--threads: '0'"),
    (["selftest", "--json", "a.json", "--json", "b.json"], "--json"),
    (["compare", "a.h5", "b.h5", "--tolerances", "x.json", "--tolerances", "y.json"], "--tolerances"),
    (["--color", "sometimes"], "--color"),
    (["--model", m_gqa, "--tokens", "1,2", "--color", "always", "--no-color"], "--no-color"),
]
for args, needle in cases:
    rc, out, err = run(*args)
    one_error_line(rc, err, needle, " ".join(a if not a.startswith("/") else os.path.basename(a) for a in args))
    check(not os.path.exists(os.path.join(tmp, "x.h5")), "no dump left by a refused run")
rc, out, err = run(*GQA, "--backends", "ref,emu", "--dump", os.path.join(tmp, "ok.h5"), "--dump-taps", "k_*,logits",
                   "--quiet")
check(rc == 0 and err == "", f"globs that match are accepted (exit {rc}: {err.strip()})")
rc, out, err = run(*GQA, "--quiet", "--quiet")
check(rc == 0, "a flag given twice is harmless (exit {rc})")

# --- progress ---
P0 = {"QD_PROGRESS_INTERVAL": "0"}
rc, out, err = run(*GQA, "--backends", "ref,emu", "--decode", "2", env=P0)
lines = err.splitlines()
check(rc == 0 and lines and lines[0].startswith("qwen3-diff: prompt, layer 1/2, ")
      and any(re.match(r"qwen3-diff: prompt, layer 2/2, \d+ % done, .* elapsed, ETA ", ln) for ln in lines)
      and any("decode step 2/2, layer 2/2" in ln for ln in lines) and "\r" not in err,
      f"lockstep progress: plain lines with the ETA when not a terminal ({lines[:2]})")
t0 = time.monotonic()
rc, out, err = run(*GQA, "--backends", "ref,emu", "--decode", "2")
wall = time.monotonic() - t0  # a loaded machine may stretch a 1 s run past the interval: count, do not assume
check(rc == 0 and len(err.splitlines()) <= wall / 10.0 and all("ETA" in ln for ln in err.splitlines()),
      f"default interval: at most one line per 10 s, none before the first 10 s ({wall:.1f} s: {err.strip()[:80]})")
rc, out, err = run(*GQA, "--backends", "ref,emu", "--quiet", env=P0)
check(rc == 0 and out == "" and err == "", f"--quiet: no progress, no table ({out[:80]} {err[:80]})")
rc, out, err = run(*GQA, "--backends", "ref", env=P0)
check(rc == 0 and "qwen3-diff: ref, layer 2/2" in err, f"one-backend run: progress ({err.strip()[:120]})")
rc, out, err = run(*GQA, "--backends", "ref,emu", "--calibrate", "2", "--write-tolerances",
                   os.path.join(tmp, "t2.json"), env=P0)
check(rc == 0 and "calibration prompt 2/2" in err, f"calibration: progress ({err.strip()[:120]})")
rc, out, err = run(*GQA, "--backends", "ref,emu", "--inject", "act-gelu@1", "--precision-sweep", "--quiet", env=P0)
check(rc == 1 and out == "" and err == "", "--precision-sweep --quiet: nothing printed")
rc, out, err = run(*GQA, "--backends", "ref,emu", "--inject", "act-gelu@1", "--precision-sweep", env=P0)
check(rc == 1 and "qwen3-diff: precision sweep, bf16 (3/3), 67 % done" in err, f"the sweep: progress ({err[-160:]})")
rc, out, err = run(*GQA, "--summary", "--quiet")
check(rc == 0 and out == "", "--summary --quiet: --quiet wins, nothing printed")
fx = os.path.join(tmp, "fx")
rc, out, err = run("--out", fx, "--preset", "tiny", prog=FIXTURE, env=P0)
check(rc == 0 and re.search(r"^qwen3-fixture: .*, 100 % done, .* ETA ", err, re.M) is not None,
      f"qwen3-fixture: progress with the ETA ({err.strip()[-120:]})")
rc, out, err = run("--out", fx, "--force", "--preset", "tiny", "--quiet", prog=FIXTURE, env=P0)
check(rc == 0 and err == "", f"qwen3-fixture --quiet: no progress ({err[:80]})")
rc, shown = run_tty(*GQA, "--backends", "ref,emu")
check(rc == 0 and "\rqwen3-diff: prompt, layer" in shown.replace("\033[K", ""),
      "on a terminal: one live line rewritten with \\r")
check(ANSI + "32mno divergence" in shown, "on a terminal: the verdict in colour (auto)")
rc, shown = run_tty(*GQA, "--backends", "ref,emu", env={"NO_COLOR": "1"})
check(rc == 0 and ANSI + "32m" not in shown and ANSI + "1m" not in shown, "NO_COLOR: no colour on a terminal")
rc, shown = run_tty(*GQA, "--backends", "ref,emu", "--quiet")
check(rc == 0 and shown == "", f"--quiet on a terminal: nothing at all ({shown[:80]!r})")
rc, out, _ = run(*GQA, "--backends", "ref,emu", "--color", "always")
check(ANSI + "32mno divergence" in out, "--color always colours a pipe")
rc, out, _ = run(*GQA, "--backends", "ref,emu", "--color", "always", env={"NO_COLOR": "1"})
check(ANSI in out, "--color always wins over NO_COLOR")
rc, out, _ = run(*GQA, "--backends", "ref,emu")
check(ANSI not in out, "auto on a pipe: no colour")

# --- the catalogs ---
rc, out, _ = run("--list-taps")
names = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ") and not ln.startswith("  per layer")]
want = ["embed", "attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn", "o_proj",
        "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out", "final_norm", "logits"]
check(rc == 0 and names == want and " ?" not in out, f"--list-taps: every tap in data-flow order ({names})")
rc, out, _ = run("--list-faults")
faults = [ln.split()[1] for ln in out.splitlines() if ln[:5].strip().isdigit()]
needs = [ln for ln in out.splitlines() if "needs:" in ln]
check(rc == 0 and len(faults) == 13 and len(needs) == 13 and "kv-cache-pos" in faults, "--list-faults: 13 faults")
check(any("--decode N" in ln for ln in needs) and "the reference takes none" in out,
      "--list-faults: where each applies and what it needs")

# --- --help says what is true ---
rc, out, _ = run("--help")
flat = " ".join(out.split())
check("one test case per step and layer" in flat and "one test case per layer" not in flat, "--help: JUnit per step")
check(re.search(r"^  --margin X ", out, re.M) is not None, "--help documents --margin")
for opt in ("--strict", "--color WHEN", "--list-taps", "--list-faults"):
    check(opt in out, f"--help documents {opt}")

# --- the JSON report: model, input ids, sweep verdict ---
js = os.path.join(tmp, "r.json")
rc, _, _ = run(*GQA, "--backends", "ref,emu", "--inject", "act-gelu@1", "--precision-sweep", "--json", js, "--quiet")
j = json.load(open(js))
ids = [int(x) for x in open(os.path.join(FX, "gqa_tied", "prompt.txt")).read().replace(",", " ").split()]
check(rc == 1 and j.get("model") == os.path.realpath(os.path.join(FX, "gqa_tied")), f"JSON: model ({j.get('model')})")
check(j.get("input_ids") == ids, "JSON: input_ids")
sw = j.get("precision_sweep") or {}
check(sw.get("verdict") == "bug" and ((sw.get("dtypes") or {}).get("fp32") or {}).get("tap") == "act", f"JSON: the sweep's verdict ({sw})")
rc, _, _ = run(*GQA, "--backends", "ref,emu", "--precision-sweep", "--json", js, "--quiet")
j = json.load(open(js))
check(rc == 0 and "precision_sweep" in j and j["precision_sweep"]["verdict"] is None, "JSON: a sweep with nothing to explain")
rc, _, _ = run(*GQA, "--backends", "ref,emu", "--json", js, "--quiet")
check("precision_sweep" not in json.load(open(js)), "JSON: no sweep field when not asked")
rc, _, _ = run("compare", dump + ":ref", dump + ":emu", "--json", js, "--quiet")
j = json.load(open(js))
mha_ids = [int(x) for x in open(os.path.join(FX, "mha_untied", "prompt.txt")).read().replace(",", " ").split()]
check(j.get("model") == os.path.realpath(os.path.join(FX, "mha_untied")) and j.get("input_ids") == mha_ids,
      "compare's JSON: the dump's model and input ids")
rc, _, _ = run("replay", dump + ":emu", "--json", js, "--quiet")
j = json.load(open(js))
check(j.get("input_ids") == mha_ids and j.get("model"), "replay's JSON: the dump's model and input ids")

finish()
