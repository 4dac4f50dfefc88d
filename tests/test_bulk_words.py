"""Bulk calls a word at a time (csrc/alloc.c): alloc_bulk takes the free pages of a
word together and free_bulk releases the ids of a word together. Whatever the order
and spread of the ids (shuffled, across words and chunk boundaries, which need not
fall on a word), the result is the page-at-a-time result: alloc_bulk returns the
lowest allocatable pages in ascending order, free_bulk frees exactly its ids, and a
bad id anywhere in the list changes nothing.
"""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import pytest
from support.geometry import layout, page_kind

from mappedpages import DoubleFree, Pager, ReservedPage

PS = 1024
# A layout="0.3" file holds pages 4-7 (root pages, directory-index page 0) as
# allocated system pages from its creation: they are never handed out.
SYSTEM = frozenset(range(4, 8))


def data_page(page_id: int) -> bool:
    """Whether a layout="0.3" file may hand out ``page_id``: a data page by
    position (not 0-2 nor a chunk's layout page) and not one of its system pages."""
    from mappedpages._core import lib

    return page_kind(PS, page_id) == lib.MP_PAGE_DATA and page_id not in SYSTEM


@pytest.mark.parametrize("mode", ["none", "fast"])
@pytest.mark.parametrize("max_readers", [126, 0])
def test_bulk_calls_match_the_page_at_a_time_model(tmp_path: Path, mode: str,
                                                   max_readers: int) -> None:
    rng = random.Random(18)
    chunk = layout(PS).chunk_pages
    assert chunk % 64 != 0  # chunk boundaries fall inside words
    with Pager.create(tmp_path / "w.mpp", PS, durability=mode, layout="0.3",
                      max_readers=max_readers) as pager:
        held = set(pager.alloc_bulk(3 * chunk))
        assert sorted(held)[:2] == [3, 8]  # the system pages 4-7 are not handed out
        pager.sync()
        for _ in range(12):
            # Free a shuffled sample: runs, strays, ids either side of chunk starts.
            sample = rng.sample(sorted(held), rng.randrange(1, len(held) // 3))
            edges = [i for i in held if abs(i % chunk - 2) < 70 and i not in sample]
            sample += edges[: rng.randrange(len(edges) + 1)]
            rng.shuffle(sample)
            pager.free_bulk(array("Q", sample))
            held -= set(sample)
            assert set(pager.allocated_pages()) == held
            pager.sync()  # the frees are durable: their pages are allocatable
            free = [i for i in range(pager.page_count) if i not in held and data_page(i)]
            k = rng.randrange(1, len(free) + 1)
            got = list(pager.alloc_bulk(k))
            assert got == free[:k]
            held |= set(got)
            assert set(pager.allocated_pages()) == held
        pager.sync()
    # Every free-map page a bulk call changed was written: the file says the same.
    with Pager.open(tmp_path / "w.mpp", PS) as again:
        assert set(again.allocated_pages()) == held


def test_a_bad_id_anywhere_in_a_bulk_free_changes_nothing(tmp_path: Path) -> None:
    chunk = layout(PS).chunk_pages
    with Pager.create(tmp_path / "bad.mpp", PS, durability="fast", layout="0.3") as pager:
        ids = list(pager.alloc_bulk(2 * chunk))
        before = list(pager.allocated_pages())
        counts = (pager.free_page_count, pager.page_count)
        layout_page = chunk + 1  # chunk 1's free-map copy B, amid allocated pages
        for bad, exc in ((layout_page, ReservedPage), (ids[100], DoubleFree)):
            wrong = ids[:200] + [bad] + ids[200:400]
            with pytest.raises(exc):
                pager.free_bulk(array("Q", wrong))
            assert list(pager.allocated_pages()) == before
            assert (pager.free_page_count, pager.page_count) == counts
        pager.free_bulk(array("Q", ids[:400]))
        assert pager.alloc_bulk(400) == ids[:400]
