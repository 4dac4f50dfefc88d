"""asyncio: the awaitable Pager methods run off the event loop.

Each *_async method has the effect and result of its synchronous twin; while
one is awaited, other coroutines keep running.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest
from support.format_v02 import read_image
from support.pagers import force_close

import mappedpages
from mappedpages import Pager, ReadOnlyPager

ASYNC_METHODS = [
    "alloc_async",
    "free_async",
    "alloc_bulk_async",
    "free_bulk_async",
    "alloc_protected_async",
    "free_protected_async",
    "alloc_protected_bulk_async",
    "free_protected_bulk_async",
]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("name", ASYNC_METHODS)
def test_methods_are_coroutine_functions(name):
    assert inspect.iscoroutinefunction(getattr(Pager, name))


def test_ticker_keeps_ticking_during_durable_allocs(new_pager):
    pager = new_pager

    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        ids = []
        for _ in range(300):
            ids.append(await pager.alloc_async())
        done = True
        await task
        return ids, ticks

    ids, ticks = run(main())
    assert ids == list(range(3, 303))
    assert list(pager.allocated_pages()) == ids
    assert ticks > 50, f"the ticker ticked only {ticks} times during 300 awaited allocs"


def test_loop_runs_while_a_call_waits_for_the_pager(new_pager):
    """A call waiting on the pager's lock must wait in a worker, not in the loop."""
    pager = new_pager
    held = threading.Event()
    release = threading.Event()

    def holder():
        with pager.lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait()

    async def main():
        ticks = 0
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, release.set)
        call = asyncio.create_task(pager.alloc_async())
        t0 = time.monotonic()
        while not call.done():
            await asyncio.sleep(0.001)
            ticks += 1
        return await call, ticks, time.monotonic() - t0

    try:
        pid, ticks, elapsed = run(main())
    finally:
        release.set()
        t.join()
    assert pid == 3
    assert elapsed >= 0.2
    assert ticks >= 20, f"the loop ran only {ticks} times while alloc_async waited {elapsed:.2f} s"


def test_alloc_async_and_free_async(new_pager):
    pager = new_pager

    async def main():
        a = await pager.alloc_async()
        b = await pager.alloc_async()
        assert (a, b) == (3, 4)
        pager.page(a)[:4] = b"junk"
        await pager.free_async(a)
        assert list(pager.allocated_pages()) == [b]
        again = await pager.alloc_async(zero=True)
        assert again == a
        assert bytes(pager.page(again)) == bytes(pager.page_size)
        await pager.free_async(again)
        pager.page(a)[:4] = b"keep"
        kept = await pager.alloc_async()
        assert kept == a and bytes(pager.page(kept)[:4]) == b"keep"
        await pager.free_async(b)
        return kept

    kept = run(main())
    assert list(pager.allocated_pages()) == [kept]


def test_bulk_async(new_pager):
    pager = new_pager

    async def main():
        assert await pager.alloc_bulk_async(0) == []
        ids = await pager.alloc_bulk_async(40)
        assert ids == list(range(3, 43))
        assert pager.page_count == 64
        for pid in ids:
            pager.page(pid)[:1] = b"x"
        await pager.free_bulk_async(pid for pid in ids if pid % 2)
        assert list(pager.allocated_pages()) == [p for p in ids if not p % 2]
        zeroed = await pager.alloc_bulk_async(5, zero=True)
        assert all(bytes(pager.page(p)) == bytes(pager.page_size) for p in zeroed)
        await pager.free_bulk_async([])
        await pager.free_bulk_async(zeroed)
        return ids

    ids = run(main())
    assert list(pager.allocated_pages()) == [p for p in ids if not p % 2]


def test_protected_async(new_pager):
    pager = new_pager

    async def main():
        pid = await pager.alloc_protected_async()
        assert list(pager.allocated_protected_pages()) == [pid]
        assert bytes(pager.protected_page(pid)) == bytes(pager.page_size)
        with pager.write_protected(pid) as w:
            w.page[:5] = b"hello"
        more = await pager.alloc_protected_bulk_async(3)
        assert len(set(more)) == 3 and pid not in more
        assert await pager.alloc_protected_bulk_async(0) == []
        assert sorted(pager.allocated_protected_pages()) == sorted([pid] + more)
        await pager.free_protected_async(more[0])
        await pager.free_protected_bulk_async(iter(more[1:]))
        assert list(pager.allocated_protected_pages()) == [pid]
        assert bytes(pager.protected_page(pid)[:5]) == b"hello"
        await pager.free_protected_async(pid)
        assert list(pager.allocated_protected_pages()) == []

    run(main())
    assert list(pager.allocated_pages()) == []


