"""Address space: many pagers in one process, and files that outgrow their range.

A pager maps its whole file. It reserves address space for several times the
file (at least 256 GiB), not for the largest file it may become, so that a
process can hold hundreds of pagers; a file that outgrows its range is mapped
into a larger one, and the old range stays mapped until the pager is closed,
so every view handed out stays valid and sees the same pages.
"""

from __future__ import annotations

import gc
from array import array

import pytest

from mappedpages import Pager, ReadOnlyPager
from mappedpages._core import ffi, lib

RANGE = 256 << 30  # the smallest range a pager reserves


def test_many_pagers_in_one_process_each_keep_the_full_cap(tmp_path):
    writers = [Pager.create(tmp_path / f"{i}.mpp", 4096) for i in range(60)]
    readers = [ReadOnlyPager.open(tmp_path / f"{i}.mpp") for i in range(60)]
    try:
        assert {p.max_pages for p in writers + readers} == {1 << 32}
        for i, p in enumerate(writers):
            p.alloc_bulk(100 + i)
        for i, r in enumerate(readers):
            r.refresh()
            assert len(list(r.allocated_pages())) == 100 + i
    finally:
        for x in readers + writers:
            x.close()


def mapping_base(p) -> int:
    base = ffi.new("uint8_t **")
    size = ffi.new("uint64_t *")
    assert lib.mp_pager_mapping(p._handle, base, size) == 0
    return int(ffi.cast("uintptr_t", base[0]))


def grow_past_the_range(p: Pager) -> list[int]:
    """Allocate until the file is past the first range the pager reserved."""
    n = RANGE // p.page_size + 10
    ids = array("Q", bytes(8 * n))
    p.alloc_bulk(n, out=ids)
    assert p.page_count * p.page_size > RANGE
    return [ids[0], ids[n // 2], ids[-1]]


def test_views_survive_a_move_to_a_larger_range(tmp_path):
    path = tmp_path / "big.mpp"
    p = Pager.create(path, 65536, preallocate=False, grow_step=1 << 40, durability="none")
    first = p.alloc()
    old = p.page(first)
    old[:5] = b"early"
    before = mapping_base(p)
    far = grow_past_the_range(p)
    assert mapping_base(p) != before  # the file moved to a larger range
    new = p.page(far[-1])
    new[:4] = b"late"
    # The old view still works, and both ranges show the same pages.
    assert bytes(old[:5]) == b"early"
    old[:5] = b"again"
    assert bytes(p.page(first)[:5]) == b"again"
    assert bytes(new[:4]) == b"late"
    with pytest.raises(BufferError):
        p.close()  # views in both ranges are alive
    old.release()
    with pytest.raises(BufferError):
        p.close()
    new.release()
    gc.collect()
    p.sync()
    p.close()
    with Pager.open(path) as q:
        assert bytes(q.page(first)[:5]) == b"again"
        assert bytes(q.page(far[-1])[:4]) == b"late"
        assert q.format_version == "0.3"


def test_a_reader_follows_a_file_past_its_range(tmp_path):
    path = tmp_path / "big.mpp"
    with Pager.create(path, 65536, preallocate=False, grow_step=1 << 40,
                      durability="none") as w:
        first = w.alloc()
        w.page(first)[:3] = b"abc"
        w.sync()
        with ReadOnlyPager.open(path) as r:
            view = r.page(first)
            far = grow_past_the_range(w)
            w.page(far[-1])[:3] = b"xyz"
            w.sync()
            r.refresh()
            assert r.page_count == w.page_count
            assert bytes(view[:3]) == b"abc"
            assert bytes(r.page(far[-1])[:3]) == b"xyz"
            view.release()
