#!/usr/bin/env bash
# bundle.sh BUILD_DIR OUT_DIR: the fuzz targets of a libFuzzer build (BUILD_DIR/tests/fuzz/fuzz_<name>) as a
# folder that runs on another Linux machine without meson, HDF5 or any -dev package:
#   OUT/bin/       the targets
#   OUT/lib/       every shared library they load, but the C library's own (libc, libm, ld.so, ...)
#   OUT/run_all.sh with corpus/, regressions/ and the scripts it calls
# On the other machine: LD_LIBRARY_PATH=OUT/lib OUT/run_all.sh OUT/bin SECONDS JOBS
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: bundle.sh BUILD_DIR OUT_DIR" >&2
    exit 2
fi
build=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/bin" "$out/lib"
n=0
for f in "$build"/tests/fuzz/fuzz_*; do
    name=${f##*/}
    [ -f "$f" ] && [ -x "$f" ] && [[ $name != fuzz_replay* ]] || continue
    cp "$f" "$out/bin/"
    n=$((n + 1))
    ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
        case ${lib##*/} in
            libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*.so* | libresolv.so*) ;;
            *) cp -L "$lib" "$out/lib/" ;;
        esac
    done
done
if [ "$n" -eq 0 ]; then
    echo "bundle: no fuzz_<name> target in $build/tests/fuzz (a clang build with -fsanitize=fuzzer-no-link?)" >&2
    exit 2
fi
cp -r "$here/corpus" "$here/regressions" "$here/dict" "$out/"
cp "$here/run_all.sh" "$here/clean_scratch.sh" "$here/triage.py" "$here/lsan.supp" "$out/"
echo "bundle: $n targets, $(ls "$out/lib" | wc -l) libraries, $(du -sh "$out" | cut -f1) in $out"
echo "run it with: LD_LIBRARY_PATH=$out/lib $out/run_all.sh $out/bin SECONDS JOBS"
