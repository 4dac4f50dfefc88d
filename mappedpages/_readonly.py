"""ReadOnlyPager: a reader's view of a pager file, opened O_RDONLY and unlocked.

A reader takes no lock, so any number of readers in any processes run beside
each other and beside one writer. It keeps the state it opened with until
:meth:`ReadOnlyPager.refresh` moves it to the writer's latest commit. Its views
are read-only (writing through one raises ``TypeError``), and it has no method
that writes.
"""

from __future__ import annotations

from typing import Any

from mappedpages._base import (
    _PagerBase,
    fspath_bytes,
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
        """
        with self._lock:
            handle = self._usable()
            report = ffi.new("mp_open_report *")
            self._check(lib.mp_pager_refresh(handle, report), "refresh")
            self._refresh_stats()
            self._load_system()
            warn_recovery(report, self._path, stacklevel=3)
