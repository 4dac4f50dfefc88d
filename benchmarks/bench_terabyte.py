"""Big sparse files, run by hand: python benchmarks/bench_terabyte.py [--dir DIR] [--quick].

Needs the extended layout (format 0.3: ``Pager.create(..., grow_step=, preallocate=)``).

For files of 2**12, 2**20 and 2**27 pages (1 KiB pages by default: 4 MiB, 1 GiB and
128 GiB; ``--page-size``, ``--sizes``; ``--quick`` is 2**12, 2**16, 2**20), each created
sparsely (``preallocate=False``, a grow_step of 1/32 of the target, so the file ends close
to it), prints one table with a row per file:

* build: allocate every page with ``alloc_bulk(n, out=array('Q'))`` in batches of 2**20 at
  ``durability="none"``, ``sync()``, then free every other page of the second half (even
  ids >= pages / 2: a quarter of the file, free pages in every chunk of that half, the
  lowest one in the middle of the file) with ``free_bulk(array('Q'))``, ``sync()``,
  ``close()``. Reported, not the point. No Python list of ids is made; the ids to free are
  kept in ``array('Q')`` slices until every page is allocated (8 bytes per freed page:
  256 MiB at 2**27 pages);
* open: median of several ``Pager.open`` + ``close`` and ``ReadOnlyPager.open`` + ``close``
  right after the build (page cache warm: nothing is dropped);
* durable alloc + free: median latency of one ``alloc()`` + ``free()`` pair (two commits)
  at ``durability="compat"`` and at ``"fast"``; the pair takes the lowest free page, in the
  middle of the file;
* ``alloc_bulk(10_000, out=...)`` + ``free_bulk`` of those ids at ``"compat"``: pages/s of
  each (fewer than 10,000 when the file has fewer free pages: 1,024 at 2**12);
* the floor, measured in the same run and interleaved with the alloc/free pairs: one bare
  msync of one dirtied 4 KiB page of an ordinary mmap'd file in the same folder, and two
  (p50). The pairs of all sizes are taken in interleaved rounds (all files stay on disk
  until the end), so a drift of the disk's latency falls on every size alike;
* the ratio of each durable alloc + free latency to the same at the smallest size.

Files live in a temporary folder made in ``--dir`` (default: the current directory, so
that the figures are those of the disk the project is on), removed afterwards; each file
is deleted once its row is measured. Sparse: only the pages the pager writes take disk
space (the table prints each file's size on disk beside its length).
"""

from __future__ import annotations

import argparse
import inspect
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from suite import machine  # benchmarks/suite.py: the same machine line as `mappedpages bench`

import mappedpages
from mappedpages import Pager, ReadOnlyPager

SIZES = (2**12, 2**20, 2**27)
QUICK_SIZES = (2**12, 2**16, 2**20)
PAGE_SIZE = 1024
BATCH = 1 << 20  # pages per alloc_bulk call while building
BULK = 10_000
WARMUP = 20
FLOOR_PAGE = max(4096, mmap.PAGESIZE)


@dataclass
class Settings:
    """How many samples each measurement takes."""

    pairs: int = 200  # durable alloc()+free() pairs per mode
    opens: int = 7  # Pager.open+close and ReadOnlyPager.open+close
    bulk_rounds: int = 20  # alloc_bulk + free_bulk rounds

    @classmethod
    def quick(cls) -> Settings:
        return cls(pairs=100, opens=5, bulk_rounds=10)


@dataclass
class Result:
    pages: int
    disk_bytes: int
    version: str
    build_s: float
    open_w_ms: float
    open_r_ms: float
    compat_us: float
    fast_us: float
    bulk_n: int
    bulk_alloc_ps: float
    bulk_free_ps: float
    msync1_us: float
    msync2_us: float


