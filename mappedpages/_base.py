"""What every open pager shares: the handle, the mapping, views, reads, close.

A pager's pages are handed out as slices of one memoryview over the address
range the C core reserved for the file. Growth maps more of the file into it;
a file that outgrows it is mapped into a larger range, and the old range stays
mapped (both show the same pages), so a view stays valid as the file grows. The
views are the buffer of an exporter object (a cffi buffer over the writer's
mapping; a read-only ``mmap`` for a reader) whose lifetime we watch through a
weak reference: ``close()`` unmaps only when no view, slice of a view, or
object built on one (a NumPy array, say) is left, and raises ``BufferError``
otherwise, as ``mmap.close()`` does. If the pager object is dropped while views
live, the C handle is released when the last view goes.

After ``fork()`` the child's pagers refuse every call (``Unavailable``), and
the core maps the file again at the same addresses, read-only and from a new
open file description: views the child inherited keep showing the file, and
the child holds nothing of the writer's lock (``_handles``).

The lock is the core's mutex (``_lock``); close shuts the C pager under it, and
the struct is freed only when its owner is collected (no pointer goes stale).
"""

from __future__ import annotations

import operator
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Callable

from mappedpages._core import ffi, lib
from mappedpages._errors import (
    RecoveryWarning,
    Unavailable,
    meta_problem_text,
    raise_for,
    recovery_flag_names,
)
from mappedpages._handles import LIVE, new_owner
from mappedpages._lock import CoreLock
from mappedpages._types import PageId, ProtectedPageId

_U64_LIMIT = 1 << 64
_CHUNK = 4096


def as_id(value: object, what: str = "page id") -> int:
    """Return ``value`` as an int id, or raise TypeError for a non-integer.

    ``bool`` is refused too: ``True`` is an int to Python, but never an id or
    a size a caller meant.
    """
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool ({value!r})")
    if not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]


def fspath_bytes(path: object) -> tuple[str, bytes]:
    """Return a path as (text for messages, bytes for C)."""
    p = os.fspath(path)  # type: ignore[call-overload]
    text = p.decode(errors="replace") if isinstance(p, bytes) else str(p)
    raw = os.fsencode(p)
    if b"\0" in raw:
        raise ValueError("path contains a NUL byte")
    return text, raw


def report_dict(report: Any) -> dict[str, Any]:
    """What open found, as plain data (for tools such as ``python -m mappedpages info``)."""
    flags = int(report.flags)
    return {
        "flags": recovery_flag_names(flags),
        "chosen_copy": "AB"[int(report.chosen_copy)],
        "generation": {"A": int(report.generation[0]), "B": int(report.generation[1])},
        "problem": {
            "A": meta_problem_text(int(report.meta_problem[0])),
            "B": meta_problem_text(int(report.meta_problem[1])),
        },
        "selector": int(report.selector),
        "dir_fallbacks": int(report.dir_fallbacks),
        "dropped_entries": int(report.dropped_entries),
        "dropped_blocks": int(report.dropped_blocks),
        "file_bytes": int(report.file_bytes),
        "cut_pages": int(report.cut_pages),
        "cut_generation": int(report.cut_generation),
        "kept_protected": int(report.kept_protected),
        "salvaged_blocks": int(report.salvaged_blocks),
    }


def truncated_message(report: Any) -> str:
    """Why open refused a cut file: the committed length and the actual length."""
    size = int(report.page_size)
    pages = int(report.cut_pages)
    gen = int(report.cut_generation)
    text = (
        f"file is {int(report.file_bytes)} bytes but its newest commit counts "
        f"{pages * size} bytes ({pages} pages of {size}): the file was cut"
    )
    names = ("A (page 1)", "B (page 2)")
    older = [
        c
        for c in (0, 1)
        if int(report.meta_problem[c]) == lib.MP_META_OK and int(report.generation[c]) < gen
    ]
    if older:
        c = older[0]
        return (
            f"{text}; open with salvage=True to roll back to metadata copy {names[c]} at "
            f"generation {int(report.generation[c])}, discarding generation {gen} (the newest "
            "commit), or restore the file's missing end"
        )
    return (
        f"{text}; no older metadata copy fits in it either (the newest commit is generation "
        f"{gen}): restore the file's missing end"
    )


