#!/usr/bin/env python3
"""test_readme.py README QWEN3_DIFF: README.md says what the program does.

1. Every command of README's ```sh blocks that runs a program of build/tools/ is run, in a scratch directory
   where build/tools/ and fixtures/ are the real ones, and must exit with its documented status: 0, or 1
   where it shows a divergence (a command that injects a fault, or reruns a repro file; a trailing comment
   "(exit N)" says so explicitly). Placeholders become the bundled fixtures: a model path (/path/to/...,
   M) is fixtures/gqa_tied, @prompt.txt and @p.txt its prompt, NAME a fault, theirs.h5 / ours.h5 two dumps of
   it (theirs.h5 with its test group renamed myengine), bug.h5 a repro file; an optional [--flag ARG] is run
   without and with it. `./run ...` lines, lines that are not build/tools/ programs, and lines that need the
   CUDA backend on a machine without one are skipped, each with its reason printed.
2. Every sample output block (a plain ``` block whose first line is a `$q ...` command) is rerun: each
   line shown (but "...") must be a line of the real output, verbatim.
3. The ```python block runs against the files the commands wrote.
4. Every option README names exists in some command's --help, and every option of each command's usage
   synopsis (the options --help shows first) is named in README.
Commands added to README later are picked up the same way."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

README, BIN = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
ROOT = os.path.dirname(README)
FX = os.environ.get("QD_FIXTURES") or os.path.join(ROOT, "fixtures")
TOOLS = os.path.dirname(BIN)
MODEL = "fixtures/gqa_tied"
FAULT = "rope-interleaved"
fails = checks = 0


def check(cond, what):
    global fails, checks
    checks += 1
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    fails += not cond


def blocks(text):
    """(language, [lines]) of every fenced block."""
    out, lang, cur = [], None, None
    for line in text.splitlines():
        m = re.match(r"^```(\w*)\s*$", line)
        if m and cur is None:
            lang, cur = m.group(1), []
        elif line.startswith("```") and cur is not None:
            out.append((lang, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def logical_lines(lines):
    """Lines with their backslash continuations joined."""
    out, acc = [], ""
    for ln in lines:
        if ln.rstrip().endswith("\\"):
            acc += ln.rstrip()[:-1] + " "
            continue
        out.append(acc + ln)
        acc = ""
    if acc:
        out.append(acc)
    return out


def split_comment(line):
    words = shlex.shlex(line, posix=True, punctuation_chars=False)
    words.whitespace_split = True
    words.commenters = "#"
    args = list(words)
    m = re.search(r"\s#\s?(.*)$", line)
    return args, (m.group(1) if m else "")


def substitute(args):
    out = []
    for a in args:
        if a.startswith("/path/to/") or a == "M":
            a = MODEL
        elif a in ("@prompt.txt", "@p.txt"):
            a = "@" + MODEL + "/prompt.txt"
        elif a == "NAME":
            a = FAULT
        out.append(a)
    return out


def variants(args):
    """An optional [--flag ARG] group: the command without it and with it."""
    for i, a in enumerate(args):
        if a.startswith("["):
            j = next((k for k in range(i, len(args)) if args[k].endswith("]")), None)
            if j is None:
                break
            group = " ".join(args[i:j + 1])[1:-1].split()
            rest = args[:i] + args[j + 1:]
            return variants(rest) + variants(args[:i] + group + args[j + 1:])
    return [args]


def needs_gpu(args):
    for k, a in enumerate(args):
        if a in ("--backends", "--backend") and k + 1 < len(args) and "fused" in args[k + 1].split(","):
            return True
    return False


def expected_status(args, comment):
    m = re.search(r"\(exit (\d)\b", comment)
    if m:
        return int(m.group(1))
    injects = any(a in ("--inject", "--inject-a") and k + 1 < len(args) and args[k + 1] != "help"
                  for k, a in enumerate(args))
    rerun_repro = len(args) > 2 and args[1] == "replay" and args[2] == "bug.h5"
    return 1 if injects or rerun_repro else 0


SHELL_OPS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "2>&1", "2>/dev/null"}


def run(args, cwd, timeout=900):
    """A command; one with a pipe or a redirection runs through bash, its status the pipeline's (pipefail)."""
    if any(a in SHELL_OPS for a in args):
        line = " ".join(a if a in SHELL_OPS else shlex.quote(a) for a in args)
        args = ["bash", "-o", "pipefail", "-c", line]
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def missing_program(args):
    """The first program after a pipe that is not installed (e.g. jq), or None."""
    for k, a in enumerate(args[:-1]):
        if a in ("|", "||", "&&", ";") and not shutil.which(args[k + 1]) and not args[k + 1].startswith("build/"):
            return args[k + 1]
    return None


