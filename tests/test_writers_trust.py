"""Who owns what: sub-page ownership, protected writers staged in library
memory, cancelled async calls, and messages that name the values involved.

- A page held by a SubPageAllocator cannot be freed through the pager, and two
  allocators on one pager cannot hold the same page (ReservedPage, nothing
  changed).
- A ProtectedWriter's page lives in memory the library owns until commit: a
  slice kept past commit or discard reaches nothing on disk, and a transaction
  that ends with a writer opened inside it still open raises WriterOpen and
  rolls back.
- A *_async allocation cancelled by its caller leaves no page allocated.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
from array import array

import pytest
from support.format_v02 import read_image
from support.pagers import pager_state

import mappedpages
from mappedpages import (
    MappedPageError,
    OutOfBounds,
    Pager,
    ReservedPage,
    SubPageAllocator,
    WriterOpen,
)

PS = 4096


def generation(pager: Pager) -> int:
    """The committed generation, read from the file itself."""
    return read_image(pager.path).newest().generation


def full_state(p: Pager) -> tuple:
    return (*pager_state(p), generation(p))


# --------------------------------------------------------------------------
# Sub-page ownership
# --------------------------------------------------------------------------


def test_reserved_page_is_exported_and_a_mapped_page_error():
    assert mappedpages.ReservedPage is ReservedPage
    assert issubclass(ReservedPage, MappedPageError)


def test_pager_free_refuses_a_page_an_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(9)  # pages 3 (full) and 4 (one slot)
    assert a.big_pages() == [3, 4]
    before = full_state(p)
    for page in (3, 4):
        with pytest.raises(ReservedPage, match=f"page {page} is held by a SubPageAllocator"):
            p.free(page)
        assert full_state(p) == before
    assert a.live_ids() == sorted(ids)
    # The pages are still the allocator's: its sub-pages free normally, and the
    # last one gives the page back to the pager.
    a.free_bulk(ids)
    assert a.big_pages() == []
    assert list(p.allocated_pages()) == []


def test_pager_free_bulk_refuses_a_page_an_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 1024)
    a.alloc()  # page 3
    mine = p.alloc_bulk(3)  # 4, 5, 6
    before = full_state(p)
    with pytest.raises(ReservedPage, match="page 3 is held by a SubPageAllocator"):
        p.free_bulk(mine + [3])
    assert full_state(p) == before
    with pytest.raises(ReservedPage, match="page 3 is held"):
        p.free_bulk(array("Q", [3] + mine))  # a buffer, read in place
    assert full_state(p) == before
    p.free_bulk(mine)  # the pages nobody else holds still free
    assert list(p.allocated_pages()) == [3]


def test_a_detached_or_collected_allocator_holds_nothing(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    a.alloc()  # page 3
    a.detach()
    p.free(3)  # the caller owns the page again
    b = SubPageAllocator(p, 512)
    b.alloc()  # page 3 again
    del b
    gc.collect()
    p.free(3)
    assert list(p.allocated_pages()) == []


def test_restore_refuses_a_page_another_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(3)  # page 3
    before = full_state(p)
    # Same sub-page size: the very same sub-pages would be handed out twice.
    with pytest.raises(ReservedPage, match=f"sub-page id {ids[0]} lies in page 3"):
        SubPageAllocator.restore(p, 512, [ids[0]])
    # Another size: the bytes would still overlap.
    with pytest.raises(ReservedPage, match="another SubPageAllocator"):
        SubPageAllocator.restore(p, 1024, [3 * 4 + 3])
    assert full_state(p) == before
    assert a.live_ids() == ids
    assert len(p._subs) == 1  # the refused allocators are gone
    # Once a lets go, the page may be restored.
    a.detach()
    b = SubPageAllocator.restore(p, 512, ids)
    assert b.live_ids() == ids
    with pytest.raises(ReservedPage):
        p.free(3)


def test_restore_messages_name_the_id(new_pager):
    p = new_pager
    page = p.alloc()  # 3
    before = full_state(p)
    with pytest.raises(ValueError, match=f"sub-page id {page * 8 + 1} is given twice"):
        SubPageAllocator.restore(p, 512, [page * 8, page * 8 + 1, page * 8 + 1])
    with pytest.raises(ReservedPage, match=r"sub-page id 9 lies in page 1, which is reserved"):
        SubPageAllocator.restore(p, 512, [page * 8, 9])
    with pytest.raises(OutOfBounds):  # and still what restore raised before
        SubPageAllocator.restore(p, 512, [9])
    with pytest.raises(OutOfBounds, match=r"sub-page id 800 lies in page 100, past the end"):
        SubPageAllocator.restore(p, 512, [800])
    with pytest.raises(OutOfBounds, match=r"sub-page id 5 lies in page 1, which is reserved"):
        SubPageAllocator.restore(p, 1024, [5])
    assert full_state(p) == before
    pid = p.alloc_protected()
    backing = p._backing(pid)[0]
    with pytest.raises(OutOfBounds, match=f"lies in page {backing}, which is reserved"):
        SubPageAllocator.restore(p, 512, [backing * 8])
    p.free(page)
    with pytest.raises(OutOfBounds, match=f"lies in page {page}, which is free in the pager"):
        SubPageAllocator.restore(p, 512, [page * 8])


@pytest.mark.parametrize("size", [True, False])
def test_sub_size_bool_is_a_type_error(new_pager, size):
    with pytest.raises(TypeError, match="bool"):
        SubPageAllocator(new_pager, size)
    assert len(new_pager._subs) == 0


# --------------------------------------------------------------------------
# Protected writers stage in library memory
# --------------------------------------------------------------------------


def both_backing_copies(p: Pager, pid: int) -> tuple[bytes, bytes]:
    """The bytes of both pages behind a protected page, read from the file."""
    a, b = p._backing(pid)
    with open(p.path, "rb") as f:
        f.seek(a * p.page_size)
        first = f.read(p.page_size)
        f.seek(b * p.page_size)
        return first, f.read(p.page_size)


def committed(p: Pager, pid: int) -> bytes:
    return bytes(p.protected_page(pid))


def test_a_slice_written_after_commit_reaches_nothing(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    head = w.page[:16]
    head[:] = b"A" * 16
    w.commit()
    assert committed(p, pid)[:16] == b"A" * 16
    backing = both_backing_copies(p, pid)
    head[:] = b"B" * 16  # the writer is spent: this lands in its own buffer
    assert committed(p, pid)[:16] == b"A" * 16
    assert p.verify_protected(pid)
    assert both_backing_copies(p, pid) == backing
    # The next writer starts from the committed content, not the stray bytes.
    w2 = p.write_protected(pid)
    assert bytes(w2.page[:16]) == b"A" * 16
    head[:] = b"C" * 16
    assert bytes(w2.page[:16]) == b"A" * 16
    w2.page[16:20] = b"next"
    w2.commit()
    assert committed(p, pid)[:20] == b"A" * 16 + b"next"
    assert p.verify_protected(pid)


def test_a_slice_written_after_discard_reaches_nothing(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    whole = w.page[:]
    whole[:4] = b"gone"
    w.discard()
    backing = both_backing_copies(p, pid)
    whole[:4] = b"late"
    assert committed(p, pid) == bytes(PS)
    assert both_backing_copies(p, pid) == backing
    w2 = p.write_protected(pid)
    assert bytes(w2.page[:4]) == bytes(4)
    w2.discard()


def test_the_writer_page_is_not_the_file_until_commit(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    w.page[:5] = b"early"
    # Nothing written through the writer is in the mapping or the file yet.
    assert all(copy[:5] == bytes(5) for copy in both_backing_copies(p, pid))
    assert committed(p, pid)[:5] == bytes(5)
    w.commit()
    assert committed(p, pid)[:5] == b"early"


def test_a_slice_written_after_a_transaction_commit_reaches_nothing(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    with p.transaction():
        w = p.write_protected(pid)
        view = w.page[8:12]
        view[:] = b"txn!"
        w.commit()
        view[:] = b"bad1"  # after the writer's commit, before the block's
    view[:] = b"bad2"
    assert committed(p, pid)[8:12] == b"txn!"
    assert p.verify_protected(pid)
    p.close()
    with Pager.open(p.path) as again:
        assert committed(again, pid)[8:12] == b"txn!"
        assert again.verify_protected(pid)


def test_a_slice_outlives_the_pager_without_harm(tmp_path):
    """Written after commit and after close: before, this wrote into the
    committed copy, or into unmapped memory once the pager was closed."""
    script = textwrap.dedent(
        f"""
        import gc
        from mappedpages import Pager
        p = Pager.create({str(tmp_path / "s.mpp")!r})
        pid = p.alloc_protected()
        w = p.write_protected(pid)
        keep = w.page[:]
        keep[:3] = b"one"
        w.commit()
        p.close()
        gc.collect()
        keep[:] = b"x" * len(keep)
        with Pager.open(p.path) as q:
            assert bytes(q.protected_page(pid)[:3]) == b"one", bytes(q.protected_page(pid)[:3])
            assert q.verify_protected(pid)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == "ok"


