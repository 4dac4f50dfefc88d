"""Test support: pagers opened with the C core's I/O hooks.

The C core sends every msync, fsync, ftruncate, fallocate, mmap and munmap
through a hook table that the caller owns (``mp_io_hooks`` in
csrc/mappedpages.h). This module gives tests three things on top of it:

* :class:`IoHooks`, the table and the Python callback it points at, kept alive
  together, with helpers to fail the Nth call of a kind (once or from then on)
  and to silence one msync;
* :func:`create_pager` / :func:`open_pager`, which return ordinary
  :class:`mappedpages.Pager` objects over a handle opened with those hooks;
* the durability modes and what each acknowledges.

The power-loss model built on it is ``powerloss`` (its workloads are in
``workloads``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from mappedpages import Pager, ReadOnlyPager
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


# The mp_options value of each mode.
DURABILITY_VALUES = {
    "compat": lib.MP_DURABILITY_COMPAT,
    "fast": lib.MP_DURABILITY_FAST,
    "none": lib.MP_DURABILITY_NONE,
}


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
        opts.durability = DURABILITY_VALUES[durability]
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


def flush_calls(hooks: IoHooks) -> int:
    """Flush calls the hooks saw so far: msync and fdatasync/fsync."""
    c = hooks.counts()
    return c["msync"] + c["fsync"]


def protected_commit_flushes(p: Any, hooks: IoHooks) -> tuple[int, tuple[int, int, int]]:
    """A new protected page's id, and the flush calls of (a protected write to
    it; a transaction holding a data page, a root and a protected write; one
    holding a data page and a root only), in a "0.3" file P; the protected
    page ends with b"y" * 8 at its start."""
    pid = p.alloc_protected()
    data, leaf = p.alloc(), p.alloc()  # no growth inside what is counted
    assert p.format_version == "0.3"

    def counted(fn: Callable[[], None]) -> int:
        before = flush_calls(hooks)
        fn()
        return flush_calls(hooks) - before

    def protected_write(data_: bytes) -> None:
        with p.write_protected(pid) as w:
            w.page[:8] = data_

    def txn(page_id: int, tag: bytes, root: int, protected: bool) -> None:
        with p.transaction() as tx:
            tx.page(page_id)[:4] = tag
            p.set_root(root, page_id)
            if protected:
                protected_write(b"y" * 8)

    return pid, (
        counted(lambda: protected_write(b"x" * 8)),
        counted(lambda: txn(data, b"node", 0, True)),
        counted(lambda: txn(leaf, b"leaf", 1, False)),
    )
