"""A copy-on-write B+tree of byte keys and values on mappedpages.

The tree is a record tree of the library (FORMAT.md, "Record trees"): its
nodes are record pages, leaves of keys and values under branches of child
pages; the root page id is ``roots[0]`` and the key count ``roots[1]``. Each
batch of puts and deletes is one engine transaction (``with
pager.transaction() as tx``): the batch is sorted into change records and
``tx.tree_apply`` rebuilds every node it reaches into new pages (committed
nodes are never written in place; the old pages are freed and not handed out
again before the batch is durable), so after a crash the tree is the one of
the last committed batch, whole. The per-entry work (merging, splitting,
linking) runs in the library's C core; this module keeps the batches and the
roots, and reads with ``tree_get`` and ``tree_items``.

A record (``6 + len(key) + len(value)`` bytes) must fit in a quarter of a page
(``BTree.max_record``). Deletes remove emptied nodes, a leaf left a quarter
full or less takes in its right siblings, and a root with one child gives way
to it; branch nodes are not merged. Run ``python examples/btree.py`` for a
demo.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mappedpages import Pager, Transaction, pack_records, tree_max_record

ROOT_SLOT = 0
COUNT_SLOT = 1


class BTree:
    """A B+tree in a pager file; the pager stays owned by the caller."""

    def __init__(self, pager: Pager) -> None:
        self.pager = pager
        self.max_record = tree_max_record(pager.page_size)

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
        return self.pager.tree_get(self.pager.roots[ROOT_SLOT], key, default)

    def range(
        self, lo: bytes | None = None, hi: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``lo <= key < hi`` (either bound may be None), in key order."""
        return self.pager.tree_items(self.pager.roots[ROOT_SLOT], lo, hi)

    # ------------------------------------------------------------- writing

    def batch(self) -> _BatchBlock:
        """One transaction: ``with tree.batch() as b: b.put(k, v); b.delete(k)``.

        Everything in the block commits together at its end, or nothing if it
        raises.
        """
        return _BatchBlock(self)

    def put(self, key: bytes, value: bytes) -> None:
        """Set one key, as a batch of its own."""
        with self.batch() as b:
            b.put(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove one key, as a batch of its own; whether it was there."""
        with self.batch() as b:
            return b.delete(key)


class _BatchBlock:
    """The ``with`` of :meth:`BTree.batch`: a transaction, the batch applied at its end."""

    __slots__ = ("tree", "block", "batch")

    def __init__(self, tree: BTree) -> None:
        self.tree = tree
        self.block = tree.pager.transaction()

    def __enter__(self) -> Batch:
        self.batch = Batch(self.tree, self.block.__enter__())
        return self.batch

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.batch.finish()
            except BaseException as error:
                self.block.__exit__(type(error), error, error.__traceback__)
                raise
        self.block.__exit__(kind, exc, tb)


class Batch:
    """The puts and deletes of one transaction (see :meth:`BTree.batch`).

    They are collected by key and applied when the block ends, in one
    ``tree_apply``: every node on the way to a changed leaf is rebuilt once,
    into a new page, however many keys of the batch land in it.
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
        if 6 + len(key) + len(value) > self.tree.max_record:
            raise ValueError(
                f"key and value take {6 + len(key) + len(value)} bytes as a record; at most "
                f"{self.tree.max_record} fit at this page size"
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
        """Apply the batch: one ``tree_apply``, then the roots."""
        if not self.changes:
            return
        pager = self.tree.pager
        roots = pager.roots
        root, delta = self.tx.tree_apply(roots[ROOT_SLOT], pack_records(self.changes.items()))
        self.changes = {}
        if root != roots[ROOT_SLOT]:
            pager.set_root(ROOT_SLOT, root)
        if delta:
            pager.set_root(COUNT_SLOT, roots[COUNT_SLOT] + delta)


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
