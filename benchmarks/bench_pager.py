"""Benchmark of the core pager, run by hand: python benchmarks/bench_pager.py [DIR].

Prints one table: durable alloc/free (ops/s, p50/p99 latency), alloc_bulk(10_000) and
free_bulk throughput, and page() calls/s, each beside its floor measured in the same
run on the same file system: two bare msyncs of a 4 KiB page (the least a commit in
the double-buffered protocol can cost: one flush of the new metadata copy, one of
page 0).
"""

from __future__ import annotations

import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mappedpages import Pager

ROUNDS = 2000
BULK = 10_000
BULK_ROUNDS = 30
PAGE_CALLS = 1_000_000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Floor:
    """Two msyncs of distinct dirtied 4 KiB pages: the least one commit can cost.

    Measured interleaved with the operations, so both see the same machine load.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "floor.bin"
        self.file = open(self.path, "w+b")  # noqa: SIM115
        self.file.truncate(3 * 4096)
        self.map = mmap.mmap(self.file.fileno(), 3 * 4096)
        self.samples: list[float] = []
        self.i = 0

    def measure(self) -> None:
        self.i += 1
        meta = 4096 + (self.i & 1) * 4096
        t = time.perf_counter()
        self.map[meta] = self.i & 0xFF
        self.map.flush(meta, 4096)
        self.map[0] = self.i & 0xFF
        self.map.flush(0, 4096)
        self.samples.append(time.perf_counter() - t)

    def close(self) -> None:
        self.map.close()
        self.file.close()
        self.path.unlink()


def bench(directory: Path) -> None:
    fl = Floor(directory)
    path = directory / "bench.mpp"
    rows: list[tuple[str, str, str, str]] = []
    with Pager.create(path) as pager:
        pager.alloc_bulk(BULK * 2)  # grow once, so the timed calls measure commits
        pager.free_bulk(list(pager.allocated_pages()))
        alloc_lat, free_lat = [], []
        for _ in range(ROUNDS):
            fl.measure()
            t = time.perf_counter()
            pid = pager.alloc()
            t1 = time.perf_counter()
            pager.free(pid)
            t2 = time.perf_counter()
            alloc_lat.append(t1 - t)
            free_lat.append(t2 - t1)
        floor = fl.samples
        floor_p50 = statistics.median(floor)
        for name, lat in (("alloc (durable)", alloc_lat), ("free (durable)", free_lat)):
            p50 = statistics.median(lat)
            rows.append((
                name,
                f"{1 / p50:,.0f} ops/s",
                f"p50 {p50 * 1e6:.0f} us, p99 {pct(lat, 0.99) * 1e6:.0f} us",
                f"{p50 / floor_p50:.2f}x the floor",
            ))
        bulk_a, bulk_f = [], []
        for _ in range(BULK_ROUNDS):
            t = time.perf_counter()
            ids = pager.alloc_bulk(BULK)
            t1 = time.perf_counter()
            pager.free_bulk(ids)
            t2 = time.perf_counter()
            bulk_a.append(t1 - t)
            bulk_f.append(t2 - t1)
        for name, lat in ((f"alloc_bulk({BULK:_})", bulk_a), (f"free_bulk({BULK:_})", bulk_f)):
            p50 = statistics.median(lat)
            rows.append((
                name,
                f"{BULK / p50:,.0f} pages/s",
                f"p50 {p50 * 1e3:.2f} ms",
                f"floor + {(p50 - floor_p50) * 1e3:.2f} ms",
            ))
        pid = pager.alloc()
        page = pager.page
        t = time.perf_counter()
        for _ in range(PAGE_CALLS):
            page(pid)
        per = (time.perf_counter() - t) / PAGE_CALLS
        mv = memoryview(bytearray(pager.page_size * 4))
        t = time.perf_counter()
        for _ in range(PAGE_CALLS):
            mv[4096:8192]
        slice_per = (time.perf_counter() - t) / PAGE_CALLS
        rows.append((
            "page()",
            f"{1 / per:,.0f} calls/s",
            f"{per * 1e9:.0f} ns/call",
            f"bare memoryview slice {slice_per * 1e9:.0f} ns",
        ))
    path.unlink()
    fl.close()
    rows.insert(0, (
        "floor: 2 x msync(4 KiB)",
        f"{1 / floor_p50:,.0f} /s",
        f"p50 {floor_p50 * 1e6:.0f} us, p99 {pct(floor, 0.99) * 1e6:.0f} us",
        "baseline",
    ))
    print(f"mappedpages core benchmark on {directory} ({platform.system()} {platform.machine()}, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs)")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("operation", "rate", "latency", "vs floor")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main() -> None:
    if len(sys.argv) > 1:
        bench(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
            bench(Path(tmp))


if __name__ == "__main__":
    main()