def open_error(rc: int, report: Any, path: str) -> None:
    """Raise for a failed open (a cut file with the lengths in the message); nothing for 0."""
    if rc == lib.MP_EFILE_TRUNCATED:
        raise_for(rc, path, path, truncated_message(report))
    raise_for_rc(rc, path, path)


def warn_recovery(report: Any, path: str, stacklevel: int) -> None:
    """Emit one RecoveryWarning per thing open discarded or repaired."""
    flags = report.flags
    names = ("A (page 1)", "B (page 2)")
    for copy, flag in ((0, lib.MP_REC_META_A_DAMAGED), (1, lib.MP_REC_META_B_DAMAGED)):
        if flags & flag:
            problem = meta_problem_text(int(report.meta_problem[copy])) or "it is invalid"
            chosen = report.chosen_copy
            warnings.warn(
                f"{path}: metadata copy {names[copy]} was discarded because {problem}; "
                f"using copy {names[chosen]} at generation {report.generation[chosen]}",
                RecoveryWarning,
                stacklevel=stacklevel,
            )
    if flags & lib.MP_REC_SELECTOR_INVALID:
        warnings.warn(
            f"{path}: page 0's metadata selector is {report.selector}, not 0 or 1; "
            f"chose copy {names[report.chosen_copy]} by generation",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_DIR_INDEX_TORN:
        warnings.warn(
            f"{path}: page 0's protected-page directory index failed its CRC (a rewrite "
            "cut short, or a damaged count); read it as the complete state its CRC matches",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_DIR_FALLBACK:
        warnings.warn(
            f"{path}: {report.dir_fallbacks} protected-page directory page(s) were damaged; "
            "read their other copy, whose entries were checked against the file",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_DIR_ENTRY_DROPPED:
        warnings.warn(
            f"{path}: {report.dropped_entries} protected-page directory entr(y/ies) did not "
            "match the file (an interrupted alloc/free, or a stale copy) and were dropped",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_CUT_ROLLED_BACK:
        chosen = report.chosen_copy
        warnings.warn(
            f"{path}: salvage: the file is {report.file_bytes} bytes, shorter than its newest "
            f"commit (generation {report.cut_generation}, {report.cut_pages} pages of "
            f"{report.page_size}); rolled back to metadata copy {names[chosen]} at generation "
            f"{report.generation[chosen]}, discarding generation {report.cut_generation}: "
            f"every allocation and free it made, and its count of {report.cut_pages} pages",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_PROTECTED_KEPT:
        warnings.warn(
            f"{path}: {report.kept_protected} protected page(s) named by the current directory "
            "were not counted by the older metadata copy in use; their content matches its "
            "recorded CRC, so their pages were marked allocated again and the pages kept",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_SALVAGE_DROPPED:
        warnings.warn(
            f"{path}: salvage: {report.salvaged_blocks} protected-page directory block(s) had "
            "no copy inside the file (both past its end or on reserved pages); emptied, "
            "discarding every protected page they held",
            RecoveryWarning,
            stacklevel=stacklevel,
        )
    if flags & lib.MP_REC_DIR_BLOCK_DROPPED:
        warnings.warn(
            f"{path}: {report.dropped_blocks} unfinished protected-page directory block(s) "
            "were dropped",
            RecoveryWarning,
            stacklevel=stacklevel,
        )


class _PagerBase:
    """Shared machinery of :class:`Pager` and :class:`ReadOnlyPager`."""

    _forked: bool
    _freed: list[bool]

    def __init__(self, handle: Any, path: str) -> None:
        self._open_report: dict[str, Any] = {}
        self._forked = False
        self._path = path
        self._handle = handle
        stats = ffi.new("mp_stats *")
        raise_for_rc(lib.mp_pager_stats(handle, stats))
        self._page_size = int(stats.page_size)
        # Pages per chunk: below it no page but 0-2 belongs to the layout; past
        # it the core says which pages do (format.c owns the placement).
        lay = ffi.new("mp_layout *")
        raise_for_rc(lib.mp_layout_get(self._page_size, lay))
        self._chunk = int(lay.chunk_pages)
        base = ffi.new("uint8_t **")
        reserved = ffi.new("uint64_t *")
        raise_for_rc(lib.mp_pager_mapping(handle, base, reserved))
        # The buffer keeps `owner` alive, and `owner` frees the C pager when
        # collected: the mapping outlives every view, and the struct every
        # object that can pass its pointer (close() only shuts it).
        self._owner, self._freed = new_owner(handle, base[0])
        self._lock = CoreLock(handle, self._owner)
        self._reserved = int(reserved[0])
        self._out = ffi.new("uint64_t *")
        self._stats = ffi.new("mp_stats *")
        self._exporters: list[weakref.ref[Any]] = []
        self._mv_len = 0
        self._mv: memoryview | None = None
        self._ro: memoryview | None = None
        self._refresh_stats()
        self._load_system()
        LIVE.add(self)

    # ----------------------------------------------------------- internals

    def _bind_views(self, page_count: int | None = None) -> None:
        # Views are slices of a buffer over exactly the pages the file has:
        # Python code can reach that buffer through view.obj, so it must not
        # reach past the file into the reserved, unmapped range. When the file
        # grows, a larger buffer serves new views; older ones stay valid. Every
        # buffer is watched through a weak reference: close() may unmap only
        # when all of them are gone.
        pages = self._page_count if page_count is None else page_count
        self._mv_len = pages * self._page_size
        base = ffi.new("uint8_t **")
        reserved = ffi.new("uint64_t *")
        raise_for_rc(lib.mp_pager_mapping(self._handle, base, reserved))
        if base[0] != self._owner:
            # The file outgrew its address range and was mapped whole into a
            # larger one; the old range stays mapped for the views made there.
            # The new owner keeps the old one (and so the pager) alive.
            self._owner = ffi.gc(base[0], lambda _ptr, _older=self._owner: None)
        buf = self._exporter(self._mv_len)
        self._exporters = [r for r in self._exporters if r() is not None]
        self._exporters.append(weakref.ref(buf))
        self._mv = memoryview(buf)
        self._ro = self._mv if self._mv.readonly else self._mv.toreadonly()

    def _exporter(self, length: int) -> Any:
        """The object whose buffer the views are slices of (``view.obj``)."""
        return ffi.buffer(self._owner, length)

    def _refresh_stats(self) -> None:
        stats = self._stats
        if lib.mp_pager_stats(self._handle, stats):
            return  # closed (in another thread): nothing to bind views to
        page_count = int(stats.page_count)
        self._free_count = int(stats.free_count)
        self._dir_blocks = int(stats.dir_blocks)
        self._max_pages = int(stats.max_pages)
        self._format_minor = int(stats.format_minor)
        # The views of the new length first, the count after: page() reads the
        # count before the views, without the lock, so a count it sees never
        # runs past the views it then slices (a slice past the end is short,
        # not an error).
        if page_count * self._page_size > self._mv_len:
            self._bind_views(page_count)
        self._page_count = page_count

    def _refreshed(self) -> None:
        """Bring the cached counts up to date (the properties read them after)."""
        with self._lock:
            self._usable()
            self._refresh_stats()

    def _load_system(self) -> None:
        # Directory and backing pages, kept in Python so that page() can
        # refuse them without a C call; updated by every protected operation.
        self._system: set[int] = set(
            self._list(
                lambda h, start, buf, cap, n: lib.mp_pager_list_pages(
                    h, lib.MP_KIND_SYSTEM, start, buf, cap, n
                ),
                check=False,
            )
        )

    def _layout_pages_below(self, total: int) -> int:
        out = ffi.new("uint64_t *")
        raise_for_rc(lib.mp_layout_pages_below(self._page_size, total, out))
        return int(out[0])

    def _is_data_position(self, page_id: int) -> bool:
        # Past the first chunk the core says where layout pages lie.
        kind = ffi.new("int *")
        return bool(
            lib.mp_layout_page_kind(self._page_size, page_id, kind) == 0
            and kind[0] == lib.MP_PAGE_DATA
        )

    def page(self, page_id: PageId) -> memoryview:
        """Return a zero-copy view of one page (``page_size`` bytes, format 'B').

        Writable on a :class:`Pager`, read-only on a :class:`ReadOnlyPager`.
        Pages 0-2, directory pages and the pages behind protected pages raise
        :class:`ReservedPage`; an id past the end raises :class:`OutOfBounds`.
        A free page may be viewed: a view is memory, not ownership.
        """
        # One method, no helper: a call frame is a fifth of this call's cost.
        # The fast path reads only values that are safe without the lock:
        # page_count never shrinks while the pager is open, and a view of a
        # closed pager's memoryview raises ValueError instead of touching
        # memory. A reader's _mv is its read-only mapping (_ro is _mv).
        page_count = self._page_count  # (before _mv: _refresh_stats's order)
        mv = self._mv
        if (
            type(page_id) is int
            and 3 <= page_id < page_count
            and (page_id < self._chunk or self._is_data_position(page_id))
            and page_id not in self._system
            and mv is not None
            and not self._forked
        ):
            off = page_id * self._page_size
            try:
                return mv[off : off + self._page_size]
            except ValueError:  # released by a close in another thread
                self._usable()
                raise
        pid = as_id(page_id)
        with self._lock:
            self._usable()
            self._raise_page_error(pid)  # (valid after all: views rebound)
            return self._view(pid, readonly=mv is self._ro)

    def _usable(self) -> Any:
        """Return the C handle, or raise if the pager cannot be used."""
        if self._mv is None:
            raise ValueError("I/O operation on closed pager")
        if self._forked:
            raise Unavailable(
                "this pager was opened by the parent process before fork(); "
                "open the file again in the child"
            )
        return self._handle

    def _check(self, rc: int, context: str = "") -> None:
        if rc != 0:
            raise_for(rc, context, self._path)

    def _raise_page_error(self, page_id: int) -> None:
        self._usable()
        self._refresh_stats()  # first: the file may have grown since it was cached
        if page_id < 0 or page_id >= _U64_LIMIT:
            rc = lib.MP_EOUT_OF_BOUNDS
        else:
            rc = lib.mp_pager_check_page(self._handle, page_id)
        detail = {
            lib.MP_EOUT_OF_BOUNDS: f"page_count {self._page_count}",
            lib.MP_ERESERVED_PAGE: "it belongs to the pager: reserved, directory "
            "or protected backing page",
        }.get(rc, "")
        if rc != 0:
            raise_for(rc, f"page {page_id}", self._path, detail)

    def _view(self, page_id: int, readonly: bool) -> memoryview:
        if page_id >= self._page_count:  # (an id the core gave may pass the cached count)
            self._refresh_stats()
        mv = self._ro if readonly else self._mv
        assert mv is not None
        off = page_id * self._page_size
        return mv[off : off + self._page_size]

    def _list(
        self, fetch: Callable[[Any, int, Any, int, Any], int], check: bool = True
    ) -> Iterator[Any]:
        buf = ffi.new("uint64_t[]", _CHUNK)
        count = ffi.new("uint64_t *")
        start = 0
        while True:
            with self._lock:
                handle = self._usable() if check else self._handle
                self._check(fetch(handle, start, buf, _CHUNK, count))
                n = int(count[0])
                ids: list[int] = ffi.unpack(buf, n)
            yield from ids
            if n < _CHUNK:
                return
            start = ids[-1] + 1

    # ----------------------------------------------------------- public API

    @property
    def path(self) -> str:
        """The file's path, as given to ``create``/``open``."""
        return self._path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has succeeded."""
        return self._mv is None

    @property
    def page_size(self) -> int:
        """Bytes per page: a power of two, at least 1024."""
        self._usable()
        return self._page_size

    @property
    def page_count(self) -> int:
        """Pages in the file, the three reserved ones included."""
        self._refreshed()
        return self._page_count

    @property
    def format_version(self) -> str:
        """The file's layout: ``"0.2"`` (the Rust crate's) or ``"0.3"`` (extended).

        A file moves to ``"0.3"`` when it grows past what v0.2 can describe (one metadata
        bitmap's pages: 7968 at 1 KiB, 32544 at 4 KiB; FORMAT.md); the crate refuses it.
        """
        self._refreshed()
        return f"0.{self._format_minor}"

    @property
    def max_pages(self) -> int:
        """The most pages this file can hold here: 16 TiB of pages, the most a pager maps."""
        self._refreshed()
        return self._max_pages

    @property
    def free_page_count(self) -> int:
        """Pages that are neither allocated nor reserved."""
        self._refreshed()
        return self._free_count

    def allocated_pages(self) -> Iterator[PageId]:
        """Iterate over allocated regular page ids, ascending.

        Reserved pages, directory pages and the pages behind protected pages
        are not listed.
        """
        with self._lock:
            self._usable()
        return self._list(
            lambda h, start, buf, cap, n: lib.mp_pager_list_pages(
                h, lib.MP_KIND_ALLOCATED, start, buf, cap, n
            )
        )

    def allocated_protected_pages(self) -> Iterator[ProtectedPageId]:
        """Iterate over the ids of protected pages in use, ascending."""
        with self._lock:
            self._usable()
        return self._list(lib.mp_protected_list)

    def protected_page(self, pid: ProtectedPageId) -> memoryview:
        """Return a read-only view of the committed content of a protected page."""
        pid = ProtectedPageId(as_id(pid, "protected page id"))
        with self._lock:
            handle = self._usable()
            if pid < 0 or pid >= _U64_LIMIT:
                self._check(lib.MP_EOUT_OF_BOUNDS, f"protected page {pid}")
            self._check(lib.mp_protected_page(handle, pid, self._out), f"protected page {pid}")
            return self._view(int(self._out[0]), readonly=True)

    def verify_protected(self, pid: ProtectedPageId) -> bool:
        """Check a protected page's content against the CRC its directory entry records."""
        pid = ProtectedPageId(as_id(pid, "protected page id"))
        with self._lock:
            handle = self._usable()
            if pid < 0 or pid >= _U64_LIMIT:
                self._check(lib.MP_EOUT_OF_BOUNDS, f"protected page {pid}")
            ok = ffi.new("int *")
            self._check(lib.mp_protected_verify(handle, pid, ok), f"protected page {pid}")
            return bool(ok[0])

    def _run_view(self, first_page: object, count: object, readonly: bool) -> memoryview:
        first = as_id(first_page)
        n = as_id(count, "count")
        if n < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._usable()
            pages = f"pages {first}..{first + n - 1}"
            if first + n > self._page_count:  # another call may have grown the file
                self._refresh_stats()
            if first < 0 or first + n > self._page_count:
                raise_for(lib.MP_EOUT_OF_BOUNDS, pages, detail=f"page_count {self._page_count}")
            if first < 3:
                raise_for(lib.MP_ERESERVED_PAGE, pages, detail="pages 0-2 are the pager's")
            if self._system and any(i in self._system for i in range(first, first + n)):
                raise_for(lib.MP_ERESERVED_PAGE, pages, detail="they include pager pages")
            # Layout pages in the run: the core counts them (format.c places them).
            if self._layout_pages_below(first + n) != self._layout_pages_below(first):
                layout = "layout pages of the extended layout"
                raise_for(lib.MP_ERESERVED_PAGE, pages, detail=f"they include {layout}")
            mv = self._ro if readonly else self._mv
            assert mv is not None
            off = first * self._page_size
            return mv[off : off + n * self._page_size]

    def close(self) -> None:
        """Unmap the file and release it; idempotent.

        Raises ``BufferError``, and leaves the pager open, while views of its
        pages are alive (as ``mmap.close()`` does). Closing does not flush data
        written through views: call ``sync()`` first for that (in ``"none"``
        mode, pages transactions wrote since the last ``sync()`` are written
        back before the state that names them). In a fork child
        closing an inherited pager always succeeds: it writes nothing, and the
        mapping is released with the last inherited view.
        """
        with self._lock:
            if self._mv is None:
                return
            assert self._ro is not None
            self._mv.release()
            self._ro.release()
            self._mv = self._ro = None
            views_alive = any(r() is not None for r in self._exporters)
            if self._forked:
                # A fork child never writes and holds no lock (the fork handler
                # let go of both), so its close always succeeds. Views it
                # inherited may be alive (they are the parent's objects too): the
                # mapping then goes with the last of them.
                LIVE.discard(self)
                if not views_alive:
                    self._release()
                return
            if views_alive:
                self._mv_len = 0
                self._bind_views()
                raise BufferError("cannot close a pager while views of its pages exist")
            # Write what a lazy durability mode deferred; report a failure, but
            # release the file either way.
            rc = lib.mp_pager_finish(self._handle)
            LIVE.discard(self)
            self._release()
            self._check(rc, "close")

    def _release(self) -> None:
        # Shut under the core's mutex (calls in flight finish first, later
        # ones get ValueError); the struct goes with the owner (_handles
        # keeps it listed until then, so a fork still resets its mutex).
        lib.mp_pager_close(self._handle)

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._page_count} pages of {self._page_size}"
        return f"<{type(self).__name__} {self._path!r} {state}>"


def raise_for_rc(rc: int, context: str = "", path: str | None = None) -> None:
    """Raise for a non-zero code; do nothing for 0."""
    if rc != 0:
        raise_for(rc, context, path)
