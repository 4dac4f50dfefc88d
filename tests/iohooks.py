"""Test support: pagers opened with the C core's I/O hooks, and a power-loss model.

The C core sends every msync, fsync, ftruncate, fallocate, mmap and munmap
through a hook table that the caller owns (``mp_io_hooks`` in
csrc/mappedpages.h). This module gives tests three things on top of it:

* :class:`IoHooks`, the table and the Python callback it points at, kept alive
  together, with helpers to fail the Nth call of a kind (once or from then on)
  and to silence one msync;
* :func:`create_pager` / :func:`open_pager`, which return ordinary
  :class:`mappedpages.Pager` objects over a handle opened with those hooks;
* the power-loss model used by tests/test_powerloss.py and
  scripts/powerloss_sim.py: :class:`CrashRecorder` follows the durability
  barriers of a workload and records crash points; :func:`crash_images` builds
  the files a power loss could leave at a point; :class:`ImageChecker` opens
  each one with the library and judges what it shows.

The model. A shared mapping's dirty pages may reach the disk at any moment, in
any order, so only barriers order anything: after a successful msync of a
range, those bytes are durable; after an fsync, the whole file and its size
are. The recorder keeps a model of the durable file. At each barrier (just
before applying it and just after) and after each operation returns, the
dirty set is every page whose current content differs from the durable model.
A crash image is the durable model plus any subset of the dirty pages, each
written whole or torn at a 512-byte sector boundary, with the old or the new
file size. Sector writes are taken as atomic; msync is not taken to make the
file size durable (POSIX does not promise it).

What the model does not see: states a page passes through between two
barriers (a writeback racing with the stores of one in-place rewrite), since
the hooks observe barriers, not stores.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import random
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mappedpages import CorruptFileError, Pager, ReadOnlyPager, RecoveryWarning
from mappedpages._core import ffi, lib

SECTOR = 512
U64_MAX = (1 << 64) - 1

KINDS = {
    "msync": lib.MP_IO_MSYNC,
    "fsync": lib.MP_IO_FSYNC,
    "ftruncate": lib.MP_IO_FTRUNCATE,
    "fallocate": lib.MP_IO_FALLOCATE,
    "mmap": lib.MP_IO_MMAP,
    "munmap": lib.MP_IO_MUNMAP,
}
KIND_NAMES = {v: k for k, v in KINDS.items()}
FLUSH_KINDS = (lib.MP_IO_MSYNC, lib.MP_IO_FSYNC)


# --------------------------------------------------------------------------
# The hook table
# --------------------------------------------------------------------------


class IoHooks:
    """An ``mp_io_hooks`` table and its barrier callback, alive as long as this object.

    Give it to :func:`create_pager` / :func:`open_pager`; the pager keeps a
    reference, so the table lives as long as the pager does.
    """

    def __init__(self, on_barrier: Callable[[int, int, int], None] | None = None) -> None:
        self.table = ffi.new("mp_io_hooks *")
        self.errors: list[BaseException] = []
        self.barriers: list[tuple[int, int, int]] = []
        self.record_barriers = False
        self._user_cb = on_barrier
        self._cb = ffi.callback("int(void *, int, uint64_t, uint64_t)", self._on_barrier)
        self.table.on_barrier = self._cb

    def _on_barrier(self, _ctx: Any, kind: int, offset: int, length: int) -> int:
        # An exception must not cross into C: keep it and let the test raise it.
        try:
            if self.record_barriers:
                self.barriers.append((kind, offset, length))
            if self._user_cb is not None:
                self._user_cb(kind, offset, length)
        except BaseException as exc:  # noqa: BLE001 - reported by check_errors()
            self.errors.append(exc)
        return 0

    def set_barrier_callback(self, fn: Callable[[int, int, int], None] | None) -> None:
        self._user_cb = fn

    def fail(self, kind: int, at: int, err: int, persistent: bool = False) -> None:
        """Make call number ``at`` (1-based, counted from now on) of ``kind`` fail."""
        self.table.fail_at[kind] = self.table.calls[kind] + at
        self.table.fail_errno[kind] = err
        self.table.fail_persistent[kind] = 1 if persistent else 0

    def clear_faults(self) -> None:
        for k in range(lib.MP_IO_KINDS):
            self.table.fail_at[k] = 0
            self.table.fail_persistent[k] = 0
        self.table.skip_msync_at = 0

    def skip_msync(self, at: int) -> None:
        """Turn msync number ``at`` (1-based, counted from now on) into a silent no-op."""
        self.table.skip_msync_at = self.table.calls[lib.MP_IO_MSYNC] + at

    def calls(self, kind: int) -> int:
        return int(self.table.calls[kind])

    def counts(self) -> dict[str, int]:
        return {name: int(self.table.calls[k]) for name, k in KINDS.items()}

    def check_errors(self) -> None:
        if self.errors:
            raise self.errors[0]


# --------------------------------------------------------------------------
# Durability modes
# --------------------------------------------------------------------------

DURABILITY_MODES = ("compat", "fast", "none")


def durability_supported() -> bool:
    """True once Pager.create accepts a ``durability`` argument."""
    return "durability" in inspect.signature(Pager.create).parameters


def _durability_field_value(mode: str) -> int | None:
    fields = dict(ffi.typeof("mp_options").fields)
    if "durability" not in fields:
        return None
    for name in (f"MP_DURABILITY_{mode.upper()}", f"MP_DUR_{mode.upper()}"):
        if hasattr(lib, name):
            return int(getattr(lib, name))
    return None


def durability_skip_reason(mode: str, c_level: bool = False) -> str | None:
    """Why the harness cannot run ``mode`` yet, or None when it can.

    The harness opens pagers through the C API (to pass the hooks), so what
    it needs is the mp_options field; ``c_level`` False also requires that
    Pager.create accepts the mode, so that the suite tests only what users can
    choose.
    """
    if mode not in DURABILITY_MODES:
        return f"unknown durability mode {mode!r}"
    if mode == "compat":
        return None  # the default, and the only protocol before modes existed
    if not c_level and not durability_supported():
        return f"durability={mode!r} is not accepted by Pager.create yet"
    if _durability_field_value(mode) is None:
        return (
            f"mp_options has no 'durability' field with an MP_DURABILITY_{mode.upper()} "
            "value to pass the mode through"
        )
    return None


def acknowledges(op_name: str, mode: str) -> bool:
    """Whether an operation that returned is durable in this durability mode."""
    if mode == "none":
        return op_name == "sync"
    return True


# --------------------------------------------------------------------------
# Opening pagers with hooks
# --------------------------------------------------------------------------


def _options(
    page_size: int,
    hooks: IoHooks | None,
    read_only: bool = False,
    durability: str | None = None,
) -> Any:
    opts = ffi.new("mp_options *")
    opts.page_size = page_size
    opts.read_only = 1 if read_only else 0
    opts.lock_timeout = 0.0
    opts.io_hooks = hooks.table if hooks is not None else ffi.NULL
    if durability is not None:
        reason = durability_skip_reason(durability, c_level=True)
        if reason is not None:
            raise RuntimeError(reason)
        value = _durability_field_value(durability)
        if value is not None:
            opts.durability = value
    return opts


def _raise(rc: int, path: str) -> None:
    if rc != 0:
        from mappedpages._errors import raise_for

        raise_for(rc, path, path)


def create_pager(
    path: Any,
    page_size: int = 1024,
    hooks: IoHooks | None = None,
    durability: str | None = None,
    layout: str = "0.2",
) -> Pager:
    """Pager.create, with the C core's I/O going through ``hooks``."""
    text = os.fspath(path)
    out = ffi.new("mp_pager **")
    opts = _options(page_size, hooks, durability=durability)
    opts.layout = {"0.2": 2, "0.3": 3}[layout]
    _raise(lib.mp_pager_create(os.fsencode(text), opts, out), text)
    pager = Pager(out[0], text)
    pager._test_io_hooks = hooks  # type: ignore[attr-defined] # keeps the table alive
    return pager


