"""The Pager's engine calls: roots, and flushing chosen pages.

Roots are 8 u64 values committed with the allocation state (FORMAT.md, "The
metadata tail"); ``sync(pages=...)`` and ``sync_run`` flush chosen pages' data
without a commit. ``_EngineCalls`` is that part of :class:`mappedpages.Pager`.
"""

from __future__ import annotations

from collections.abc import Iterable

from mappedpages._base import _U64_LIMIT, _PagerBase, as_id
from mappedpages._core import lib
from mappedpages._errors import raise_for
from mappedpages._types import PageId


class _EngineCalls(_PagerBase):
    """Roots and page flushes of :class:`mappedpages.Pager`."""

    _txn_depth: int  # the Pager's: open transaction blocks

    def _sync_pages(self, pages: Iterable[PageId]) -> None:
        """``sync(pages=...)``: one msync per run of consecutive ids, bounds checked first."""
        ids = sorted({as_id(p) for p in pages})
        runs: list[tuple[int, int]] = []
        for pid in ids:
            if runs and runs[-1][0] + runs[-1][1] == pid:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((pid, 1))
        with self._lock:
            self._usable()
            if runs and runs[-1][0] + runs[-1][1] > self._page_count:
                self._refresh_stats()  # another call may have grown the file
            for first, count in runs:
                if first < 0 or first + count > self._page_count:
                    raise_for(
                        lib.MP_EOUT_OF_BOUNDS,
                        f"sync page {first if first < 0 else first + count - 1}",
                        self._path,
                        detail=f"page_count {self._page_count}",
                    )
            for first, count in runs:
                self.sync_run(PageId(first), count)

    def sync_run(self, first: PageId, count: int) -> None:
        """Flush the data of pages ``first .. first + count - 1`` (one msync).

        :class:`OutOfBounds` if the run is not inside the file.
        """
        first_id = as_id(first)
        n = as_id(count, "count")
        if n < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            handle = self._usable()
            self._check(lib.mp_pager_sync_run(handle, first_id, n), f"page {first_id}")

    def set_root(self, slot: int, value: int) -> None:
        """Set root ``slot`` (0-7) to ``value``, an unsigned 64-bit int.

        Roots commit atomically with the allocation state: inside a
        transaction with it, outside one as a commit of its own. ``ValueError``
        for a slot or value out of range. A non-zero value in a v0.2 file
        whose bitmap leaves the roots no room (past ``(page_size - 100) * 8``
        pages) moves the file to the extended layout first (it grows past the
        v0.2 cap; see FORMAT.md, "Root pages"); :class:`FileFull` only when the
        file cannot grow.
        """
        # An engine sets a root or two per transaction: a valid call in the
        # extended layout (or of 0, which never moves a file) is one core
        # call, which holds the pager's mutex and refuses a closed pager or a
        # fork child's; the rest, and every error, take the checked path.
        if (
            type(slot) is int
            and type(value) is int
            and 0 <= slot < 8
            and 0 <= value < _U64_LIMIT
            and (self._format_minor == 3 or not value)
        ):
            rc = lib.mp_pager_set_root(self._handle, slot, value)
            if rc:
                self._usable()
                self._check(rc, f"root {slot}")
            return
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise TypeError(f"slot must be an int, not {type(slot).__name__}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if not 0 <= slot < 8:
            raise ValueError(f"slot must be 0-7, not {slot}")
        if not 0 <= value < 1 << 64:
            raise ValueError(f"value must be an unsigned 64-bit int, not {value}")
        with self._lock:
            handle = self._usable()
            rc = lib.mp_pager_set_root(handle, slot, value)
            if value and self._format_minor != 3:
                self._refresh_stats()  # a move to the extended layout grows the file
            if rc:
                self._check(rc, f"root {slot}")

