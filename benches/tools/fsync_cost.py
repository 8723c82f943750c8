#!/usr/bin/env python3
"""CPU and wall time of one small durable append (pwrite + fdatasync) on
this machine's disk, for a file that grows, one preallocated with
fallocate, and one written with zeros first. The floor under any durable
per-keystroke ack: see benches/README.md.

    python3 benches/tools/fsync_cost.py [DIR] [N]
"""
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
RECORD = b"x" * 300
SIZE = 64 << 20


def run(kind):
    path = os.path.join(DIR, f"fsync-cost-{os.getpid()}-{kind}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if kind == "fallocate":
            os.posix_fallocate(fd, 0, SIZE)
            os.fsync(fd)
        elif kind == "zeroed":
            os.write(fd, b"\0" * SIZE)
            os.fsync(fd)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(N):
            os.pwrite(fd, RECORD, i * len(RECORD))
            os.fdatasync(fd)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        os.close(fd)
        os.remove(path)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"| {kind} | {1e6 * (t1 - t0) / N:.0f} µs | {1e6 * cpu / N:.0f} µs |")


print(f"{N} appends of {len(RECORD)} bytes, each followed by fdatasync, in {DIR}:\n")
print("| file | wall per append | CPU per append |")
print("|---|---|---|")
for kind in ["growing", "fallocate", "zeroed"]:
    run(kind)
