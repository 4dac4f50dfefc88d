"""Benchmark SubPageAllocator against a pure-Python bitmask allocator.

Run by hand, with the package installed (or PYTHONPATH=. from the checkout):

    python benchmarks/bench_subpage.py [--n 100000] [--repeat 3] [--dir DIR]

For each sub-page size it allocates N sub-pages, then frees them all in a
shuffled order, with single calls ("single") and with one bulk call each way
("bulk"), and prints ops/s (best of --repeat runs). "warm" repeats the single
calls on big pages that are already held and never empty (slot 0 of each is
kept), so no call commits: that row is the per-call cost alone. Beside it, in
the same run:

  * "py+pager": the same algorithm in pure Python (an int mask per big page,
    a stack of pages with free slots), taking and returning big pages through
    the same kind of Pager. Every big-page checkout and return is a durable
    commit (msync) in both, so this is the like-for-like comparison.
  * "py, no pager": the pure-Python bookkeeping alone, big page ids from a
    counter: what the masks cost without any commit.
  * the bare cost of one cffi call into the core (mp_subpage_stats), and
    of the live_count property that wraps it with the lock and checks.

The file lives in --dir (default: a temporary folder), so the commit cost is
that of the file system there.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from mappedpages import Pager, SubPageAllocator
from mappedpages._core import ffi, lib

PAGE_SIZE = 4096


class PyBitmaskAllocator:
    """Pure-Python reference: int mask per big page, stack of pages with room."""

    def __init__(self, pager: Pager | None, sub_size: int) -> None:
        self.pager = pager
        self.slots = PAGE_SIZE // sub_size
        self.full = (1 << self.slots) - 1
        self.masks: dict[int, int] = {}
        self.avail: list[int] = []  # pages with a free slot
        self.pos: dict[int, int] = {}  # page -> index in avail
        self.next_fake = 3

    def _new_pages(self, k: int) -> list[int]:
        if self.pager is not None:
            return [self.pager.alloc()] if k == 1 else self.pager.alloc_bulk(k)
        start = self.next_fake
        self.next_fake += k
        return list(range(start, start + k))

    def _return_pages(self, pages: list[int]) -> None:
        if self.pager is None or not pages:
            return
        if len(pages) == 1:
            self.pager.free(pages[0])
        else:
            self.pager.free_bulk(pages)

    def _avail_remove(self, page: int) -> None:
        i = self.pos.pop(page)
        last = self.avail.pop()
        if last != page:
            self.avail[i] = last
            self.pos[last] = i

    def _avail_push(self, page: int) -> None:
        self.pos[page] = len(self.avail)
        self.avail.append(page)

    def _take(self, page: int) -> int:
        mask = self.masks[page]
        free = ~mask & self.full
        bit = free & -free
        mask |= bit
        self.masks[page] = mask
        if mask == self.full:
            self._avail_remove(page)
        return page * self.slots + bit.bit_length() - 1

    def alloc(self) -> int:
        if not self.avail:
            page = self._new_pages(1)[0]
            self.masks[page] = 0
            self._avail_push(page)
        return self._take(self.avail[-1])

    def free(self, sub_id: int) -> None:
        page, slot = divmod(sub_id, self.slots)
        mask = self.masks.get(page)
        bit = 1 << slot
        if mask is None or not mask & bit:
            raise KeyError(sub_id)
        if mask == bit:
            self._return_pages([page])
            if page in self.pos:
                self._avail_remove(page)
            del self.masks[page]
            return
        if mask == self.full:
            self._avail_push(page)
        self.masks[page] = mask & ~bit

    def alloc_bulk(self, n: int) -> list[int]:
        spare = len(self.masks) * self.slots - sum(bin(m).count("1") for m in self.masks.values())
        fresh = max(0, -(-(n - spare) // self.slots))
        new = self._new_pages(fresh) if fresh else []
        out: list[int] = []
        while len(out) < n and self.avail:
            page = self.avail[-1]
            while len(out) < n and self.masks[page] != self.full:
                out.append(self._take(page))
        for page in new:
            self.masks[page] = 0
            self._avail_push(page)
            while len(out) < n and self.masks[page] != self.full:
                out.append(self._take(page))
        return out

    def free_bulk(self, ids: list[int]) -> None:
        masks = self.masks
        cleared: dict[int, int] = {}
        for sub_id in ids:
            page, slot = divmod(sub_id, self.slots)
            bit = 1 << slot
            mask = cleared.get(page, masks.get(page))
            if mask is None or not mask & bit:
                raise KeyError(sub_id)
            cleared[page] = mask & ~bit
        empty = [page for page, mask in cleared.items() if mask == 0]
        self._return_pages(empty)
        for page, mask in cleared.items():
            if mask == 0:
                if page in self.pos:
                    self._avail_remove(page)
                del masks[page]
            else:
                if masks[page] == self.full:
                    self._avail_push(page)
                masks[page] = mask


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run_case(
    make: Callable[[Pager], object], folder: Path, n: int, mode: str, order: list[int], tag: str
) -> tuple[float, float]:
    """Seconds to alloc n sub-pages, then free them (in `order` of alloc index)."""
    path = folder / f"{tag}.mpp"
    if path.exists():
        path.unlink()
    pager = Pager.create(path, PAGE_SIZE)
    bulk = mode == "bulk"
    try:
        a = make(pager)
        ids: list[int] = []
        pins: list[int] = []
        if mode == "warm":
            # Check out every big page first and keep slot 0 of each, so the
            # timed calls below neither take nor return a page.
            if isinstance(a, PyBitmaskAllocator):
                slots = a.slots
            else:
                slots = a.slots_per_page  # type: ignore[attr-defined]
            got = a.alloc_bulk(n + -(-n // (slots - 1)))  # type: ignore[attr-defined]
            pins = [i for i in got if i % slots == 0]
            a.free_bulk([i for i in got if i % slots != 0])  # type: ignore[attr-defined]

        def do_alloc() -> None:
            if bulk:
                ids.extend(a.alloc_bulk(n))  # type: ignore[attr-defined]
            else:
                alloc = a.alloc  # type: ignore[attr-defined]
                ids.extend(alloc() for _ in range(n))

        t_alloc = timed(do_alloc)
        victims = [ids[i] for i in order]

        def do_free() -> None:
            if bulk:
                a.free_bulk(victims)  # type: ignore[attr-defined]
            else:
                free = a.free  # type: ignore[attr-defined]
                for v in victims:
                    free(v)

        t_free = timed(do_free)
        if pins:
            a.free_bulk(pins)  # type: ignore[attr-defined]
        if isinstance(a, SubPageAllocator):
            assert a.live_count == 0
            a.detach()
        return t_alloc, t_free
    finally:
        pager.close()
        path.unlink()


def bare_call_cost(folder: Path, calls: int) -> tuple[float, float]:
    """Seconds per raw cffi call and per live_count property read."""
    path = folder / "bare.mpp"
    pager = Pager.create(path, PAGE_SIZE)
    try:
        a = SubPageAllocator(pager, 512)
        handle = a._handle
        out = ffi.new("mp_sub_stats *")
        fn = lib.mp_subpage_stats

        def raw() -> None:
            for _ in range(calls):
                fn(handle, out)

        def prop() -> None:
            for _ in range(calls):
                a.live_count  # noqa: B018

        t_raw = min(timed(raw) for _ in range(3)) / calls
        t_prop = min(timed(prop) for _ in range(3)) / calls
        a.detach()
        return t_raw, t_prop
    finally:
        pager.close()
        path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="sub-pages per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; best is shown")
    ap.add_argument("--dir", type=Path, default=None, help="folder for the pager files")
    args = ap.parse_args()

    own = args.dir is None
    folder = Path(tempfile.mkdtemp(prefix="bench-subpage-")) if own else args.dir
    folder.mkdir(parents=True, exist_ok=True)
    n = args.n
    order = list(range(n))
    random.Random(42).shuffle(order)

    impls: list[tuple[str, Callable[[int], Callable[[Pager], object]]]] = [
        ("C SubPageAllocator", lambda sub: lambda p: SubPageAllocator(p, sub)),
        ("py+pager", lambda sub: lambda p: PyBitmaskAllocator(p, sub)),
        ("py, no pager", lambda sub: lambda p: PyBitmaskAllocator(None, sub)),
    ]
    try:
        print(
            f"{n:,} sub-pages of {PAGE_SIZE}-byte pages; alloc all, then free all "
            f"(shuffled); best of {args.repeat}; files in {folder}"
        )
        head = (
            f"{'sub':>5} {'N':>3}  {'implementation':<20} {'mode':<6} "
            f"{'alloc ops/s':>13} {'free ops/s':>13} {'commits':>10}"
        )
        print(head)
        print("-" * len(head))
        for sub in (512, 64):
            slots = PAGE_SIZE // sub
            big = -(-n // slots)
            for mode in ("single", "bulk", "warm"):
                for name, factory in impls:
                    best_a = best_f = float("inf")
                    for r in range(args.repeat):
                        ta, tf = run_case(factory(sub), folder, n, mode, order, f"{sub}-{r}")
                        best_a, best_f = min(best_a, ta), min(best_f, tf)
                    if mode == "warm" or name == "py, no pager":
                        commits = 0
                    else:
                        commits = 2 if mode == "bulk" else 2 * big
                    print(
                        f"{sub:>5} {slots:>3}  {name:<20} {mode:<6} "
                        f"{n / best_a:>13,.0f} {n / best_f:>13,.0f} {commits:>10,}"
                    )
            print()
        t_raw, t_prop = bare_call_cost(folder, 200_000)
        print(
            f"bare cffi call (lib.mp_subpage_stats): {t_raw * 1e9:8.0f} ns "
            f"= {1 / t_raw:>12,.0f} calls/s"
        )
        print(
            f"SubPageAllocator.live_count property:      {t_prop * 1e9:8.0f} ns "
            f"= {1 / t_prop:>12,.0f} calls/s"
        )
        print(
            "commits: durable pager commits in the timed part (single: one per big-page "
            "checkout and one per return; bulk: one per call)"
        )
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
