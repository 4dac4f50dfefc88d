"""ReadOnlyPager: a reader's view of a pager file, opened O_RDONLY and unlocked.

A reader takes no lock, so any number of readers in any processes run beside
each other and beside one writer. It keeps the state it opened with until
:meth:`ReadOnlyPager.refresh` moves it to the writer's latest commit: a state
the writer committed, never a mix of two (the core checks that nothing moved
while it read, and looks again if something did). It has no method that writes.

The file is mapped without write permission, and every buffer a reader exports
is read-only: its views are slices of a read-only ``mmap`` of the file (that is
``view.obj``), so a write through a view, through ``view.obj`` or through
``memoryview(view.obj)`` raises ``TypeError``, never faults.
"""

from __future__ import annotations

import mmap
from typing import Any

from mappedpages._base import (
    _PagerBase,
    fspath_bytes,
    raise_for_rc,
    report_dict,
    warn_recovery,
)
from mappedpages._core import ffi, lib
from mappedpages._pager import _check_page_size, _options, _salvage_flag, raise_for_open
from mappedpages._types import PageId


class ReadOnlyPager(_PagerBase):
    """A read-only pager over a file that a writer may be changing."""

    @classmethod
    def open(
        cls, path: Any, page_size: int | None = None, *, salvage: bool = False
    ) -> ReadOnlyPager:
        """Open a pager file read-only; errors as for :meth:`Pager.open`.

        ``salvage=True`` reads the state :meth:`Pager.open` with salvage would
        keep, in memory only: a reader never changes the file.
        """
        size = _check_page_size(page_size, allow_none=True)
        text, raw = fspath_bytes(path)
        out = ffi.new("mp_pager **")
        report = ffi.new("mp_open_report *")
        opts = _options(size, 0.0, True)
        opts.salvage = _salvage_flag(salvage)
        raise_for_open(lib.mp_pager_open(raw, opts, out, report), report, text, raw, size)
        pager = cls(out[0], text)
        pager._open_report = report_dict(report)
        warn_recovery(report, text, stacklevel=3)
        return pager

    def _exporter(self, length: int) -> Any:
        # A read-only shared mapping of its own: Python will not write through
        # it (TypeError), where a cffi buffer over the core's PROT_READ mapping
        # would let a write fault. It shows the same page cache as the core's
        # mapping, and outlives the pager while views of it are alive.
        fd = ffi.new("int *")
        raise_for_rc(lib.mp_pager_fd(self._handle, fd), "map", self._path)
        return mmap.mmap(fd[0], length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)

    def page(self, page_id: PageId) -> memoryview:
        """Return a read-only view of one page; errors as for :meth:`Pager.page`."""
        return self._page_view(page_id, self._ro)

    def view(self, first_page: PageId, count: int) -> memoryview:
        """Return one read-only view over ``count`` consecutive pages (see Pager.view)."""
        return self._run_view(first_page, count, readonly=True)

    def refresh(self) -> None:
        """Move to the writer's latest commit, validating it like open.

        Growth is picked up; views taken earlier stay valid. On a validation
        error the reader keeps its previous state and the error is raised.
        The new state is one the writer committed: a commit made while the
        reader read, or one in progress, makes it look again (no warning);
        ``OSError`` (``EAGAIN``) only if, for 5 s, the writer commits again
        before each look is done.
        """
        with self._lock:
            handle = self._usable()
            report = ffi.new("mp_open_report *")
            self._check(lib.mp_pager_refresh(handle, report), "refresh")
            self._refresh_stats()
            self._load_system()
            warn_recovery(report, self._path, stacklevel=3)
