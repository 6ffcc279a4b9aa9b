#!/usr/bin/env bash
# test_cli.sh QWEN3_DIFF: the command line's contract.
#   - every bad input exits 2 with exactly one line on stderr ("qwen3-diff: ...") naming the file or field;
#   - a dump that cannot be written exits 3 and leaves no file;
#   - a failed run after the dump was opened leaves no file (no half-written dump);
#   - a successful --dump leaves exactly the final file, no temp file;
#   - --version and --help exit 0; --help lists every option the parser takes, each one spelled out.
# Fixtures come from $QD_FIXTURES (set by meson), else ../fixtures next to this script.
set -u
bin=${1:?usage: test_cli.sh QWEN3_DIFF}
fx=${QD_FIXTURES:-$(cd "$(dirname "$0")/../fixtures" && pwd)}
model=$fx/gqa_tied
prog=qwen3-diff
# shellcheck source=qd_cli.sh
. "$(dirname "$0")/qd_cli.sh"

[ -x "$bin" ] || { echo "FAIL: $bin is not executable"; exit 1; }
[ -f "$model/config.json" ] || { echo "FAIL: fixture $model missing"; exit 1; }
toks=@$model/prompt.txt

# --- usage ---
expect 0 "Example" -- --help
expect 0 "qwen3-diff " -- --version
expect 2 "--bogus" -- --model "$model" --tokens 1,2 --bogus
expect 2 "--tokens" -- --model "$model" --backends ref
expect 2 "--tokens" -- --model "$model"
expect 2 "--threads" -- --model "$model" --tokens 1,2 --threads
expect 2 "--threads" -- --model "$model" --tokens 1,2 --threads two
expect 2 "--dump-compress" -- --model "$model" --tokens 1,2 --dump-compress 12
expect 2 "--ref-accum" -- --model "$model" --tokens 1,2 --ref-accum f16
expect 2 "'gpu'" -- --model "$model" --tokens 1,2 --backends ref,gpu
expect 2 "at most 2" -- --model "$model" --tokens 1,2 --backends ref,emu,ref
expect 2 "--layer-by-layer" -- --model "$model" --tokens 1,2 --backends ref --isolate
expect 2 "--calibrate" -- --model "$model" --tokens 1,2 --backends ref,emu --write-tolerances "$tmp/t.json"
expect 2 "--isolate" -- --model "$model" --tokens 1,2 --backends ref,emu --locate isolated
expect 2 "--locate" -- --model "$model" --tokens 1,2 --backends ref,emu --isolate --locate both
expect 2 "--act" -- --model "$model" --tokens 1,2 --backends ref,emu --act int8
expect 2 "--calibrate" -- --model "$model" --tokens 1,2 --backends ref,emu --calibrate 2 --write-tolerances "$tmp/t.json" --dump "$tmp/c.h5"
expect 2 "--inject" -- --model "$model" --tokens 1,2 --backends ref,emu --inject knorm-mul@7
expect 2 "here ref, the reference, which takes no faults" -- --model "$model" --tokens 1,2 --backends emu,ref --inject knorm-mul@1
expect 2 "stray" -- --model "$model" --tokens 1,2 stray
# per-op precision (--fp32-ops, --precision-bisect): emu's alone
expect 2 "unknown op 'bogus'" -- --model "$model" --tokens 1,2 --backends ref,emu --fp32-ops k_norm,bogus
expect 2 "only emu keeps chosen ops in fp32; fused" -- --model "$model" --tokens 1,2 --backends ref,fused --fp32-ops k_norm
expect 2 "only emu keeps chosen ops in fp32; ref" -- --model "$model" --tokens 1,2 --backends emu,ref --fp32-ops k_norm
expect 2 "only emu keeps chosen ops in fp32; ref" -- --model "$model" --tokens 1,2 --backends ref --fp32-ops attn
expect 0 "" -- --model "$model" --tokens 1,2 --backends emu --fp32-ops knorm,softmax
expect 2 "drop --fp32-ops" -- --model "$model" --tokens 1,2 --backends ref,emu --precision-bisect --fp32-ops k_norm
expect 2 "B must be emu or fused" -- --model "$model" --tokens 1,2 --backends emu,ref --precision-bisect
expect 2 "--precision-bisect needs two backends" -- --model "$model" --tokens 1,2 --backends emu --precision-bisect
# a tolerance file with an entry past the model's 2 layers, at the top level or in the isolated section
th='{"schema": "qwen3-diff-tolerances/1", "precision_pair": ["bf16", "fp32"]'
echo "$th, \"layers\": {\"5/attn\": {\"rel_l2\": 0.1}}}" > "$tmp/tol_l5.json"
echo "$th, \"isolated\": {\"layers\": {\"5\": {\"rel_l2\": 0.1}}}}" > "$tmp/tol_iso_l5.json"
expect 2 "'layers': an entry for layer 5" -- --model "$model" --tokens 1,2 --backends ref,emu --tolerances "$tmp/tol_l5.json"
expect 2 "'isolated.layers': an entry for layer 5" -- --model "$model" --tokens 1,2 --backends ref,emu --isolate \
    --tolerances "$tmp/tol_iso_l5.json"

