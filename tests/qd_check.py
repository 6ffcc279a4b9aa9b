"""qd_check.py: what the Python tests share (test_compare.py, test_selftest.py, test_fused_accept.py;
imported, not run): the fixtures directory, running a program, counting checks and the exit status, the
Python that has torch (the tests that run PyTorch), stdout parsed as JSON.
Each test prints one line per check ("ok: ..." or "FAIL: ...") and a summary, and exits 1 if any failed."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.environ.get("QD_FIXTURES") or os.path.join(HERE, "..", "fixtures")
checks = 0
failures = 0


def check(cond, what):
    global checks, failures
    checks += 1
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures += 1


def run(prog, *args):
    """(exit code, stdout, stderr) of prog with args."""
    p = subprocess.run([prog, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def model_args(name):
    """--model and --tokens for a committed fixture and its prompt."""
    d = os.path.join(FX, name)
    return ["--model", d, "--tokens", "@" + os.path.join(d, "prompt.txt")]


def venv_python(modules, env=("QD_PYTHON",)):
    """(python, why) for the interpreter the PyTorch-side tests run in: the first environment variable of
    env that is set, else $QD_BUILD/.venv/bin/python3 (`./run venv` makes it from tests/requirements.txt);
    why is None when it imports every module of `modules` (as written after `import`), else the reason."""
    py = next((os.environ[v] for v in env if os.environ.get(v)), None) or os.path.join(
        os.environ.get("QD_BUILD", os.path.join(HERE, "..", "build")), ".venv", "bin", "python3")
    if not os.path.exists(py):
        return py, "not found"
    p = subprocess.run([py, "-c", f"import {modules}"], capture_output=True, text=True)
    return py, None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["import failed"])[-1]


def require_python(modules, env=("QD_PYTHON",)):
    """venv_python's interpreter, or the test skipped (exit 77) with one line naming what is missing."""
    py, why = venv_python(modules, env)
    if why:
        print(f"SKIP: no Python with {modules} ({py}: {why}); `./run venv` installs tests/requirements.txt "
              f"there, or set {env[0]}")
        sys.exit(77)
    return py


def parse_json(out, what="stdout"):
    """out parsed as one JSON object, or {} and a failed check naming the error."""
    try:
        d = json.loads(out)
    except ValueError as e:
        check(False, f"{what} is one JSON object: {e}: {out[:200]!r}")
        return {}
    if not isinstance(d, dict):
        check(False, f"{what} is one JSON object, not {type(d).__name__}")
        return {}
    return d


def finish():
    """The summary line, then the exit status."""
    print(f"{checks - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)
