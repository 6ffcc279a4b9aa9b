#!/usr/bin/python3
"""triage.py FUZZER ARTIFACT...: whose bug each crash input is, ours or HDF5's own.

Reruns each input once and reads the sanitizer report. Ours (exit 1): the report names our code where the
bad memory came from ("allocated by" or "in stack of" a frame of ours: the D1 overflow was HDF5's memcpy
into our buffer), or the crashing frame itself is ours. HDF5's own (exit 0 for that input): the first frame
past the sanitizer's interceptors is in libhdf5 and the memory, if named, is HDF5's. Prints one line per
input; an input that no longer crashes is listed as such. HDF5 1.10's global-heap bugs (H5HG_read,
tests/fuzz/README.md) land in the second class."""
import re
import subprocess
import sys

OURS = re.compile(r"\b(qd_\w+|attr_string_alloc|check_dataset|read_input_ids|open_dataset|compare_one|"
                  r"pick_group|LLVMFuzzerTestOneInput)\b|h5read\.c|lockstep\.c|metrics\.c|tolerances\.c")
SANITIZER = re.compile(r"^(malloc|calloc|realloc|free|memcpy|memmove|memset|strlen|__interceptor_\w+|__asan\w*|"
                       r"__sanitizer\w*|__ubsan\w*|__mem\w+|__str\w+)$|^(fuzzer|__sanitizer|__asan|__ubsan)::")
FRAME = re.compile(r"^\s*#(\d+) 0x[0-9a-f]+ in (\S+)")


# libFuzzer's own allocations: its driver's buffers, through libstdc++'s operator new from main or fuzzer::
LIBFUZZER = re.compile(r"^(operator new|operator delete|main|__libc_start\w*)\b|^fuzzer::")


def first_frame(frames, skip_libfuzzer=False):
    """("hdf5" or "ours", the line) of the first frame past the sanitizer's (and libFuzzer's) own; None."""
    for l in frames:
        m = FRAME.match(l)
        fn = m.group(2) if m else ""
        if SANITIZER.search(fn) or "libclang_rt" in l:
            continue
        if skip_libfuzzer and (LIBFUZZER.search(fn) or "libstdc++" in l):
            continue
        return ("hdf5" if "libhdf5" in l else "ours"), l.strip()
    return None


def classify_rss_oom(lines):
    """An RSS out-of-memory report lists the live heap by allocation context, largest first. Its memory may
    already be freed and sit in ASan's quarantine (then the largest live context is libFuzzer's own input
    buffer): libFuzzer's contexts are left out; ours if any other context is not HDF5's, else HDF5's."""
    contexts = []
    for l in lines:
        if re.match(r"^\d+ byte\(s\) \(\d+%\) in \d+ allocation", l):
            contexts.append([])
        elif contexts and re.match(r"^\s*#\d+ 0x", l):  # a frame, named or not
            contexts[-1].append(l)
    who = [w for w in (first_frame(c, skip_libfuzzer=True) for c in contexts) if w]
    hit = next((w for w in who if w[0] == "ours"), None) or next(iter(who), None)
    if hit:
        return hit[0], "out of memory, live heap: " + hit[1]
    return "ours", "out of memory with only libFuzzer's own allocations live (rerun it by hand)"


def classify(report):
    lines = report.splitlines()
    if any("ERROR: libFuzzer: out-of-memory (used:" in l for l in lines):
        return classify_rss_oom(lines)
    start = next((i for i, l in enumerate(lines) if "ERROR: AddressSanitizer" in l or "runtime error" in l
                  or "ERROR: libFuzzer" in l or "ERROR: UndefinedBehaviorSanitizer" in l), None)
    if start is None:
        return "ours", "no sanitizer report (rerun it by hand)"
    crash, rest, i = [], [], start + 1
    while i < len(lines) and not lines[i].strip().startswith("#"):
        i += 1
    while i < len(lines) and lines[i].strip().startswith("#"):
        crash.append(lines[i])
        i += 1
    rest = "\n".join(l for l in lines[i:] if not l.startswith("SUMMARY"))
    if OURS.search(rest.split("SUMMARY")[0]) and ("allocated by" in rest or "in stack of" in rest):
        return "ours", "the memory is ours: " + next(l.strip() for l in lines[i:] if OURS.search(l))
    return first_frame(crash) or ("ours", "no frame")


def main(fuzzer, artifacts):
    status = 0
    for art in artifacts:
        p = subprocess.run([fuzzer, "-runs=1", art], capture_output=True, text=True, timeout=120)
        if p.returncode == 0:  # e.g. refused or skipped by a later build, or a crash of a dying child only
            print(f"triage: {art}: no crash when rerun")
            continue
        who, why = classify(p.stdout + p.stderr)
        print(f"triage: {art}: {'OURS' if who == 'ours' else 'HDF5'}: {why}")
        status |= who == "ours"
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
