"""ReadOnlyPager: a reader's view of a pager file, opened O_RDONLY and unlocked.

A reader takes no lock on the data file, so any number of readers in any
processes run beside each other and beside one writer. It keeps the state it
opened with until :meth:`ReadOnlyPager.refresh` moves it to the writer's latest
commit: a state the writer committed, never a mix of two (the core checks that
nothing moved while it read, and looks again if something did). It has no
method that writes the data file.

With ``snapshot=True`` (the default) the reader also registers in the reader
table beside the file (``<path>-readers``), and the writer then never hands
out again a page allocated in the reader's commit: the pages it sees keep the
content they had at that commit until it refreshes or closes (see
``mappedpages._readers``).

The file is mapped without write permission, and every buffer a reader exports
is read-only: its views are slices of a read-only ``mmap`` of the file (that is
``view.obj``), so a write through a view, through ``view.obj`` or through
``memoryview(view.obj)`` raises ``TypeError``, never faults.
"""

from __future__ import annotations

import mmap
from typing import Any

from mappedpages import _readers
from mappedpages._base import (
    as_id,
    fspath_bytes,
    raise_for_rc,
    report_dict,
    warn_recovery,
)
from mappedpages._core import ffi, lib
from mappedpages._options import _check_page_size, _options, _salvage_flag, raise_for_open
from mappedpages._pager_readers import _ReaderListing
from mappedpages._records import _TreeReads
from mappedpages._space import BackupMixin
from mappedpages._types import PageId, ProtectedPageId


class ReadOnlyPager(BackupMixin, _ReaderListing, _TreeReads):
    """A read-only pager over a file that a writer may be changing."""

    def __init__(self, handle: Any, path: str) -> None:
        super().__init__(handle, path)
        self._snapshot = False
        # Protected pages of the snapshot's commit, copied when it was loaded.
        self._copies: dict[int, tuple[memoryview, int]] = {}
        self._refresh_report = ffi.new("mp_open_report *")
        self._changed = ffi.new("int *")

    @classmethod
    def open(
        cls,
        path: Any,
        page_size: int | None = None,
        *,
        snapshot: bool = True,
        salvage: bool = False,
    ) -> ReadOnlyPager:
        """Open a pager file read-only; errors as for :meth:`Pager.open`.

        ``snapshot=True`` (default) registers the reader in the reader table
        beside the file (``<path>-readers``, created with the data file's
        permission bits if missing): until :meth:`refresh` or :meth:`close`,
        every page allocated in the reader's commit keeps that commit's
        content (the writer does not hand it out again), and protected pages
        show that commit's content. A table that cannot be created or written
        raises ``PermissionError`` saying so; a table whose slots are all held
        by live readers raises :class:`ReadersFull`. ``snapshot=False`` does
        not register (for a directory the reader may not write): the writer
        may then reuse pages under the reader.

        ``salvage=True`` reads the state :meth:`Pager.open` with salvage would
        keep, in memory only: a reader never changes the file.
        """
        size = _check_page_size(page_size, allow_none=True)
        if not isinstance(snapshot, bool):
            raise TypeError(f"snapshot must be a bool, not {type(snapshot).__name__}")
        text, raw = fspath_bytes(path)
        out = ffi.new("mp_pager **")
        report = ffi.new("mp_open_report *")
        opts = _options(size, 0.0, True)
        opts.salvage = _salvage_flag(salvage)
        raise_for_open(lib.mp_pager_open(raw, opts, out, report), report, text, raw, size)
        pager = cls(out[0], text)
        if snapshot:
            rc = lib.mp_reader_register(out[0], _readers.table_path(raw), report)
            if rc != 0:
                pager.close()
                err = _readers.table_error(rc, text)
                if err is not None:
                    raise err
                raise_for_rc(rc, "reader table", text)
            pager._became_snapshot()
        pager._open_report = report_dict(report)
        warn_recovery(report, text, stacklevel=3)
        return pager

    def _became_snapshot(self) -> None:
        self._snapshot = True
        self._refresh_stats()
        self._load_system()
        self._copy_protected()

    def _copy_protected(self) -> None:
        """Copy the protected pages of the loaded commit (snapshot readers)."""
        if not self._snapshot:
            return
        for _ in range(_readers.PROTECTED_LOOKS):
            pids = list(self._list(lib.mp_protected_list))
            assert self._ro is not None
            copies, ok = _readers.copy_protected(self._handle, self._ro, self._page_size, pids)
            if ok:
                break
            # A copy that fails its CRC: the writer has rewritten it since the
            # commit we loaded (so there is a newer one), or it is damaged.
            report = self._refresh_report
            self._check(lib.mp_reader_refresh(self._handle, report, self._changed), "refresh")
            self._refresh_stats()
            self._load_system()
            if not self._changed[0]:
                break
        self._copies = copies

    def _exporter(self, length: int) -> Any:
        # A read-only shared mapping of its own: Python will not write through
        # it (TypeError), where a cffi buffer over the core's PROT_READ mapping
        # would let a write fault. It shows the same page cache as the core's
        # mapping, and outlives the pager while views of it are alive.
        fd = ffi.new("int *")
        raise_for_rc(lib.mp_pager_fd(self._handle, fd), "map", self._path)
        return mmap.mmap(fd[0], length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)

    def view(self, first_page: PageId, count: int) -> memoryview:
        """Return one read-only view over ``count`` consecutive pages (see Pager.view)."""
        return self._run_view(first_page, count, readonly=True)

    @property
    def generation(self) -> int:
        """The generation of the commit this reader sees (its metadata copy's)."""
        self._usable()
        return int(self._stats.generation)

    @property
    def snapshot(self) -> bool:
        """True when this reader is registered in the reader table (a snapshot)."""
        return self._snapshot

    def protected_page(self, pid: ProtectedPageId) -> memoryview:
        """Return a read-only view of a protected page's content in this reader's commit.

        A snapshot reader returns the copy it took when it loaded the commit.
        """
        if not self._snapshot:
            return super().protected_page(pid)
        view = super().protected_page(pid)  # checks the id and that it is in use
        copy = self._copies.get(int(as_id(pid, "protected page id")))
        # A view of its own: a caller that releases it leaves the copy intact.
        return copy[0][:] if copy is not None else view

    def verify_protected(self, pid: ProtectedPageId) -> bool:
        """Check a protected page's content against the CRC its directory entry records."""
        if not self._snapshot:
            return super().verify_protected(pid)
        live = super().verify_protected(pid)
        copy = self._copies.get(int(as_id(pid, "protected page id")))
        return _readers.protected_matches(copy) if copy is not None else live

    def refresh(self) -> bool:
        """Move to the writer's latest commit; return True if that is a newer one.

        Growth is picked up; views taken earlier stay valid. On a validation
        error the reader keeps its previous state and the error is raised.
        The new state is one the writer committed: a commit made while the
        reader read, or one in progress, makes it look again (no warning);
        ``OSError`` (``EAGAIN``) only if, for 5 s, the writer commits again
        before each look is done. When nothing was committed since the last
        look it returns False after comparing pages 0-2 with what it read
        then (microseconds, whatever the file's size).
        """
        with self._lock:
            handle = self._usable()
            report = self._refresh_report
            self._check(lib.mp_reader_refresh(handle, report, self._changed), "refresh")
            if not self._changed[0] and not report.flags:
                return False
            changed = bool(self._changed[0])
            self._refresh_stats()
            self._load_system()
            self._copy_protected()
            warn_recovery(report, self._path, stacklevel=3)
            return changed
