#!/usr/bin/env bash
# check_format.sh SOURCE_ROOT: every C, CUDA and header file is formatted as .clang-format says.
# clang-format's output changes between major versions; the tree is formatted with 14 (Debian 12's), so
# another version, or none, skips with a message (exit 77) rather than passing or failing on its own taste.
set -u
root=${1:-$(dirname "$0")/..}
cd "$root" || exit 2
if ! command -v clang-format >/dev/null; then echo "skipped: clang-format not installed"; exit 77; fi
ver=$(clang-format --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$ver" != 14 ]; then echo "skipped: clang-format $ver, the tree is formatted with 14"; exit 77; fi
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null)
[ -n "$files" ] || { echo "skipped: not a git checkout"; exit 77; }
bad=0
for f in $files; do
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then echo "FAIL: $f is not formatted (clang-format -i $f)"; bad=$((bad + 1)); fi
done
echo "$(echo "$files" | wc -w) files checked, $bad not formatted"
[ "$bad" -eq 0 ]