# --- the option tables (tools/cli_opts.h): parsing and --help come from one table per command ---
"$bin" --help >"$tmp/help"
sections=$(grep -E '^[a-z][a-zA-Z ]*$' "$tmp/help" | tr '\n' ',')
[ "$sections" = "input,backends,verdict and CI,dump,output," ] || fail "--help sections: '$sections'"
head -3 "$tmp/help" | grep -q '^usage: qwen3-diff \[--layer-by-layer\] \[--model DIR\] \[--tokens LIST|@FILE\] \[options\]$' ||
    fail "--help: usage line: $(head -1 "$tmp/help")"
grep -q '^       qwen3-diff compare REF.h5\[:GROUP\] TEST.h5\[:GROUP\] \[--model DIR\] \[--tolerances FILE\]$' \
    "$tmp/help" || fail "--help: no synopsis of compare"
grep -q '^       qwen3-diff selftest \[--fixtures DIR\] \[--json FILE\]   proves' "$tmp/help" || fail "--help: no synopsis of selftest"
# every option --help lists is parsed: a flag is followed by the bad --threads x, a valued option takes
# "--threads" as its value and leaves 'x' over; neither may be an unknown option
listed=$(grep -E '^  --' "$tmp/help" | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
[ "$(echo "$listed" | wc -l)" -ge 25 ] || fail "--help lists only: $listed"
for opt in $listed; do
    rc=0
    "$bin" "$opt" --threads x >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -ne 2 ] || grep -qF "unknown option '$opt'" "$tmp/err"; then
        fail "$opt, listed in --help, is not parsed: exit $rc, $(cat "$tmp/err")"
    fi
done
echo "ok: every option --help lists is parsed ($(echo $listed | wc -w))"
expect 0 "Exit status:" -- -h
# long options are spelled out: getopt_long's abbreviations, clusters and '--' are not this CLI's
expect 2 "unknown option '--mod'" -- --mod "$model" --tokens 1,2
expect 2 "unknown option '--help=1'" -- --help=1
expect 2 "unknown option '-hx'" -- -hx
expect 2 "unknown option '--'" -- -- --help
expect 2 "unknown option '-'" -- -
expect 2 "--threads: empty value" -- --threads=
expect 2 "--threads: missing value" -- --model "$model" --tokens 1,2 --threads
expect 2 "unknown option '--bogus'" -- --help --bogus
# compare has its own table: its report options, --quiet, --no-color, --help
expect 0 "usage: qwen3-diff" -- compare --help
expect 2 "unknown option '--decode'" -- compare a.h5 b.h5 --decode 4
expect 2 "expected two dumps, REF.h5[:GROUP] TEST.h5[:GROUP] (or --reference F[:G] --test F[:G]) (got 1)" -- compare a.h5
expect 2 "(got 1)" -- compare --test b.h5
expect 2 "(got 3)" -- compare --reference a.h5 b.h5 c.h5
expect 2 "--reference: already given" -- compare --reference a.h5 --reference b.h5
expect 2 "(got 3)" -- compare a.h5 b.h5 c.h5 --quiet
expect 2 "--json: empty value" -- compare a.h5 b.h5 --json=
# selftest's table and messages (the run itself is test_selftest.py's)
expect 0 "[--threads N]" -- selftest --help
"$bin" selftest --help | sed -n 2p | grep -q '^ \{27\}\[--quiet\]' || fail "selftest --help: the usage line wraps under its first option"
expect 2 "selftest: unknown argument '--bogus' (see qwen3-diff selftest --help)" -- selftest --bogus
expect 2 "selftest: unknown argument 'stray'" -- selftest stray
expect 2 "selftest: unknown argument '--thr'" -- selftest --thr 2
expect 2 "selftest: --threads: missing value" -- selftest --threads
expect 2 "selftest: --threads: '5000' is not an integer in 1..4096" -- selftest --threads=5000
expect 2 "selftest: empty value for '--json='" -- selftest --json=
expect 2 "selftest: --backend: 'cuda': expected emu or fused" -- selftest --backend cuda
expect 2 "selftest: --fixtures $tmp/nowhere: no such directory" -- selftest --fixtures "$tmp/nowhere"
expect 2 "selftest: --shift-expectation: --inject: unknown fault 'bogus'" -- selftest --shift-expectation bogus
expect 2 "selftest: unknown argument '--bogus'" -- selftest --bogus --help

