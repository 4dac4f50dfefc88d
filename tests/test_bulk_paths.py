"""Bulk paths (issue 18): making a large deferred free durable costs one
commit, not work per page, and keeps every page a live reader may see."""

from __future__ import annotations

import struct
from array import array

import pytest

from mappedpages import Pager, ReadOnlyPager

N = 200_000


@pytest.mark.parametrize("max_readers", [126, 0])
def test_deferred_bulk_free_is_reused_without_a_sync(tmp_path, max_readers):
    """free_bulk then alloc_bulk without sync(): the one commit that makes the
    frees durable releases every page (none stays held back with no reader),
    so alloc_bulk reuses them and the file does not grow. (Its speed, one
    commit and not work per page, is measured by the benchmark suite's bulk
    group beside the case with a sync() between.)"""
    with Pager.create(tmp_path / "b.mpp", 4096, durability="none", layout="0.3",
                      max_readers=max_readers) as pager:
        buf = array("Q", bytes(8 * N))
        pager.alloc_bulk(N, out=buf)
        pager.sync()
        pages = pager.page_count
        first = sorted(buf)
        for _ in range(3):
            pager.free_bulk(buf)
            pager.alloc_bulk(N, out=buf)
            assert pager.pinned_free_pages == 0
            assert sorted(buf) == first
        # Every page freed was reused: the file did not grow for them.
        assert pager.page_count == pages


def _stamp_all(pager: Pager, ids) -> None:
    for i in ids:
        pager.page(i)[:8] = struct.pack("<Q", 1000 + i)


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_bulk_settle_holds_back_pages_a_live_reader_has(tmp_path, layout):
    path = tmp_path / "r.mpp"
    with Pager.create(path, 1024, durability="none", layout=layout) as w:
        ids = w.alloc_bulk(2000)
        _stamp_all(w, ids)
        w.sync()
        with ReadOnlyPager.open(path) as r:
            w.free_bulk(ids)
            # Forces the deferred frees to become durable inside alloc_bulk.
            fresh = w.alloc_bulk(w.page_count)
            assert not set(fresh) & set(ids), "a page of the reader's commit was reused"
            assert w.pinned_free_pages == len(ids)
            for i in ids:
                assert struct.unpack("<Q", bytes(r.page(i)[:8]))[0] == 1000 + i
            w.free_bulk(fresh)
            w.sync()
            assert r.refresh() is True
            assert w.pinned_free_pages == 0
            assert w.alloc() == min(ids + fresh)


def test_a_reader_opened_after_the_free_keeps_its_pages(tmp_path):
    """The frees of "none" mode are not written: a reader that opens after them
    reads the commit before them, so their pages stay held back for it."""
    path = tmp_path / "late.mpp"
    with Pager.create(path, 1024, durability="none", layout="0.3") as w:
        ids = w.alloc_bulk(3000)
        _stamp_all(w, ids)
        w.sync()
        w.free_bulk(ids)
        with ReadOnlyPager.open(path) as r:
            fresh = w.alloc_bulk(w.page_count)
            assert not set(fresh) & set(ids)
            assert list(r.allocated_pages()) == ids
            for i in ids:
                assert struct.unpack("<Q", bytes(r.page(i)[:8]))[0] == 1000 + i
        w.free_bulk(fresh)
        w.sync()
        assert w.pinned_free_pages == 0
