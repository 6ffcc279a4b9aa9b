"""check_layers.py: no part of the tree includes a header of a part above it (docs/ARCHITECTURE.md).

The parts, bottom to top, and what each may include besides itself. A header belongs to the folder it
lives in; the generated qd_build_config.h belongs to no part and may be included anywhere; system
headers (<...>) are not checked. tests/ may include anything.

    python3 tests/check_layers.py [SOURCE_ROOT]
"""
import os
import re
import sys

# part -> the parts it may include (itself implied). Keep in step with docs/ARCHITECTURE.md.
ALLOWED = {
    "common": set(),
    "reference": {"common"},
    "emu": {"common"},
    "fused": {"common"},
    "compare": {"common", "reference", "emu", "fused"},
    "reports": {"common", "compare"},
    "tools": {"common", "reference", "emu", "fused", "compare", "reports"},
}
SOURCES = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    owner = {}  # header file name -> part
    files = []
    for part in ALLOWED:
        d = os.path.join(root, part)
        if not os.path.isdir(d):
            continue
        for dirpath, _, names in os.walk(d):
            for n in names:
                if n.endswith(SOURCES):
                    files.append((part, os.path.join(dirpath, n)))
                    if n.endswith((".h", ".cuh")):
                        if n in owner and owner[n] != part:
                            print(f"FAIL: header {n} exists in both {owner[n]}/ and {part}/")
                            return 1
                        owner[n] = part
    bad = []
    for part, path in files:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for inc in INCLUDE.findall(text):
            name = os.path.basename(inc)
            if name == "qd_build_config.h":
                continue
            dep = owner.get(name)
            if dep is None:
                bad.append(f"{os.path.relpath(path, root)}: includes \"{inc}\", which no part holds")
            elif dep != part and dep not in ALLOWED[part]:
                bad.append(f"{os.path.relpath(path, root)}: {part}/ includes {dep}/{name} "
                           f"({part}/ may include {', '.join(sorted(ALLOWED[part])) or 'nothing else'})")
    for b in bad:
        print("FAIL: " + b)
    print(f"{len(files)} files of {len(ALLOWED)} parts checked, {len(bad)} includes against the layering")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
