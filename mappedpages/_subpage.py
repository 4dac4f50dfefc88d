"""SubPageAllocator: equal slices of a pager's pages, tracked in memory.

Each big page checked out from the pager is split into ``page_size //
sub_size`` sub-slots (at most 64, one bit each of a ``u64`` mask kept by the C
core). A page is checked out when no page held has a free slot, and handed
back to the pager the moment its last sub-page is freed; both are ordinary
durable pager commits. The masks themselves are not written anywhere (as in
the Rust crate): after reopening the file, rebuild them with
:meth:`SubPageAllocator.restore` from the ids you know are live.

A sub-page id is an address, ``big_page_id * slots_per_page + slot``, so ids
may be stored in pages and used again after a reopen.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from mappedpages._base import _U64_LIMIT, as_id
from mappedpages._core import ffi, lib
from mappedpages._errors import ReservedSubPageId, error_for, raise_for
from mappedpages._ids import new_out_slot, out_slots
from mappedpages._pager import Pager

# Bound once: these run on every single-sub-page call.
_alloc = lib.mp_subpage_alloc
_free = lib.mp_subpage_free
_check = lib.mp_subpage_check
# Single calls take no Python lock (the core holds the pager's mutex), so they
# may run at once in several threads: each takes an out-parameter of its own.
_slot_take = out_slots.pop
_slot_return = out_slots.append


def _check_sub_size(sub_size: object, page_size: int) -> int:
    if isinstance(sub_size, bool):
        raise TypeError("sub_size must be an int, not bool")
    size = as_id(sub_size, "sub_size")
    if size <= 0 or size & (size - 1):
        raise ValueError(f"sub_size must be a power of two, not {size}")
    if size >= page_size:
        raise ValueError(f"sub_size must be smaller than the page size ({page_size}), not {size}")
    if page_size // size > 64:
        raise ValueError(
            f"page_size // sub_size must be at most 64 (one 64-bit mask per page), "
            f"not {page_size} // {size} = {page_size // size}"
        )
    return size


def _sub_id(value: object) -> int:
    """Return ``value`` as a sub-page id; ValueError for a malformed one."""
    sub_id = value if type(value) is int else as_id(value, "sub-page id")
    if sub_id < 0:
        raise ValueError(f"sub-page id must not be negative, not {sub_id}")
    return sub_id


def _raise_alloc_error(pager: Pager, rc: int, context: str) -> None:
    pager._check(rc, context)


def _restore_error(pager: Pager, values: list[int], slots: int) -> Exception:
    """Name the first id of ``values`` that restore refused, and why.

    Checked in the order the C core checks them, so the id named is the one
    it stopped at: the page first, then a repeat of an earlier id.
    """
    handle = pager._handle
    found = ffi.new("uint64_t[1]")
    count = ffi.new("uint64_t *")
    seen: set[int] = set()
    for sub_id in values:
        page = sub_id // slots
        where = f"restore: sub-page id {sub_id} lies in page {page}"
        rc = lib.mp_pager_check_page(handle, page)
        if rc == lib.MP_EOUT_OF_BOUNDS:
            why = f"past the end of the file ({pager.page_count} pages)"
            return error_for(rc, f"{where}, {why}")
        if rc == lib.MP_ERESERVED_PAGE:
            why = (
                "which is reserved (pages 0-2, a layout or directory page, "
                "or a protected page's backing page), not a regular page"
            )
            return error_for(rc, f"{where}, {why}", cls=ReservedSubPageId)
        pager._check(rc, "restore")
        pager._check(lib.mp_pager_list_pages(handle, lib.MP_KIND_ALLOCATED, page, found, 1, count))
        if int(count[0]) == 0 or int(found[0]) != page:
            return error_for(lib.MP_EOUT_OF_BOUNDS, f"{where}, which is free in the pager")
        if sub_id in seen:
            twice = f"restore: sub-page id {sub_id} is given twice"
            return error_for(lib.MP_EINVALID_ARGUMENT, twice)
        seen.add(sub_id)
    return error_for(lib.MP_EINVALID_ARGUMENT, "restore", detail="the ids were refused")


class SubPageAllocator:
    """Allocate ``sub_size``-byte sub-pages out of a :class:`Pager`'s pages.

    ``sub_size`` must be a power of two smaller than ``pager.page_size``, with
    at most 64 sub-pages per page (``ValueError`` otherwise). The allocator
    shares the pager's lock (the core's mutex, which each call holds), so both
    may be used from several threads.
    """

    def __init__(self, pager: Pager, sub_size: int) -> None:
        if not isinstance(pager, Pager):
            raise TypeError(f"pager must be a writable Pager, not {type(pager).__name__}")
        size = _check_sub_size(sub_size, pager.page_size)
        self._pager: Pager | None = pager
        self._sub_size = size
        self._slots = pager.page_size // size
        self._handle: Any = None
        self._out = ffi.new("uint64_t *")
        self._stats = ffi.new("mp_sub_stats *")
        with pager._lock:
            raw = ffi.new("mp_subpage **")
            pager._check(lib.mp_subpage_new(pager._usable(), size, raw), "SubPageAllocator")
            # The C state never touches the pager when destroyed, so it may be
            # collected before or after the pager, in any order.
            self._handle = ffi.gc(raw[0], lib.mp_subpage_destroy)
            # The pager refuses to free the pages a live allocator holds; the
            # entry goes when the allocator is released or collected.
            subs, key = pager._subs, id(self)
            subs[key] = weakref.ref(self, lambda _ref: subs.pop(key, None))

    @classmethod
    def restore(cls, pager: Pager, sub_size: int, live_ids: Iterable[int]) -> SubPageAllocator:
        """Rebuild an allocator after a reopen from the sub-page ids known to be live.

        Every id's big page must be an allocated regular page of ``pager``
        (else :class:`OutOfBounds`; for a reserved page :class:`ReservedPage`,
        which is then also an :class:`OutOfBounds`) that no other live allocator on ``pager``
        holds (else :class:`ReservedPage`); an id given twice raises
        ``ValueError``. The message names the id refused. Nothing changes on
        error. Big pages the caller once held but that have no live id left
        stay allocated in the pager: free them there.
        """
        alloc = cls(pager, sub_size)
        try:
            if isinstance(live_ids, (str, bytes)):
                raise TypeError("live_ids must be an iterable of ints")
            values = [_sub_id(i) for i in live_ids]
            for v in values:
                if v >= _U64_LIMIT:
                    raise_for(lib.MP_EOUT_OF_BOUNDS, f"sub-page id {v}")
            if values:
                arr = ffi.new("uint64_t[]", values)
                with pager._lock:
                    _, handle = alloc._usable()
                    rc = lib.mp_subpage_restore(handle, arr, len(values))
                    if rc in (lib.MP_EOUT_OF_BOUNDS, lib.MP_EINVALID_ARGUMENT):
                        raise _restore_error(pager, values, alloc._slots)
                    pager._check(rc, "restore")
                    alloc._refuse_shared(values)
        except BaseException:
            alloc._release()
            raise
        return alloc

    # ----------------------------------------------------------- internals

    def _usable(self) -> tuple[Pager, Any]:
        """Return (pager, C handle), or raise ValueError once detached or closed."""
        pager = self._pager
        if pager is None:
            raise ValueError("operation on a detached SubPageAllocator")
        pager._usable()
        return pager, self._handle

    def _mutable(self) -> tuple[Pager, Any]:
        """As _usable, and join the pager's open transaction, if any.

        The allocator's state lives in memory: the first call in a transaction
        records its live sub-pages, and a rollback rebuilds it from them
        (:meth:`_rollback`), so a page it took or returned inside the block
        is not handed out twice.
        """
        pager, handle = self._usable()
        if pager._txn_depth:
            pager._txn_join_sub(self)
        return pager, handle

    def _rollback(self, live_ids: list[int]) -> None:
        """Rebuild the C state from ``live_ids`` (a transaction's rollback)."""
        pager = self._pager
        if pager is None or self._handle is None:
            return
        # In place (the handle stays the same): a call in another thread may
        # hold it, waiting for the pager's mutex that the transaction holds.
        handle = self._handle
        pager._check(lib.mp_subpage_clear(handle), "rollback")
        if live_ids:
            arr = ffi.new("uint64_t[]", live_ids)
            pager._check(lib.mp_subpage_restore(handle, arr, len(live_ids)), "rollback")

    def _release(self) -> None:
        pager = self._pager
        handle, self._handle, self._pager = self._handle, None, None
        if pager is not None:
            ref = pager._subs.get(id(self))
            if ref is not None and ref() is self:
                del pager._subs[id(self)]
        # Not released here: a call in another thread may still hold the
        # handle; it is destroyed with the last reference (it never touches
        # the pager, so it may outlive it).
        del handle

    def _refuse_shared(self, values: list[int]) -> None:
        """Raise ReservedPage if another live allocator holds a page of ``values``.

        Two allocators holding one page would hand out the same sub-pages.
        """
        pager, _ = self._usable()
        slots = self._slots
        pages = sorted({v // slots for v in values})
        arr = ffi.new("uint64_t[]", pages)
        where = ffi.new("uint64_t *")
        for ref in list(pager._subs.values()):
            other = ref()
            if other is None or other is self or other._handle is None:
                continue
            pager._check(lib.mp_subpage_find_held(other._handle, arr, len(pages), where))
            if where[0] < len(pages):
                page = pages[where[0]]
                sub_id = next(v for v in values if v // slots == page)
                raise_for(
                    lib.MP_ERESERVED_PAGE,
                    f"restore: sub-page id {sub_id} lies in page {page}, which another "
                    f"SubPageAllocator on this pager holds (sub_size {other.sub_size})",
                )

    def _list(self) -> list[tuple[int, int]]:
        """(big page id, in-use mask) of every big page held."""
        pager, handle = self._usable()
        stats = ffi.new("mp_sub_stats *")
        pager._check(lib.mp_subpage_stats(handle, stats))
        n = int(stats.big_pages)
        pages = ffi.new("uint64_t[]", max(n, 1))
        masks = ffi.new("uint64_t[]", max(n, 1))
        pager._check(lib.mp_subpage_list(handle, pages, masks, n, self._out))
        return sorted(zip(ffi.unpack(pages, n), ffi.unpack(masks, n)))

    # ----------------------------------------------------------- properties

    @property
    def pager(self) -> Pager:
        """The pager whose pages are split; ``ValueError`` once detached."""
        if self._pager is None:
            raise ValueError("operation on a detached SubPageAllocator")
        return self._pager

    @property
    def detached(self) -> bool:
        """True once :meth:`detach` has been called."""
        return self._pager is None

    @property
    def sub_size(self) -> int:
        """Bytes per sub-page."""
        return self._sub_size

    @property
    def slots_per_page(self) -> int:
        """Sub-pages per big page: ``page_size // sub_size``."""
        return self._slots

    @property
    def live_count(self) -> int:
        """Sub-pages currently allocated."""
        pager = self.pager
        with pager._lock:
            pager, handle = self._usable()
            pager._check(lib.mp_subpage_stats(handle, self._stats))
            return int(self._stats.live_count)

    def big_pages(self) -> list[int]:
        """The pager pages this allocator holds, ascending."""
        with self.pager._lock:
            return [page for page, _ in self._list()]

    def live_ids(self) -> list[int]:
        """Every allocated sub-page id, ascending: what :meth:`restore` takes."""
        with self.pager._lock:
            held = self._list()
        slots = self._slots
        return [
            page * slots + slot for page, mask in held for slot in range(slots) if mask >> slot & 1
        ]

    # ----------------------------------------------------------- alloc/free

    def alloc(self) -> int:
        """Allocate one sub-page and return its id.

        A free slot of a page already held is used first; otherwise one page
        is taken from the pager (one durable commit). The sub-page keeps
        whatever bytes it held before.
        """
        pager = self._pager
        if pager is None or pager._txn_depth:
            return self._alloc_slow()
        try:
            out = _slot_take()
        except IndexError:
            out = new_out_slot()
        rc = _alloc(self._handle, out)
        sub_id: int = out[0]
        _slot_return(out)
        if rc:
            self._mutable()  # detached, closed or a fork child: its own words
            _raise_alloc_error(pager, rc, "alloc")
        # The pager may have grown to supply a page: page() and the pager's
        # views refresh its cached counts when an id passes them.
        return sub_id

    def _alloc_slow(self) -> int:
        # Detached, or inside a transaction (which this allocator joins).
        with self.pager._lock:
            pager, handle = self._mutable()
            rc = _alloc(handle, self._out)
            if rc:
                _raise_alloc_error(pager, rc, "alloc")
            sub_id = int(self._out[0])
            pager._refresh_stats()
            return sub_id

    def free(self, sub_id: int) -> None:
        """Free one sub-page; its page goes back to the pager when it was the last one.

        Freeing a free slot is a :class:`DoubleFree`, and so is freeing into a
        page that is free in the pager (its last sub-page was freed before);
        an id whose page is past the file's end, reserved, or held by someone
        else raises :class:`OutOfBounds`, and a negative id ``ValueError``.
        """
        pager = self._pager
        if pager is None or pager._txn_depth:
            sub_id = _sub_id(sub_id)
            with self.pager._lock:
                self._mutable()
                self._free_one(sub_id)
            return
        # One C call. The pager's cached counts need no update: the page count
        # never changes here, and free_page_count asks the core.
        try:
            rc = _free(self._handle, sub_id)
        except (OverflowError, TypeError):  # not a uint64 to cffi: see what it is
            self._free_one(_sub_id(sub_id))
            return
        if rc:
            if type(sub_id) is not int:
                _sub_id(sub_id)  # a bool: TypeError, as any id that is not an int
            pager, _ = self._usable()
            pager._check(rc, f"free sub-page {sub_id}")

    def _free_one(self, sub_id: int) -> None:
        if sub_id >= _U64_LIMIT:
            raise_for(lib.MP_EOUT_OF_BOUNDS, f"sub-page id {sub_id}")
        rc = _free(self._handle, sub_id)
        if rc:
            pager, _ = self._usable()
            pager._check(rc, f"free sub-page {sub_id}")

    def alloc_bulk(self, n: int) -> list[int]:
        """Allocate ``n`` sub-pages, all or nothing.

        The pages needed beyond the free slots already held are taken from the
        pager in one durable commit; if it cannot supply them, nothing is
        allocated and the error is raised.
        """
        n = as_id(n, "n")
        if n < 0:
            raise ValueError("n must not be negative")
        pager = self.pager
        with pager._lock:
            pager, handle = self._mutable()
            if n == 0:
                return []
            stats = ffi.new("mp_stats *")
            pager._check(lib.mp_pager_stats(pager._handle, stats))
            if n > int(stats.max_pages) * self._slots:
                raise_for(lib.MP_EFILE_FULL, f"alloc_bulk({n})", detail="more sub-pages than that")
            out = ffi.new("uint64_t[]", n)
            rc = lib.mp_subpage_alloc_bulk(handle, n, out)
            if rc:
                _raise_alloc_error(pager, rc, "alloc_bulk")
            pager._refresh_stats()
            return ffi.unpack(out, n)  # type: ignore[no-any-return]

    def free_bulk(self, ids: Iterable[int]) -> None:
        """Free many sub-pages at once.

        Every id is checked first (an id given twice is a :class:`DoubleFree`);
        if any is bad, nothing is freed. Pages left empty go back to the
        pager in one durable commit.
        """
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be an iterable of ints")
        values = [_sub_id(i) for i in ids]
        pager = self.pager
        with pager._lock:
            pager, handle = self._mutable()
            if not values:
                return
            for v in values:
                if v >= _U64_LIMIT:
                    raise_for(lib.MP_EOUT_OF_BOUNDS, f"sub-page id {v}")
            arr = ffi.new("uint64_t[]", values)
            rc = lib.mp_subpage_free_bulk(handle, arr, len(values))
            if rc:
                pager._check(rc, "free_bulk")
            pager._refresh_stats()

    def page(self, sub_id: int) -> memoryview:
        """Return a writable, zero-copy view of one sub-page (``sub_size`` bytes).

        The view is a slice of the pager's page view, so it keeps the pager
        from closing while it lives. Its big page must be one this allocator
        holds (else :class:`OutOfBounds`); as with pages, a free slot of such a
        page may be viewed.
        """
        if type(sub_id) is not int or sub_id < 0:
            sub_id = _sub_id(sub_id)
        pager = self._pager
        if pager is None:
            raise ValueError("operation on a detached SubPageAllocator")
        with pager._lock:
            if pager._mv is None or pager._forked or self._handle is None:
                self._usable()
            if sub_id >= _U64_LIMIT:
                raise_for(lib.MP_EOUT_OF_BOUNDS, f"sub-page id {sub_id}")
            rc = _check(self._handle, sub_id, self._out)
            if rc:
                pager._check(rc, f"sub-page {sub_id}")
            big, slot = divmod(sub_id, self._slots)
            start = slot * self._sub_size
            return pager._view(big, readonly=False)[start : start + self._sub_size]

    # ----------------------------------------------------------- lifetime

    def detach(self) -> Pager:
        """End this allocator and return its pager.

        The pages it holds stay allocated in the pager. Every later call on
        the allocator raises ``ValueError``, as on a closed file.
        """
        pager = self.pager
        with pager._lock:
            self._release()
        return pager

    def __enter__(self) -> SubPageAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pager is not None:
            self.detach()

    def __repr__(self) -> str:
        if self._pager is None:
            state = "detached"
        elif self._pager.closed:
            state = "pager closed"
        else:
            state = f"{self.live_count} live"
        return f"<SubPageAllocator sub_size={self._sub_size} x{self._slots} {state}>"