class MsyncFloor:
    """Bare msyncs of dirtied 4 KiB pages of a plain mmap'd file (blocks written, not sparse).

    ``sample()`` dirties a page (alternating between pages 1 and 2, as commits alternate
    metadata copies) and msyncs it, then dirties page 0 and msyncs it: the time of the first
    flush is a one-msync sample, the time of both a two-msync sample.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "floor.bin"
        with open(self.path, "wb") as fh:
            fh.write(bytes(4 * FLOOR_PAGE))
            fh.flush()
            os.fsync(fh.fileno())
        self.fd = os.open(self.path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 4 * FLOOR_PAGE)
        self.i = 0
        self.one: list[int] = []
        self.two: list[int] = []

    def sample(self) -> None:
        self.i += 1
        off = FLOOR_PAGE * (1 + (self.i & 1))
        t = time.perf_counter_ns()
        self.map[off] = self.i & 0xFF
        self.map.flush(off, FLOOR_PAGE)
        t1 = time.perf_counter_ns()
        self.map[0] = self.i & 0xFF
        self.map.flush(0, FLOOR_PAGE)
        t2 = time.perf_counter_ns()
        self.one.append(t1 - t)
        self.two.append(t2 - t)

    def take(self) -> tuple[float, float]:
        """Return the p50 of one and of two msyncs in us since the last take, and reset."""
        one, two = statistics.median(self.one), statistics.median(self.two)
        self.one, self.two = [], []
        return one / 1e3, two / 1e3

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)
        self.path.unlink()


def grow_step_for(pages: int, page_size: int) -> int:
    """A grow_step of 1/32 of the target: the file ends at most ~3% past it."""
    return max(64 * page_size, pages * page_size // 32)


def build(path: Path, target: int, page_size: int, grow_step: int) -> float:
    """Create the file, fill it, free the pattern; return the seconds taken."""
    t = time.perf_counter_ns()
    half = target // 2
    buf = array("Q", bytes(8 * BATCH))
    to_free: list[array[int]] = []
    with Pager.create(path, page_size, durability="none", grow_step=grow_step,
                      preallocate=False) as pager:
        if target > pager.max_pages:
            raise ValueError(f"{target:,} pages of {page_size} bytes exceed this pager's "
                             f"max_pages ({pager.max_pages:,})")
        while True:
            free = pager.free_page_count
            if free == 0:
                if pager.page_count >= target:
                    break
                n = 1  # no free page: this alloc grows (doubles) the file
            else:
                n = min(BATCH, free)
            pager.alloc_bulk(n, out=buf)
            # Nothing is freed while building, so each call returns ascending ids, all
            # above the previous call's.
            if buf[n - 1] >= half:
                i = 0 if buf[0] >= half else bisect_left(buf, half, 0, n)
                i += buf[i] & 1  # even ids: every other page
                if i < n:
                    to_free.append(buf[i:n:2])
        pager.sync()
        while to_free:
            pager.free_bulk(to_free.pop())
        pager.sync()
    return (time.perf_counter_ns() - t) / 1e9


def time_opens(path: Path, page_size: int, grow_step: int, s: Settings) -> tuple[float, float]:
    """Median ms of Pager.open+close and of ReadOnlyPager.open+close, alternated."""
    writer: list[int] = []
    reader: list[int] = []
    for _ in range(s.opens):
        t = time.perf_counter_ns()
        pager = Pager.open(path, page_size, grow_step=grow_step, preallocate=False)
        pager.close()
        writer.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        ro = ReadOnlyPager.open(path, page_size)
        ro.close()
        reader.append(time.perf_counter_ns() - t)
    return statistics.median(writer) / 1e6, statistics.median(reader) / 1e6


ROUNDS = 10  # the alloc/free pairs of every file are taken in this many interleaved rounds


def time_pairs_interleaved(pagers: list[Pager], floor: MsyncFloor, s: Settings) -> list[float]:
    """Median us of one durable alloc() + free() per pager.

    The pairs are taken in rounds that visit every file in turn, each pair
    beside a floor sample, so a drift of the disk's latency (a virtual disk
    wanders by tens of percent over minutes) falls on every size alike and
    the ratios between sizes stay fair.
    """
    for pager in pagers:
        for _ in range(WARMUP):
            pager.free(pager.alloc())
    lat: list[list[int]] = [[] for _ in pagers]
    for _ in range(ROUNDS):
        for i, pager in enumerate(pagers):
            alloc, free = pager.alloc, pager.free
            for _ in range(max(1, s.pairs // ROUNDS)):
                floor.sample()
                t = time.perf_counter_ns()
                pid = alloc()
                free(pid)
                lat[i].append(time.perf_counter_ns() - t)
    return [statistics.median(x) / 1e3 for x in lat]


def time_bulk(pager: Pager, s: Settings) -> tuple[int, float, float]:
    """Pages/s of alloc_bulk(n, out=array('Q')) and of free_bulk of the same ids (p50)."""
    n = min(BULK, pager.free_page_count)
    ids = array("Q", bytes(8 * n))
    pager.alloc_bulk(n, out=ids)  # warm-up
    pager.free_bulk(ids)
    a: list[int] = []
    f: list[int] = []
    for _ in range(s.bulk_rounds):
        t = time.perf_counter_ns()
        pager.alloc_bulk(n, out=ids)
        t1 = time.perf_counter_ns()
        pager.free_bulk(ids)
        t2 = time.perf_counter_ns()
        a.append(t1 - t)
        f.append(t2 - t1)
    return n, n / (statistics.median(a) / 1e9), n / (statistics.median(f) / 1e9)


def measure(work: Path, sizes: list[int], page_size: int, s: Settings,
            floor: MsyncFloor) -> list[Result]:
    """Build every file, time opens and bulk calls on each, then the durable
    alloc/free pairs of all files interleaved (one mode at a time)."""
    rows: list[dict] = []
    for target in sizes:
        path = work / f"terabyte-{target}.mpp"
        grow_step = grow_step_for(target, page_size)
        progress(f"{target:,} pages: building")
        build_s = build(path, target, page_size, grow_step)
        progress(f"{target:,} pages: open, bulk")
        open_w, open_r = time_opens(path, page_size, grow_step, s)
        with Pager.open(path, page_size, durability="compat", grow_step=grow_step,
                        preallocate=False) as pager:
            bulk = time_bulk(pager, s)
        rows.append(dict(path=path, grow_step=grow_step, build_s=build_s, open_w=open_w,
                         open_r=open_r, bulk=bulk))
    pairs: dict[str, list[float]] = {}
    info: list[tuple[int, str]] = []
    for mode in ("compat", "fast"):
        progress(f"durable alloc/free pairs, {mode}, all sizes interleaved")
        pagers = [Pager.open(r["path"], page_size, durability=mode, grow_step=r["grow_step"],
                             preallocate=False) for r in rows]
        try:
            info = [(p.page_count, p.format_version) for p in pagers]
            pairs[mode] = time_pairs_interleaved(pagers, floor, s)
        finally:
            for p in pagers:
                p.close()
    msync1, msync2 = floor.take()
    results = []
    for i, r in enumerate(rows):
        disk = os.stat(r["path"]).st_blocks * 512
        r["path"].unlink()
        bulk_n, bulk_a, bulk_f = r["bulk"]
        results.append(Result(info[i][0], disk, info[i][1], r["build_s"], r["open_w"],
                              r["open_r"], pairs["compat"][i], pairs["fast"][i],
                              bulk_n, bulk_a, bulk_f, msync1, msync2))
    return results


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


def progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError


def pages_text(n: int) -> str:
    if n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1} ({n:,})"
    return f"{n:,}"


def render(results: list[Result], page_size: int, directory: Path) -> str:
    base = results[0]
    header = (
        "pages", "file (on disk)", "format", "build", "open ms: Pager / RO",
        "compat alloc+free", "fast alloc+free", "bulk compat: alloc / free",
        "msync x1", "msync x2", f"vs {base.pages:,} pages: compat / fast",
    )
    cells = [header]
    for r in results:
        cells.append((
            pages_text(r.pages),
            f"{human(r.pages * page_size)} ({human(r.disk_bytes)})",
            r.version,
            f"{r.build_s:.2f} s",
            f"{r.open_w_ms:.2f} / {r.open_r_ms:.2f}",
            f"{r.compat_us:.0f} us",
            f"{r.fast_us:.0f} us",
            f"{r.bulk_alloc_ps / 1e6:.1f} / {r.bulk_free_ps / 1e6:.1f} M pages/s"
            + ("" if r.bulk_n == BULK else f" (n={r.bulk_n:,})"),
            f"{r.msync1_us:.0f} us",
            f"{r.msync2_us:.0f} us",
            f"{r.compat_us / base.compat_us:.2f}x / {r.fast_us / base.fast_us:.2f}x",
        ))
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [
        f"mappedpages big-file benchmark in {directory}, {page_size}-byte pages, "
        "sparse files (preallocate=False)",
        machine(directory),
        "",
    ]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    lines += [line, "-|-".join("-" * w for w in widths)]
    for c in cells[1:]:
        lines.append(" | ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    lines += [
        "",
        "build: alloc_bulk of every page in batches of 2**20 at durability='none', sync, "
        "free_bulk of every other page of the second half, sync, close.",
        "open: median of Pager.open+close and ReadOnlyPager.open+close right after the build "
        "(page cache warm).",
        "alloc+free: p50 of one durable alloc() + free() pair (two commits) taking the lowest "
        "free page, in the middle of the file. Its floor is 2 x 'msync x2' for 'compat', "
        "2 x 'msync x1' for 'fast' in the v0.2 layout; past the v0.2 cap (format 0.3) a "
        "commit in both modes is one flush (one fdatasync for the changed free-map page and "
        "the metadata copy), so about 2 x 'msync x1'.",
        "bulk: p50 pages/s of alloc_bulk(n, out=array('Q')) and of free_bulk of those ids, "
        "one commit each.",
        f"floors: bare msyncs of dirtied {FLOOR_PAGE // 1024} KiB pages of a plain mmap'd "
        "file in the same folder, interleaved with the alloc/free pairs (p50; the pairs of all "
        "sizes are taken in interleaved rounds, so one floor serves every row).",
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for item in text.split(","):
        item = item.strip().replace("^", "**")
        if "**" in item:
            b, e = item.split("**", 1)
            value = int(b) ** int(e)
        else:
            value = int(item.replace("_", ""))
        if value < 8:
            raise argparse.ArgumentTypeError(f"{item}: a file has at least 8 pages here")
        sizes.append(value)
    return sorted(set(sizes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build big sparse pager files (2**12, 2**20, 2**27 pages) and measure "
        "open, durable alloc/free and bulk calls on each beside bare msyncs; print one table.",
    )
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the files (default: the current directory); a "
                        "temporary folder is made in it and removed afterwards")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE,
                        help=f"page size in bytes (default {PAGE_SIZE})")
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="comma-separated page counts, e.g. 2**12,2**20 or 4096,1048576")
    parser.add_argument("--quick", action="store_true",
                        help="2**12, 2**16, 2**20 pages and fewer samples")
    args = parser.parse_args(argv)
    if "grow_step" not in inspect.signature(Pager.create).parameters:
        print(f"this mappedpages ({mappedpages.__version__}, {mappedpages.__file__}) has no "
              "extended layout (Pager.create takes no grow_step): rebuild it first",
              file=sys.stderr)
        return 2
    s = Settings.quick() if args.quick else Settings()
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    directory = args.dir if args.dir is not None else Path(os.getcwd())
    directory.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mappedpages-terabyte-", dir=directory))
    results: list[Result] = []
    try:
        floor = MsyncFloor(work)
        try:
            results = measure(work, sizes, args.page_size, s, floor)
        finally:
            floor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(results, args.page_size, directory))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
