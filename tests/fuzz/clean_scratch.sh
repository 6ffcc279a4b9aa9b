#!/usr/bin/env bash
# clean_scratch.sh: removes the scratch directories (fuzz_util.h) of fuzz processes that are gone: a child
# killed by a timeout, a crash or -rss_limit_mb leaves its own behind.
for d in /dev/shm/qd_fuzz.* "${TMPDIR:-/tmp}"/qd_fuzz.*; do
    [ -d "$d" ] || continue
    pid=${d##*.}
    case $pid in '' | *[!0-9]*) continue ;; esac
    kill -0 "$pid" 2>/dev/null || rm -rf "$d"
done
exit 0