text = open(README).read()
work = tempfile.mkdtemp(prefix="qd_readme.")
os.makedirs(os.path.join(work, "build"))
os.symlink(TOOLS, os.path.join(work, "build", "tools"))
os.symlink(FX, os.path.join(work, "fixtures"))
q = "build/tools/qwen3-diff"

# the files README's commands take as given
rc, _, err = run([q, "--model", MODEL, "--tokens", "@" + MODEL + "/prompt.txt", "--backends", "ref,emu", "--dump",
                  "ours.h5", "--quiet"], work)
check(rc == 0, f"setup: a dump of ref and emu on {MODEL} ({err.strip()})")
rc, _, err = run([q, "--model", MODEL, "--tokens", "@" + MODEL + "/prompt.txt", "--backends", "ref,emu",
                  "--inject", FAULT + "@1", "--repro", "bug.h5", "--quiet"], work)
check(rc == 1 and os.path.exists(os.path.join(work, "bug.h5")), f"setup: a repro file ({err.strip()})")
try:
    import h5py
    shutil.copy(os.path.join(work, "ours.h5"), os.path.join(work, "theirs.h5"))
    with h5py.File(os.path.join(work, "theirs.h5"), "r+") as f:
        f.move("emu", "myengine")
    have_theirs = True
except ImportError:
    have_theirs = False
    print("skip: h5py missing: theirs.h5 (a dump with a group 'myengine') cannot be made")

# The ```python blocks that record a PyTorch engine (tools/qd_capture.py) write the files the next commands read
# (mine.h5, mine.txt): they run first, in the Python that has torch and transformers ($QD_PYTHON, else
# build/.venv, as tests/test_capture.py); without one they are skipped with their files, and so are the commands
# that read those files. A block with a bare `...` line is a fragment, not a program.
os.symlink(os.path.join(ROOT, "tools"), os.path.join(work, "tools"))
torch_py = os.environ.get("QD_PYTHON") or os.path.join(os.path.dirname(TOOLS), ".venv", "bin", "python3")
have_torch = os.path.exists(torch_py) and subprocess.run(
    [torch_py, "-c", "import torch, transformers, h5py"], capture_output=True).returncode == 0
no_files = set()  # files a skipped capture block would have written
for lang, lines in blocks(text):
    body = "\n".join(lines)
    if lang != "python" or "qd_capture" not in body:
        continue
    if any(ln.split("#")[0].strip() == "..." for ln in lines):
        print("skip: a qd_capture python block with `...`: a fragment, not a program")
        continue
    writes = set(re.findall(r"[\"']([\w.-]+\.(?:h5|txt))[\"']", body))
    if not have_torch:
        no_files |= writes
        print(f"skip: the qd_capture python block (writes {sorted(writes)}): no Python with torch and transformers "
              f"at {torch_py} (./run venv makes it)")
        continue
    pr = subprocess.run([torch_py, "-c", body], cwd=work, capture_output=True, text=True, timeout=900)
    check(pr.returncode == 0 and all(os.path.exists(os.path.join(work, f)) for f in writes),
          f"README's qd_capture block runs and writes {sorted(writes)} ({pr.stderr.strip()[-300:]})")

rc, _, _ = run([q, "--model", MODEL, "--tokens", "1,2", "--backends", "fused", "--quiet"], work)
have_gpu = rc == 0
if not have_gpu:
    print("note: the fused backend does not run here (no CUDA build or device): its lines are skipped")

