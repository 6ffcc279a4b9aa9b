#!/usr/bin/env bash
# test_outputs.sh QWEN3_DIFF: where the output options write (common/qd_files.h, "Output files").
#   - "-" and /dev/stdout are stdout: the document alone there (the text report goes to stderr), no file
#     named "-", and no /dev/stdout replaced by a file (a link to it, in $tmp, stands in for it);
#   - a FIFO is written in place; a symlink's target is written atomically and the link kept; a dangling
#     link creates its target; /dev/null takes a report;
#   - HDF5 outputs (--dump, --repro) need a seekable regular file: "-", /dev/stdout and a FIFO are refused
#     with one line, exit 2, before any work;
#   - two documents on stdout at once are refused.
set -u
bin=${1:?usage: test_outputs.sh QWEN3_DIFF}
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin") # the test runs in $tmp
fx=${QD_FIXTURES:-$(cd "$(dirname "$0")/../fixtures" && pwd)}
model=$fx/gqa_tied
prog=qwen3-diff
# shellcheck source=qd_cli.sh
. "$(dirname "$0")/qd_cli.sh"
py=/usr/bin/python3
run=(--model "$model" --tokens "@$model/prompt.txt" --backends ref,emu)
cd "$tmp" || exit 1

# expect_piped CODE NEEDLE -- ARGS...: expect with stdout a pipe, never a regular file: a run that takes
# /dev/stdout for a file name to rename over must find nothing it could replace (it would be /dev/stdout).
expect_piped() {
    local code=$1 needle=$2
    shift 3
    "$bin" "$@" 2>"$tmp/err" | cat >"$tmp/out"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne "$code" ] || [ "$(wc -l <"$tmp/err")" -ne 1 ] || ! grep -qF -- "$needle" "$tmp/err"; then
        fail "$* | cat -> exit $rc, expected $code and one line with '$needle': $(cat "$tmp/err")"
    else
        echo "ok: exit $rc: $* | cat -> $(cat "$tmp/err")"
    fi
}

# is_json FILE SCHEMA: FILE holds one JSON document whose "schema" is SCHEMA
is_json() { "$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d.get("schema") != sys.argv[2])' "$1" "$2"; }

# --- "-": stdout, through a pipe ---
"$bin" "${run[@]}" --json - 2>err.txt | cat >pipe.json
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] || ! is_json pipe.json qwen3-diff-report/1; then
    fail "--json - | cat: exit $rc, stdout is not the report alone: $(head -c 200 pipe.json)"
else
    echo "ok: --json - | cat: the report alone on stdout"
fi
grep -q "no divergence" err.txt || fail "--json -: the text report did not go to stderr: $(cat err.txt)"
[ -e ./- ] && fail "--json - wrote a file named '-'"

# --- /dev/stdout through a pipe (it was refused as a FIFO) ---
"$bin" "${run[@]}" --junit /dev/stdout 2>err.txt | cat >pipe.xml
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] || ! head -1 pipe.xml | grep -q '^<?xml'; then
    fail "--junit /dev/stdout | cat: exit $rc: $(head -c 200 pipe.xml) $(cat err.txt)"
else
    echo "ok: --junit /dev/stdout | cat: the XML on stdout"
fi

# --- a link to /dev/stdout with stdout on a file: written to the descriptor, the link left as it is (it was
# renamed over, as /dev/stdout itself was when run as root) ---
ln -s /dev/stdout to_stdout
rc=0
"$bin" "${run[@]}" --json to_stdout >redirected.json 2>err.txt || rc=$?
if [ "$rc" -ne 0 ] || ! is_json redirected.json qwen3-diff-report/1; then
    fail "--json LINK-TO-/dev/stdout >file: exit $rc: $(head -c 200 redirected.json) $(cat err.txt)"
else
    echo "ok: --json LINK-TO-/dev/stdout: the report in the redirected file"
fi
[ -L to_stdout ] || fail "--json LINK-TO-/dev/stdout replaced the link with $(stat -c %F to_stdout)"

