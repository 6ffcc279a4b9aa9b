"""qd_check.py: what the Python tests share (test_compare.py, test_selftest.py, test_fused_accept.py;
imported, not run): the fixtures directory, running a program, counting checks and the exit status.
Each test prints one line per check ("ok: ..." or "FAIL: ...") and a summary, and exits 1 if any failed."""
import os
import subprocess
import sys

FX = os.environ.get("QD_FIXTURES") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
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


def finish():
    """The summary line, then the exit status."""
    print(f"{checks - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)
