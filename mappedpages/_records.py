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

import bisect
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from mappedpages._base import _PagerBase
from mappedpages._core import ffi, lib
from mappedpages._errors import MappedPageError
from mappedpages._types import PageId

RECORD_DELETE: int = int(lib.MP_RECORD_DELETE)
"""A change record's ``vlen`` that removes its key (no value bytes follow)."""

RECORD_LEAF: int = int(lib.MP_RECORD_LEAF)
"""The kind (header byte 0) of a leaf page: keys and their values."""

RECORD_BRANCH: int = int(lib.MP_RECORD_BRANCH)
"""The kind of a branch page: each child's lowest key and its page id."""

_HEAD = struct.Struct("<HI")
_PAGE_HEAD = struct.Struct("<BBHI")
_U64 = struct.Struct("<Q")
_MAX_DEPTH = 48  # the core's bound: deeper, a cycle
_tls = threading.local()


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
    if isinstance(root, bool) or not isinstance(root, int):
        raise TypeError(f"root must be an int, not {type(root).__name__}")
    if not 0 <= root < 1 << 64:
        raise ValueError(f"root must be a page id (an unsigned 64-bit int), not {root}")
    return root


def tree_apply(pager: _PagerBase, handle: Any, root: int, changes: Any) -> tuple[int, int]:
    """:meth:`Transaction.tree_apply` (the pager's lock held by the caller)."""
    src = ffi.from_buffer("uint8_t[]", changes)
    try:
        out_root, delta = _tls.apply
    except AttributeError:
        out_root, delta = _tls.apply = (ffi.new("uint64_t *"), ffi.new("int64_t *"))
    rc = lib.mp_tree_apply(handle, root, src, len(src), out_root, delta)
    if rc:
        pager._check(rc, "tree_apply")
    return int(out_root[0]), int(delta[0])


def _decode_page(pager: _PagerBase, pid: int, child: bool) -> tuple[int, list[bytes], list[bytes]]:
    """Record page ``pid`` copied and checked whole: (kind, keys, values)."""
    try:
        data = bytes(pager.page(PageId(pid)))  # type: ignore[attr-defined]
    except MappedPageError:
        if not child:
            raise  # the caller's root: ReservedPage, OutOfBounds, as page() says
        data = b""
    bad = ValueError(f"page {pid} is not a record page")
    if len(data) < 8:
        raise bad
    kind, zero, n, end = _PAGE_HEAD.unpack_from(data, 0)
    if kind not in (RECORD_LEAF, RECORD_BRANCH) or zero or not 8 <= end <= len(data):
        raise bad
    keys: list[bytes] = []
    values: list[bytes] = []
    at = 8
    for _ in range(n):
        if end - at < 6:
            raise bad
        klen, vlen = _HEAD.unpack_from(data, at)
        stop = at + 6 + klen + vlen
        key = data[at + 6 : at + 6 + klen]
        if stop > end or (kind == RECORD_BRANCH and vlen != 8) or (keys and key <= keys[-1]):
            raise bad
        keys.append(key)
        values.append(data[at + 6 + klen : stop])
        at = stop
    if at != end or (kind == RECORD_BRANCH and not keys):
        raise bad
    return kind, keys, values


class _TreeReads(_PagerBase):
    """Reads of record trees, on :class:`mappedpages.Pager` and ``ReadOnlyPager``."""

    def tree_items(
        self, root: int, lo: bytes | None = None, hi: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """The ``(key, value)`` pairs of the record tree at ``root`` with ``lo <= key < hi``.

        In key order; either bound may be None. Pages are read as the iterator
        advances, each copied and checked whole: a tree changed meanwhile gives
        an undefined sequence (never a read past a page). ``ValueError`` for a
        page that is not a record page, or a page reached twice (deeper than 48
        levels, or more pages than the file has); a ``root`` no view may show
        raises as :meth:`page` does.
        """
        root = _root(root)
        if root:
            # (the count refreshed once: the cached one may predate a growth)
            yield from self._tree_range(root, lo, hi, 0, [self.page_count])

    def _tree_range(
        self, pid: int, lo: bytes | None, hi: bytes | None, depth: int, visits: list[int]
    ) -> Iterator[tuple[bytes, bytes]]:
        # A tree reaches each page once: a walk deeper than the core's bound, or
        # longer than the file, has met a page twice (a damaged tree).
        visits[0] -= 1  # (pages the walk may still visit)
        if depth >= _MAX_DEPTH or visits[0] < 0:
            raise ValueError("tree_items: a page reached twice (a cycle, not a tree)")
        kind, keys, values = _decode_page(self, pid, depth > 0)
        if kind == RECORD_LEAF:
            start = 0 if lo is None else bisect.bisect_left(keys, lo)
            for i in range(start, len(keys)):
                if hi is not None and keys[i] >= hi:
                    return
                yield keys[i], values[i]
            return
        # Child i holds the keys from keys[i] (the first child: any below) to keys[i + 1].
        first = 0 if lo is None else max(0, bisect.bisect_right(keys, lo) - 1)
        for i in range(first, len(keys)):
            if hi is not None and i > 0 and keys[i] >= hi:
                return
            yield from self._tree_range(_U64.unpack(values[i])[0], lo, hi, depth + 1, visits)

    def tree_get(self, root: int, key: bytes, default: bytes | None = None) -> bytes | None:
        """The value of ``key`` in the record tree whose root page is ``root``, or ``default``.

        ``root`` 0 is the empty tree. A writer reads its own latest state
        (its open transaction's included), a reader the commit it shows.
        ``ValueError`` when ``root`` does not lead to record pages.
        """
        if type(root) is not int or not 0 <= root < 1 << 64:
            root = _root(root)  # raises
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if len(key) > 0xFFFF:
            return default  # no record holds so long a key
        try:
            buf, out_len, found = _tls.get
        except AttributeError:
            buf = None
        if buf is None or len(buf) < self._page_size:  # a value fits in a page
            buf, out_len, found = _tls.get = (
                ffi.new("uint8_t[]", self._page_size),
                ffi.new("uint32_t *"),
                ffi.new("int *"),
            )
        # One call, which holds the pager's mutex itself (as alloc does).
        rc = lib.mp_tree_get(self._handle, root, key, len(key), buf, len(buf), out_len, found)
        if rc:
            self._usable()  # closed, or a fork child: its own words
            self._check(rc, "tree_get")
        if not found[0]:
            return default
        return ffi.buffer(buf, out_len[0])[:]  # type: ignore[no-any-return]
