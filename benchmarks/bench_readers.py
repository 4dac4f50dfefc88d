"""Benchmark of reader snapshots, run by hand: python benchmarks/bench_readers.py [DIR].

Prints each figure beside its baseline, measured in the same run on the same
file system, rounds of the two interleaved so both see the same machine load:

- the writer's durable alloc + free ("compat"), with the reader table and 0
  live readers, and with 8 live snapshot readers (processes refreshing every
  millisecond), against the core without a reader table (today's writer) and
  0 or 8 unregistered readers doing the same;
- ReadOnlyPager open + close, snapshot=True against snapshot=False (today's);
- refresh() when nothing was committed, on a file of 2^20 pages, against the
  full reload every refresh did before (mp_pager_refresh);
- a reader that never refreshes: how the file grows under a writer that
  frees and allocates, and what pinned_free_pages says.

MAPPEDPAGES_BENCH_SCALE (default 1) multiplies the rounds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from mappedpages import Pager, ReadOnlyPager
from mappedpages._core import ffi, lib
from mappedpages._readers import table_path

SCALE = float(os.environ.get("MAPPEDPAGES_BENCH_SCALE", "1"))
ROUNDS = 6
OPS = max(20, int(60 * SCALE))

READER = """
import sys, time
from mappedpages import ReadOnlyPager
r = ReadOnlyPager.open(sys.argv[1], snapshot=sys.argv[2] == "1")
print("ready", flush=True)
while True:
    r.refresh()
    time.sleep(0.001)
"""


def c_writer(path: Path, table: bool) -> object:
    """A C pager opened through the core: with or without the reader table."""
    out = ffi.new("mp_pager **")
    report = ffi.new("mp_open_report *")
    opts = ffi.new("mp_options *")
    rc = lib.mp_pager_open(os.fsencode(path), opts, out, report)
    assert rc == 0, rc
    if table:
        rc = lib.mp_readers_attach(out[0], table_path(os.fsencode(path)), 126)
        assert rc == 0, rc
    return out[0]


def alloc_free(handle: object, n: int) -> float:
    """Seconds per durable alloc + free pair."""
    pid = ffi.new("uint64_t *")
    t = time.perf_counter()
    for _ in range(n):
        assert lib.mp_pager_alloc(handle, 0, pid) == 0
        assert lib.mp_pager_free(handle, pid[0]) == 0
    return (time.perf_counter() - t) / n


def spawn_readers(path: Path, n: int, snapshot: bool) -> list[subprocess.Popen[str]]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen(
            [sys.executable, "-c", READER, str(path), "1" if snapshot else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        procs.append(p)
    return procs


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        if p.stdout:
            p.stdout.close()


def row(name: str, value: float, base: float, unit: str, target: str) -> None:
    ratio = value / base if base else float("nan")
    print(f"{name:<46} {value:>10.2f} {unit:<4} baseline {base:>10.2f} {unit:<4} "
          f"ratio {ratio:5.2f}  ({target})")


def interleaved(a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    xs, ys = [], []
    for _ in range(ROUNDS):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def bench_writer(folder: Path) -> None:
    for readers in (0, 8):
        new_path = folder / f"w{readers}-new.mpp"
        old_path = folder / f"w{readers}-old.mpp"
        Pager.create(new_path, 4096).close()
        Pager.create(old_path, 4096).close()
        new = c_writer(new_path, True)
        old = c_writer(old_path, False)
        procs = spawn_readers(new_path, readers, True) + spawn_readers(old_path, readers, False)
        try:
            a, b = interleaved(
                lambda h=new: alloc_free(h, OPS), lambda h=old: alloc_free(h, OPS)
            )
        finally:
            stop(procs)
            lib.mp_pager_release(new)
            lib.mp_pager_release(old)
        row(f"durable alloc+free, {readers} live readers (us/pair)", a * 1e6, b * 1e6, "us",
            "target <= 1.10")


def bench_open(folder: Path) -> None:
    path = folder / "open.mpp"
    with Pager.create(path, 4096) as w:
        w.alloc_bulk(10_000)
        for _ in range(4):
            w.alloc_protected()

    def opens(snapshot: bool) -> float:
        n = max(50, int(200 * SCALE))
        t = time.perf_counter()
        for _ in range(n):
            ReadOnlyPager.open(path, snapshot=snapshot).close()
        return (time.perf_counter() - t) / n

    a, b = interleaved(lambda: opens(True), lambda: opens(False))
    row("ReadOnlyPager open+close, 10k pages (us)", a * 1e6, b * 1e6, "us", "target <= 2.0")


def bench_refresh(folder: Path) -> None:
    path = folder / "big.mpp"
    with Pager.create(path, 1024, preallocate=False) as w:
        w.alloc_bulk((1 << 20) - 8)
    with ReadOnlyPager.open(path) as r:
        handle = r._handle
        report = ffi.new("mp_open_report *")

        def fast() -> float:
            n = 20_000
            t = time.perf_counter()
            for _ in range(n):
                r.refresh()
            return (time.perf_counter() - t) / n

        def full() -> float:
            n = 20
            t = time.perf_counter()
            for _ in range(n):
                assert lib.mp_pager_refresh(handle, report) == 0
            return (time.perf_counter() - t) / n

        a, b = interleaved(fast, full)
    row("idle refresh(), 2^20 pages (us)", a * 1e6, b * 1e6, "us", "target <= 10 us")


def bench_stale_reader(folder: Path) -> None:
    path = folder / "stale.mpp"
    with Pager.create(path, 4096, durability="fast") as w:
        w.alloc_bulk(100)
        r = ReadOnlyPager.open(path)
        start = w.page_count
        steps = []
        for i in range(1, 2001):
            w.free(w.alloc())
            if i in (100, 500, 2000):
                steps.append((i, w.page_count, w.pinned_free_pages))
        r.close()
        w.alloc()
        after = w.pinned_free_pages
    print(f"a reader that never refreshes, writer alloc+free pairs (file started at {start} "
          "pages of 4 KiB):")
    for i, pages, pinned in steps:
        print(f"  after {i:>5} pairs: {pages:>6} pages ({pages * 4 // 1024} MiB), "
              f"pinned_free_pages {pinned}")
    print(f"  after the reader closes: pinned_free_pages {after} (the pages are free again)")


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        folder = Path(d)
        print(f"reader snapshots, {sys.platform}, files in {folder}")
        bench_writer(folder)
        bench_open(folder)
        bench_refresh(folder)
        bench_stale_reader(folder)


if __name__ == "__main__":
    main()
