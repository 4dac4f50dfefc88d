"""The pager's reader-table calls: listing readers, and a writer's snapshots and pins.

``_ReaderListing`` is the part both :class:`mappedpages.Pager` and
:class:`mappedpages.ReadOnlyPager` have (``readers()``); ``_SnapshotCalls`` is
the writer's (attaching the table, ``pinned_free_pages``, ``snapshot()``).
The rules of the table are the C core's (readers.c, pins.c); the Python side
of the table is ``_readers``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mappedpages._base import _PagerBase, raise_for_rc
from mappedpages._core import ffi, lib
from mappedpages._readers import ReaderInfo, list_readers, pinned_pages, table_error, table_path

if TYPE_CHECKING:
    from mappedpages._readonly import ReadOnlyPager


class _ReaderListing(_PagerBase):
    """``readers()``, for writers and readers alike."""

    def readers(self) -> list[ReaderInfo]:
        """The live snapshot readers of this file, oldest generation first.

        Each is a :class:`ReaderInfo` (pid, generation, age in seconds, page
        count); slots left by processes that died are cleared on the way.
        A pager that holds no reader table (a reader opened with
        ``snapshot=False``) lists none.
        """
        with self._lock:
            return list_readers(self._usable())



class _SnapshotCalls(_ReaderListing):
    """The writer's side of the reader table."""

    def _attach_readers(self, raw: bytes, max_readers: int) -> None:
        # The reader table: from here on a page freed is not handed out again
        # while a live reader's snapshot may have it allocated.
        rc = lib.mp_readers_attach(self._handle, table_path(raw), max_readers)
        if rc != 0:
            self.close()
            err = table_error(rc, self._path)
            if err is not None:
                raise err
            raise_for_rc(rc, "reader table", self._path)

    @property
    def pinned_free_pages(self) -> int:
        """Pages freed (durably) but not handed out again: a live reader's snapshot has them.

        They are reused once every reader that holds a commit in which they
        were allocated has refreshed past it or closed; until then the file
        grows instead. See :meth:`readers`.
        """
        with self._lock:
            return pinned_pages(self._usable())

    def snapshot(self) -> ReadOnlyPager:
        """Return a reader of the latest commit, for threads that read while others write.

        The same type and guarantee as :meth:`ReadOnlyPager.open` with
        ``snapshot=True``, on a new descriptor of this pager's file (the path
        is not opened again). Inside a transaction it shows the commit before
        the transaction; in ``"none"`` mode the commits made so far are
        written first. Raises :class:`ReadersFull` when the table is full.
        """
        from mappedpages._readonly import ReadOnlyPager

        with self._lock:
            handle = self._usable()
            out = ffi.new("mp_pager **")
            report = ffi.new("mp_open_report *")
            raw = os.fsencode(self._path)
            self._check(lib.mp_pager_snapshot(handle, table_path(raw), out, report), "snapshot")
        reader = ReadOnlyPager(out[0], self._path)
        reader._became_snapshot()
        return reader

