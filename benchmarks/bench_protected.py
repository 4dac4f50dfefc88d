"""Benchmark protected-page commits against a plain page write plus one msync.

Run by hand, with the package installed (or PYTHONPATH=. from the checkout):

    python benchmarks/bench_protected.py [--n 2000] [--page-size 4096] [--dir DIR]

Rows, all measured in the same run, in the same folder:

  * "protected commit": write_protected(pid), change 16 bytes of the staged
    copy, commit(). A commit flushes three pages, one after the other: the
    staged copy, the directory page's inactive copy, then page 0 (which flips
    the directory block to the new copy). The writer also copies the active
    page into the staged one when it opens.
  * "protected commit (whole page)": the same, rewriting every byte.
  * "protected, with-block": the context-manager form of the first row.
  * "plain write + 1 msync": change 16 bytes of a 4 KiB page of a separate,
    plain mmap'd file, then mmap.flush() of that page (msync MS_SYNC): the
    cheapest durable page write, and not crash-atomic.
  * "plain write + 3 msyncs": the same flush count as a protected commit, for
    scale (three different pages of the plain file).

Latencies are per operation: p50 and p99 over --n operations (after a short
warm-up). The cost is dominated by the flushes, so it depends on the file
system and device under --dir (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from mappedpages import Pager

FLUSHES_PER_COMMIT = 3  # staged page, directory page, page 0
WARMUP = 50


def measure(op: Callable[[int], None], n: int) -> list[int]:
    for i in range(WARMUP):
        op(i)
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        op(i)
        out.append(clock() - t0)
    return out


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k] / 1000.0  # microseconds


def row(name: str, flushes: int, lat: list[int]) -> str:
    total_s = sum(lat) / 1e9
    rate = len(lat) / total_s if total_s else float("inf")
    return (
        f"{name:<32} {flushes:>7} {rate:>10.0f} {pct(lat, 0.50):>10.1f} "
        f"{pct(lat, 0.99):>10.1f} {statistics.fmean(lat) / 1000:>10.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="operations per row")
    ap.add_argument("--page-size", type=int, default=4096, help="the pager's page size")
    ap.add_argument("--dir", type=Path, default=None, help="folder for the files")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-protected-", dir=args.dir))
    ps = args.page_size
    try:
        pager = Pager.create(work / "protected.mpp", page_size=ps)
        pid = pager.alloc_protected()
        whole = bytes(range(256)) * (ps // 256)

        def protected_commit(i: int) -> None:
            w = pager.write_protected(pid)
            w.page[0:16] = i.to_bytes(16, "little")
            w.commit()

        def protected_whole(i: int) -> None:
            w = pager.write_protected(pid)
            w.page[:] = whole
            w.page[0:8] = i.to_bytes(8, "little")
            w.commit()

        def protected_with(i: int) -> None:
            with pager.write_protected(pid) as w:
                w.page[0:16] = i.to_bytes(16, "little")

        plain_path = work / "plain.bin"
        plain_size = 3 * 4096
        with open(plain_path, "wb") as fh:
            fh.truncate(plain_size)
        fd = os.open(plain_path, os.O_RDWR)
        mm = mmap.mmap(fd, plain_size)

        def plain_one(i: int) -> None:
            mm[0:16] = i.to_bytes(16, "little")
            mm.flush(0, 4096)

        def plain_three(i: int) -> None:
            for k in range(3):
                off = k * 4096
                mm[off : off + 16] = i.to_bytes(16, "little")
                mm.flush(off, 4096)

        results = [
            ("protected commit", FLUSHES_PER_COMMIT, measure(protected_commit, args.n)),
            (
                "protected commit (whole page)",
                FLUSHES_PER_COMMIT,
                measure(protected_whole, args.n),
            ),
            ("protected, with-block", FLUSHES_PER_COMMIT, measure(protected_with, args.n)),
            ("plain write + 1 msync", 1, measure(plain_one, args.n)),
            ("plain write + 3 msyncs", 3, measure(plain_three, args.n)),
        ]
        assert pager.verify_protected(pid)
        mm.close()
        os.close(fd)
        pager.close()

        print(
            f"protected pages: {args.n} operations per row, page size {ps} "
            f"(plain file: 4 KiB pages), files in {work.parent}"
        )
        print(
            f"a protected commit costs {FLUSHES_PER_COMMIT} flushes (msync MS_SYNC): "
            "staged page, directory page, page 0"
        )
        print()
        head = (
            f"{'operation':<32} {'flushes':>7} {'ops/s':>10} {'p50 us':>10} "
            f"{'p99 us':>10} {'mean us':>10}"
        )
        print(head)
        print("-" * len(head))
        for name, flushes, lat in results:
            print(row(name, flushes, lat))
        base = statistics.median(results[3][2])
        prot = statistics.median(results[0][2])
        print()
        print(f"median protected commit / median plain write+msync: {prot / base:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
