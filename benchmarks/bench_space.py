"""Benchmark of giving space back and online backup: python benchmarks/bench_space.py [DIR].

Prints each figure beside its baseline, measured in the same run on the same
file system:

- punch_free on a 2^20-page file (4 KiB pages, one file-system block each)
  with 90 % of its pages freed in a random pattern: disk usage after against
  before (target: at most 12 %); the same with 1 KiB pages, where a block is
  given back only when all four of its pages are free;
- trim after freeing the tail half: the file's size against the live extent
  (target: equal) and against its size before;
- backup of a 2^27-page sparse file (4 KiB pages) holding 10^5 live pages,
  against os.copy_file_range of exactly those pages' bytes at their offsets
  into a sparse file, fsync'd (target: within 3x the time), and the copy's
  disk usage against the live bytes (target: within 1.1x). Rounds of the two
  are interleaved so both see the same machine load.

MAPPEDPAGES_BENCH_SCALE (default 1) scales the page counts down (0.1: a
quick run), never up.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path

from mappedpages import Pager

SCALE = min(1.0, float(os.environ.get("MAPPEDPAGES_BENCH_SCALE", "1")))
ROUNDS = 3


def disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def alloc_all(p: Pager, n: int, batch: int = 1 << 20) -> int:
    """Allocate n pages without building Python lists of their ids; return the last id."""
    out = array("Q", bytes(8 * batch))
    last = 0
    while n > 0:
        k = min(n, batch)
        if k < batch:
            out = array("Q", bytes(8 * k))
        p.alloc_bulk(k, out=out)
        last = max(last, out[-1])
        n -= k
    return last


def free_all_but(p: Pager, keep: set[int], count: int, chunk_pages: int,
                 batch: int = 1 << 22) -> None:
    """Free every regular page below count except those in keep, a batch at a time."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - slower, same result
        np = None
    kept = sorted(keep)
    for lo in range(3, count, batch):
        hi = min(count, lo + batch)
        if np is not None:
            ids = np.arange(lo, hi, dtype=np.uint64)
            mask = ~((ids >= chunk_pages) & (ids % chunk_pages < 4))
            mask &= ~np.isin(ids, np.array(kept, dtype=np.uint64))
            p.free_bulk(np.ascontiguousarray(ids[mask]))
        else:
            p.free_bulk(array("Q", (i for i in range(lo, hi)
                                    if i not in keep and not (i >= chunk_pages
                                                              and i % chunk_pages < 4))))


def bench_punch(root: Path, page_size: int) -> None:
    n = int((1 << 20) * SCALE)
    path = root / f"punch-{page_size}.mpp"
    with Pager.create(path, page_size, preallocate=True) as p:
        alloc_all(p, n)
        ids = list(p.allocated_pages())
        for i in ids[:: max(1, len(ids) // 1000)]:
            p.page(i)[:8] = b"livedata"
        p.sync()
        gone = random.Random(1).sample(ids, len(ids) * 9 // 10)
        gone.sort()
        for at in range(0, len(gone), 1 << 20):
            p.free_bulk(array("Q", gone[at : at + (1 << 20)]))
        before = disk(path)
        t0 = time.perf_counter()
        released = p.punch_free()
        took = time.perf_counter() - t0
        after = disk(path)
    print(f"punch_free, {n} pages of {page_size} B, 90 % freed at random: disk {mib(after)} "
          f"after vs {mib(before)} before = {after / before:.1%} (target <= 12 %); "
          f"released {mib(released)} in {took:.2f} s")
    path.unlink()


def bench_trim(root: Path) -> None:
    n = int((1 << 20) * SCALE)
    path = root / "trim.mpp"
    with Pager.create(path, 1024, preallocate=False) as p:
        alloc_all(p, n)
        ids = list(p.allocated_pages())
        half = len(ids) // 2
        for at in range(half, len(ids), 1 << 20):
            p.free_bulk(array("Q", ids[at : at + (1 << 20)]))
        before = os.path.getsize(path)
        t0 = time.perf_counter()
        given = p.trim()
        took = time.perf_counter() - t0
        extent = (max(ids[:half]) + 1) * 1024
        after = os.path.getsize(path)
        pages = p.page_count
    print(f"trim after freeing the tail half of {n} pages: size {mib(after)} vs live extent "
          f"{mib(extent)} ({'equal' if after == extent else 'NOT equal'}; {pages} pages) and "
          f"{mib(before)} before; gave back {given} pages in {took * 1000:.1f} ms")
    path.unlink()


def copy_live_baseline(src: Path, dst: Path, live: list[int], page_size: int) -> float:
    """os.copy_file_range of the live pages at their offsets into a sparse file, fsync'd."""
    t0 = time.perf_counter()
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fout, os.fstat(fin).st_size)
        for i in live:
            off = i * page_size
            os.copy_file_range(fin, fout, page_size, off, off)
        os.fsync(fout)
    finally:
        os.close(fin)
        os.close(fout)
    return time.perf_counter() - t0


def bench_backup(root: Path) -> None:
    total = int((1 << 27) * SCALE)
    live_n = int(100_000 * SCALE)
    ps = 4096
    src = root / "source.mpp"
    t_setup = time.perf_counter()
    p = Pager.create(src, ps, preallocate=False, durability="fast")
    try:
        count = alloc_all(p, total - 4) + 1
        chunk = p._chunk  # pages per free-map chunk
        rnd = random.Random(2)
        keep: set[int] = set()
        while len(keep) < live_n:
            i = rnd.randrange(3, count)
            if not (i >= chunk and i % chunk < 4):
                keep.add(i)
        free_all_but(p, keep, count, chunk)
        live = sorted(set(p.allocated_pages()))
        for i in live:
            p.page(i)[:16] = i.to_bytes(16, "little")
        p.sync()
        setup = time.perf_counter() - t_setup
        ours: list[float] = []
        base: list[float] = []
        for r in range(ROUNDS):
            dst = root / f"backup-{r}.mpp"
            t0 = time.perf_counter()
            p.backup(dst)
            ours.append(time.perf_counter() - t0)
            copy_disk = disk(dst)
            if r < ROUNDS - 1:
                dst.unlink()
            bdst = root / f"baseline-{r}.mpp"
            base.append(copy_live_baseline(src, bdst, live, ps))
            bdst.unlink()
        live_bytes = len(live) * ps
        t_ours, t_base = statistics.median(ours), statistics.median(base)
        print(f"backup of a {count}-page sparse file ({mib(count * ps)}) with {len(live)} live "
              f"pages ({mib(live_bytes)}): {t_ours:.3f} s vs copy_file_range of the live pages "
              f"{t_base:.3f} s = {t_ours / t_base:.2f}x (target <= 3x); "
              f"copy on disk {mib(copy_disk)} vs live {mib(live_bytes)} = "
              f"{copy_disk / live_bytes:.3f}x (target <= 1.1x); setup took {setup:.0f} s")
    finally:
        p.close()
        for f in root.glob("backup-*.mpp"):
            f.unlink()
        src.unlink()


def main() -> None:
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        root = Path(tmp)
        bench_punch(root, 4096)
        bench_punch(root, 1024)
        bench_trim(root)
        bench_backup(root)


if __name__ == "__main__":
    main()
