"""Giving space back and copying a live file: trim, hole punching, online backup.

Mixed into :class:`~mappedpages.Pager` (trim, punch_free, backup) and
:class:`~mappedpages.ReadOnlyPager` (backup); the work is the C core's
(csrc/space.c, csrc/backup.c). The mixins use only the pager's lock, its
handle (``_usable``) and its cached counts (``_refresh_stats``).
"""

from __future__ import annotations

import errno
import os
import warnings
from typing import TYPE_CHECKING, Any

from mappedpages._base import fspath_bytes, raise_for_rc
from mappedpages._core import ffi, lib
from mappedpages._errors import Unavailable

# A writer's backup takes a new snapshot when the writer rewrote the copied
# commit's structure pages under the copy (csrc/backup.c); this many times.
_BACKUP_ATTEMPTS = 16


def _check_dest(dest: Any) -> tuple[str, bytes]:
    text, raw = fspath_bytes(dest)
    if os.path.lexists(raw):
        raise FileExistsError(errno.EEXIST, "backup destination exists", text)
    return text, raw


def _protected_copies(reader: Any, handle: Any) -> tuple[Any, Any]:
    """The protected pages a snapshot reader copied at load: page ids and bytes."""
    copies: dict[int, tuple[memoryview, int]] = getattr(reader, "_copies", {})
    ids: list[int] = []
    chunks: list[bytes] = []
    page = ffi.new("uint64_t *")
    for pid, (view, _crc) in copies.items():
        if lib.mp_protected_page(handle, pid, page) == 0:
            ids.append(int(page[0]))
            chunks.append(bytes(view))
    return ffi.new("uint64_t[]", ids), ffi.from_buffer(b"".join(chunks))


def _copy(reader: Any, raw_dest: bytes, text_dest: str, progress: Any) -> int:
    """Back up a reader's commit (under its lock) and return the bytes written."""
    out = ffi.new("uint64_t *")
    with reader._lock:
        handle = reader._usable()
        pages, data = _protected_copies(reader, handle)
        rc = lib.mp_pager_backup(
            handle, ffi.NULL, raw_dest, pages, data, len(pages), progress, out
        )
    if rc == -errno.EEXIST:
        raise FileExistsError(errno.EEXIST, "backup destination exists", text_dest)
    raise_for_rc(rc, f"backup to {text_dest}", text_dest)
    return int(out[0])


class BackupMixin:
    """``backup(dest)`` for any pager; a reader copies its own commit."""

    _lock: Any
    _path: str

    if TYPE_CHECKING:  # provided by _PagerBase

        def _usable(self) -> Any: ...

    def backup(self, dest: Any) -> None:
        """Write a copy of this reader's commit to ``dest``, a new path.

        The copy opens with exactly this reader's commit: its pages, protected
        pages and the content of every allocated page (as the reader sees it
        now: a snapshot reader's pages are not reused under it). Free pages are
        holes, so the copy costs the time and disk space of the live pages.
        It is written under a temporary name beside ``dest``, fsync'd and
        published without replacing anything: ``FileExistsError`` if ``dest``
        exists (before or by the end), and a crash never leaves a partial file
        at ``dest``. A writer that rewrote this commit's directory or free-map
        pages while they were copied (it committed twice meanwhile) makes it
        raise :class:`Unavailable`; back up from a fresh snapshot then (the
        writer's :meth:`Pager.backup` does so by itself). A reader opened with
        ``snapshot=False`` holds no pages: the writer may reuse them under the
        copy.
        """
        self._backup(dest, ffi.NULL)

    def _backup(self, dest: Any, progress: Any) -> int:
        text, raw = _check_dest(dest)
        return _copy(self, raw, text, progress)