# --- model directory and files ---
expect 2 "$tmp/no_such_model" -- --model "$tmp/no_such_model" --tokens 1,2
mkdir -p "$tmp/noconfig"
cp "$model/model.safetensors" "$tmp/noconfig/"
expect 2 "config.json" -- --model "$tmp/noconfig" --tokens 1,2

mkdir -p "$tmp/trunc"
cp "$model/config.json" "$model/model.safetensors" "$tmp/trunc/"
size=$(stat -c %s "$tmp/trunc/model.safetensors")
truncate -s $((size / 2)) "$tmp/trunc/model.safetensors"
expect 2 "model.safetensors" -- --model "$tmp/trunc" --tokens 1,2

mkdir -p "$tmp/hdr"
cp "$model/config.json" "$tmp/hdr/"
# header length 2^40 in an 8 + 16 byte file: the header runs past the end of the file
printf '\x00\x00\x00\x00\x00\x01\x00\x00{"a": "b"}      ' >"$tmp/hdr/model.safetensors"
expect 2 "model.safetensors" -- --model "$tmp/hdr" --tokens 1,2

# --- tokens ---
expect 2 "token id 600 at position 2 is >= vocab_size 512" -- --model "$model" --tokens 1,2,600
expect 2 "empty token list" -- --model "$model" --tokens ""
printf '\n  \n' >"$tmp/empty.txt"
expect 2 "$tmp/empty.txt" -- --model "$model" --tokens "@$tmp/empty.txt"
expect 2 "'x'" -- --model "$model" --tokens 5,x,3
expect 2 "$tmp/missing.txt" -- --model "$model" --tokens "@$tmp/missing.txt"

# --- dump ---
expect 3 "H5Fcreate" -- --model "$model" --tokens "$toks" --dump "$tmp/no/such/dir/out.h5"
[ -e "$tmp/no" ] && fail "a failed dump created $tmp/no"
expect 2 "is a directory" -- --model "$model" --tokens "$toks" --dump "$tmp"

mkdir -p "$tmp/d1"
expect 2 "model.safetensors" -- --model "$tmp/trunc" --tokens 1,2 --dump "$tmp/d1/out.h5"
n=$(find "$tmp/d1" -mindepth 1 | wc -l)
[ "$n" -eq 0 ] || fail "a run that failed after opening the dump left: $(ls -A "$tmp/d1")"

# a write that fails mid-run (file size limit: EFBIG, as a full disk gives ENOSPC): exit 3, no file left
mkdir -p "$tmp/d3"
rc=0
(trap '' XFSZ; ulimit -f 64; exec "$bin" --model "$model" --tokens "$toks" --dump "$tmp/d3/out.h5") \
    >"$tmp/out" 2>"$tmp/err" || rc=$?
if [ "$rc" -ne 3 ] || [ "$(wc -l <"$tmp/err")" -ne 1 ] || ! grep -q 'File too large' "$tmp/err"; then
    fail "dump past the file size limit -> exit $rc, expected 3 and one line naming the error: $(cat "$tmp/err")"
else
    echo "ok: exit 3: dump past the file size limit -> $(cat "$tmp/err")"
fi
[ -z "$(ls -A "$tmp/d3")" ] || fail "a dump that failed mid-run left: $(ls -A "$tmp/d3")"

mkdir -p "$tmp/d2"
expect 0 "" -- --model "$model" --tokens "$toks" --dump "$tmp/d2/out.h5" --dump-compress 3 --quiet
files=$(ls -A "$tmp/d2")
[ "$files" = "out.h5" ] || fail "a successful dump left '$files', expected exactly out.h5"
[ -s "$tmp/out" ] && fail "--quiet printed: $(cat "$tmp/out")"
[ -s "$tmp/err" ] && fail "a successful run printed on stderr: $(cat "$tmp/err")"

# the dump stores no timestamps and the reference is deterministic for any thread count, so two runs
# with different --threads give byte-identical files
expect 0 "" -- --model "$model" --tokens "$toks" --dump "$tmp/t1.h5" --threads 1 --quiet
expect 0 "" -- --model "$model" --tokens "$toks" --dump "$tmp/t2.h5" --threads 2 --quiet
cmp -s "$tmp/t1.h5" "$tmp/t2.h5" || fail "dumps with --threads 1 and --threads 2 differ"

# --- the normal outputs ---
expect 0 "next token" -- --model "$model" --tokens "$toks"
expect 0 "max|k_norm|" -- --model "$model" --tokens "$toks" --summary --threads 1 --ref-accum f64
[ "$(grep -cE '^ +[0-9]+ ' "$tmp/out")" -eq 2 ] || fail "--summary: expected one row per layer (2): $(cat "$tmp/out")"

finish CLI