def open_pager(
    path: Any,
    hooks: IoHooks | None = None,
    read_only: bool = False,
    durability: str | None = None,
) -> Any:
    """Pager.open (or ReadOnlyPager.open), with I/O going through ``hooks``.

    Recovery is reported with RecoveryWarning exactly as by Pager.open.
    """
    from mappedpages._base import warn_recovery

    text = os.fspath(path)
    out = ffi.new("mp_pager **")
    report = ffi.new("mp_open_report *")
    opts = _options(0, hooks, read_only=read_only, durability=durability)
    _raise(lib.mp_pager_open(os.fsencode(text), opts, out, report), text)
    cls = ReadOnlyPager if read_only else Pager
    pager = cls(out[0], text)
    pager._test_io_hooks = hooks  # type: ignore[attr-defined]
    warn_recovery(report, text, stacklevel=2)
    return pager


def close_quietly(p: Any) -> None:
    """Close P even if a failed test left views behind."""
    import gc

    for _ in range(3):
        try:
            p.close()
            return
        except BufferError:
            gc.collect()
    p.close()


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
    # Engine transactions: the roots, and (page, CRC-32) of each page a root
    # in ROOT_DATA_SLOTS names: its content is committed with the root.
    roots: tuple[int, ...] = (0,) * 8
    data: tuple[tuple[int, int], ...] = ()

    def key(self) -> tuple[Any, ...]:
        return (self.allocated, self.system, self.protected, self.roots, self.data)

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
            + (f", roots {self.roots}, data {dict(self.data)}" if any(self.roots) else "")
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
    roots = tuple(p.roots)
    data = []
    for slot in ROOT_DATA_SLOTS:
        pid = roots[slot]
        if 3 <= pid < p.page_count and pid in allocated:
            v = p.page(pid)
            try:
                data.append((pid, zlib.crc32(v) & 0xFFFFFFFF))
            finally:
                v.release()
        elif pid:
            data.append((pid, -1))  # a root naming a page that is not allocated
    return State(p.page_count, allocated, system, tuple(prot), roots, tuple(data))