# --- --write-tolerances - ---
rc=0
"$bin" "${run[@]}" --calibrate 1 --write-tolerances - >tol.json 2>err.txt || rc=$?
if [ "$rc" -ne 0 ] || ! is_json tol.json qwen3-diff-tolerances/1; then
    fail "--write-tolerances -: exit $rc: $(head -c 200 tol.json) $(cat err.txt)"
else
    echo "ok: --write-tolerances -: the tolerance file on stdout"
fi

# --- a FIFO: written in place, for the reader at the other end ---
mkfifo fifo
timeout 300 cat fifo >from_fifo.xml & # bounded: a run that never opens the FIFO must not hang the suite
reader=$!
rc=0
"$bin" "${run[@]}" --junit fifo --quiet >out.txt 2>err.txt || rc=$?
if [ "$rc" -ne 0 ]; then # it never opened the FIFO: release the reader
    kill "$reader" 2>/dev/null
    fail "--junit FIFO: exit $rc: $(cat err.txt)"
fi
wait "$reader"
head -1 from_fifo.xml | grep -q '^<?xml' || fail "--junit FIFO: the reader got: $(head -c 200 from_fifo.xml)"
[ -p fifo ] || fail "--junit FIFO: the FIFO was replaced by $(stat -c %F fifo)"

# --- a symlink to a regular file: the target replaced atomically, the link kept ---
mkdir -p real && echo old >real/target.json
ln -s real/target.json link.json
expect 0 "" -- "${run[@]}" --json link.json --quiet
[ -L link.json ] || fail "--json SYMLINK: the link was replaced by $(stat -c %F link.json)"
is_json real/target.json qwen3-diff-report/1 || fail "--json SYMLINK: the target holds $(head -c 100 real/target.json)"
[ -z "$(ls real | grep -v '^target.json$')" ] || fail "--json SYMLINK left: $(ls real)"

# --- a dangling symlink: its target created ---
ln -s real/new.json dangling.json
expect 0 "" -- "${run[@]}" --json dangling.json --quiet
[ -L dangling.json ] || fail "--json DANGLING: the link was replaced by $(stat -c %F dangling.json)"
is_json real/new.json qwen3-diff-report/1 || fail "--json DANGLING: its target was not written"

# --- a symlink as the dump: the HDF5 file written to its target atomically, the link kept ---
ln -s real/dump.h5 dump_link.h5
expect 0 "" -- "${run[@]}" --dump dump_link.h5 --quiet
[ -L dump_link.h5 ] || fail "--dump SYMLINK: the link was replaced by $(stat -c %F dump_link.h5)"
head -c 8 real/dump.h5 | grep -q HDF || fail "--dump SYMLINK: its target is not an HDF5 file"

# --- a device ---
expect 0 "" -- "${run[@]}" --json /dev/null --junit /dev/null --quiet

# --- HDF5 outputs need a seekable regular file: refused before any work, nothing created ---
expect 2 "--dump -: an HDF5 file needs a seekable regular file, not stdout" -- "${run[@]}" --dump -
expect_piped 2 "--dump /dev/stdout: an HDF5 file needs a seekable regular file, not stdout" -- "${run[@]}" --dump /dev/stdout
expect 2 "--repro -: an HDF5 file needs a seekable regular file, not stdout" -- "${run[@]}" --repro -
expect 2 "--dump fifo: is a FIFO" -- "${run[@]}" --dump fifo
expect 2 "--dump /dev/null: is a character device" -- "${run[@]}" --dump /dev/null
[ -e ./- ] && fail "a refused --dump - left a file named '-'"
# ... also through a link, found when the dump is opened
ln -s /dev/stdout dump_to_stdout
expect 2 "an HDF5 file needs a seekable regular file" -- "${run[@]}" --dump dump_to_stdout
[ -L dump_to_stdout ] || fail "--dump LINK-TO-/dev/stdout replaced the link"

# --- one document per stream ---
expect_piped 2 "--json - and --junit /dev/stdout name the same file" -- "${run[@]}" --json - --junit /dev/stdout
[ -z "$(ls -A | grep '\.tmp\.')" ] || fail "temporary files left: $(ls -A)"

finish outputs
