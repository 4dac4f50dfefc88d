"""A copy-on-write B+tree of byte keys and values on mappedpages.

Nodes live in pages; the root page id is ``roots[0]`` and the key count
``roots[1]``; each batch of puts and deletes is one engine transaction
(``with pager.transaction() as tx``), so after a crash the tree is the one of
the last committed batch, whole. Nodes are never written in place once
committed: a batch copies every node it changes into a new page (written
through ``tx.write``, so its content commits with the batch) and frees the old
one (its page is not handed out again before the batch is durable).

Node layout (little-endian), in one page:

    0  u8   kind: 1 = leaf, 2 = internal
    1  u8   zero
    2  u16  n: entries
    4  u32  where the entries end (they are stored in order, back to back)
    leaf:      8 + 2*i: u16 offset of entry i; entry: u16 klen, u32 vlen, key, value
    internal:  8: u64 child 0; 16 + 2*i: u16 offset of entry i;
               entry: u16 klen, key, u64 child i + 1 (keys >= key go right)

Keys and values are ``bytes``; an entry (key, value and 8 bytes) must fit in a
quarter of a page (``BTree.max_entry``), so a split always fits. Deletes
remove empty nodes and collapse a root with one child, but do not merge
half-empty nodes. Run ``python examples/btree.py`` for a demo.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from typing import Any, Callable

from mappedpages import PageId, Pager, Transaction

LEAF = 1
INTERNAL = 2
_HDR = struct.Struct("<BBHI")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_LEAF_ENTRY = struct.Struct("<HI")

ROOT_SLOT = 0
COUNT_SLOT = 1


def _entry(key: bytes, value: bytes) -> bytes:
    return _LEAF_ENTRY.pack(len(key), len(value)) + key + value


def _link(key: bytes, child: int) -> bytes:
    return _U16.pack(len(key)) + key + _U64.pack(child)


def _value(entry: bytes) -> bytes:
    return entry[6 + (entry[0] | entry[1] << 8) :]



def _search(
    pid: int, key: bytes, load: Callable[[int], _Node], default: bytes | None
) -> bytes | None:
    """The value of ``key`` in the tree rooted at ``pid`` (0: empty), nodes read by ``load``."""
    while pid:
        node = load(pid)
        if node.kind == INTERNAL:
            pid = node.kids[bisect.bisect_right(node.keys, key)]
            continue
        i = bisect.bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return _value(node.ents[i])
        return default
    return default

class _Node:
    """A node parsed for modification.

    A node keeps its keys and its entries as stored (a leaf's: length fields,
    key, value; an internal node's: key length, key, child i + 1), so unchanged
    entries are copied back as they are; an internal node also keeps its
    children. ``nbytes`` is the size of the entries.
    """

    __slots__ = ("kind", "keys", "ents", "kids", "nbytes")

    def __init__(self, kind: int, keys: list[bytes], ents: list[bytes], kids: list[int]) -> None:
        self.kind = kind
        self.keys = keys
        self.ents = ents
        self.kids = kids
        if kind == INTERNAL and len(ents) != len(keys):
            self.ents = [_link(k, c) for k, c in zip(keys, kids[1:])]
        self.nbytes = sum(map(len, self.ents))

    def size(self) -> int:
        return (8 if self.kind == LEAF else 16) + 2 * len(self.keys) + self.nbytes

    def encode(self) -> bytes:
        """The node's bytes, as stored at the start of its page."""
        n = len(self.keys)
        if self.kind == LEAF:
            offs = list(accumulate(map(len, self.ents[:-1]), initial=8 + 2 * n))
            end = 8 + 2 * n + self.nbytes
            data = b"".join(
                [_HDR.pack(LEAF, 0, n, end), struct.pack(f"<{n}H", *offs[:n])] + self.ents
            )
        else:
            offs = list(accumulate(map(len, self.ents[:-1]), initial=16 + 2 * n))
            end = 16 + 2 * n + self.nbytes
            data = b"".join(
                [
                    _HDR.pack(INTERNAL, 0, n, end),
                    _U64.pack(self.kids[0]),
                    struct.pack(f"<{n}H", *offs[:n]),
                ]
                + self.ents
            )
        return data


def _decode(page: memoryview) -> _Node:
    kind, _, n, end = _HDR.unpack_from(page, 0)
    data = bytes(page)
    keys: list[bytes] = []
    ents: list[bytes] = []
    kids: list[int] = []
    frm = int.from_bytes
    if kind == LEAF:
        # Entries are stored in order and back to back, up to `end`.
        offs = struct.unpack_from(f"<{n}H", data, 8)
        ents = [data[a:b] for a, b in zip(offs, offs[1:] + (end,))]
        keys = [e[6 : 6 + (e[0] | e[1] << 8)] for e in ents]
    else:
        offs = struct.unpack_from(f"<{n}H", data, 16)
        ents = [data[a:b] for a, b in zip(offs, offs[1:] + (end,))]
        keys = [e[2:-8] for e in ents]
        kids = [frm(data[8:16], "little")] + [frm(e[-8:], "little") for e in ents]
    return _Node(kind, keys, ents, kids)


class BTree:
    """A B+tree in a pager file; the pager stays owned by the caller."""

    def __init__(self, pager: Pager, cache_nodes: int = 8192) -> None:
        self.pager = pager
        self.max_entry = (pager.page_size - 16) // 4
        # Decoded nodes by page. A committed node never changes (copy-on-write)
        # until its page is freed, which drops it here; FIFO past cache_nodes.
        self._cache: dict[int, _Node] = {}
        self._cache_nodes = cache_nodes

    def _node(self, pid: int) -> _Node:
        node = self._cache.get(pid)
        if node is None:
            node = _decode(self.pager.page(PageId(pid)))
            self._remember(pid, node)
        return node

    def _remember(self, pid: int, node: _Node) -> None:
        cache = self._cache
        if len(cache) >= self._cache_nodes:
            del cache[next(iter(cache))]
        cache[pid] = node

    @classmethod
    @contextmanager
    def open(cls, path: str, page_size: int = 4096, **options: Any) -> Iterator[BTree]:
        """Open (or create) the file at ``path`` and yield its tree; closes the file."""
        if os.path.exists(path):
            pager = Pager.open(path, **options)
        else:
            pager = Pager.create(path, page_size, **options)
        try:
            yield cls(pager)
        finally:
            pager.close()

    def __len__(self) -> int:
        return self.pager.roots[COUNT_SLOT]

    # ------------------------------------------------------------- reading

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default``."""
        return _search(self.pager.roots[ROOT_SLOT], key, self._node, default)

    def range(
        self, lo: bytes | None = None, hi: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``lo <= key < hi`` (either bound may be None), in key order."""
        root = self.pager.roots[ROOT_SLOT]
        if root:
            yield from self._range(root, lo, hi)

    def _range(self, pid: int, lo: bytes | None, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        node = self._node(pid)
        if node.kind == LEAF:
            start = 0 if lo is None else bisect.bisect_left(node.keys, lo)
            for k, e in zip(node.keys[start:], node.ents[start:]):
                if hi is not None and k >= hi:
                    return
                yield k, _value(e)
            return
        first = 0 if lo is None else bisect.bisect_right(node.keys, lo)
        for i in range(first, len(node.kids)):
            if hi is not None and i > 0 and node.keys[i - 1] >= hi:
                return
            yield from self._range(node.kids[i], lo, hi)

    # ------------------------------------------------------------- writing

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction: ``with tree.batch() as b: b.put(k, v); b.delete(k)``.

        Everything in the block commits together at its end, or nothing if it
        raises.
        """
        try:
            with self.pager.transaction() as tx:
                batch = Batch(self, tx)
                yield batch
                batch.finish()
        except BaseException:
            self._cache.clear()  # it may hold nodes of the rolled-back batch
            raise

    def put(self, key: bytes, value: bytes) -> None:
        """Set one key, as a batch of its own."""
        with self.batch() as b:
            b.put(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove one key, as a batch of its own; whether it was there."""
        with self.batch() as b:
            return b.delete(key)


class Batch:
    """The puts and deletes of one transaction (see :meth:`BTree.batch`)."""

    def __init__(self, tree: BTree, tx: Transaction) -> None:
        self.tree = tree
        self.tx = tx
        self.pager = tree.pager
        # Nodes written in this batch, by page: changed in place, in memory,
        # and encoded into their pages once, when the batch ends (finish).
        self.fresh: dict[int, _Node] = {}
        roots = self.pager.roots
        self.root = roots[ROOT_SLOT]
        self.count = roots[COUNT_SLOT]

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """A read that sees this batch's own writes."""
        fresh, committed = self.fresh, self.tree._node
        return _search(self.root, key, lambda pid: fresh.get(pid) or committed(pid), default)

    def _load(self, pid: int) -> _Node:
        """The node at pid, for changing: a committed node is copied first."""
        node = self.fresh.get(pid)
        if node is not None:
            return node
        node = self.tree._node(pid)
        copy = _Node.__new__(_Node)
        copy.kind, copy.keys, copy.ents = node.kind, node.keys[:], node.ents[:]
        copy.kids, copy.nbytes = node.kids[:], node.nbytes
        return copy

    def _write(self, old: int, node: _Node) -> int:
        """Store node in place of page ``old`` (0: none); its page id."""
        if old in self.fresh:
            pid = old
        else:
            pid = int(self.pager.alloc())
            if old:
                self.pager.free(PageId(old))
                self.tree._cache.pop(old, None)
        self.fresh[pid] = node
        return pid

    def finish(self) -> None:
        """Write every node the batch changed into its page (marked dirty).

        ``tx.write`` goes through the page cache, not the mapping, so the
        commit writes only these pages, not whole page-cache folios around them.
        """
        tx = self.tx
        if self.count != self.pager.roots[COUNT_SLOT]:
            self.pager.set_root(COUNT_SLOT, self.count)
        for pid, node in self.fresh.items():
            tx.write(PageId(pid), node.encode())
            self.tree._remember(pid, node)
        self.fresh.clear()

    def _split(self, node: _Node) -> tuple[_Node, bytes, _Node]:
        half = node.size() // 2
        if node.kind == LEAF:
            acc, cut = 8, 1
            for cut in range(1, len(node.keys)):
                acc += 2 + len(node.ents[cut - 1])
                if acc >= half:
                    break
            left = _Node(LEAF, node.keys[:cut], node.ents[:cut], [])
            right = _Node(LEAF, node.keys[cut:], node.ents[cut:], [])
            return left, right.keys[0], right
        acc, cut = 16, 1
        for cut in range(1, len(node.keys) - 1):
            acc += 12 + len(node.keys[cut - 1])
            if acc >= half:
                break
        left = _Node(INTERNAL, node.keys[:cut], node.ents[:cut], node.kids[: cut + 1])
        right = _Node(INTERNAL, node.keys[cut + 1 :], node.ents[cut + 1 :], node.kids[cut + 1 :])
        return left, node.keys[cut], right

    def _store(self, old: int, node: _Node) -> list[tuple[bytes, int]]:
        """Write node, split if it overflows: [(separator, page)], first separator empty."""
        if node.size() <= self.pager.page_size:
            return [(b"", self._write(old, node))]
        left, sep, right = self._split(node)
        out = self._store(old, left)
        out.extend(self._store_new(sep, right))
        return out

    def _store_new(self, sep: bytes, node: _Node) -> list[tuple[bytes, int]]:
        parts = self._store(0, node)
        parts[0] = (sep, parts[0][1])
        return parts

    def _apply(
        self, pid: int, key: bytes, value: bytes | None
    ) -> tuple[list[tuple[bytes, int]], bool]:
        """Put (value) or delete (None) under page pid.

        Returns the pages that replace it and whether the key count changed.
        """
        node = self._load(pid)
        if node.kind == LEAF:
            i = bisect.bisect_left(node.keys, key)
            found = i < len(node.keys) and node.keys[i] == key
            if value is None:
                if not found:
                    return [(b"", pid)], False
                del node.keys[i]
                node.nbytes -= len(node.ents.pop(i))
                if not node.keys:
                    self._drop(pid)
                    return [], True
                return self._store(pid, node), True
            entry = _entry(key, value)
            if found:
                node.nbytes += len(entry) - len(node.ents[i])
                node.ents[i] = entry
            else:
                node.keys.insert(i, key)
                node.ents.insert(i, entry)
                node.nbytes += len(entry)
            return self._store(pid, node), not found
        i = bisect.bisect_right(node.keys, key)
        parts, changed = self._apply(node.kids[i], key, value)
        if len(parts) == 1 and parts[0][1] == node.kids[i]:
            return [(b"", pid)], changed
        # Child i becomes parts: their separators go between keys i-1 and i.
        # Entry j links keys[j] to kids[j + 1]: entry i - 1 names child i.
        if parts:
            node.kids[i : i + 1] = [child for _, child in parts]
            node.keys[i:i] = [sep for sep, _ in parts[1:]]
            if i > 0:
                node.ents[i - 1] = _link(node.keys[i - 1], parts[0][1])
            node.ents[i:i] = [_link(sep, child) for sep, child in parts[1:]]
        else:
            del node.kids[i]
            if node.keys:
                del node.keys[i - 1 if i > 0 else 0]
                del node.ents[i - 1 if i > 0 else 0]
        node.nbytes = sum(map(len, node.ents))
        if not node.kids:
            self._drop(pid)
            return [], changed
        return self._store(pid, node), changed

    def _drop(self, pid: int) -> None:
        self.fresh.pop(pid, None)
        self.tree._cache.pop(pid, None)
        self.pager.free(PageId(pid))

    def _set(self, key: bytes, value: bytes | None) -> bool:
        if self.root == 0:
            if value is None:
                return False
            parts = self._store(0, _Node(LEAF, [key], [_entry(key, value)], []))
            changed = True
        else:
            parts, changed = self._apply(self.root, key, value)
        while len(parts) > 1:
            node = _Node(INTERNAL, [sep for sep, _ in parts[1:]], [], [p for _, p in parts])
            parts = self._store(0, node)
        root = parts[0][1] if parts else 0
        # A root with one child is replaced by that child.
        while root:
            top = self._load(root)
            if top.kind != INTERNAL or top.keys:
                break
            self._drop(root)
            root = top.kids[0]
        if root != self.root:
            self.root = root
            self.pager.set_root(ROOT_SLOT, root)
        return changed

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``."""
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("keys and values are bytes")
        if len(key) + len(value) + 8 > self.tree.max_entry:
            raise ValueError(
                f"key and value take {len(key) + len(value) + 8} bytes; at most "
                f"{self.tree.max_entry} fit in an entry at this page size"
            )
        if self._set(key, value):
            self.count += 1

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; whether it was there."""
        if not isinstance(key, bytes):
            raise TypeError("keys are bytes")
        if self._set(key, None):
            self.count -= 1
            return True
        return False


def _demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tree.db")
        with BTree.open(path, durability="fast") as tree:
            with tree.batch() as b:
                for i in range(1000):
                    b.put(b"key%05d" % i, b"value %d" % i)
            tree.put(b"hello", b"world")
            tree.delete(b"key00007")
            print("keys:", len(tree))
        with BTree.open(path) as tree:  # reopened: the same tree
            print("hello ->", tree.get(b"hello"))
            print("key00007 ->", tree.get(b"key00007"))
            print("first three:", list(tree.range(b"key00005", b"key00009"))[:3])
            print("pages in use:", sum(1 for _ in tree.pager.allocated_pages()))


if __name__ == "__main__":
    _demo()
    sys.exit(0)
