"""A copy-on-write B+tree of byte keys and values on mappedpages.

Nodes live in pages; the root page id is ``roots[0]`` and the key count
``roots[1]``; each batch of puts and deletes is one engine transaction
(``with pager.transaction() as tx``), so after a crash the tree is the one of
the last committed batch, whole. Nodes are never written in place once
committed: a batch copies every node it changes into a new page (written
through ``tx.write_pages``, so its content commits with the batch) and frees
the old one (its page is not handed out again before the batch is durable).

Node layout (little-endian), in one page:

    0  u8   kind: 1 = leaf, 2 = internal
    1  u8   zero
    2  u16  n: entries
    4  u32  where the entries end
    leaf:      8: the entries, in key order, back to back;
               entry: u16 klen, u32 vlen, key, value
    internal:  8: u64 child 0; 16: the entries, in key order, back to back;
               entry: u16 klen, key, u64 child i + 1 (keys >= key go right)

There is no table of entry offsets: a node is decoded whole, once, into the
tree's cache of nodes, and searched there; without one, writing a node is one
join of its entries.

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
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
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
# A batch of at least this many new nodes is allocated in runs of as many
# pages, so writing them is a few long writes (a flush of a hundred scattered
# pages costs several times one of the same pages in a few runs). A smaller
# batch takes the lowest free pages: pages freed by earlier batches, written
# before, where a run would mostly come from space the file never wrote, and
# the first write into preallocated space makes the flush commit the file
# system's journal as well (on ext4, about twice the flush of one page).
RUN = 16


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
    """A node as its page holds it, decoded.

    A node keeps its keys and its entries as stored (a leaf's: length fields,
    key, value; an internal node's: key length, key, child i + 1), so unchanged
    entries are copied into a new node as they are; an internal node also
    keeps its children. A committed node is never changed (copy-on-write).
    """

    __slots__ = ("kind", "keys", "ents", "kids", "size")

    def __init__(
        self, kind: int, keys: list[bytes], ents: list[bytes], kids: list[int], size: int
    ) -> None:
        self.kind = kind
        self.keys = keys
        self.ents = ents
        self.kids = kids
        self.size = size  # bytes, header included


def _decode(page: memoryview) -> _Node:
    kind, _, n, end = _HDR.unpack_from(page, 0)
    data = bytes(page[:end])
    keys: list[bytes] = []
    ents: list[bytes] = []
    kids: list[int] = []
    if kind == LEAF:
        at = 8
        for _ in range(n):
            klen, vlen = _LEAF_ENTRY.unpack_from(data, at)
            keys.append(data[at + 6 : at + 6 + klen])
            ents.append(data[at : at + 6 + klen + vlen])
            at += 6 + klen + vlen
    else:
        kids.append(_U64.unpack_from(data, 8)[0])
        at = 16
        for _ in range(n):
            (klen,) = _U16.unpack_from(data, at)
            keys.append(data[at + 2 : at + 2 + klen])
            ents.append(data[at : at + 10 + klen])
            kids.append(_U64.unpack_from(data, at + 2 + klen)[0])
            at += 10 + klen
    return _Node(kind, keys, ents, kids, end)


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
            node = self._cache[pid] = _decode(self.pager.page(PageId(pid)))
            self._trim_cache()
        return node

    def _trim_cache(self) -> None:
        cache = self._cache
        while len(cache) > self._cache_nodes:
            del cache[next(iter(cache))]

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
    """The puts and deletes of one transaction (see :meth:`BTree.batch`).

    They are collected by key and applied when the block ends, in key order,
    in one descent of the tree (:class:`_Rewrite`): every node on the way to a
    changed leaf is rebuilt once, into a new page, however many keys of the
    batch land in it.
    """

    def __init__(self, tree: BTree, tx: Transaction) -> None:
        self.tree = tree
        self.tx = tx
        # The batch's last word on each key it touched: a value, or None
        # for a delete.
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """A read that sees this batch's own writes."""
        if key in self.changes:
            value = self.changes[key]
            return default if value is None else value
        return self.tree.get(key, default)

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``."""
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("keys and values are bytes")
        if len(key) + len(value) + 8 > self.tree.max_entry:
            raise ValueError(
                f"key and value take {len(key) + len(value) + 8} bytes; at most "
                f"{self.tree.max_entry} fit in an entry at this page size"
            )
        self.changes[key] = value

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; whether it was there."""
        if not isinstance(key, bytes):
            raise TypeError("keys are bytes")
        if self.get(key) is None:
            return False
        self.changes[key] = None
        return True

    def finish(self) -> None:
        """Apply the batch: rebuild the changed nodes, write them, set the roots."""
        if not self.changes:
            return
        pager = self.tree.pager
        roots = pager.roots
        rewrite = _Rewrite(self.tree, self.changes)
        root = rewrite.run(roots[ROOT_SLOT])
        root = rewrite.store(self.tx, root)
        self.changes = {}
        if root != roots[ROOT_SLOT]:
            pager.set_root(ROOT_SLOT, root)
        if rewrite.delta:
            pager.set_root(COUNT_SLOT, roots[COUNT_SLOT] + rewrite.delta)


# A node's place in its parent while a batch is applied: (separator, page).
# The first part of a rebuilt child keeps the parent's separator (given as
# b""); a page below 0 is the new node ~page of the batch, not yet placed.
_Part = tuple[bytes, int]


class _Rewrite:
    """One batch applied to the tree: the new nodes, the pages they replace.

    ``run`` descends once with the batch's sorted keys, splitting them among
    the children of each node, and rebuilds what changed bottom-up as new
    nodes (committed nodes are never changed: copy-on-write). ``store`` then
    allocates their pages in one call, frees the replaced ones in one call and
    writes each new node once.
    """

    def __init__(self, tree: BTree, changes: dict[bytes, bytes | None]) -> None:
        self.tree = tree
        self.keys = sorted(changes)
        self.values = [changes[k] for k in self.keys]
        # Each put's leaf entry, made in one pass (b"" for a delete).
        self.entries = [
            b"" if v is None else _LEAF_ENTRY.pack(len(k), len(v)) + k + v
            for k, v in zip(self.keys, self.values)
        ]
        self.new: list[_Node | None] = []
        # By new internal node: the indexes of its children that are new too.
        self.unplaced: dict[int, list[int]] = {}
        self.freed: list[int] = []
        self.delta = 0  # keys added minus keys removed
        self.page_size = tree.pager.page_size
        # The most entry bytes a split part aims at: a part that reaches it
        # takes one more entry (a leaf's: key, value and 6 bytes; an internal
        # one's: key and 10 bytes, at most max_entry + 2) and still fits a page.
        self.cap = self.page_size - 16 - (tree.max_entry + 2)

    def run(self, root: int) -> int:
        """Apply the batch under ``root`` (0: empty tree); the new root."""
        if root:
            got = self._apply(root, 0, len(self.keys))
            if got is None:
                return root
            parts = got
        else:
            merged = self._merge(_Node(LEAF, [], [], [], 8), 0, len(self.keys))
            parts = self._leaves(*merged) if merged else []
        while len(parts) > 1:  # the root split: a new level
            seps = [b""] + [sep for sep, _ in parts[1:]]
            kids = [kid for _, kid in parts]
            size = 16 + sum(len(s) + 10 for s in seps[1:])
            parts = self._internals(seps, kids, [b""] * len(kids), list(range(len(kids))), size)
        top = parts[0][1] if parts else 0
        # A root with one child is replaced by that child.
        while top:
            node = self.new[~top] if top < 0 else self.tree._node(top)
            assert node is not None
            if node.kind != INTERNAL or node.keys:
                break
            if top < 0:
                self.new[~top] = None
            else:
                self.freed.append(top)
            top = node.kids[0]
        return top

    def _add(self, node: _Node) -> int:
        self.new.append(node)
        return ~(len(self.new) - 1)

    def _apply(self, pid: int, lo: int, hi: int) -> list[_Part] | None:
        """Apply keys ``lo .. hi - 1`` of the batch under page ``pid``.

        The parts that replace it ([] when it empties), or None when nothing
        under it changed.
        """
        node = self.tree._cache.get(pid) or self.tree._node(pid)
        if node.kind == LEAF:
            merged = self._merge(node, lo, hi)
            if merged is None:
                return None
            self.freed.append(pid)
            keys, ents, size = merged
            if keys and size <= self.page_size:  # (the usual case, without a call)
                return [(b"", self._add(_Node(LEAF, keys, ents, [], size)))]
            return self._leaves(keys, ents, size)
        # The batch's keys split among the children: child c takes the keys
        # below bounds[c] (keys >= bounds[c - 1] come to it).
        changes: list[tuple[int, list[_Part]]] = []
        keys, bounds = self.keys, node.keys
        i = lo
        while i < hi:
            c = bisect.bisect_right(bounds, keys[i])
            j = bisect.bisect_left(keys, bounds[c], i, hi) if c < len(bounds) else hi
            parts = self._apply(node.kids[c], i, j)
            if parts is not None:
                changes.append((c, parts))
            i = j
        if not changes:
            return None
        self.freed.append(pid)
        if all(len(parts) == 1 for _, parts in changes):
            # Every changed child replaced by one: the usual case. The keys
            # stay (shared: store changes only kids and ents).
            kids, ents = node.kids[:], node.ents[:]
            for c, [(_, kid)] in changes:
                kids[c] = kid
                if c:
                    ents[c - 1] = b""  # linked when the child's page is known
            tmp = self._add(_Node(INTERNAL, node.keys, ents, kids, node.size))
            self.unplaced[~tmp] = [c for c, _ in changes]
            return [(b"", tmp)]
        return self._rebuild(node, changes)

    def _rebuild(self, node: _Node, changes: list[tuple[int, list[_Part]]]) -> list[_Part]:
        """Internal ``node`` with children ``c`` replaced by ``parts`` (none: dropped)."""
        # seps[c] is child c's separator and ents[c] its entry (index 0 holds
        # placeholders: the first child has neither).
        seps, kids, ents = [b""] + node.keys, node.kids, [b""] + node.ents
        out_s: list[bytes] = []
        out_k: list[int] = []
        out_e: list[bytes] = []
        unplaced: list[int] = []
        size = node.size
        done = 0  # children before this one are in the out lists or dropped
        for c, parts in changes:
            out_s += seps[done:c]
            out_k += kids[done:c]
            out_e += ents[done:c]
            done = c + 1
            if not parts and c:
                size -= len(seps[c]) + 10  # its entry goes (child 0 has none)
            for n, (sep, kid) in enumerate(parts):
                if n:
                    size += len(sep) + 10
                unplaced.append(len(out_k))
                out_s.append(sep if n else seps[c])
                out_k.append(kid)
                out_e.append(b"")  # linked when the child's page is known
        out_s += seps[done:]
        out_k += kids[done:]
        out_e += ents[done:]
        if not out_k:
            return []
        if out_s[0]:  # the first child was dropped: the next one's entry goes
            size -= len(out_s[0]) + 10
            out_s[0] = out_e[0] = b""
        return self._internals(out_s, out_k, out_e, unplaced, size)

    def _merge(
        self, leaf: _Node, lo: int, hi: int
    ) -> tuple[list[bytes], list[bytes], int] | None:
        """The leaf's keys, entries and size with keys ``lo .. hi - 1`` applied.

        None if that changes nothing.
        """
        keys, ents = leaf.keys, leaf.ents
        if hi - lo == 1:  # one key, as when a batch spreads over many leaves: no loop
            key, value = self.keys[lo], self.values[lo]
            j = bisect.bisect_left(keys, key)
            found = j < len(keys) and keys[j] == key
            if value is None:
                if not found:
                    return None
                self.delta -= 1
                size = leaf.size - len(ents[j])
                return keys[:j] + keys[j + 1 :], ents[:j] + ents[j + 1 :], size
            entry = self.entries[lo]
            ents = ents[:]
            if found:  # the keys stay (a leaf's lists are never changed: shared)
                size = leaf.size + len(entry) - len(ents[j])
                ents[j] = entry
                return keys, ents, size
            self.delta += 1
            keys = keys[:]
            keys.insert(j, key)
            ents.insert(j, entry)
            return keys, ents, leaf.size + len(entry)
        out_k: list[bytes] = []
        out_e: list[bytes] = []
        size = leaf.size
        at = 0  # entries of the leaf before this one are placed
        changed = False
        for i in range(lo, hi):
            key, value = self.keys[i], self.values[i]
            j = bisect.bisect_left(keys, key, at)
            found = j < len(keys) and keys[j] == key
            if value is None and not found:
                continue
            changed = True
            out_k += keys[at:j]
            out_e += ents[at:j]
            at = j + 1 if found else j
            if found:
                size -= len(ents[j])
                self.delta -= 1
            if value is not None:
                out_k.append(key)
                entry = self.entries[i]
                out_e.append(entry)
                size += len(entry)
                self.delta += 1
        if not changed:
            return None
        out_k += keys[at:]
        out_e += ents[at:]
        return out_k, out_e, size

    def _cuts(self, sizes: list[int]) -> list[int]:
        """Where the parts of an overfull node start, for entries of ``sizes`` bytes."""
        body = sum(sizes)
        target = body / -(-body // self.cap)
        starts, acc = [0], 0
        for i, size in enumerate(sizes):
            if acc >= target:
                starts.append(i)
                acc = 0
            acc += size
        return starts

    def _leaves(self, keys: list[bytes], ents: list[bytes], size: int) -> list[_Part]:
        """New leaves holding ``keys``, ``size`` bytes in one node (split as needed)."""
        if not keys:
            return []
        if size <= self.page_size:
            return [(b"", self._add(_Node(LEAF, keys, ents, [], size)))]
        sizes = [len(e) for e in ents]
        starts = self._cuts(sizes)
        parts: list[_Part] = []
        for a, b in zip(starts, starts[1:] + [len(keys)]):
            node = _Node(LEAF, keys[a:b], ents[a:b], [], 8 + sum(sizes[a:b]))
            parts.append((keys[a] if a else b"", self._add(node)))
        return parts

    def _internals(
        self,
        seps: list[bytes],
        kids: list[int],
        ents: list[bytes],
        unplaced: list[int],
        size: int,
    ) -> list[_Part]:
        """New internal nodes over ``kids``, ``size`` bytes in one node.

        Split as needed (a cut's separator moves up). ``unplaced``: the
        indexes of the new children, linked in ``store``.
        """
        if size <= self.page_size:
            tmp = self._add(_Node(INTERNAL, seps[1:], ents[1:], kids, size))
            self.unplaced[~tmp] = unplaced
            return [(b"", tmp)]
        sizes = [0] + [len(s) + 10 for s in seps[1:]]
        starts = self._cuts(sizes)
        parts: list[_Part] = []
        for a, b in zip(starts, starts[1:] + [len(kids)]):
            node = _Node(
                INTERNAL, seps[a + 1 : b], ents[a + 1 : b], kids[a:b], 16 + sum(sizes[a + 1 : b])
            )
            tmp = self._add(node)
            self.unplaced[~tmp] = [x - a for x in unplaced if a <= x < b]
            parts.append((seps[a] if a else b"", tmp))
        return parts

    def store(self, tx: Transaction, top: int) -> int:
        """Give the new nodes pages, write them, free the replaced ones; the root's page.

        One call each: ``alloc_bulk`` for the pages, ``free_bulk`` for the
        replaced nodes (not handed out again before the batch is durable) and
        ``tx.write_pages`` for the nodes, written through the page cache (not
        stores through the mapping, which would dirty whole page-cache folios
        around them).
        """
        tree, pager = self.tree, self.tree.pager
        live = [j for j, node in enumerate(self.new) if node is not None]
        pages = array("Q", bytes(8 * len(live)))
        if live:
            pager.alloc_bulk(len(live), out=pages, min_run=RUN if len(live) >= RUN else 1)
        if self.freed:
            pager.free_bulk(self.freed)
            for old in self.freed:
                tree._cache.pop(old, None)
        new, unplaced, cache = self.new, self.unplaced, tree._cache
        # The pages' bytes, joined once: each node's header, (internal) first
        # child and entries as stored, then the zeros that fill its page.
        zeros = memoryview(bytes(self.page_size))
        pieces: list[Any] = []
        # New node j's page. A node comes after its children in self.new (it is
        # made once they are), so their pages are known when it is linked.
        placed = [0] * len(new)
        for j, pid in zip(live, pages):
            placed[j] = pid
            node = new[j]
            assert node is not None
            if j in unplaced:  # an internal node: link its new children
                kids, keys, ents = node.kids, node.keys, node.ents
                for x in unplaced[j]:
                    kids[x] = kid = placed[~kids[x]]
                    if x:
                        ents[x - 1] = _link(keys[x - 1], kid)
            pieces.append(_HDR.pack(node.kind, 0, len(node.keys), node.size))
            if node.kind == INTERNAL:
                pieces.append(_U64.pack(node.kids[0]))
            pieces += node.ents
            pieces.append(zeros[node.size :])
            cache[pid] = node
        tree._trim_cache()
        if live:
            tx.write_pages(pages, b"".join(pieces))
        return placed[~top] if top < 0 else top


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