class SpaceMixin:
    """trim, punch_free and backup for the writer (:class:`Pager`)."""

    _lock: Any
    _path: str
    _txn_depth: int
    _trim_on_close: bool = False
    _punch_warned: bool = False

    if TYPE_CHECKING:  # provided by _PagerBase and Pager

        def _usable(self) -> Any: ...

        def _refresh_stats(self) -> None: ...

        def _check(self, rc: int, context: str = "") -> None: ...

        def snapshot(self) -> Any: ...

    def _no_txn(self, what: str) -> None:
        if self._txn_depth:
            raise ValueError(f"{what}() inside a transaction; leave the block first")

    def trim(self) -> int:
        """Shorten the file past its last page in use; return the pages given back.

        One durable commit records the smaller page count, then one
        ``ftruncate`` cuts the file: a crash leaves the old size or the new
        one, and both open. Frees not yet durable are made durable first. The
        file is never cut below the layout's minimum (4 pages in v0.2; an
        extended-layout file stays extended and keeps chunk 1's layout pages
        and its directory-index chunks). The file is never cut below the
        pages a live registered reader (a snapshot reader, in any process)
        has mapped: the page count may go lower, the file then stays longer
        until a later trim finds the reader gone. In this process
        views of cut pages stay valid: the cut range is replaced by zero
        memory, and a later growth maps the file there again. The next growth
        starts from the new size. Not allowed inside a transaction
        (``ValueError``).
        """
        with self._lock:
            self._no_txn("trim")
            handle = self._usable()
            out = ffi.new("uint64_t *")
            rc = lib.mp_pager_trim(handle, out)
            self._refresh_stats()
            self._check(rc, "trim")
            return int(out[0])

    def punch_free(self) -> int:
        """Deallocate the disk blocks of every free page; return the bytes released.

        Runs of free pages whose free is durable (frees a lazy durability
        mode deferred are made durable first) and that no live reader's
        snapshot still has allocated are punched (``fallocate`` with
        ``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``), so the file's disk
        usage follows its live pages, not its size; they read as zeros. With
        ``preallocate=True`` a punched page gets its blocks back before
        ``alloc`` hands it out again, so a full disk is an ``OSError`` from
        ``alloc``, never a ``SIGBUS``. Where the file system cannot punch
        holes it returns 0 and says so once with a ``RuntimeWarning``; nothing
        changes. Not allowed inside a transaction (``ValueError``).
        """
        with self._lock:
            self._no_txn("punch_free")
            handle = self._usable()
            out = ffi.new("uint64_t *")
            unsupported = ffi.new("int *")
            rc = lib.mp_pager_punch_free(handle, out, unsupported)
            self._refresh_stats()
            self._check(rc, "punch_free")
            if unsupported[0]:
                if not self._punch_warned:
                    self._punch_warned = True
                    warnings.warn(
                        f"{self._path}: the file system does not support punching holes; "
                        "punch_free() releases nothing",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return 0
            return int(out[0])

    def _space_options(self, trim_on_close: bool, punch_on_free: bool) -> None:
        """Apply open's ``trim_on_close`` and ``punch_on_free`` options."""
        self._trim_on_close = bool(trim_on_close)
        if punch_on_free:
            self._check(lib.mp_pager_set_punch_on_free(self._usable(), 1), "punch_on_free")

    def _trim_at_close(self) -> None:
        # Views of cut pages stay valid (zero memory), so trimming before
        # close's own checks is safe whatever close then decides.
        self.trim()

    def punched_pages(self) -> int:
        """Pages punched by :meth:`punch_free` (or ``punch_on_free``) and not handed out since."""
        with self._lock:
            out = ffi.new("uint64_t *")
            self._check(lib.mp_pager_punched(self._usable(), out), "punched_pages")
            return int(out[0])

    def backup(self, dest: Any) -> None:
        """Write a copy of the latest commit to ``dest``, a new path, while writing goes on.

        The copy is of one commit (the latest when the call starts), pinned
        like a snapshot reader's for the copy's duration, so other threads and
        processes keep committing meanwhile: it opens with exactly that
        commit's pages, protected pages and the content of every allocated
        page. Free pages are holes (the copy is sparse). It is written under a
        temporary name, fsync'd and published without replacing anything:
        ``FileExistsError`` if ``dest`` exists, and a crash never leaves a
        partial file at ``dest``. A v0.2 file gives a v0.2 copy the Rust crate
        opens.
        """
        self._backup(dest, ffi.NULL)

    def _backup(self, dest: Any, progress: Any) -> int:
        text, raw = _check_dest(dest)
        for attempt in range(_BACKUP_ATTEMPTS):
            reader = self.snapshot()
            try:
                return _copy(reader, raw, text, progress)
            except Unavailable:
                if attempt == _BACKUP_ATTEMPTS - 1:
                    raise
            finally:
                reader.close()
        raise AssertionError("unreachable")  # pragma: no cover
