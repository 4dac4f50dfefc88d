"""Transaction: the handle ``with pager.transaction() as tx`` gives.

Calls on the pager inside the block join the transaction; the handle adds the
data pages to it. Pages written through :meth:`Transaction.page` or
:meth:`Transaction.view`, or named with :meth:`Transaction.mark_dirty`, are in
its dirty set: at a clean exit their contents become durable together with the
allocations, roots and protected writes of the block, in one commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mappedpages._base import as_id
from mappedpages._core import ffi, lib
from mappedpages._ids import _ids_array, _u64_buffer
from mappedpages._records import _root, tree_apply
from mappedpages._types import PageId

if TYPE_CHECKING:
    from mappedpages._pager import Pager


class TransactionBlock:
    """What :meth:`Pager.transaction` returns: a ``with`` block over the pager's transaction.

    Entering holds the pager and begins a transaction, or joins the open one
    (nested blocks join the outermost); the ``with`` target is the
    :class:`Transaction`. Leaving the outermost block commits it, or rolls it
    back when the block raised. A plain class rather than a generator: a
    transaction per small update is an engine's hot path.
    """

    __slots__ = ("_pager", "_held")

    def __init__(self, pager: Pager) -> None:
        self._pager = pager
        self._held: Any = None

    def __enter__(self) -> Transaction:
        # The pager's lock, entered as `with` would, held until __exit__: the
        # block holds the pager (other threads wait). Every Python-level hold
        # of the pager goes through ``pager._lock``.
        held = self._held = self._pager._lock
        held.__enter__()
        try:
            return self._pager._txn_enter()
        except BaseException:
            held.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        try:
            self._pager._txn_exit(exc_type is not None)
        finally:
            self._held.__exit__(None, None, None)


class Transaction:
    """An open transaction of a :class:`Pager` (the target of ``with pager.transaction()``).

    Valid only inside its block; afterwards every method raises ``ValueError``.
    """

    __slots__ = ("_pager", "_open")

    def __init__(self, pager: Pager) -> None:
        self._pager = pager
        self._open = True

    @property
    def pager(self) -> Pager:
        """The pager this transaction belongs to."""
        return self._pager

    def _handle(self) -> Any:
        if not self._open:
            raise ValueError("the transaction has ended (use the handle inside its block)")
        return self._pager._usable()

    def mark_dirty(self, first: PageId, count: int = 1) -> None:
        """Add pages ``first .. first + count - 1`` to the dirty set.

        For pages written through other views (``pager.page``, ``pager.view``):
        their contents at the end of the block commit with it. Mark a page
        before writing it when the previous transaction wrote it too (see the
        README's engine transactions section). Pages must be in the file and
        not reserved (:class:`OutOfBounds`, :class:`ReservedPage`).
        """
        first_id = as_id(first)
        n = as_id(count, "count")
        if n < 1:
            raise ValueError("count must be at least 1")
        with self._pager._lock:
            handle = self._handle()
            self._pager._check(lib.mp_txn_mark_dirty(handle, first_id, n), f"page {first_id}")

    def page(self, page_id: PageId) -> memoryview:
        """A writable view of one page, like ``pager.page``, marked dirty."""
        with self._pager._lock:
            self._handle()
            view = self._pager.page(page_id)
            self.mark_dirty(page_id)
            return view

    def view(self, first_page: PageId, count: int) -> memoryview:
        """A writable view of ``count`` contiguous pages, like ``pager.view``, marked dirty."""
        with self._pager._lock:
            self._handle()
            view = self._pager.view(first_page, count)
            self.mark_dirty(first_page, count)
            return view

    def write(self, page_id: PageId, data: Any, offset: int = 0) -> None:
        """Write ``data`` (bytes-like) at ``offset`` of page ``page_id`` and mark it dirty.

        The bytes may run on into the next pages (all must be in the file and
        not reserved). They are written through the page cache (``pwrite``),
        not the mapping: a store through a mapping dirties the whole page-cache
        folio around it (up to 2 MiB once the file was read sequentially), and
        the commit then writes all of it; this writes only what changed. Views
        see the bytes at once. ``ValueError`` for an empty ``data`` or an
        ``offset`` outside ``0 .. page_size - 1``.
        """
        pid = as_id(page_id)
        off = as_id(offset, "offset")
        raw = memoryview(data).cast("B")
        if len(raw) == 0:
            raise ValueError("nothing to write")
        with self._pager._lock:
            handle = self._handle()
            if off >= self._pager.page_size:
                raise ValueError(f"offset must be below the page size, not {off}")
            buf = ffi.from_buffer("uint8_t[]", raw)
            self._pager._check(lib.mp_txn_write(handle, pid, off, buf, len(raw)), f"page {pid}")

    def write_pages(self, pages: Iterable[PageId] | Any, data: Any) -> None:
        """Write whole pages in one call: page ``i`` of ``data`` to page ``pages[i]``.

        ``pages`` is any iterable of ids, or a buffer of unsigned 64-bit
        integers (``array('Q')``, as ``alloc_bulk(n, out=...)`` fills);
        ``data`` is bytes-like, ``len(pages) * page_size`` bytes. Like
        :meth:`write` (through the page cache, the pages marked dirty), with
        one ``pwrite`` per run of consecutive ids. Every id is checked before
        anything is written (:class:`OutOfBounds`, :class:`ReservedPage`);
        ``ValueError`` when the sizes do not match or nothing is given.
        """
        arr = _u64_buffer(pages, writable=False)
        if arr is not None:
            count = len(arr)
        else:
            values, arr = _ids_array(pages, "page id")
            count = len(values)
        raw = memoryview(data).cast("B")
        with self._pager._lock:
            handle = self._handle()
            size = self._pager.page_size
            if count == 0:
                raise ValueError("no pages to write")
            if len(raw) != count * size:
                raise ValueError(
                    f"data must be {count} pages of {size} bytes for {count} page ids, "
                    f"not {len(raw)} bytes"
                )
            buf = ffi.from_buffer("uint8_t[]", raw)
            rc = lib.mp_txn_write_pages(handle, arr, count, buf, len(raw))
            if rc:
                self._pager._check(rc, f"write_pages ({count} pages)")

    def tree_apply(self, root: int, changes: Any) -> tuple[int, int]:
        """Apply sorted change records to the record tree at ``root``: (new root, key delta).

        ``changes`` is bytes-like: records (:func:`mappedpages.pack_record`,
        ``pack_records``) in strictly ascending key order, each at most
        ``tree_max_record(page_size)`` bytes; a delete of an absent key is no
        change. ``root`` 0 is the empty tree; the key delta is keys added less
        keys removed. Every page the changes reach is
        replaced, copy-on-write: the new pages are allocated (in runs, for
        a large batch), written and put in the dirty set, the old ones freed
        (not handed out again before the commit is durable), so the tree at
        the old root stays whole until the transaction commits. Store the new
        root (``pager.set_root``) in the same transaction. ``ValueError`` for
        changes out of order, malformed or too large, or a ``root`` that does
        not lead to record pages; :class:`FileFull` when the new pages do not
        fit. On an error nothing has changed.
        """
        root = _root(root)
        # The pager's lock for the check that the block is open and the call:
        # another thread's call waits for the block to end, then finds it ended.
        with self._pager._lock:
            return tree_apply(self._pager, self._handle(), root, changes)

    @property
    def dirty_pages(self) -> int:
        """How many pages are in the dirty set."""
        with self._pager._lock:
            handle = self._handle()
            out = ffi.new("uint64_t *")
            self._pager._check(lib.mp_txn_dirty_count(handle, out), "dirty_pages")
            return int(out[0])

    def __repr__(self) -> str:
        state = "open" if self._open else "ended"
        return f"<Transaction of {self._pager.path!r} ({state})>"
