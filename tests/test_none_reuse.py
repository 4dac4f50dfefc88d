"""In "none" mode a copy-on-write engine reuses the pages it frees, without sync().

A free stays pending until a commit makes it durable, and "none" makes
commits durable only at sync()/close(). A transaction cannot make anything
durable half-way, so one that finds no usable page grows the file: a
copy-on-write engine that never synced grew it by every page it freed. Once
the frees a commit would release outnumber the usable pages, the allocated
ones and 1,024, a transaction now first makes the deferred state durable (as
a lone alloc() with no usable page does); pages readers hold do not count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.iohooks import IoHooks, create_pager

from mappedpages import Pager, ReadOnlyPager


def flushes(hooks: IoHooks) -> int:
    c = hooks.counts()
    return c["msync"] + c["fsync"]


def copy_on_write(p: Pager, live: list[int], i: int) -> list[int]:
    """One engine-style transaction: three new pages replace the three live ones."""
    with p.transaction() as tx:
        new = p.alloc_bulk(3)
        for pid in new:
            tx.page(pid)[:8] = i.to_bytes(8, "little")
        if live:
            p.free_bulk(live)
        p.set_root(0, new[0])
    return list(new)


def pager_with_readers(path: Path, hooks: IoHooks) -> Pager:
    """A "none" pager in the extended layout, its flushes counted, with a reader table."""
    p = create_pager(path, 4096, hooks, durability="none", layout="0.3")
    # Pager.open and Pager.create attach the reader table; this path does not.
    p._attach_readers(os.fsencode(path), 8)
    return p


@contextmanager
def frees_a_reader_holds(p: Pager, path: Path, n: int) -> Iterator[ReadOnlyPager]:
    """n pages freed while a reader's commit still has them allocated: durable
    frees the reader holds back (pinned), for as long as the block runs."""
    held = p.alloc_bulk(n)
    p.sync()
    with ReadOnlyPager.open(path) as reader:
        assert reader.snapshot
        p.free_bulk(held)
        p.sync()
        assert p.pinned_free_pages == n
        yield reader


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_a_copy_on_write_loop_keeps_the_file_small(tmp_path: Path, layout: str) -> None:
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 4096, hooks, durability="none", layout=layout)
    try:
        live: list[int] = []
        for i in range(3000):
            live = copy_on_write(p, live, i)
        # 9,000 pages were freed (the file grew by all of them before); it
        # holds a few thousand at most.
        assert p.page_count <= 4096, p.page_count
        # Each flush made a few hundred transactions' frees reusable: far
        # fewer flushes than transactions.
        assert 0 < flushes(hooks) <= 3000 // 50, hooks.counts()
        last = live
    finally:
        p.close()
    with Pager.open(tmp_path / "f") as again:
        assert again.roots[0] == last[0]
        assert int.from_bytes(bytes(again.page(last[0])[:8]), "little") == 2999


def test_pages_a_reader_holds_do_not_make_every_transaction_flush(tmp_path: Path) -> None:
    hooks = IoHooks()
    path = tmp_path / "f"
    p = pager_with_readers(path, hooks)
    try:
        live = copy_on_write(p, [], 0)
        with frees_a_reader_holds(p, path, 3000) as reader:
            before = flushes(hooks)
            for i in range(1, 301):
                live = copy_on_write(p, live, i)
            # The held pages outnumber the usable and the allocated ones from
            # the start (a flush releases none of them); only the engine's own
            # frees may call for one.
            assert flushes(hooks) - before <= 300 // 20, hooks.counts()
            assert reader.page_count <= p.page_count
    finally:
        p.close()


def test_an_alloc_grows_without_a_flush_when_readers_hold_every_free(tmp_path: Path) -> None:
    """A lone alloc() with no usable page makes the deferred state durable so
    that pending frees can be reused, unless readers hold all of them: then that
    flush would free nothing, and the file grows without it."""
    hooks = IoHooks()
    path = tmp_path / "f"
    p = pager_with_readers(path, hooks)
    try:
        with frees_a_reader_holds(p, path, 500):
            p.alloc()  # deferred state: this allocation is not durable yet
            grew = 0
            before = flushes(hooks)
            while grew < 3:  # every usable page taken, three growths
                pages = p.page_count
                p.alloc()
                grew += p.page_count > pages
            # Each growth makes the new size durable (one flush); before, each
            # also flushed the deferred state first (three per growth here).
            assert flushes(hooks) - before <= grew, hooks.counts()
            assert p.pinned_free_pages == 500
    finally:
        p.close()
