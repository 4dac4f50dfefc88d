"""The Pager's protected pages: allocation, freeing, and the writers that commit them.

A protected page is two backing pages and a directory entry naming the one
that holds the committed content; a writer stages its bytes in the other and
``mp_protected_commit`` flips the entry (FORMAT.md). ``_ProtectedCalls`` is
the part of :class:`mappedpages.Pager` that asks the core for this; the
pages it hands out join ``_system`` so that ``page()`` refuses them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from mappedpages._base import _U64_LIMIT, _PagerBase, as_id
from mappedpages._core import ffi, lib
from mappedpages._errors import raise_for
from mappedpages._ids import _ids_array
from mappedpages._protected import ProtectedWriter
from mappedpages._types import ProtectedPageId

if TYPE_CHECKING:
    from mappedpages._pager import Pager


class _ProtectedCalls(_PagerBase):
    """Protected-page calls of :class:`mappedpages.Pager` (its ``__init__`` sets ``_writers``)."""

    _writers: weakref.WeakValueDictionary[int, ProtectedWriter]

    # ------------------------------------------------------------- protected

    def alloc_protected(self) -> ProtectedPageId:
        """Allocate a protected page (zero-filled) and return its id."""
        with self._lock:
            handle = self._usable()
            self._check(lib.mp_protected_alloc(handle, self._out), "alloc_protected")
            pid = ProtectedPageId(self._out[0])
            blocks = self._dir_blocks
            self._refresh_stats()
            self._system.update(self._backing(pid))
            for block in range(blocks, self._dir_blocks):
                pair = ffi.new("uint64_t[2]")
                lib.mp_pager_dir_block_pages(handle, block, pair, pair + 1)
                self._system.update((int(pair[0]), int(pair[1])))
            return pid

    def _backing(self, pid: int) -> tuple[int, int]:
        pair = ffi.new("uint64_t[2]")
        self._check(lib.mp_protected_backing(self._handle, pid, pair, pair + 1))
        return int(pair[0]), int(pair[1])

    def alloc_protected_bulk(self, n: int) -> list[ProtectedPageId]:
        """Allocate ``n`` protected pages; on failure, frees those it allocated."""
        n = as_id(n, "n")
        if n < 0:
            raise ValueError("n must not be negative")
        with self._lock:
            self._usable()
            got: list[ProtectedPageId] = []
            try:
                for _ in range(n):
                    got.append(self.alloc_protected())
            except BaseException:
                if got:
                    self.free_protected_bulk(got)
                raise
            return got

    def free_protected(self, pid: ProtectedPageId) -> None:
        """Free a protected page and the two pages behind it."""
        self.free_protected_bulk([pid])

    def free_protected_bulk(self, pids: Iterable[ProtectedPageId]) -> None:
        """Free many protected pages; checks every id first and changes nothing on error."""
        values, arr = _ids_array(pids, "protected page id")
        with self._lock:
            handle = self._usable()
            for pid in values:
                if pid in self._writers:
                    raise_for(lib.MP_EWRITER_OPEN, f"protected page {pid}")
            if not values:
                return
            pages: list[int] = []
            for pid in values:
                pair = ffi.new("uint64_t[2]")
                if lib.mp_protected_backing(handle, pid, pair, pair + 1) == 0:
                    pages += (int(pair[0]), int(pair[1]))
            self._check(lib.mp_protected_free_bulk(handle, arr, len(values)), "free_protected")
            self._refresh_stats()
            self._system.difference_update(pages)

    def write_protected(self, pid: ProtectedPageId) -> ProtectedWriter:
        """Open a writer on a protected page.

        ``writer.page`` is a writable copy of the committed content;
        ``writer.commit()`` makes it the committed content atomically, and
        ``writer.discard()`` drops it. Used as a context manager, the writer
        commits on a clean exit and discards when the block raises.
        """
        pid = ProtectedPageId(as_id(pid, "protected page id"))
        with self._lock:
            handle = self._usable()
            if pid < 0 or pid >= _U64_LIMIT:
                raise_for(lib.MP_EOUT_OF_BOUNDS, f"protected page {pid}")
            self._check(lib.mp_protected_begin(handle, pid, self._out), f"protected page {pid}")
            # The writer's copy starts as the committed content; the staged
            # page in the file is written only at commit, with pwrite.
            active = ffi.new("uint64_t *")
            self._check(lib.mp_protected_page(handle, pid, active), f"protected page {pid}")
            view = self._view(int(active[0]), readonly=True)
            writer = ProtectedWriter(cast("Pager", self), pid, view)
            self._writers[pid] = writer
            return writer

    def _writer_finish(self, writer: ProtectedWriter, commit: bool) -> None:
        with self._lock:
            handle = self._usable()
            pid = writer.pid
            self._writers.pop(pid, None)
            if commit:
                # The core reads the writer's bytes once and writes them to the
                # staged copy (the backing page the directory does not name)
                # with pwrite, then commits (or, in a transaction, queues the
                # copy for the transaction's flush).
                buf = ffi.from_buffer(writer._buf)
                rc = lib.mp_protected_commit_bytes(handle, pid, buf, len(writer._buf))
            else:
                rc = lib.mp_protected_discard(handle, pid)
            self._check(rc, f"protected page {pid}")
