#!/usr/bin/python3
"""test_triage.py: triage.py's classes on sanitizer reports of the kinds the fuzz suite meets (shortened from
real h5read runs): a crash in HDF5, a crash in our code, memory of ours that HDF5 overran, and RSS
out-of-memory reports whose live heap is HDF5's, ours, or libFuzzer's own input buffer alone (the runaway
memory already freed into ASan's quarantine)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qd_check import check, finish  # noqa: E402
from triage import classify  # noqa: E402

HDF5 = "(/lib/x86_64-linux-gnu/libhdf5_serial.so.103+0x1233e4)"
CRASH = """==350==ERROR: AddressSanitizer: SEGV on unknown address 0x623168001d58 (pc 0x7fce01767b56 T0)
    #0 0x7fce01767b56 in H5HG_read (/lib/x86_64-linux-gnu/libhdf5_serial.so.103+0x167b56)
    #1 0x7fce0170d1a2 in H5T__conv_vlen (/lib/x86_64-linux-gnu/libhdf5_serial.so.103+0x10d1a2)
    #2 0x5610913f6020 in attr_string_alloc h5read.c:88
SUMMARY: AddressSanitizer: SEGV"""
OVERRUN = """==12==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x602000000031
    #0 0x55d0c3a1c0 in __asan_memcpy (/tmp/x/fuzz_h5read+0x1c14fe)
    #1 0x7f75437233e4 in H5D__contig_readvv_sieve_cb """ + HDF5 + """
0x602000000031 is located 0 bytes after 1-byte region
allocated by thread T0 here:
    #0 0x55d0c3a1c0 in malloc (/tmp/x/fuzz_h5read+0x1c14fe)
    #1 0x5610913f6020 in read_input_ids h5read.c:201
SUMMARY: AddressSanitizer: heap-buffer-overflow"""
OOM = """==780== ERROR: libFuzzer: out-of-memory (used: 2145Mb; limit: 2048Mb)
Live Heap Allocations: 26343279 bytes in 3361 chunks; quarantined: 1980336228 bytes in 1103 chunks
24121108 byte(s) (91%) in 9 allocation(s)
    #0 0x5607159c54fe in malloc (/tmp/x/fuzz_h5read+0x1c14fe)
    #1 0x7f7543ca958b in operator new(unsigned long) (/lib/x86_64-linux-gnu/libstdc++.so.6+0xa958b)
    #2 0x560715942772 in main (/tmp/x/fuzz_h5read+0x13e772)
    #3 0x7f7543445249 in __libc_start_call_main csu/../sysdeps/nptl/libc_start_call_main.h:58:16

1861292 byte(s) (7%) in 2061 allocation(s)
    #0 0x5607159c54fe in malloc (/tmp/x/fuzz_h5read+0x1c14fe)
    #1 0x7f75437233e4  """ + HDF5 + """

SUMMARY: libFuzzer: out-of-memory"""

cases = [
    ("a crash in HDF5's global heap", CRASH, "hdf5"),
    ("a crash in our code", CRASH.replace("H5HG_read (/lib/x86_64-linux-gnu/libhdf5_serial.so.103+0x167b56)",
                                          "qd_h5in_open h5read.c:40"), "ours"),
    ("HDF5 writing past memory of ours", OVERRUN, "ours"),
    ("out of memory, HDF5's heap behind libFuzzer's input buffer", OOM, "hdf5"),
    ("out of memory, our heap", OOM.replace("  " + HDF5, " in qd_h5in_open h5read.c:12"), "ours"),
    ("out of memory, only libFuzzer's buffer live", OOM.split("1861292")[0], "ours"),
    ("no sanitizer report", "Segmentation fault", "ours"),
]
for what, report, want in cases:
    got, why = classify(report)
    check(got == want, f"{what}: {got} (expected {want}; {why})")
finish()
