"""Workloads for the power-loss model: operations, and the states they may leave.

A workload is a list of :class:`Op`; :func:`state_of` reads what an open
pager shows (allocated pages, protected pages and their bytes) as a
:class:`State`, the unit ``powerloss`` judges crash images against.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from mappedpages import Pager
from mappedpages._core import ffi, lib

from .geometry import layout_pages_below
from .iohooks import _raise

# --------------------------------------------------------------------------
# What a pager shows: the state a crash must preserve
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What commits make durable: allocation, system pages, protected contents.

    Data written through page views without sync() is not covered by any
    commit, so it is not part of the state.
    """

    page_count: int
    allocated: frozenset[int]
    system: frozenset[int]  # directory pages and protected backing pages
    protected: tuple[tuple[int, int], ...]  # (protected id, CRC-32 of committed content)

    def key(self) -> tuple[Any, ...]:
        return (self.allocated, self.system, self.protected)

    def needed_pages(self) -> int:
        used = self.allocated | self.system
        return max(max(used) + 1 if used else 0, 4)

    def matches(self, other: State) -> bool:
        """Same commits; ``other`` (recovered) may count more pages than needed."""
        return self.key() == other.key() and other.page_count >= self.needed_pages()

    def describe(self) -> str:
        return (
            f"{self.page_count} pages, allocated {sorted(self.allocated)}, "
            f"system {sorted(self.system)}, protected {dict(self.protected)}"
        )


def _list_system(handle: Any) -> list[int]:
    buf = ffi.new("uint64_t[]", 1024)
    n = ffi.new("uint64_t *")
    out: list[int] = []
    start = 0
    while True:
        rc = lib.mp_pager_list_pages(handle, lib.MP_KIND_SYSTEM, start, buf, 1024, n)
        if rc != 0:
            _raise(rc, "list system pages")
        got = ffi.unpack(buf, int(n[0]))
        out += got
        if len(got) < 1024:
            return out
        start = got[-1] + 1


def state_of(p: Any) -> State:
    """The durable-by-commit state of an open pager."""
    allocated = frozenset(p.allocated_pages())
    system = frozenset(_list_system(p._handle))
    prot = []
    for pid in p.allocated_protected_pages():
        v = p.protected_page(pid)
        try:
            prot.append((pid, zlib.crc32(v) & 0xFFFFFFFF))
        finally:
            v.release()
    return State(p.page_count, allocated, system, tuple(prot))


def count_problem(p: Any, st: State) -> str | None:
    """A disagreement between the pager's counts and its page sets, if any."""
    # Pages 0-2, and in the extended layout the layout pages of each chunk
    # past the first, as the core places them.
    layout = layout_pages_below(p.page_size, st.page_count)
    expect_free = st.page_count - layout - len(st.allocated) - len(st.system)
    if p.free_page_count != expect_free:
        return (
            f"free_page_count {p.free_page_count} but page_count {st.page_count} - {layout} "
            f"layout - {len(st.allocated)} allocated - {len(st.system)} system = {expect_free}"
        )
    if st.allocated & st.system:
        return f"pages both regular and system: {sorted(st.allocated & st.system)}"
    return None


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------


@dataclass
class Op:
    name: str  # "alloc", "free", "alloc_bulk", "sync", ... (sync acknowledges in mode none)
    label: str
    fn: Callable[[Pager, dict[str, Any]], None]


