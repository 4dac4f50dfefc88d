"""Tests of SubPageAllocator: rules, errors, atomic bulk calls, restore, a model."""

from __future__ import annotations

import errno
import gc
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support.format_v02 import pattern, read_image
from support.iohooks import IoHooks, close_quietly, create_pager
from support.pagers import force_close

import mappedpages
from mappedpages import DoubleFree, FileFull, OutOfBounds, Pager, SubPageAllocator
from mappedpages._core import lib

PS = 4096


def generation(pager: Pager) -> int:
    """The committed generation, read from the file itself."""
    return read_image(pager.path).newest().generation


def snapshot(a: SubPageAllocator) -> tuple:
    p = a.pager
    return (
        a.live_count,
        a.live_ids(),
        a.big_pages(),
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
    )


@pytest.fixture(params=[64, 2048], ids=["N64", "N2"])
def sub_size(request):
    return request.param


# --------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------


def test_exported():
    assert mappedpages.SubPageAllocator is SubPageAllocator


def test_properties(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    assert a.pager is new_pager
    assert a.sub_size == sub_size
    assert a.slots_per_page == PS // sub_size
    assert a.live_count == 0
    assert a.big_pages() == []
    assert a.live_ids() == []
    assert not a.detached
    # No page is taken before the first alloc.
    assert list(new_pager.allocated_pages()) == []


@pytest.mark.parametrize("bad", [0, 3, 48, 100, 4095, -64, -1])
def test_sub_size_not_power_of_two(new_pager, bad):
    with pytest.raises(ValueError, match="power of two"):
        SubPageAllocator(new_pager, bad)


@pytest.mark.parametrize("bad", [4096, 8192, 1 << 20])
def test_sub_size_not_smaller(new_pager, bad):
    with pytest.raises(ValueError, match="smaller than the page size"):
        SubPageAllocator(new_pager, bad)


@pytest.mark.parametrize("bad", [32, 16, 1])
def test_too_many_slots(new_pager, bad):
    with pytest.raises(ValueError, match="at most 64"):
        SubPageAllocator(new_pager, bad)


def test_slot_limit_follows_page_size(small_pager):
    assert SubPageAllocator(small_pager, 16).slots_per_page == 64
    with pytest.raises(ValueError, match="at most 64"):
        SubPageAllocator(small_pager, 8)


@pytest.mark.parametrize("bad", ["64", 64.0, None, b"64", [64]])
def test_sub_size_type(new_pager, bad):
    with pytest.raises(TypeError):
        SubPageAllocator(new_pager, bad)


def test_pager_type(tmp_path):
    with pytest.raises(TypeError):
        SubPageAllocator("not a pager", 64)
    path = tmp_path / "ro.mpp"
    Pager.create(path).close()
    ro = mappedpages.ReadOnlyPager.open(path)
    try:
        with pytest.raises(TypeError):
            SubPageAllocator(ro, 64)
    finally:
        ro.close()


def test_closed_pager_refused(tmp_path):
    p = Pager.create(tmp_path / "c.mpp")
    p.close()
    with pytest.raises(ValueError):
        SubPageAllocator(p, 64)


# --------------------------------------------------------------------------
# Ids are addresses
# --------------------------------------------------------------------------


def test_ids_are_addresses(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    ids = [a.alloc() for _ in range(2 * n + 1)]
    pages = sorted({i // n for i in ids})
    assert len(pages) == 3
    assert pages == a.big_pages() == list(new_pager.allocated_pages())
    # Each page is filled slot 0, 1, ... before the next one is taken.
    for k, big in enumerate(pages[:2]):
        assert ids[k * n : (k + 1) * n] == [big * n + s for s in range(n)]
    assert ids[-1] == pages[2] * n
    assert a.live_ids() == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_first_id_in_fresh_file(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    # A fresh file's first free page is page 3.
    assert a.alloc() == 3 * n


def test_page_view_is_slice_of_big_page(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    ids = a.alloc_bulk(n + 1)
    for i in ids:
        v = a.page(i)
        assert isinstance(v, memoryview)
        assert len(v) == v.nbytes == sub_size
        assert not v.readonly
        v[:] = pattern(i, sub_size)
        del v
    for i in ids:
        big, slot = divmod(i, n)
        whole = new_pager.page(big)
        assert bytes(whole[slot * sub_size : (slot + 1) * sub_size]) == pattern(i, sub_size)
        assert bytes(a.page(i)) == pattern(i, sub_size)
        del whole


def test_page_errors(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    i = a.alloc()
    other = new_pager.alloc()  # a regular page, not the allocator's
    with pytest.raises(OutOfBounds):
        a.page(other * n)
    with pytest.raises(OutOfBounds):
        a.page(0)
    with pytest.raises(OutOfBounds):
        a.page(10**6 * n)
    with pytest.raises(OutOfBounds):
        a.page(1 << 64)
    with pytest.raises(ValueError):
        a.page(-1)
    for bad in ("1", 1.0, None):
        with pytest.raises(TypeError):
            a.page(bad)
    # A free slot of a page the allocator holds may be viewed, as a free page may.
    assert len(a.page(i + 1)) == sub_size
    a.free(i)
    with pytest.raises(OutOfBounds):
        a.page(i)


def test_view_blocks_pager_close(tmp_path):
    p = Pager.create(tmp_path / "v.mpp")
    a = SubPageAllocator(p, 512)
    v = a.page(a.alloc())
    with pytest.raises(BufferError):
        p.close()
    assert not p.closed
    del v
    gc.collect()
    p.close()
    assert p.closed


# --------------------------------------------------------------------------
# alloc / free
# --------------------------------------------------------------------------


def test_partly_used_page_is_used_first(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    ids = a.alloc_bulk(3 * n)
    assert len(a.big_pages()) == 3
    victim = ids[n + n // 2]  # the middle page
    a.free(victim)
    count, free = new_pager.page_count, new_pager.free_page_count
    gen = generation(new_pager)
    assert a.alloc() == victim
    assert (new_pager.page_count, new_pager.free_page_count) == (count, free)
    assert generation(new_pager) == gen  # no commit
    assert len(a.big_pages()) == 3


def test_empty_page_goes_back_and_refills(new_pager, sub_size):
    p = new_pager
    a = SubPageAllocator(p, sub_size)
    n = PS // sub_size
    ids = [a.alloc() for _ in range(2 * n)]
    assert list(p.allocated_pages()) == [3, 4]
    free_before = p.free_page_count
    for i in ids[:n]:
        a.free(i)
    assert list(p.allocated_pages()) == [4]
    assert a.big_pages() == [4]
    assert p.free_page_count == free_before + 1
    assert a.live_count == n
    # Refill: the returned page is the pager's lowest free page again.
    again = [a.alloc() for _ in range(n)]
    assert sorted(again) == sorted(ids[:n])
    assert list(p.allocated_pages()) == [3, 4]
    assert p.free_page_count == free_before
    for i in ids[n:] + again:
        a.free(i)
    assert list(p.allocated_pages()) == []
    assert a.big_pages() == []
    assert a.live_count == 0


def test_each_checkout_and_return_is_one_commit(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    g0 = generation(new_pager)
    first = a.alloc()
    assert generation(new_pager) == g0 + 1
    rest = [a.alloc() for _ in range(n - 1)]
    assert generation(new_pager) == g0 + 1
    for i in rest:
        a.free(i)
    assert generation(new_pager) == g0 + 1
    a.free(first)
    assert generation(new_pager) == g0 + 2


def test_full_mask_edge_n64(new_pager):
    a = SubPageAllocator(new_pager, 64)
    ids = [a.alloc() for _ in range(64)]
    assert ids == [3 * 64 + s for s in range(64)]
    assert a.big_pages() == [3]
    nxt = a.alloc()  # page 3 is full: slot 63 used, so a new page
    assert nxt == 4 * 64
    a.free(ids[63])
    assert a.alloc() == ids[63]
    a.free(ids[0])
    assert a.alloc() == ids[0]


def test_free_errors(new_pager, sub_size):
    p = new_pager
    a = SubPageAllocator(p, sub_size)
    n = PS // sub_size
    i = a.alloc()
    j = a.alloc()
    regular = p.alloc()
    a.free(i)
    with pytest.raises(DoubleFree):
        a.free(i)  # a free slot of a page still held
    a.free(j)  # page 3 goes back
    with pytest.raises(DoubleFree):
        a.free(j)  # its page is free in the pager
    with pytest.raises(OutOfBounds):
        a.free(regular * n)  # allocated, but not one of ours
    with pytest.raises(OutOfBounds):
        a.free(0)  # reserved page
    with pytest.raises(OutOfBounds):
        a.free(10**6 * n)
    with pytest.raises(OutOfBounds):
        a.free(1 << 64)
    with pytest.raises(ValueError):
        a.free(-1)
    for bad in ("3", 3.0, None):
        with pytest.raises(TypeError):
            a.free(bad)
    assert a.live_count == 0
    assert list(p.allocated_pages()) == [regular]


def test_two_allocators_share_a_pager(new_pager):
    a = SubPageAllocator(new_pager, 64)
    b = SubPageAllocator(new_pager, 512)
    ia = a.alloc_bulk(100)
    ib = b.alloc_bulk(20)
    assert not set(a.big_pages()) & set(b.big_pages())
    assert sorted(a.big_pages() + b.big_pages()) == list(new_pager.allocated_pages())
    with pytest.raises(OutOfBounds):
        a.free(ib[0] // 8 * 64)
    a.free_bulk(ia)
    b.free_bulk(ib)
    assert list(new_pager.allocated_pages()) == []


# --------------------------------------------------------------------------
# Bulk calls
# --------------------------------------------------------------------------


def test_alloc_bulk_basics(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    assert a.alloc_bulk(0) == []
    with pytest.raises(ValueError):
        a.alloc_bulk(-1)
    for bad in ("1", 1.5, None):
        with pytest.raises(TypeError):
            a.alloc_bulk(bad)
    ids = a.alloc_bulk(5 * n + 1)
    assert len(ids) == len(set(ids)) == 5 * n + 1
    assert all(isinstance(i, int) for i in ids)
    assert a.live_count == 5 * n + 1
    assert len(a.big_pages()) == 6
    assert a.live_ids() == sorted(ids)


def test_alloc_bulk_partial_pages_first_one_commit(new_pager, sub_size):
    a = SubPageAllocator(new_pager, sub_size)
    n = PS // sub_size
    held = a.alloc_bulk(2 * n)
    a.free_bulk([held[0], held[n + 1]])  # one hole in each page
    g0 = generation(new_pager)
    two = a.alloc_bulk(2)
    assert sorted(two) == sorted([held[0], held[n + 1]])
    assert generation(new_pager) == g0  # served from held pages: no commit
    more = a.alloc_bulk(3 * n)
    assert generation(new_pager) == g0 + 1  # three new pages, one commit
    assert len(a.big_pages()) == 5
    assert len(set(more) | set(held)) == 5 * n


def test_alloc_bulk_huge_request(new_pager):
    a = SubPageAllocator(new_pager, 64)
    a.alloc()
    before = snapshot(a)
    with pytest.raises(FileFull):
        a.alloc_bulk(10**15)
    assert snapshot(a) == before


@pytest.mark.parametrize("sub", [16, 512], ids=["N64", "N2"])
def test_alloc_bulk_rolls_back_when_pager_cannot_grow(tmp_path, sub):
    """The disk is full (every fallocate fails with ENOSPC): a bulk call that needs
    more pages than the file has free takes nothing and raises that OSError."""
    path = tmp_path / "full.mpp"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks)
    try:
        n = 1024 // sub
        a = SubPageAllocator(p, sub)
        a.alloc_bulk(n + 1)  # one full page, one with n - 1 free slots
        filler = p.alloc_bulk(64 - 3 - 2 - 2)  # leaves exactly 2 of 64 pages free
        assert p.page_count == 64
        assert p.free_page_count == 2
        hooks.fail(lib.MP_IO_FALLOCATE, 1, errno.ENOSPC, persistent=True)
        before = snapshot(a)
        g0 = generation(p)
        size = os.path.getsize(path)
        tries = hooks.calls(lib.MP_IO_FALLOCATE)
        # n - 1 spare slots plus 2 new pages is the most it can give.
        with pytest.raises(OSError) as info:
            a.alloc_bulk((n - 1) + 2 * n + 1)
        assert info.value.errno == errno.ENOSPC
        assert hooks.calls(lib.MP_IO_FALLOCATE) > tries, "it did not try to grow"
        assert snapshot(a) == before
        assert generation(p) == g0
        assert os.path.getsize(path) == size
        # past max_pages: FileFull before any growth is tried
        tries = hooks.calls(lib.MP_IO_FALLOCATE)
        with pytest.raises(FileFull):
            a.alloc_bulk(n * (p.max_pages + 1))
        assert hooks.calls(lib.MP_IO_FALLOCATE) == tries
        assert snapshot(a) == before
        assert generation(p) == g0
        with pytest.raises(OSError) as info:
            for _ in range((n - 1) + 2 * n + 1):
                a.alloc()
        assert info.value.errno == errno.ENOSPC
        # The single calls took what there was; give it back and try bulk again.
        a.free_bulk([i for i in a.live_ids() if i not in before[1]])
        assert snapshot(a) == before
        got = a.alloc_bulk((n - 1) + 2 * n)
        assert len(got) == 3 * n - 1
        assert p.free_page_count == 0
        assert p.page_count == 64
        with pytest.raises(OSError) as info:
            a.alloc()
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as info:
            a.alloc_bulk(1)
        assert info.value.errno == errno.ENOSPC
        a.free_bulk(got)
        assert snapshot(a) == before
        assert os.path.getsize(path) == size
        # room on the disk again: the same bulk call grows the file and succeeds
        hooks.clear_faults()
        got = a.alloc_bulk((n - 1) + 2 * n + 1)
        assert len(set(got)) == 3 * n
        assert p.page_count == 128
        a.free_bulk(got)
        assert snapshot(a)[:3] == before[:3]
        p.free_bulk(filler)
        hooks.check_errors()
    finally:
        close_quietly(p)


def test_free_bulk_returns_pages_in_one_commit(new_pager, sub_size):
    p = new_pager
    a = SubPageAllocator(p, sub_size)
    n = PS // sub_size
    ids = a.alloc_bulk(4 * n)
    keep = ids[2 * n]  # one sub-page of the third page
    g0 = generation(p)
    a.free_bulk([i for i in ids if i != keep])
    assert generation(p) == g0 + 1
    assert a.big_pages() == [keep // n]
    assert list(p.allocated_pages()) == [keep // n]
    assert a.live_ids() == [keep]
    # Freeing only slots of a page that keeps others live makes no commit.
    more = a.alloc_bulk(n - 1)
    g1 = generation(p)
    a.free_bulk(more[:-1])
    assert generation(p) == g1
    a.free_bulk([])
    assert a.live_ids() == sorted([keep, more[-1]])


def test_free_bulk_is_atomic(new_pager, sub_size):
    p = new_pager
    a = SubPageAllocator(p, sub_size)
    n = PS // sub_size
    ids = a.alloc_bulk(3 * n)
    a.free(ids[-1])
    regular = p.alloc()
    before = snapshot(a)
    cases = [
        (DoubleFree, ids[:n] + [ids[0]]),  # a duplicate, which would empty a page
        (DoubleFree, [ids[5], ids[5]]),
        (DoubleFree, ids[:n] + [ids[-1]]),  # one free slot at the end
        (OutOfBounds, ids[: 2 * n] + [regular * n]),
        (OutOfBounds, ids[: 2 * n] + [10**6 * n]),
        (OutOfBounds, [ids[0], 1 << 64]),
        (ValueError, ids[: 2 * n] + [-5]),
        (TypeError, ids[:3] + ["x"]),
    ]
    for exc, bad in cases:
        with pytest.raises(exc):
            a.free_bulk(bad)
        assert snapshot(a) == before, (exc, bad)
    with pytest.raises(TypeError):
        a.free_bulk("abc")
    with pytest.raises(TypeError):
        a.free_bulk(5)
    a.free_bulk(ids[:-1])
    assert list(p.allocated_pages()) == [regular]


def test_free_bulk_accepts_any_iterable(new_pager):
    a = SubPageAllocator(new_pager, 512)
    ids = a.alloc_bulk(20)
    a.free_bulk(i for i in ids[:10])
    a.free_bulk(tuple(ids[10:15]))
    a.free_bulk(set(ids[15:]))
    assert a.live_count == 0


# --------------------------------------------------------------------------
# Restore after reopen
# --------------------------------------------------------------------------


def test_restore_after_reopen(tmp_path, sub_size):
    path = tmp_path / "r.mpp"
    n = PS // sub_size
    p = Pager.create(path)
    a = SubPageAllocator(p, sub_size)
    ids = a.alloc_bulk(3 * n + 2)
    rng = random.Random(1)
    gone = rng.sample(ids, n)
    a.free_bulk(gone)
    live = sorted(set(ids) - set(gone))
    for i in live:
        a.page(i)[:] = pattern(i, sub_size)
    pages = a.big_pages()
    p.sync()
    assert a.detach() is p
    p.close()

    p = Pager.open(path)
    try:
        b = SubPageAllocator.restore(p, sub_size, reversed(live))
        assert b.live_count == len(live)
        assert b.live_ids() == live
        assert b.big_pages() == pages
        for i in live:
            assert bytes(b.page(i)) == pattern(i, sub_size)
        # Restored holes are used before a new page is taken.
        holes = sorted(set(range(pages[0] * n, (pages[-1] + 1) * n)) - set(live))
        refill = b.alloc_bulk(len(holes))
        assert sorted(refill) == holes
        assert b.big_pages() == pages
        b.free_bulk(live + refill)
        assert list(p.allocated_pages()) == []
    finally:
        force_close(p)


def test_restore_empty(new_pager):
    a = SubPageAllocator.restore(new_pager, 256, [])
    assert a.live_count == 0
    assert a.alloc() == 3 * 16


def test_restore_rejects_bad_ids(new_pager, sub_size):
    p = new_pager
    n = PS // sub_size
    a = SubPageAllocator(p, sub_size)
    ids = a.alloc_bulk(n + 1)
    a.detach()
    p.alloc()  # page 5: allocated, free of any allocator
    past_end = p.page_count
    before = (p.page_count, p.free_page_count, list(p.allocated_pages()), generation(p))
    bad_cases = [
        (OutOfBounds, ids + [0]),  # reserved page
        (OutOfBounds, ids + [2 * n + 1]),  # reserved page
        (OutOfBounds, ids + [past_end * n]),
        (OutOfBounds, ids + [1 << 64]),
        (ValueError, ids + [ids[-1]]),  # the same id twice
        (ValueError, ids + [-1]),
        (TypeError, ids + [1.0]),
    ]
    for exc, bad in bad_cases:
        with pytest.raises(exc):
            SubPageAllocator.restore(p, sub_size, bad)
        after = (p.page_count, p.free_page_count, list(p.allocated_pages()), generation(p))
        assert after == before
    p.free(5)
    with pytest.raises(OutOfBounds):  # page 5 is now free in the pager
        SubPageAllocator.restore(p, sub_size, ids + [5 * n])
    b = SubPageAllocator.restore(p, sub_size, ids)
    assert b.live_ids() == sorted(ids)


def test_restore_of_system_page(new_pager):
    p = new_pager
    p.alloc_protected()
    system = sorted(read_image(p.path).system_pages)
    assert system  # a directory page and two backing pages
    for page in system:
        with pytest.raises(OutOfBounds):
            SubPageAllocator.restore(p, 512, [page * 8])


# --------------------------------------------------------------------------
# Lifetime
# --------------------------------------------------------------------------


def test_detach(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(10)
    assert a.detach() is p
    assert a.detached
    # The pages stay allocated in the pager.
    assert list(p.allocated_pages()) == sorted({i // 8 for i in ids})
    calls = [
        lambda: a.alloc(),
        lambda: a.free(ids[0]),
        lambda: a.alloc_bulk(2),
        lambda: a.free_bulk(ids),
        lambda: a.page(ids[0]),
        lambda: a.live_count,
        lambda: a.pager,
        lambda: a.live_ids(),
        lambda: a.big_pages(),
        lambda: a.detach(),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert a.sub_size == 512
    assert "detached" in repr(a)


def test_context_manager_detaches(new_pager):
    with SubPageAllocator(new_pager, 512) as a:
        a.alloc()
    assert a.detached
    with pytest.raises(ValueError):
        a.alloc()


def test_closed_pager_makes_calls_fail(tmp_path):
    p = Pager.create(tmp_path / "c.mpp")
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(3)
    p.close()
    calls = [
        lambda: a.alloc(),
        lambda: a.free(ids[0]),
        lambda: a.alloc_bulk(2),
        lambda: a.free_bulk(ids),
        lambda: a.page(ids[0]),
        lambda: a.live_count,
        lambda: a.live_ids(),
        lambda: SubPageAllocator.restore(p, 512, ids),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert "closed" in repr(a)
    assert a.detach() is p


def test_collected_allocator_frees_its_state(tmp_path):
    p = Pager.create(tmp_path / "g.mpp")
    for _ in range(50):
        a = SubPageAllocator(p, 64)
        a.alloc_bulk(200)
        del a
    gc.collect()
    # The state went away with the allocators; their pages stay in the pager.
    assert len(list(p.allocated_pages())) == 50 * 4
    b = SubPageAllocator(p, 64)
    p.close()
    del b  # collected after its pager closed
    gc.collect()


# --------------------------------------------------------------------------
# Scale and threads
# --------------------------------------------------------------------------


def test_random_churn_against_model(new_pager):
    """Thousands of big pages come and go: exercises the page table's growth and shrink."""
    p = new_pager
    a = SubPageAllocator(p, 2048)
    rng = random.Random(7)
    live: set[int] = set()
    for step in range(60):
        if rng.random() < 0.55 or not live:
            got = a.alloc_bulk(rng.randrange(1, 3000))
            assert not live & set(got)
            live |= set(got)
        else:
            gone = rng.sample(sorted(live), rng.randrange(1, len(live) + 1))
            if step % 3:
                a.free_bulk(gone)
            else:
                for i in gone:
                    a.free(i)
            live -= set(gone)
        assert a.live_count == len(live)
        assert a.big_pages() == sorted({i // 2 for i in live}) == list(p.allocated_pages())
    a.free_bulk(live)
    assert list(p.allocated_pages()) == []


def test_threads(new_pager):
    a = SubPageAllocator(new_pager, 256)
    errors: list[BaseException] = []
    kept: list[list[int]] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[int] = []
        try:
            for _ in range(300):
                if rng.random() < 0.6 or not mine:
                    mine.append(a.alloc())
                else:
                    a.free(mine.pop(rng.randrange(len(mine))))
            kept.append(mine)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [i for m in kept for i in m]
    assert len(every) == len(set(every)) == a.live_count
    assert a.live_ids() == sorted(every)


# --------------------------------------------------------------------------
# Model-based test
# --------------------------------------------------------------------------


class SubPageMachine(RuleBasedStateMachine):
    """The allocator against a model: a set of live ids and bytes written."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="subpage-"))
        self.path = self.dir / "m.mpp"
        self.pager: Pager | None = None
        self.alloc: SubPageAllocator | None = None

    @initialize(sub=st.sampled_from([64, 256, 2048]))
    def setup(self, sub: int) -> None:
        self.sub = sub
        self.n = PS // sub
        self.pager = Pager.create(self.path)
        self.alloc = SubPageAllocator(self.pager, sub)
        self.live: set[int] = set()
        self.freed: set[int] = set()
        self.data: dict[int, bytes] = {}

    def teardown(self) -> None:
        if self.pager is not None:
            self.alloc = None
            gc.collect()
            force_close(self.pager)
        shutil.rmtree(self.dir, ignore_errors=True)

    def partial_pages(self) -> set[int]:
        counts: dict[int, int] = {}
        for i in self.live:
            counts[i // self.n] = counts.get(i // self.n, 0) + 1
        return {pg for pg, c in counts.items() if c < self.n}

    def take(self, got: list[int], before_partial: set[int], k: int) -> None:
        assert len(got) == k == len(set(got))
        assert not self.live & set(got)
        # Free slots of pages already held are used before any new page.
        spare = sum(
            self.n - sum(1 for i in self.live if i // self.n == pg) for pg in before_partial
        )
        from_held = [i for i in got if i // self.n in before_partial]
        assert len(from_held) == min(k, spare)
        self.live |= set(got)
        self.freed -= set(got)
        for i in got:
            self.data.pop(i, None)

    @rule()
    def alloc_one(self) -> None:
        before = self.partial_pages()
        i = self.alloc.alloc()
        self.take([i], before, 1)

    @rule(k=st.integers(0, 150))
    def alloc_many(self, k: int) -> None:
        before = self.partial_pages()
        got = self.alloc.alloc_bulk(k)
        self.take(got, before, k)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free_one(self, data) -> None:
        i = data.draw(st.sampled_from(sorted(self.live)))
        self.alloc.free(i)
        self.live.discard(i)
        self.freed.add(i)
        self.data.pop(i, None)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free_many(self, data) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True, min_size=1))
        self.alloc.free_bulk(ids)
        self.live -= set(ids)
        self.freed |= set(ids)
        for i in ids:
            self.data.pop(i, None)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def double_free(self, data) -> None:
        i = data.draw(st.sampled_from(sorted(self.freed)))
        with pytest.raises((DoubleFree, OutOfBounds)):
            self.alloc.free(i)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def bad_bulk_changes_nothing(self, data) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True, min_size=1))
        bad = data.draw(
            st.sampled_from(["dup", "freed", "negative"] if self.freed else ["dup", "negative"])
        )
        if bad == "dup":
            ids = ids + [ids[0]]
            exc: type[BaseException] | tuple = DoubleFree
        elif bad == "freed":
            ids = ids + [data.draw(st.sampled_from(sorted(self.freed)))]
            exc = (DoubleFree, OutOfBounds)
        else:
            ids = ids + [-1]
            exc = ValueError
        gen = generation(self.pager)
        with pytest.raises(exc):
            self.alloc.free_bulk(ids)
        assert generation(self.pager) == gen

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def write(self, data) -> None:
        i = data.draw(st.sampled_from(sorted(self.live)))
        salt = data.draw(st.integers(0, 1000))
        content = pattern(i, self.sub, salt)
        self.alloc.page(i)[:] = content
        self.data[i] = content

    @rule()
    def reopen(self) -> None:
        self.pager.sync()
        assert self.alloc.detach() is self.pager
        self.alloc = None
        gc.collect()
        self.pager.close()
        self.pager = Pager.open(self.path)
        self.alloc = SubPageAllocator.restore(self.pager, self.sub, sorted(self.live))

    @invariant()
    def matches_model(self) -> None:
        if self.alloc is None:
            return
        a = self.alloc
        assert a.live_count == len(self.live)
        assert a.live_ids() == sorted(self.live)
        pages = sorted({i // self.n for i in self.live})
        assert a.big_pages() == pages
        assert list(self.pager.allocated_pages()) == pages
        for i, content in self.data.items():
            assert bytes(a.page(i)) == content


SubPageMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSubPageMachine = SubPageMachine.TestCase


def test_page_freed_behind_the_allocators_back(new_pager):
    """Pager.free refuses a held page (tests/test_writers_trust.py); a C caller
    can still free it behind the allocator's back, and the allocator notices."""
    p = new_pager
    a = SubPageAllocator(p, 2048)
    ids = [a.alloc(), a.alloc()]  # page 3, full
    assert a.big_pages() == [3]
    assert lib.mp_pager_free(p._handle, 3) == 0  # misuse: the allocator still holds page 3
    before = (p.page_count - p.free_page_count, list(p.allocated_pages()))
    with pytest.raises(ValueError, match="freed in the pager while sub-pages"):
        a.alloc()  # the pager's lowest free page is 3 again
    with pytest.raises(ValueError, match="freed in the pager while sub-pages"):
        a.alloc_bulk(3)
    # Nothing stays taken (the file may have grown: its new pages are free).
    assert (p.page_count - p.free_page_count, list(p.allocated_pages())) == before
    assert a.live_ids() == ids
    # Freeing the last sub-page asks the pager to free page 3 again: refused.
    a.free(ids[0])
    with pytest.raises(DoubleFree):
        a.free(ids[1])
    assert a.live_ids() == [ids[1]]


# --------------------------------------------------------------------------
# System-call failures (through the core's test hooks)
# --------------------------------------------------------------------------


def hooked_pager(path: Path):
    """A Pager whose file and mapping calls go through fault-injection hooks."""
    from mappedpages._core import ffi, lib

    hooks = ffi.new("mp_io_hooks *")
    opts = ffi.new("mp_options *")
    opts.page_size = PS
    opts.io_hooks = hooks
    out = ffi.new("mp_pager **")
    assert lib.mp_pager_create(str(path).encode(), opts, out) == 0
    return Pager(out[0], str(path)), hooks


def fail_next(hooks, kind_name: str, err: int) -> None:
    from mappedpages._core import lib

    kind = getattr(lib, kind_name)
    hooks.fail_at[kind] = hooks.calls[kind] + 1
    hooks.fail_errno[kind] = err


def test_alloc_bulk_rolls_back_when_growth_fails(tmp_path):
    import errno

    p, hooks = hooked_pager(tmp_path / "h.mpp")
    try:
        a = SubPageAllocator(p, 512)
        a.alloc_bulk(11)  # one full page, one with 5 free slots
        before = snapshot(a)
        fail_next(hooks, "MP_IO_FALLOCATE", errno.ENOSPC)
        with pytest.raises(OSError) as info:
            a.alloc_bulk(5 + 8 * 10)  # needs 10 new pages: the file must grow
        assert info.value.errno == errno.ENOSPC
        assert snapshot(a) == before
        got = a.alloc_bulk(5 + 8 * 10)  # the failure was a one-off
        assert len(got) == 85
        assert len(a.big_pages()) == 12
    finally:
        force_close(p)


def test_failed_commit_makes_allocator_unavailable(tmp_path):
    import errno

    p, hooks = hooked_pager(tmp_path / "h.mpp")
    try:
        a = SubPageAllocator(p, 2048)
        ids = a.alloc_bulk(2)
        fail_next(hooks, "MP_IO_MSYNC", errno.EIO)
        with pytest.raises(OSError):
            a.alloc()  # needs a new page: its commit's flush fails
        assert a.live_ids() == ids
        for call in (a.alloc, lambda: a.free(ids[0]), lambda: a.alloc_bulk(1)):
            with pytest.raises(mappedpages.Unavailable):
                call()
    finally:
        force_close(p)
