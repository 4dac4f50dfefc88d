"""Record trees: a B+tree of record pages, changed copy-on-write by the core.

A record is ``u16 klen, u32 vlen, key, value`` (little-endian); a record page
holds a header (u8 kind, u8 0, u16 n, u32 end) and records in ascending key
order; a tree is leaves (kind :data:`RECORD_LEAF`) under branches
(:data:`RECORD_BRANCH`: each child's lowest key and its page id). FORMAT.md,
"Record trees", has the details. The caller keeps the root's page id (a root
slot, ``pager.set_root``) and makes its batches: :meth:`Transaction.tree_apply`
applies one to the tree, ``tree_get`` reads a key and ``tree_items`` a range.
An engine on the library keeps its data in such a tree and does no per-entry
work in Python.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from mappedpages._base import _PagerBase
from mappedpages._core import ffi, lib
from mappedpages._ids import new_pool

RECORD_DELETE: int = int(lib.MP_RECORD_DELETE)
"""A change record's ``vlen`` that removes its key (no value bytes follow)."""

RECORD_LEAF: int = int(lib.MP_RECORD_LEAF)
"""The kind (header byte 0) of a leaf page: keys and their values."""

RECORD_BRANCH: int = int(lib.MP_RECORD_BRANCH)
"""The kind of a branch page: each child's lowest key and its page id."""

_HEAD = struct.Struct("<HI")
_SCAN_BYTES = 1 << 16  # the most records tree_items asks the core for at a time
_VALUE_AT = 8  # where the value starts in a tree_get block
_ROOTS = struct.Struct("=8Q")
_unpack_roots = _ROOTS.unpack_from
_pager_roots = lib.mp_pager_roots
_tree_get = lib.mp_tree_get
# tree_items' batch buffers: the core writes the bytes a batch reads, so
# clearing them first would only cost time.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


# Out-parameters and buffers, shared by all pagers, in pools (``new_pool``: a
# call pops one and pushes it back).


def _get_slot(size: int) -> tuple[Any, Any, Any, Any, int]:
    """A tree_get block for values up to ``size`` bytes.

    One block: the value's length (u32) and whether it was found (int) at its
    head, the value after them. The lengths are read as two items of the u32
    view and the value sliced from the block's buffer as bytes in one step
    (cheaper than unpacking either). Returned as its buffer, the u32 view of
    its head, the found flag, the value buffer and ``size``.
    """
    block = ffi.new("char[]", _VALUE_AT + size)
    head = ffi.cast("uint32_t *", block)
    found = ffi.cast("int *", block + 4)
    return ffi.buffer(block), head, found, ffi.cast("uint8_t *", block + _VALUE_AT), size


def _roots_slot() -> tuple[bytearray, Any]:
    """The out-array of ``roots``: a bytearray with a u64[8] view of it.

    struct reads the eight roots out of a bytearray in one call, a third of
    what ffi.unpack costs.
    """
    raw = bytearray(_ROOTS.size)
    return raw, ffi.from_buffer("uint64_t[]", raw)


def _apply_out() -> tuple[Any, Any]:
    """tree_apply's out-parameters: the new root and the key-count change."""
    return ffi.new("uint64_t *"), ffi.new("int64_t *")


# (a tree_get block is made again, larger, for pages over 4 KiB)
_get_slots = new_pool(lambda: _get_slot(4096))
_get_take, _get_return = _get_slots.pop, _get_slots.append
_roots_slots = new_pool(_roots_slot)
_roots_take, _roots_return = _roots_slots.pop, _roots_slots.append
_apply_outs = new_pool(_apply_out)
_apply_take, _apply_return = _apply_outs.pop, _apply_outs.append


def tree_max_record(page_size: int) -> int:
    """The most bytes one record (``6 + len(key) + len(value)``) may take at ``page_size``."""
    out = ffi.new("uint32_t *")
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, not {type(page_size).__name__}")
    if not 512 <= page_size < 1 << 32 or lib.mp_tree_max_record(page_size, out):
        raise ValueError(f"no record tree fits pages of {page_size} bytes")
    return int(out[0])