def test_async_errors_propagate(new_pager):
    pager = new_pager

    async def main():
        a = await pager.alloc_async()
        b = await pager.alloc_async()
        await pager.free_async(a)
        with pytest.raises(mappedpages.DoubleFree):
            await pager.free_async(a)
        with pytest.raises(mappedpages.DoubleFree):
            await pager.free_bulk_async([b, b])
        assert list(pager.allocated_pages()) == [b]
        with pytest.raises(mappedpages.ReservedPage):
            await pager.free_async(0)
        with pytest.raises(mappedpages.OutOfBounds):
            await pager.free_async(10**6)
        with pytest.raises(ValueError):
            await pager.alloc_bulk_async(-1)
        with pytest.raises(TypeError):
            await pager.free_async("3")
        with pytest.raises(mappedpages.OutOfBounds):
            await pager.free_protected_async(12345)
        with pytest.raises(mappedpages.OutOfBounds):
            await pager.free_protected_bulk_async([12345])
        pid = await pager.alloc_protected_async()
        w = pager.write_protected(pid)
        with pytest.raises(mappedpages.WriterOpen):
            await pager.free_protected_async(pid)
        w.discard()
        await pager.free_protected_async(pid)

    run(main())


def test_async_on_closed_pager(tmp_path):
    pager = Pager.create(tmp_path / "closed.mpp")
    pager.close()

    async def main():
        for coro in (
            pager.alloc_async(),
            pager.free_async(3),
            pager.alloc_bulk_async(2),
            pager.free_bulk_async([3]),
            pager.alloc_protected_async(),
            pager.free_protected_async(0),
            pager.alloc_protected_bulk_async(1),
            pager.free_protected_bulk_async([0]),
        ):
            with pytest.raises(ValueError):
                await coro

    run(main())


def test_gathered_calls_are_each_atomic(tmp_path):
    pager = Pager.create(tmp_path / "gather.mpp", page_size=1024)

    async def main():
        singles = await asyncio.gather(*(pager.alloc_async() for _ in range(64)))
        bulks = await asyncio.gather(*(pager.alloc_bulk_async(10) for _ in range(8)))
        prots = await asyncio.gather(*(pager.alloc_protected_async() for _ in range(4)))
        every = list(singles) + [p for b in bulks for p in b]
        assert len(set(every)) == len(every) == 144
        assert len(set(prots)) == 4
        assert sorted(pager.allocated_pages()) == sorted(every)
        await asyncio.gather(
            *(pager.free_async(p) for p in singles),
            *(pager.free_bulk_async(b) for b in bulks),
            *(pager.free_protected_async(p) for p in prots),
        )

    try:
        run(main())
        assert list(pager.allocated_pages()) == []
        assert list(pager.allocated_protected_pages()) == []
        # Only the protected-page directory block (its two pages) stays allocated.
        dir_pages = read_image(pager.path).system_pages
        assert len(dir_pages) == 2
        assert pager.page_count - 3 - pager.free_page_count == len(dir_pages)
    finally:
        force_close(pager)


def test_async_commits_are_durable(tmp_path):
    path = tmp_path / "durable.mpp"

    async def main():
        with Pager.create(path) as pager:
            ids = await pager.alloc_bulk_async(7)
            await pager.free_async(ids[0])
            pid = await pager.alloc_protected_async()
            return ids[1:], pid

    ids, pid = run(main())
    with Pager.open(path) as again:
        assert list(again.allocated_pages()) == ids
        assert list(again.allocated_protected_pages()) == [pid]


def test_reader_has_no_async_writes(tmp_path):
    path = tmp_path / "r.mpp"
    Pager.create(path).close()
    with ReadOnlyPager.open(path) as r:
        for name in ASYNC_METHODS:
            assert not hasattr(r, name), name
