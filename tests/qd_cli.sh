# qd_cli.sh: what the shell tests share (test_cli.sh, test_bench_cli.sh, test_schema.sh; sourced, not run).
# Set bin (the program) and prog (its name as its messages start: "prog: ...") before sourcing; it makes
# $tmp (removed on exit) and counts failures in $fails.
tmp=$(mktemp -d /tmp/qd_cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0

fail() {
    echo "FAIL: $*"
    fails=$((fails + 1))
}

# expect CODE NEEDLE -- ARGS...: runs $bin, checks the exit code, that a failure's stderr is exactly one
# line starting with "$prog: ", and that stdout or stderr contains NEEDLE (a fixed string; "" for any).
# The outputs stay in $tmp/out and $tmp/err.
expect() {
    local code=$1 needle=$2
    shift 3
    local rc=0
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    local lines
    lines=$(wc -l <"$tmp/err")
    if [ "$rc" -ne "$code" ]; then
        fail "$* -> exit $rc, expected $code; stderr: $(cat "$tmp/err")"
    elif [ "$code" -ne 0 ] && [ "$lines" -ne 1 ]; then
        fail "$* -> $lines lines on stderr, expected 1: $(cat "$tmp/err")"
    elif [ "$code" -ne 0 ] && ! grep -q "^$prog: " "$tmp/err"; then
        fail "$* -> stderr does not start with '$prog: ': $(cat "$tmp/err")"
    elif [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/err" "$tmp/out"; then
        fail "$* -> output does not mention '$needle': $(cat "$tmp/err")"
    else
        echo "ok: exit $rc: $* -> $(head -c 160 "$tmp/err")"
    fi
}

# finish WHAT: the exit status of the script
finish() {
    if [ "$fails" -ne 0 ]; then
        echo "$fails check(s) failed"
        exit 1
    fi
    echo "all $1 checks passed"
}