def pack_record(key: bytes, value: bytes | None) -> bytes:
    """One change record: ``u16 klen, u32 vlen, key, value``; ``value=None`` deletes ``key``.

    ``ValueError`` for a key of more than 65,535 bytes or a value of 2**32 - 1 or more
    (the tree refuses any record over ``tree_max_record`` bytes anyway).
    """
    if len(key) > 0xFFFF or (value is not None and len(value) >= RECORD_DELETE):
        raise ValueError("a record's key is at most 65,535 bytes and its value under 4 GiB")
    if value is None:
        return _HEAD.pack(len(key), RECORD_DELETE) + key
    return _HEAD.pack(len(key), len(value)) + key + value


def pack_records(changes: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """Change records for ``(key, value or None)`` pairs, sorted by key (one per key).

    ``ValueError`` as :func:`pack_record`.
    """
    pack, delete = _HEAD.pack, RECORD_DELETE
    try:
        return b"".join(
            [
                pack(len(k), delete) + k if v is None else pack(len(k), len(v)) + k + v
                for k, v in sorted(changes)
            ]
        )
    except struct.error:  # a length past its field
        raise ValueError(
            "a record's key is at most 65,535 bytes and its value under 4 GiB"
        ) from None


def _root(root: int) -> int:
    if type(root) is int and 0 <= root < 1 << 64:  # (the usual case, in one test)
        return root
    if isinstance(root, bool) or not isinstance(root, int):
        raise TypeError(f"root must be an int, not {type(root).__name__}")
    if not 0 <= root < 1 << 64:
        raise ValueError(f"root must be a page id (an unsigned 64-bit int), not {root}")
    return root


def tree_apply(pager: _PagerBase, handle: Any, root: int, changes: Any) -> tuple[int, int]:
    """:meth:`Transaction.tree_apply` (the pager's lock held by the caller)."""
    src = ffi.from_buffer("uint8_t[]", changes)
    try:
        outs = _apply_take()
    except IndexError:
        outs = _apply_out()
    out_root, delta = outs
    rc = lib.mp_tree_apply(handle, root, src, len(src), out_root, delta)
    result = out_root[0], delta[0]
    _apply_return(outs)
    if rc:
        pager._check(rc, "tree_apply")
    return result


class _TreeReads(_PagerBase):
    """An engine's reads, on :class:`mappedpages.Pager` and ``ReadOnlyPager``.

    The roots, and the record trees they name.
    """

    @property
    def roots(self) -> tuple[int, ...]:
        """The 8 roots of the state this handle shows, unsigned 64-bit ints (0 in a new file).

        A writer's include those set in its open transaction; a reader's are its commit's.
        """
        # An engine's every read starts here: one core call (which holds the
        # pager's mutex), no Python lock, an out-array from a shared pool.
        try:
            slot = _roots_take()
        except IndexError:
            slot = _roots_slot()
        rc = _pager_roots(self._handle, slot[1])
        roots: tuple[int, ...] = _unpack_roots(slot[0])
        _roots_return(slot)
        if rc:
            self._usable()  # closed, or a fork child: its own words
            self._check(rc, "roots")
        return roots

    def tree_items(
        self, root: int, lo: bytes | None = None, hi: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """The ``(key, value)`` pairs of the record tree at ``root`` with ``lo <= key < hi``.

        In key order; either bound may be None. The core reads the pages a
        batch of records at a time (a page's worth first, then twice the batch
        before, up to 64 KiB), each page copied and checked whole, and the next
        batch goes on after the last key of the one before: a tree changed
        meanwhile gives the records of the pages its ids name then (never a
        read past a page). ``ValueError`` for a page that
        is not a record page, keys out of order across pages, or a page
        reached twice (deeper than 48 levels, or more pages than the file
        has); a ``root`` no view may show raises as :meth:`page` does.
        """
        root = _root(root)
        for name, bound in (("lo", lo), ("hi", hi)):
            if bound is not None and not isinstance(bound, bytes):
                raise TypeError(f"{name} must be bytes or None, not {type(bound).__name__}")
        return chain.from_iterable(self._tree_batches(root, lo, hi))

    def _tree_batches(
        self, root: int, lo: bytes | None, hi: bytes | None
    ) -> Iterator[Iterator[tuple[bytes, bytes]]]:
        # The first batch is a page of records, and each next one twice the
        # one before, up to _SCAN_BYTES: a short range (the next ten keys)
        # costs a page's copy, not 64 KiB of records it never reads. The
        # buffer is not cleared (the core writes what the batch reads).
        cap, top, scan = self._page_size, max(self._page_size, _SCAN_BYTES), lib.mp_tree_scan
        buf = _new_uncleared("uint8_t[]", cap)
        # Where each record of a batch lies (three offsets a record, the core
        # parses the batch): the pairs are then sliced out by map and zip, with
        # no Python step per record.
        most = cap // _HEAD.size  # records a batch of cap bytes may hold
        spans = _new_uncleared("uint64_t[]", 3 * most)
        used, more, n_spans = ffi.new("uint64_t *"), ffi.new("int *"), ffi.new("uint64_t *")
        flags = (0 if lo is None else lib.MP_SCAN_FROM) | (0 if hi is None else lib.MP_SCAN_TO)
        start, stop = lo or b"", hi or b""
        h, n_stop, spans_of = self._handle, len(stop), lib.mp_record_spans
        while True:
            rc = scan(h, root, start, len(start), stop, n_stop, flags, buf, cap, used, more)
            if rc == 0:
                rc = spans_of(buf, used[0], spans, most, n_spans)
            if rc:
                self._usable()  # closed, or a fork child: its own words
                self._check(rc, "tree_items")
            data = ffi.buffer(buf, used[0])[:]  # the batch, copied once
            at = memoryview(ffi.buffer(spans, 24 * n_spans[0])).cast("Q").tolist()
            keys, values, ends = at[0::3], at[1::3], at[2::3]
            cut = data.__getitem__
            # (chain takes the pairs from zip; this frame runs once a batch)
            yield zip(map(cut, map(slice, keys, values)), map(cut, map(slice, values, ends)))
            if not more[0]:
                return
            start = data[keys[-1] : values[-1]] if keys else b""
            flags = (flags & lib.MP_SCAN_TO) | lib.MP_SCAN_AFTER
            if cap < top:
                cap = min(2 * cap, top)
                buf, most = _new_uncleared("uint8_t[]", cap), cap // _HEAD.size
                spans = _new_uncleared("uint64_t[]", 3 * most)

    def tree_get(self, root: int, key: bytes, default: bytes | None = None) -> bytes | None:
        """The value of ``key`` in the record tree whose root page is ``root``, or ``default``.

        ``root`` 0 is the empty tree. A writer reads its own latest state
        (its open transaction's included), a reader the commit it shows.
        ``ValueError`` when ``root`` does not lead to record pages. The core
        copies the value into a buffer of the library's (one per call in flight
        at once, kept, of the largest page size read), then into the bytes
        returned.
        """
        if type(root) is not int or not 0 <= root < 1 << 64:
            root = _root(root)  # raises
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if len(key) > 0xFFFF:
            return default  # no record holds so long a key
        try:
            slot = _get_take()
        except IndexError:
            slot = _get_slot(self._page_size)
        raw, head, found, buf, cap = slot
        if cap < self._page_size:  # a value fits in a page
            raw, head, found, buf, cap = slot = _get_slot(self._page_size)
        # One call, which holds the pager's mutex itself (as alloc does).
        rc = _tree_get(self._handle, root, key, len(key), buf, cap, head, found)
        value = raw[_VALUE_AT : _VALUE_AT + head[0]] if head[1] and not rc else default
        _get_return(slot)
        if rc:
            self._usable()  # closed, or a fork child: its own words
            self._check(rc, "tree_get")
        return value