# 1. the ```sh blocks
env_vars = {}
ran = 0
for lang, lines in blocks(text):
    if lang != "sh":
        continue
    for line in logical_lines(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^\s*(\w+)=(\S+)\s*$", line)
        if m:
            env_vars[m.group(1)] = m.group(2)
            continue
        args, comment = split_comment(line)
        args = [re.sub(r"\$(\w+)", lambda v: env_vars.get(v.group(1), v.group(0)), a) for a in args]
        if args and args[0] == "./run":
            print(f"skip: {' '.join(args[:2])}: sets up and runs everything itself (./run demo|test)")
            continue
        if not args or not args[0].startswith("build/tools/"):
            print(f"skip: {line.strip()[:80]}: not a program of build/tools/")
            continue
        if needs_gpu(args) and not have_gpu:
            print(f"skip: {' '.join(args)[:100]}: needs the CUDA backend (fused)")
            continue
        if not have_theirs and "theirs.h5:myengine" in args:
            print(f"skip: {' '.join(args)[:100]}: needs theirs.h5 (h5py)")
            continue
        if any(a.lstrip("@").split(":")[0] in no_files for a in args):
            print(f"skip: {' '.join(args)[:100]}: reads the files of the skipped qd_capture block")
            continue
        if missing_program(args):
            print(f"skip: {' '.join(args)[:100]}: {missing_program(args)} is not installed")
            continue
        for v in map(substitute, variants(args)):
            want = expected_status(v, comment)
            rc, out, err = run(v, work)
            ran += 1
            check(rc == want, f"README: {' '.join(v)} -> exit {rc}, documented {want}"
                  + ("" if rc == want else f"; stderr: {err.strip()[:300]}"))
check(ran >= 10, f"README's commands were found and run ({ran})")

# 2. sample output blocks
samples = 0
for lang, lines in blocks(text):
    if lang or not lines or not lines[0].startswith("$q "):
        continue
    ll = logical_lines(lines)
    args, _ = split_comment(ll[0].replace("$q", q, 1))
    shown = [x.rstrip() for x in ll[1:] if x.strip() and x.strip() != "..."]
    if needs_gpu(args) and not have_gpu:
        print(f"skip: sample {' '.join(args)[:80]}: needs the CUDA backend")
        continue
    rc, out, err = run(substitute(args), work)
    got = [x.rstrip() for x in out.splitlines()]
    missing = [x for x in shown if x not in got]
    samples += 1
    check(rc in (0, 1) and not missing, f"README sample: {' '.join(args)[:90]}: every line shown is printed"
          + ("" if not missing else f"; not printed: {missing[:2]}; printed: {got[:4]}"))
check(samples >= 1, f"README's sample outputs were found ({samples})")

# 3. the python block, against the files the commands wrote
for lang, lines in blocks(text):
    if lang != "python" or "qd_capture" in "\n".join(lines):
        continue
    try:
        import h5py  # noqa: F401,F811
    except ImportError:
        print("skip: README's python block: h5py missing")
        continue
    p = subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=work, capture_output=True, text=True)
    check(p.returncode == 0, f"README's python block runs ({p.stderr.strip()[-300:]})")

# 4. options: README <-> --help
helps = {}
for cmd in ([], ["compare"], ["replay"], ["report"], ["selftest"]):
    rc, out, _ = run([q, *cmd, "--help"], work)
    check(rc == 0, f"{' '.join(cmd) or 'main'} --help exits 0")
    helps[" ".join(cmd) or "main"] = out
all_help = "\n".join(helps.values())
known = set(re.findall(r"--[a-z][a-z0-9-]+", all_help))
# tools/hf_golden.py's own options (README describes its command line too)
known |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]+)", open(os.path.join(ROOT, "tools", "hf_golden.py")).read()))
named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
unknown = sorted(o for o in named - known)
check(not unknown, f"every option README names is in a --help ({unknown})")
# the main --help's usage block: one synopsis per command ("qwen3-diff compare A B [--model DIR] ..."), its
# options the command's main ones
synopses, cur = {}, None
for ln in helps["main"].splitlines():
    m = re.match(r"^(?:usage:)?\s+qwen3-diff(?: (compare|replay|report|selftest))?\b", ln) if ln.strip() else None
    if ln.startswith("usage:") or (cur and m):
        cur = m.group(1) or "main"
        synopses[cur] = ln
    elif cur and ln.startswith(" "):
        synopses[cur] += " " + ln
    elif cur:
        break
check(set(synopses) == {"main", "compare", "replay", "report", "selftest"}, f"--help's usage block ({sorted(synopses)})")
for cmd, syn in synopses.items():
    opts = set(re.findall(r"\[(--[a-z][a-z0-9-]+)", syn))
    missing = sorted(opts - named)
    check(opts and not missing, f"{cmd}: every option of its synopsis in --help is in README ({missing})")

# 5. every document cited by name (in code, tests, docs) is in the repository
cited, where = set(), {}
for top in ("common", "reference", "emu", "fused", "compare", "reports", "tools", "tests", "docs", "fixtures"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
        for fn in files:
            if not fn.endswith((".c", ".h", ".cu", ".cuh", ".py", ".sh", ".md", ".build")):
                continue
            path = os.path.join(dirpath, fn)
            for name in re.findall(r"(?<![\w-])((?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b", open(path, errors="replace").read()):
                cited.add(name)
                where.setdefault(name, os.path.relpath(path, ROOT))
for name in re.findall(r"(?<![\w-])((?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b", text):
    cited.add(name)
    where.setdefault(name, "README.md")
missing = []
for name in sorted(cited):
    base = os.path.basename(name)
    candidates = [os.path.join(ROOT, name), os.path.join(ROOT, "docs", base)]
    if "/" in name and not name.startswith(("docs/", "fixtures/", "tests/")):
        candidates = [os.path.join(ROOT, name)]  # a path outside the repository does not resolve
    if not any(os.path.isfile(c) for c in candidates) and base != "README.md":
        missing.append(f"{name} (cited in {where[name]})")
check(not missing, f"every document cited by name exists ({missing})")

shutil.rmtree(work, ignore_errors=True)
print(f"{checks - fails} passed, {fails} failed")
sys.exit(1 if fails else 0)