def _fill(seed: int, n: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(n)


def _write_protected(pid_key: str, seed: int, commit: bool = True) -> Callable[..., None]:
    def fn(p: Pager, ctx: dict[str, Any]) -> None:
        pid = ctx[pid_key]
        w = p.write_protected(pid)
        try:
            w.page[:] = _fill(seed, p.page_size)
        except BaseException:
            w.discard()
            raise
        if commit:
            w.commit()
        else:
            w.discard()

    return fn


def _poke(key: str, seed: int) -> Callable[..., None]:
    """Write user data into an allocated page, without sync (not a commit)."""

    def fn(p: Pager, ctx: dict[str, Any]) -> None:
        ids = ctx[key] if isinstance(ctx[key], list) else [ctx[key]]
        for i, page_id in enumerate(ids[:3]):
            v = p.page(page_id)
            v[:] = _fill(seed + i, p.page_size)
            v.release()

    return fn


def _store(key: str, fn: Callable[[Pager], Any]) -> Callable[..., None]:
    def run(p: Pager, ctx: dict[str, Any]) -> None:
        ctx[key] = fn(p)

    return run


def standard_workload() -> list[Op]:
    """Alloc, free, bulk calls, growth (4 -> 64 pages), protected pages, sync.

    Deterministic: the same calls give the same ids and bytes every run.
    """
    ops = [
        Op("alloc", "alloc (page 3)", _store("a", lambda p: p.alloc())),
        Op("alloc", "alloc (grows 4 -> 8)", _store("b", lambda p: p.alloc())),
        Op("poke", "write a page without sync", _poke("b", 1)),
        Op("alloc", "alloc zero=True", _store("c", lambda p: p.alloc(zero=True))),
        Op("free", "free", lambda p, c: p.free(c["b"])),
        Op("alloc_bulk", "alloc_bulk(6) (grows 8 -> 16)",
           _store("bulk", lambda p: p.alloc_bulk(6))),
        Op("poke", "write bulk pages without sync", _poke("bulk", 2)),
        Op("free_bulk", "free_bulk(3)", lambda p, c: p.free_bulk(c["bulk"][:3])),
        Op("alloc_protected", "alloc_protected (new block)",
           _store("p0", lambda p: p.alloc_protected())),
        Op("protected_commit", "protected write + commit", _write_protected("p0", 10)),
        Op("alloc_protected", "alloc_protected (same block)",
           _store("p1", lambda p: p.alloc_protected())),
        Op("protected_commit", "protected write + commit", _write_protected("p1", 11)),
        Op("protected_discard", "protected write + discard",
           _write_protected("p0", 12, commit=False)),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("protected_commit", "protected write + commit (again)", _write_protected("p0", 13)),
        Op("alloc_bulk", "alloc_bulk(20) (grows 16 -> 64)",
           _store("bulk2", lambda p: p.alloc_bulk(20))),
        Op("free_protected", "free_protected", lambda p, c: p.free_protected(c["p1"])),
        Op("alloc", "alloc (reuses a freed page)", _store("d", lambda p: p.alloc())),
        Op("free_bulk", "free_bulk(10)", lambda p, c: p.free_bulk(c["bulk2"][5:15])),
        Op("alloc_protected", "alloc_protected (reuses a slot)",
           _store("p2", lambda p: p.alloc_protected())),
        Op("protected_commit", "protected write + commit", _write_protected("p2", 14)),
        Op("free_protected", "free_protected (bulk of 2)",
           lambda p, c: p.free_protected_bulk([c["p0"], c["p2"]])),
        Op("sync", "sync", lambda p, c: p.sync()),
    ]
    return ops


def short_workload() -> list[Op]:
    """A few commits of each kind, for quick checks."""
    return [
        Op("alloc", "alloc", _store("a", lambda p: p.alloc())),
        Op("alloc_bulk", "alloc_bulk(5) (grows)", _store("bulk", lambda p: p.alloc_bulk(5))),
        Op("free", "free", lambda p, c: p.free(c["a"])),
        Op("alloc_protected", "alloc_protected (new block)",
           _store("p0", lambda p: p.alloc_protected())),
        Op("protected_commit", "protected write + commit", _write_protected("p0", 3)),
        Op("free_bulk", "free_bulk(2)", lambda p, c: p.free_bulk(c["bulk"][:2])),
        Op("free_protected", "free_protected", lambda p, c: p.free_protected(c["p0"])),
    ]


def random_workload(seed: int, n_ops: int = 40) -> list[Op]:
    """A seeded random mix of every operation; arguments are drawn from the live state.

    The kinds of operation are fixed by the seed; which pages they touch is
    drawn when they run, from a generator kept in the workload's context, so
    one recording is reproducible from its seed.
    """
    rnd = random.Random(seed)

    def rng(ctx: dict[str, Any]) -> random.Random:
        if "rnd" not in ctx:
            ctx["rnd"] = random.Random(seed * 7919 + 1)
        return ctx["rnd"]

    def free_one(p: Pager, ctx: dict[str, Any]) -> None:
        ids = list(p.allocated_pages())
        if ids:
            p.free(rng(ctx).choice(ids))

    def free_some(p: Pager, ctx: dict[str, Any]) -> None:
        ids = list(p.allocated_pages())
        if ids:
            p.free_bulk(rng(ctx).sample(ids, max(1, len(ids) // 3)))

    def alloc_some(p: Pager, ctx: dict[str, Any]) -> None:
        p.alloc_bulk(rng(ctx).choice([1, 2, 5, 9, 17]))

    def write_one(p: Pager, ctx: dict[str, Any], commit: bool = True) -> None:
        pids = list(p.allocated_protected_pages())
        if not pids:
            return
        pid = rng(ctx).choice(pids)
        w = p.write_protected(pid)
        try:
            w.page[:] = rng(ctx).randbytes(p.page_size)
        except BaseException:
            w.discard()
            raise
        if commit:
            w.commit()
        else:
            w.discard()

    def free_prot(p: Pager, ctx: dict[str, Any]) -> None:
        pids = list(p.allocated_protected_pages())
        if pids:
            p.free_protected_bulk(rng(ctx).sample(pids, rng(ctx).choice([1, 1, 2])
                                                  if len(pids) > 1 else 1))

    def poke(p: Pager, ctx: dict[str, Any]) -> None:
        ids = list(p.allocated_pages())
        for page_id in rng(ctx).sample(ids, min(2, len(ids))):
            v = p.page(page_id)
            v[:] = rng(ctx).randbytes(p.page_size)
            v.release()

    kinds = [
        (6, Op("alloc", "alloc", lambda p, c: p.alloc() and None)),
        (2, Op("alloc", "alloc zero=True", lambda p, c: p.alloc(zero=True) and None)),
        (4, Op("free", "free", free_one)),
        (3, Op("alloc_bulk", "alloc_bulk", alloc_some)),
        (2, Op("free_bulk", "free_bulk", free_some)),
        (3, Op("alloc_protected", "alloc_protected", lambda p, c: p.alloc_protected() and None)),
        (4, Op("protected_commit", "protected write + commit", write_one)),
        (1, Op("protected_discard", "protected write + discard",
               lambda p, c: write_one(p, c, commit=False))),
        (2, Op("free_protected", "free_protected", free_prot)),
        (1, Op("sync", "sync", lambda p, c: p.sync())),
        (2, Op("poke", "write pages without sync", poke)),
    ]
    weights = [w for w, _ in kinds]
    ops = [Op("alloc_bulk", "alloc_bulk(3)", lambda p, c: p.alloc_bulk(3) and None)]
    for _ in range(n_ops - 1):
        ops.append(rnd.choices([op for _, op in kinds], weights)[0])
    return ops


WORKLOADS = {"standard": standard_workload, "short": short_workload}