# Root slots whose value is a page id in the engine workload.
ROOT_DATA_SLOTS = (0, 2)


def count_problem(p: Any, st: State) -> str | None:
    """A disagreement between the pager's counts and its page sets, if any."""
    # Pages 0-2, and in the extended layout the 4 layout pages of each chunk
    # past the first (a chunk is (page_size - 28) * 8 pages).
    chunk = (p.page_size - 28) * 8
    layout = 3 + (4 * ((st.page_count - 1) // chunk) if st.page_count > chunk else 0)
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


def engine_workload(seed: int, n_txns: int = 10) -> list[Op]:
    """Copy-on-write transactions: new pages written through ``tx.page``, the
    pages of the previous transaction freed, roots 0 and 2 naming new pages
    and root 1 counting; a sync now and then (what acknowledges in "none")."""

    def txn(p: Pager, ctx: dict[str, Any]) -> None:
        r = rng(ctx)
        with p.transaction() as tx:
            new = p.alloc_bulk(r.choice([1, 2, 3]))
            for pid in new:
                tx.page(pid)[:] = r.randbytes(p.page_size)
            old = ctx.get("engine_pages", [])
            if old:
                p.free_bulk(old)
            ctx["engine_pages"] = new
            p.set_root(0, new[0])
            p.set_root(1, ctx.setdefault("engine_n", 0) + 1)
            p.set_root(2, new[-1])
            ctx["engine_n"] += 1

    def rng(ctx: dict[str, Any]) -> random.Random:
        return ctx.setdefault("engine_rng", random.Random(seed))

    ops = []
    for i in range(n_txns):
        ops.append(Op("txn", f"transaction {i + 1}", txn))
        if i % 4 == 3:
            ops.append(Op("sync", "sync", lambda p, c: p.sync()))
    return ops


WORKLOADS = {"standard": standard_workload, "short": short_workload}


# --------------------------------------------------------------------------
# The power-loss model
# --------------------------------------------------------------------------


@dataclass
class CrashPoint:
    """A moment at which the power may fail, with what the disk may then hold."""

    index: int
    op: int  # the operation in flight (or just returned); 0 = before the first
    label: str
    durable: tuple[bytes, ...]  # the durable model, one entry per page
    durable_size: int
    dirty: dict[int, bytes]  # page -> current content, where it differs from durable
    current_size: int
    floor: int  # the oldest state an image may show (the last acknowledged)
    ceil: int  # the newest (the operation in flight)


class CrashRecorder:
    """Follows the barriers of one pager and records crash points."""

    def __init__(self, path: Any, page_size: int, mode: str = "compat") -> None:
        self.path = os.fspath(path)
        self.page_size = page_size
        self.mode = mode
        self.fd = -1
        self.durable: list[bytes] = []
        self.durable_size = 0
        self.points: list[CrashPoint] = []
        self.op = 0
        self.op_label = "start"
        self.floor = 0
        self.active = False
        self.barrier_count = 0

    # -- file access
    def _read_current(self) -> tuple[list[bytes], int]:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0)
        ps = self.page_size
        return [data[i : i + ps] for i in range(0, size, ps)], size

    def start(self) -> None:
        """Begin after create: the created file is durable (create ends with fsync)."""
        self.fd = os.open(self.path, os.O_RDONLY)
        self.durable, self.durable_size = self._read_current()
        self.active = True
        self.point("before the first operation")

    def stop(self) -> None:
        self.active = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- points
    def point(self, label: str, current: tuple[list[bytes], int] | None = None,
              floor: int | None = None) -> None:
        pages, size = current if current is not None else self._read_current()
        zero = bytes(self.page_size)
        n = max(len(pages), len(self.durable))
        dirty = {}
        for i in range(n):
            cur = pages[i] if i < len(pages) else zero
            old = self.durable[i] if i < len(self.durable) else zero
            if cur != old:
                dirty[i] = cur
        self.points.append(
            CrashPoint(
                index=len(self.points),
                op=self.op,
                label=f"op {self.op} ({self.op_label}): {label}",
                durable=tuple(self.durable),
                durable_size=self.durable_size,
                dirty=dirty,
                current_size=size,
                floor=self.floor if floor is None else floor,
                ceil=self.op,
            )
        )

    def on_barrier(self, kind: int, offset: int, length: int) -> None:
        if not self.active:
            return
        self.barrier_count += 1
        current = self._read_current()
        pages, size = current
        if kind == lib.MP_IO_FSYNC:
            what = "fsync"
        else:
            what = f"msync [{offset}, {offset + length})"
        self.point(f"before {what}", current)
        ps = self.page_size
        if kind == lib.MP_IO_FSYNC:
            self.durable = list(pages)
            self.durable_size = size
        else:
            first = offset // ps
            last = min((offset + length + ps - 1) // ps, len(pages))
            while len(self.durable) < last:
                self.durable.append(bytes(ps))
            for i in range(first, last):
                self.durable[i] = pages[i]
        self.point(f"after {what}", current)

    def begin(self, op_index: int, label: str) -> None:
        self.op = op_index
        self.op_label = label

    def end(self, op_index: int, name: str) -> None:
        if acknowledges(name, self.mode):
            self.floor = op_index
        self.point("returned")


def page_variants(old: bytes, new: bytes, sector: int = SECTOR,
                  both_ways: bool = True) -> list[tuple[str, bytes]]:
    """Ways a page may reach the disk, other than not at all: whole, or torn.

    Torn at each sector boundary: the first k sectors new and the rest old,
    and (both_ways) the first k old and the rest new.
    """
    out = [("new", new)]
    seen = {old, new}
    n = len(new) // sector
    for k in range(1, n):
        cut = k * sector
        cands = [(f"torn:first {k} sectors new", new[:cut] + old[cut:])]
        if both_ways:
            cands.append((f"torn:first {k} sectors old", old[:cut] + new[cut:]))
        for tag, data in cands:
            if data not in seen:
                seen.add(data)
                out.append((tag, data))
    return out


@dataclass
class Image:
    point: CrashPoint
    data: bytes
    choice: tuple[tuple[int, str], ...]  # (page, variant tag), pages written
    size: int

    @property
    def torn(self) -> bool:
        return any(tag.startswith("torn") for _, tag in self.choice)

    def describe(self) -> str:
        written = ", ".join(f"page {i} {tag}" for i, tag in self.choice) or "no dirty page"
        return (
            f"{self.point.label}; durable model + [{written}]; size {self.size} "
            f"(durable {self.point.durable_size}, current {self.point.current_size})"
        )


def _assemble(point: CrashPoint, choice: dict[int, bytes], size: int, page_size: int) -> bytes:
    n = max(len(point.durable), (point.current_size + page_size - 1) // page_size,
            max(choice, default=-1) + 1)
    zero = bytes(page_size)
    pages = [point.durable[i] if i < len(point.durable) else zero for i in range(n)]
    for i, data in choice.items():
        pages[i] = data
    return b"".join(pages)[:size]


def crash_images(
    point: CrashPoint,
    page_size: int,
    exhaustive_pages: int = 4,
    samples: int = 64,
    rnd: random.Random | None = None,
    sector: int = SECTOR,
    both_ways: bool = True,
    max_exhaustive: int = 1 << 16,
) -> Iterator[Image]:
    """Every candidate image at a point (or a sample when too many pages are dirty).

    Exhaustive when at most ``exhaustive_pages`` pages are dirty and the
    product of choices is at most ``max_exhaustive``; otherwise the image
    with no dirty page written, the one with all written whole, and
    ``samples`` random choices.
    """
    rnd = rnd or random.Random(point.index)
    zero = bytes(page_size)
    pages = sorted(point.dirty)
    options = []
    for i in pages:
        old = point.durable[i] if i < len(point.durable) else zero
        options.append([("old", old)] + page_variants(old, point.dirty[i], sector, both_ways))
    sizes = sorted({point.durable_size, point.current_size})
    total = len(sizes)
    for o in options:
        total *= len(o)
    if len(pages) <= exhaustive_pages and total <= max_exhaustive:
        combos: Iterable[tuple[int, ...]] = itertools.product(
            *[range(len(o)) for o in options]
        )
        for combo in combos:
            for size in sizes:
                yield _image(point, pages, options, combo, size, page_size)
        return
    picks = [tuple(0 for _ in options), tuple(1 for _ in options)]
    for _ in range(samples):
        picks.append(tuple(rnd.randrange(len(o)) for o in options))
    for combo in picks:
        for size in sizes:
            yield _image(point, pages, options, combo, size, page_size)


def _image(point: CrashPoint, pages: list[int], options: list[list[tuple[str, bytes]]],
           combo: tuple[int, ...], size: int, page_size: int) -> Image:
    choice = {}
    tags = []
    for n, (i, k) in enumerate(zip(pages, combo)):
        if k:
            tag, data = options[n][k]
            choice[i] = data
            tags.append((i, tag))
    return Image(point, _assemble(point, choice, size, page_size), tuple(tags), size)


# --------------------------------------------------------------------------
# Opening images and judging them
# --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What opening an image gave."""

    kind: str  # "ok", "corrupt" (a CorruptFileError), "error" (anything else)
    state: State | None = None
    warned: bool = False
    detail: str = ""


@dataclass
class Verdict:
    image: Image
    outcome: Outcome
    category: str  # "ok", "lost", "unknown", "unopenable"
    detail: str = ""


@dataclass
class Tally:
    images: int = 0
    distinct: int = 0
    torn: int = 0
    ok: int = 0
    lost: int = 0
    unknown: int = 0
    unopenable: int = 0
    unopenable_torn: int = 0
    warned: int = 0
    points: int = 0
    failures: list[Verdict] = field(default_factory=list)
    keep_failures: int = 20

    def add(self, v: Verdict) -> None:
        self.images += 1
        if v.image.torn:
            self.torn += 1
        if v.outcome.warned:
            self.warned += 1
        if v.category == "ok":
            self.ok += 1
            return
        if v.category == "lost":
            self.lost += 1
        elif v.category == "unknown":
            self.unknown += 1
        elif v.category == "unopenable":
            self.unopenable += 1
            if v.image.torn:
                self.unopenable_torn += 1
        if len(self.failures) < self.keep_failures:
            self.failures.append(v)

    def merge(self, other: Tally) -> None:
        for name in ("images", "distinct", "torn", "ok", "lost", "unknown", "unopenable",
                     "unopenable_torn", "warned", "points"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = self.keep_failures - len(self.failures)
        self.failures += other.failures[: max(room, 0)]

    @property
    def bad(self) -> int:
        return self.lost + self.unknown + self.unopenable

    def summary(self) -> str:
        return (
            f"{self.points} crash points, {self.images} images ({self.distinct} distinct), "
            f"{self.torn} with a torn sector; {self.ok} ok ({self.warned} with a "
            f"RecoveryWarning); acknowledged commits lost: {self.lost}; unknown state: "
            f"{self.unknown}; unopenable: {self.unopenable} ({self.unopenable_torn} torn)"
        )

    def failure_report(self, limit: int = 5) -> str:
        lines = []
        for v in self.failures[:limit]:
            lines.append(f"- {v.category}: {v.image.describe()}\n    {v.detail}")
        return "\n".join(lines)


class ImageChecker:
    """Opens crash images with Pager.open and judges them against the workload's states."""

    def __init__(self, workdir: Any, reopen: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "image.mpp"
        self.cache: dict[bytes, Outcome] = {}
        self.reopen = reopen

    def open_image(self, data: bytes) -> Outcome:
        key = hashlib.blake2b(data, digest_size=20).digest()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        out = self._open(data)
        self.cache[key] = out
        return out

    def _open_once(self) -> Outcome:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                p = Pager.open(self.path)
            except CorruptFileError as exc:
                return Outcome("corrupt", detail=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - every other failure is a finding
                return Outcome("error", detail=f"{type(exc).__name__}: {exc}")
        warned = any(issubclass(w.category, RecoveryWarning) for w in rec)
        try:
            st = state_of(p)
            problem = count_problem(p, st)
        except Exception as exc:  # noqa: BLE001
            close_quietly(p)
            return Outcome("error", detail=f"opened, then {type(exc).__name__}: {exc}")
        close_quietly(p)
        if problem:
            return Outcome("error", st, warned, f"opened with inconsistent counts: {problem}")
        return Outcome("ok", st, warned)

    def _open(self, data: bytes) -> Outcome:
        with open(self.path, "wb") as fh:
            fh.write(data)
        first = self._open_once()
        if first.kind != "ok" or not self.reopen:
            return first
        # A writer's open may repair the file; what it leaves must open the same.
        second = self._open_once()
        if second.kind != "ok" or second.state is None or first.state is None or \
                second.state.key() != first.state.key():
            return Outcome("error", first.state, first.warned,
                           f"reopening after recovery gave {second.kind} "
                           f"{second.state.describe() if second.state else second.detail}")
        return first

    def judge(self, image: Image, states: list[State]) -> Verdict:
        out = self.open_image(image.data)
        pt = image.point
        if out.kind != "ok" or out.state is None:
            return Verdict(image, out, "unopenable", out.detail)
        got = out.state
        for j in range(pt.floor, pt.ceil + 1):
            if states[j].matches(got):
                return Verdict(image, out, "ok")
        older = [j for j in range(pt.floor) if states[j].matches(got)]
        if older:
            return Verdict(
                image, out, "lost",
                f"shows the state after op {older[-1]}, but op {pt.floor} was acknowledged: "
                f"got {got.describe()}; expected {states[pt.floor].describe()}",
            )
        return Verdict(
            image, out, "unknown",
            f"matches no state of the workload: got {got.describe()}; allowed: "
            + " | ".join(states[j].describe() for j in range(pt.floor, pt.ceil + 1)),
        )


# --------------------------------------------------------------------------
# Running a workload under the model
# --------------------------------------------------------------------------


@dataclass
class Recording:
    path: Path
    page_size: int
    mode: str
    ops: list[Op]
    states: list[State]
    points: list[CrashPoint]
    barrier_counts: dict[str, int]
    op_msyncs: list[tuple[int, int]]  # per op: (first msync number, last msync number)


def record_workload(
    workdir: Any,
    ops: list[Op],
    page_size: int = 1024,
    mode: str = "compat",
    skip_msync_at: int = 0,
    layout: str = "0.2",
) -> Recording:
    """Run ``ops`` on a new file, recording crash points and the state after each op."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "work.mpp"
    if path.exists():
        path.unlink()
    rec = CrashRecorder(path, page_size, mode)
    hooks = IoHooks(rec.on_barrier)
    p = create_pager(path, page_size, hooks, durability=mode, layout=layout)
    if skip_msync_at:
        hooks.table.skip_msync_at = skip_msync_at
    ctx: dict[str, Any] = {}
    states = [state_of(p)]
    op_msyncs = []
    try:
        rec.start()
        for i, op in enumerate(ops, 1):
            rec.begin(i, op.label)
            first = hooks.calls(lib.MP_IO_MSYNC) + 1
            op.fn(p, ctx)
            hooks.check_errors()
            op_msyncs.append((first, hooks.calls(lib.MP_IO_MSYNC)))
            states.append(state_of(p))
            rec.end(i, op.name)
    finally:
        rec.stop()
        counts = hooks.counts()
        close_quietly(p)
    return Recording(path, page_size, mode, ops, states, rec.points, counts, op_msyncs)


def check_recording(
    rec: Recording,
    checker: ImageChecker,
    exhaustive_pages: int = 4,
    samples: int = 64,
    seed: int = 0,
    both_ways: bool = True,
    max_exhaustive: int = 1 << 16,
    max_points: int | None = None,
    on_point: Callable[[CrashPoint, Tally], None] | None = None,
) -> Tally:
    """Build and judge the crash images of every recorded point."""
    tally = Tally()
    rnd = random.Random(seed)
    points = rec.points
    if max_points is not None and len(points) > max_points:
        points = sorted(rnd.sample(points, max_points), key=lambda pt: pt.index)
    before = len(checker.cache)
    for pt in points:
        tally.points += 1
        for img in crash_images(pt, rec.page_size, exhaustive_pages, samples, rnd,
                                both_ways=both_ways, max_exhaustive=max_exhaustive):
            tally.add(checker.judge(img, rec.states))
        if on_point is not None:
            on_point(pt, tally)
    tally.distinct = len(checker.cache) - before
    return tally