def test_close_with_an_open_writer_is_refused(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    with pytest.raises(BufferError, match=f"ProtectedWriter is open on protected page.*{pid}"):
        p.close()
    w.discard()
    p.close()


def test_a_transaction_ending_with_an_open_writer_rolls_back(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    other = p.alloc_protected()
    before = full_state(p)
    with pytest.raises(WriterOpen, match=f"protected page\\(s\\) {pid}; it was rolled back"):
        with p.transaction():
            p.alloc_bulk(3)
            with p.write_protected(other) as done:
                done.page[:4] = b"done"
            w = p.write_protected(pid)
            w.page[:4] = b"open"
    # Everything in the block is undone, the committed writer's page included.
    assert full_state(p) == before
    assert committed(p, other)[:4] == bytes(4)
    assert committed(p, pid)[:4] == bytes(4)
    assert w.spent
    with pytest.raises(ValueError):
        w.commit()
    # Both pages can be written again.
    for page in (pid, other):
        with p.write_protected(page) as again:
            again.page[:3] = b"new"
        assert committed(p, page)[:3] == b"new"


def test_a_raising_block_with_an_open_writer_keeps_its_exception(new_pager):
    p = new_pager
    pid = p.alloc_protected()
    before = full_state(p)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with p.transaction():
            p.alloc()
            w = p.write_protected(pid)
            w.page[:4] = b"open"
            raise Boom
    assert full_state(p) == before
    assert w.spent
    assert committed(p, pid)[:4] == bytes(4)


def test_writers_opened_before_the_block_or_finished_in_it_are_fine(new_pager):
    p = new_pager
    a, b = p.alloc_protected(), p.alloc_protected()
    outside = p.write_protected(a)
    with p.transaction():
        with p.transaction():
            inner = p.write_protected(b)  # opened in a nested block ...
        inner.page[:2] = b"in"
        inner.commit()  # ... and committed in the outer one
    assert committed(p, b)[:2] == b"in"
    assert not outside.spent
    outside.page[:3] = b"out"
    outside.commit()
    assert committed(p, a)[:3] == b"out"


# --------------------------------------------------------------------------
# Cancelled *_async calls leave nothing allocated
# --------------------------------------------------------------------------


def roomy_pager(path, pages: int) -> Pager:
    """A pager whose file already has room for ``pages`` more pages, so an
    allocation and its undo leave every count as it was."""
    p = Pager.create(path, durability="none")
    p.free_bulk(p.alloc_bulk(pages))
    p.sync()
    return p


def counts(p: Pager) -> tuple:
    return (
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
        list(p.allocated_protected_pages()),
    )


def test_a_timed_out_alloc_bulk_async_allocates_nothing(tmp_path):
    p = roomy_pager(tmp_path / "a.mpp", 200_000)
    try:
        before = counts(p)

        async def main():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(p.alloc_bulk_async(200_000), 0.001)

        asyncio.run(main())  # returns once the default executor is done
        assert counts(p) == before
    finally:
        p.close()
    with Pager.open(tmp_path / "a.mpp") as again:
        assert counts(again) == before


ALLOCATIONS = pytest.mark.parametrize(
    "name, args",
    [
        ("alloc_async", ()),
        ("alloc_bulk_async", (50,)),
        ("alloc_protected_async", ()),
        ("alloc_protected_bulk_async", (3,)),
    ],
)


class SpyLock:
    """Stands for a pager's lock and tells when a worker thread asks for it."""

    def __init__(self, real, waiting: threading.Event) -> None:
        self.real, self.waiting = real, waiting

    def acquire(self, *a, **k):
        if threading.current_thread() is not threading.main_thread():
            self.waiting.set()
        return self.real.acquire(*a, **k)

    def release(self):
        self.real.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@ALLOCATIONS
def test_cancelled_while_running_is_undone(tmp_path, name, args):
    """The call is inside the synchronous method when it is cancelled: it
    finishes, then the worker takes its effect back before it lets go of the
    pager's lock."""
    p = roomy_pager(tmp_path / "c.mpp", 64)
    try:
        p.write_protected(p.alloc_protected()).discard()  # a directory block exists
        before = counts(p)
        ran, gate = threading.Event(), threading.Event()
        method = name.removesuffix("_async")
        real = getattr(p, method)

        def spy(*a):
            ran.set()
            gate.wait(30)
            return real(*a)

        async def main():
            task = asyncio.create_task(getattr(p, name)(*args))
            while not ran.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gate.set()

        setattr(p, method, spy)
        try:
            asyncio.run(main())  # returns once the worker is done
        finally:
            delattr(p, method)
        assert counts(p) == before
    finally:
        p.close()


@ALLOCATIONS
def test_cancelled_while_waiting_for_the_lock_does_not_run(tmp_path, name, args):
    p = roomy_pager(tmp_path / "w.mpp", 64)
    try:
        before = counts(p)
        waiting, ran = threading.Event(), threading.Event()
        real_lock = p._lock
        method = name.removesuffix("_async")
        real = getattr(p, method)

        def spy(*a):
            ran.set()
            return real(*a)

        async def main():
            with real_lock:
                task = asyncio.create_task(getattr(p, name)(*args))
                while not waiting.is_set():
                    await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        p._lock = SpyLock(real_lock, waiting)
        setattr(p, method, spy)
        try:
            asyncio.run(main())
        finally:
            p._lock = real_lock
            delattr(p, method)
        assert not ran.is_set()
        assert counts(p) == before
    finally:
        p.close()


def test_cancelled_after_the_worker_finished_is_undone(tmp_path):
    """The worker handed its result over, but the loop had not resumed the
    caller before the cancellation: the caller's side undoes it."""
    import time

    p = roomy_pager(tmp_path / "d.mpp", 64)
    try:
        before = counts(p)

        async def main():
            task = asyncio.create_task(p.alloc_bulk_async(10))
            await asyncio.sleep(0)  # the call is submitted to the executor
            deadline = time.monotonic() + 30
            while p.free_page_count == before[1] and time.monotonic() < deadline:
                time.sleep(0.01)  # block the loop: the result cannot be delivered
            time.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert counts(p) == before
    finally:
        p.close()


def test_an_uncancelled_async_call_keeps_its_result(tmp_path):
    p = roomy_pager(tmp_path / "e.mpp", 64)
    try:

        async def main():
            return await asyncio.wait_for(p.alloc_bulk_async(5), 60)

        ids = asyncio.run(main())
        assert list(p.allocated_pages()) == sorted(ids)
    finally:
        p.close()


def test_a_free_async_cancelled_before_it_started_does_not_run(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    p = roomy_pager(tmp_path / "f.mpp", 64)
    try:
        page = p.alloc()
        gate = threading.Event()

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ThreadPoolExecutor(1))
            busy = loop.run_in_executor(None, gate.wait)  # the one worker is taken
            task = asyncio.create_task(p.free_async(page))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gate.set()
            await busy

        asyncio.run(main())
        assert list(p.allocated_pages()) == [page]
    finally:
        p.close()


def test_a_free_async_cancelled_while_waiting_for_the_lock_does_not_run(tmp_path):
    p = roomy_pager(tmp_path / "g.mpp", 64)
    try:
        pages = p.alloc_bulk(3)
        waiting = threading.Event()
        real_lock = p._lock

        async def main():
            with real_lock:
                task = asyncio.create_task(p.free_bulk_async(pages))
                while not waiting.is_set():
                    await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        p._lock = SpyLock(real_lock, waiting)
        try:
            asyncio.run(main())
        finally:
            p._lock = real_lock
        assert list(p.allocated_pages()) == pages
    finally:
        p.close()
