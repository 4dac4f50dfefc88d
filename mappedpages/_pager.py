"""Pager: the writable, crash-consistent page allocator over one file.

Every call is atomic with respect to other threads: the C core holds the
pager's mutex for each call (``pager.lock()`` holds it across several), so a
Pager may be shared by threads; cffi releases the GIL while the C core works
(flushes, growth, bulk calls, and waiting for the mutex), so other threads run
meanwhile. ``alloc``, ``free`` and ``page`` take no Python-level lock at all.
Each state change is one durable commit of the double-buffered metadata before
the call returns. Data written through page views is durable only after
:meth:`Pager.sync` (or, for protected pages, a writer's commit).

This module holds the Pager's lifetime, pages, bulk calls and transactions;
its protected-page calls are ``_pager_protected``'s, its awaitable ones
``_pager_async``'s, and the checking of id arrays ``_ids``'s.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterable
from typing import Any, TypeVar, overload

from mappedpages._base import (
    _U64_LIMIT,
    as_id,
    fspath_bytes,
    raise_for_rc,
    report_dict,
    warn_recovery,
)
from mappedpages._core import ffi, lib
from mappedpages._errors import raise_for
from mappedpages._ids import _has_buffer, _ids_array, _u64_buffer, new_out_slot, out_slots
from mappedpages._options import (
    DEFAULT_GROW_STEP,
    _check_page_size,
    _options,
    _salvage_flag,
    raise_for_open,
)
from mappedpages._pager_async import _AsyncCalls
from mappedpages._pager_engine import _EngineCalls
from mappedpages._pager_protected import _ProtectedCalls
from mappedpages._pager_readers import _SnapshotCalls
from mappedpages._protected import ProtectedWriter
from mappedpages._readers import (
    DEFAULT_MAX_READERS,
    check_max_readers,
)
from mappedpages._records import _TreeReads
from mappedpages._space import SpaceMixin
from mappedpages._transaction import Transaction, TransactionBlock
from mappedpages._types import PageId

_T = TypeVar("_T")
_alloc = lib.mp_pager_alloc
_free = lib.mp_pager_free
# Bound once: out_slots.pop() written in place would compile as a module's
# attribute call (the name was imported), which does not specialise.
_slot_take = out_slots.pop
_slot_return = out_slots.append


class Pager(SpaceMixin, _AsyncCalls, _ProtectedCalls, _EngineCalls, _SnapshotCalls, _TreeReads):
    """A file of fixed-size pages, allocated and freed with durable commits.

    Use :meth:`create` or :meth:`open`; a Pager is a context manager.
    """

    # ------------------------------------------------------------- opening

    @classmethod
    def create(
        cls,
        path: Any,
        page_size: int = 4096,
        *,
        lock_timeout: float = 0.0,
        durability: str = "compat",
        grow_step: int = DEFAULT_GROW_STEP,
        preallocate: bool = True,
        max_readers: int = DEFAULT_MAX_READERS,
        layout: str = "0.2",
        trim_on_close: bool = False,
        punch_on_free: bool = False,
    ) -> Pager:
        """Create a new pager file; ``FileExistsError`` if ``path`` exists.

        ``page_size`` must be a power of two of at least 1024 (else
        :class:`InvalidPageSize`). The new file has 4 pages, page 3 free, and is
        durable (data, size and directory entry) when this returns. The writer
        lock is taken as for :meth:`open`; ``durability``, ``grow_step``,
        ``preallocate``, ``max_readers``, ``trim_on_close`` and
        ``punch_on_free`` as for :meth:`open`. ``layout="0.2"``
        (default) starts the file in the Rust crate's layout; ``layout="0.3"``
        starts it in the extended layout, which the crate refuses, and whose
        commits never rewrite page 0 (one flush per commit in ``"compat"`` as in
        ``"fast"``).
        """
        size = _check_page_size(page_size, allow_none=False)
        readers = check_max_readers(max_readers)
        text, raw = fspath_bytes(path)
        out = ffi.new("mp_pager **")
        opts = _options(size, lock_timeout, False, durability, grow_step, preallocate, layout)
        raise_for_rc(lib.mp_pager_create(raw, opts, out), text, text)
        pager = cls(out[0], text)
        pager._durability = durability
        try:
            pager._attach_readers(raw, readers)
        except BaseException:
            # Nothing is left behind: the new file goes again.
            with contextlib.suppress(OSError):
                os.unlink(raw)
            raise
        pager._space_options(trim_on_close, punch_on_free)
        return pager

    @classmethod
    def open(
        cls,
        path: Any,
        page_size: int | None = None,
        *,
        lock_timeout: float = 0.0,
        durability: str = "compat",
        grow_step: int = DEFAULT_GROW_STEP,
        preallocate: bool = True,
        salvage: bool = False,
        max_readers: int = DEFAULT_MAX_READERS,
        trim_on_close: bool = False,
        punch_on_free: bool = False,
    ) -> Pager:
        """Open an existing pager file for reading and writing.

        When ``page_size`` is given and differs from the file's, raises
        :class:`InvalidPageSize`. A missing file raises ``FileNotFoundError``.
        Damage that open can recover from without discarding acknowledged
        state is repaired and reported with a :class:`RecoveryWarning` (a
        metadata copy that fails its CRC or checks is passed over for the other
        copy, as a torn commit requires); anything else raises a
        ``CorruptFileError`` and changes nothing: a file cut shorter than its
        newest commit raises :class:`FileTruncated`, a directory block with
        no copy inside the file :class:`CorruptProtectedDirectory`.
        ``salvage=True`` discards what cannot be kept instead (rolls a cut
        file back to the older metadata copy, empties such directory blocks),
        and the warning lists exactly what was discarded.
        The file is locked for this pager's life: another writer, in this
        process or another, gets :class:`Locked` at once, or after waiting up
        to ``lock_timeout`` seconds.

        ``durability`` says when a commit is durable: ``"compat"`` (default),
        when the call returns, with page 0 current for the Rust crate (two
        flushes); ``"fast"``, when the call returns (one flush; page 0 is
        brought up to date at ``sync()``, ``close()`` and the next writer's
        open); ``"none"``, at ``sync()`` or ``close()`` (no flush per commit; a
        crash loses the commits since, never consistency).

        When no page is free the file grows: it doubles until it is
        ``grow_step`` bytes (default 1 GiB), then grows by ``grow_step``. A
        file stays in the Rust crate's v0.2 layout while it fits; past that it
        moves, in one crash-safe commit, to the extended layout (format 0.3).
        ``preallocate=True`` (default) gives new pages real disk blocks
        (``posix_fallocate``), so a full disk is an ``OSError`` here;
        ``preallocate=False`` grows the file sparsely, and then a write through
        a view to a page on a full disk kills the process with ``SIGBUS``.

        ``max_readers`` (default 126) bounds the reader table beside the file
        (``<path>-readers``, created with the file's permission bits): a
        snapshot reader past it gets :class:`ReadersFull`; 0 admits none. A
        page freed is not handed out again while a live reader's snapshot
        has it allocated (see :attr:`pinned_free_pages`); a table that cannot
        be created or written raises ``PermissionError``.

        ``trim_on_close=True`` trims at :meth:`close`; ``punch_on_free=True``
        punches each page as its free is committed (see :meth:`punch_free`).
        """
        size = _check_page_size(page_size, allow_none=True)
        readers = check_max_readers(max_readers)
        text, raw = fspath_bytes(path)
        out = ffi.new("mp_pager **")
        report = ffi.new("mp_open_report *")
        opts = _options(size, lock_timeout, False, durability, grow_step, preallocate)
        opts.salvage = _salvage_flag(salvage)
        raise_for_open(lib.mp_pager_open(raw, opts, out, report), report, text, raw, size)
        pager = cls(out[0], text)
        pager._durability = durability
        pager._attach_readers(raw, readers)
        pager._space_options(trim_on_close, punch_on_free)
        pager._open_report = report_dict(report)
        warn_recovery(report, text, stacklevel=3)
        return pager

    def __init__(self, handle: Any, path: str) -> None:
        super().__init__(handle, path)
        self._durability = "compat"
        self._txn_depth = 0
        self._txn_writers_before: set[int] = set()
        self._txn: Transaction | None = None
        # SubPageAllocators used in the open transaction, with their live
        # sub-pages when they joined it (rolled back to those).
        self._txn_subs: dict[int, tuple[Any, list[int]]] = {}
        # Weak: an abandoned writer is collected, and its __del__ discards it.
        self._writers: weakref.WeakValueDictionary[int, ProtectedWriter] = (
            weakref.WeakValueDictionary()
        )
        # The live SubPageAllocators on this pager, by id(): free() and
        # free_bulk() refuse the pages they hold. Weak references (a collected
        # allocator holds none) in a plain dict, whose emptiness free() can
        # test at C speed.
        self._subs: dict[int, weakref.ref[Any]] = {}

    # ------------------------------------------------------------- pages

    def view(self, first_page: PageId, count: int) -> memoryview:
        """Return one writable, zero-copy view over ``count`` consecutive pages.

        The same rules as :meth:`page`: every page of the run must be in the
        file and none may be reserved, a directory page or a protected page's
        backing page; the view keeps the pager from closing while it lives.
        """
        return self._run_view(first_page, count, readonly=False)

    def alloc(self, zero: bool = False) -> PageId:
        """Allocate the lowest free page, growing the file if none is free.

        The page keeps whatever bytes it held (a reused page is not cleared)
        unless ``zero`` is true. One durable commit (see ``durability``).
        """
        # The hottest call: one C call, which holds the pager's mutex itself.
        # The cached counts are not refreshed here: a view of a page past the
        # cached end refreshes them (page, view), and the properties ask the core.
        try:
            out = _slot_take()
        except IndexError:
            out = new_out_slot()
        rc = _alloc(self._handle, zero, out)
        page_id: PageId = out[0]
        _slot_return(out)
        if rc:
            self._usable()  # closed, or a fork child: its own words
            self._check(rc, "alloc")
        return page_id

    def free(self, page_id: PageId) -> None:
        """Free one page. One durable commit (see ``durability``).

        A page a live :class:`SubPageAllocator` holds raises
        :class:`ReservedPage` and stays allocated.
        """
        if self._subs:
            # The check and the free must see the same allocators.
            if type(page_id) is not int:
                page_id = PageId(as_id(page_id))
            with self._lock:
                self._usable()
                self._free_checked(page_id)
            return
        try:
            rc = _free(self._handle, page_id)
        except (OverflowError, TypeError):  # not a uint64 to cffi: see what it is
            rc = self._free_odd(page_id)
        if rc:
            # cffi takes a bool as 0 or 1, which the core refuses (reserved):
            # it is a TypeError, as any id that is not an int.
            if type(page_id) is not int:
                as_id(page_id)
            self._usable()
            self._check(rc, f"free page {page_id}")

    def _free_odd(self, page_id: object) -> int:
        pid = as_id(page_id)  # TypeError for what is no int at all
        if pid < 0 or pid >= _U64_LIMIT:
            raise_for(lib.MP_EOUT_OF_BOUNDS, f"free page {pid}")
        return int(_free(self._handle, pid))

    def _free_checked(self, page_id: int) -> None:
        if page_id < 0 or page_id >= _U64_LIMIT:
            raise_for(lib.MP_EOUT_OF_BOUNDS, f"free page {page_id}")
        self._refuse_held(ffi.new("uint64_t[1]", [page_id]), 1)
        self._check(_free(self._handle, page_id), f"free page {page_id}")

    @overload
    def alloc_bulk(
        self, n: int, zero: bool = False, out: None = None, *, min_run: int = 1
    ) -> list[PageId]: ...

    @overload
    def alloc_bulk(self, n: int, zero: bool = False, *, out: Any, min_run: int = 1) -> None: ...

    def alloc_bulk(
        self, n: int, zero: bool = False, out: Any = None, *, min_run: int = 1
    ) -> list[PageId] | None:
        """Allocate ``n`` pages in one durable commit, all or nothing.

        Returns the ids as a list, or, with ``out=`` (any writable buffer of
        unsigned 64-bit integers with room for ``n``: ``array('Q')``, a NumPy
        ``uint64`` array, a ``memoryview``), writes them there and returns
        None: no Python object is made per page.

        ``min_run`` (default 1: the lowest free pages) asks for the pages in
        runs of at least that many consecutive pages, lowest first (the last
        run may be cut short), growing the file rather than taking shorter
        runs; where the file cannot grow so far (``max_pages``), shorter runs
        serve too. The ids come in ascending order, so writing the pages is a
        few long writes instead of many scattered ones: on a disk, a flush of
        a hundred scattered pages costs several times a flush of one run. A
        copy-on-write engine asks for its batch's new pages this way, at the
        cost of a file that keeps more free holes between its live pages.
        """
        n = as_id(n, "n")
        if n < 0:
            raise ValueError("n must not be negative")
        min_run = as_id(min_run, "min_run")
        if min_run < 1:
            raise ValueError(f"min_run must be at least 1, not {min_run}")
        if out is not None and (
            isinstance(out, (list, tuple, range, str, bytes)) or not _has_buffer(out)
        ):
            # Checked before anything changes: a caller passing out= expects
            # None back, and would leak the pages of a returned list.
            raise TypeError(
                "out must be a writable buffer of unsigned 64-bit integers "
                f"(array('Q'), a NumPy uint64 array), not {type(out).__name__}"
            )
        handle = self._usable()
        target = None if out is None else _u64_buffer(out, writable=True)
        if target is not None and len(target) < n:
            raise ValueError(f"out holds {len(target)} ids, fewer than n = {n}")
        if n == 0:
            return None if out is not None else []
        # No Python-level hold: the stats are a read (it never waits for a
        # flush in flight), and the call holds the core's mutex once, so its
        # commit may share a flush with other threads' (group commit).
        stats = ffi.new("mp_stats *")
        self._check(lib.mp_pager_stats(handle, stats), "alloc_bulk")
        room = int(stats.room)
        if n > room:
            # Checked before the id buffer is allocated, so a huge n costs nothing.
            room_text = f"room for {room} more pages, {int(stats.max_pages)} in all"
            raise_for(lib.MP_EFILE_FULL, f"alloc_bulk({n})", detail=room_text)
        buf = ffi.new("uint64_t[]", n) if target is None else target
        rc = lib.mp_pager_alloc_runs(handle, n, min(min_run, 1 << 63), 1 if zero else 0, buf)
        if rc:
            self._usable()
            self._check(rc, "alloc_bulk")
        if lib.mp_pager_stats(handle, stats) == 0 and int(stats.page_count) > self._page_count:
            with self._lock:  # the file grew: views of the new length
                self._refresh_stats()
        if target is not None:
            return None
        ids: list[PageId] = ffi.unpack(buf, n)
        return ids

    def free_bulk(self, ids: Iterable[PageId] | Any) -> None:
        """Free many pages in one durable commit.

        ``ids`` is any iterable of ints, or a buffer of unsigned 64-bit
        integers (read in place, no Python object per page). Every id is
        checked first (a repeated id is a :class:`DoubleFree`, a page a live
        :class:`SubPageAllocator` holds a :class:`ReservedPage`); if any is
        bad, nothing is freed.
        """
        arr = _u64_buffer(ids, writable=False)
        if arr is not None:
            count = len(arr)
        else:
            values, arr = _ids_array(ids, "page id")
            count = len(values)
        if not count:
            self._usable()
            return
        if self._subs:
            # The check and the free must see the same allocators.
            with self._lock:
                handle = self._usable()
                self._refuse_held(arr, count)
                self._check(lib.mp_pager_free_bulk(handle, arr, count), "free_bulk")
                self._refresh_stats()
            return
        # One C call, outside a Python-level hold: it may share a flush.
        rc = lib.mp_pager_free_bulk(self._handle, arr, count)
        if rc:
            self._usable()
            self._check(rc, "free_bulk")

    def _refuse_held(self, pages: Any, count: int) -> None:
        """Raise ReservedPage if a live SubPageAllocator holds one of ``pages``.

        Such a page would go back to the pager while its sub-pages are in use,
        and the pager would hand it out again.
        """
        where = ffi.new("uint64_t *")
        for ref in list(self._subs.values()):
            sub = ref()
            if sub is None or sub._handle is None:
                continue
            self._check(lib.mp_subpage_find_held(sub._handle, pages, count, where))
            if where[0] < count:
                page = int(pages[where[0]])
                raise_for(
                    lib.MP_ERESERVED_PAGE,
                    f"page {page} is held by a SubPageAllocator (sub_size {sub.sub_size})",
                    detail="free its sub-pages through the allocator, or detach it first",
                )

    def sync(self, pages: Iterable[PageId] | None = None) -> None:
        """Flush every page's data to disk (msync of the mapping, then fsync).

        Also makes durable whatever the durability mode deferred. Not allowed
        inside a transaction (``ValueError``).

        With ``pages`` (an iterable of page ids), flush only those pages' data:
        one msync per run of consecutive ids, nothing else (the commit state is
        not touched, so this is allowed inside a transaction). Ids outside the
        file raise :class:`OutOfBounds` before anything is flushed.
        """
        if pages is not None:
            self._sync_pages(pages)
            return
        with self._lock:
            handle = self._usable()
            if self._txn_depth:
                raise ValueError("sync() inside a transaction; commit it first")
            self._check(lib.mp_pager_sync(handle), "sync")
            self._refresh_stats()

    @property
    def durability(self) -> str:
        """The durability mode: ``"compat"``, ``"fast"`` or ``"none"``."""
        self._usable()
        return self._durability

    def transaction(self) -> TransactionBlock:
        """Group allocs, frees, bulk calls and protected writes into one commit.

        ``with pager.transaction():`` holds the pager (other threads wait) and
        commits everything at the end of the block: one metadata commit, and
        one page-0 write that switches every protected page written in the
        block at once. An exception inside the block rolls everything back: no
        page allocated or freed, no protected write visible. Nested blocks join
        the outermost one. Pages freed in a transaction are not reused before
        it commits, and a protected page can be written once per transaction.

        A :class:`ProtectedWriter` opened in the block must be committed or
        discarded before the block ends: if one is still open, the whole
        transaction is rolled back and :class:`WriterOpen` is raised (when
        the block raised, it is rolled back and its own exception propagates).
        Either way the writers opened in the block are discarded.

        The ``with`` target is a :class:`Transaction`: pages written through
        ``tx.page``/``tx.view`` or named with ``tx.mark_dirty`` commit their
        contents with the block (see the README's engine transactions), and
        roots set with :meth:`set_root` commit with it too.
        """
        return TransactionBlock(self)

    def _txn_enter(self) -> Transaction:
        """``TransactionBlock.__enter__``, the pager held: begin or join, give the handle."""
        handle = self._usable()
        if self._txn_depth == 0:
            self._check(lib.mp_txn_begin(handle), "transaction")
            # (Empty, the usual case, without iterating the weak mapping.)
            self._txn_writers_before = set(self._writers.keys()) if self._writers else set()
            self._txn = Transaction(self)
        self._txn_depth += 1
        tx = self._txn
        assert tx is not None
        return tx

    def _txn_exit(self, failed: bool) -> None:
        """``TransactionBlock.__exit__``, the pager held: leave a block.

        Leaving the outermost one rolls it back when its block raised (the
        exception propagates) and commits it otherwise.
        """
        self._txn_depth -= 1
        if self._txn_depth:
            return
        self._end_txn()
        if failed:
            self._txn_abort()
            return
        left_open = (
            sorted(set(self._writers.keys()) - self._txn_writers_before) if self._writers else []
        )
        if left_open:
            # Committing would silently leave their writes out.
            self._txn_abort()
            raise_for(
                lib.MP_EWRITER_OPEN,
                "transaction",
                detail="the transaction ended with a writer still open on protected "
                f"page(s) {', '.join(map(str, left_open))}; it was rolled back: "
                "commit or discard each writer opened in the block before it ends",
            )
        rc = lib.mp_txn_commit(self._handle)
        if rc != 0:
            self._txn_abort()
            self._check(rc, "transaction commit")
        self._txn_subs.clear()
        # (No refresh of the cached counts here: the properties refresh when
        # read, and page()/alloc() when an id passes the cached page count.)

    def _txn_join_sub(self, sub: Any) -> None:
        if id(sub) not in self._txn_subs:
            self._txn_subs[id(sub)] = (sub, sub.live_ids())

    def _end_txn(self) -> None:
        if self._txn is not None:
            self._txn._open = False
            self._txn = None

    def _txn_abort(self) -> None:
        # Writers opened inside the block are discarded with it; writers
        # opened before it stay open (their staged copies are untouched).
        for pid, writer in list(self._writers.items()):
            if pid not in self._txn_writers_before:
                lib.mp_protected_discard(self._handle, pid)
                self._writers.pop(pid, None)
                writer._abandon()
        lib.mp_txn_abort(self._handle)
        subs, self._txn_subs = self._txn_subs, {}
        for sub, live in subs.values():
            sub._rollback(live)
        self._refresh_stats()
        self._load_system()

    def close(self) -> None:
        """Unmap the file and release it; idempotent (see the base class).

        Not allowed inside a transaction block (``ValueError``), nor while a
        :class:`ProtectedWriter` is open (``BufferError``, as for a view: its
        staged bytes would be lost), except in a fork child, where it always
        succeeds (the thread that was inside the block at fork time does not
        exist there).
        """
        with self._lock:
            if self._txn_depth and self._mv is not None and not self._forked:
                raise ValueError("close() inside a transaction; leave the block first")
            if self._mv is not None and len(self._writers) and not self._forked:
                pids = ", ".join(map(str, sorted(self._writers.keys())))
                raise BufferError(
                    f"cannot close a pager while a ProtectedWriter is open on protected "
                    f"page(s) {pids}; commit or discard it first"
                )
            if self._trim_on_close and self._mv is not None and not self._forked:
                self._trim_at_close()
            super().close()

    def lock(self) -> Any:
        """Return the pager's re-entrant lock: ``with pager.lock():`` groups calls.

        The lock is the C core's mutex, which every call holds for its own
        run: while one thread holds it, other threads' calls wait (the GIL is
        released while they do). A closed pager raises ``ValueError``.
        """
        self._usable()
        return self._lock
