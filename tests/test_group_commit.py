"""Group commit (csrc/group.c): one flush carries every change ready when it starts.

Threads committing at once share flushes, each call still returns only once
its own change is durable, a page freed by a commit that is not durable is
never handed out, a group held with ``pager.lock()`` is never interleaved, a
failed flush reaches every call it carried, and a power loss at any barrier
of 4 threads committing loses no acknowledged change and shows no state
that never existed.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.iohooks import IoHooks, close_quietly, create_pager
from support.powerloss import CrashRecorder, ImageChecker, crash_images

from mappedpages import Pager, Unavailable
from mappedpages._core import ffi, lib

CASES = [("fast", "0.3"), ("compat", "0.3"), ("fast", "0.2"), ("compat", "0.2")]


def flushes(h: IoHooks) -> int:
    return h.calls(lib.MP_IO_MSYNC) + h.calls(lib.MP_IO_FSYNC)


def roomy(path: Path, mode: str, layout: str, hooks: IoHooks | None = None) -> Pager:
    p = create_pager(path, 4096, hooks, durability=mode, layout=layout)
    p.free_bulk(p.alloc_bulk(64))  # no growth below
    return p


def allocated(p: Pager) -> list[int]:
    """The allocated pages, asked of the core with a read (no wait for a flush)."""
    buf = ffi.new("uint64_t[]", 256)
    n = ffi.new("uint64_t *")
    assert lib.mp_pager_list_pages(p._handle, lib.MP_KIND_ALLOCATED, 0, buf, 256, n) == 0
    return list(ffi.unpack(buf, int(n[0])))


@pytest.mark.parametrize(("mode", "layout"), CASES)
def test_threads_share_flushes(tmp_path: Path, mode: str, layout: str) -> None:
    h = IoHooks()
    p = roomy(tmp_path / "g.mpp", mode, layout, h)
    per_commit = 2 if (mode, layout) == ("compat", "0.2") else 1
    try:
        before = flushes(h)
        for _ in range(20):
            p.free(p.alloc())
        # One thread: exactly the flushes of its own commits (it never waits).
        assert flushes(h) - before == 40 * per_commit
        before = flushes(h)
        start = threading.Barrier(4)

        def work() -> None:
            start.wait()
            for _ in range(50):
                p.free(p.alloc())

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        used = flushes(h) - before
        assert used < 400 * per_commit * 0.75, f"{used} flushes for 400 commits"
        assert allocated(p) == []
    finally:
        close_quietly(p)
    with Pager.open(tmp_path / "g.mpp") as again:
        assert list(again.allocated_pages()) == []


def test_bulk_calls_share_flushes(tmp_path: Path) -> None:
    h = IoHooks()
    p = roomy(tmp_path / "b.mpp", "fast", "0.3", h)
    try:
        before = flushes(h)
        start = threading.Barrier(4)

        def work() -> None:
            start.wait()
            for _ in range(30):
                p.free_bulk(p.alloc_bulk(3))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        used = flushes(h) - before
        assert used < 240 * 0.75, f"{used} flushes for 240 commits"
        assert allocated(p) == []
    finally:
        close_quietly(p)


def test_async_calls_share_flushes(tmp_path: Path) -> None:
    import asyncio

    h = IoHooks()
    p = roomy(tmp_path / "a.mpp", "fast", "0.3", h)
    try:
        before = flushes(h)

        async def main() -> None:
            async def task() -> None:
                for _ in range(10):
                    await p.free_async(await p.alloc_async())

            await asyncio.gather(*(task() for _ in range(16)))

        asyncio.run(main())
        used = flushes(h) - before
        assert used < 320 * 0.75, f"{used} flushes for 320 commits"
        assert allocated(p) == []
    finally:
        close_quietly(p)


def test_a_free_not_yet_durable_is_never_handed_out(tmp_path: Path) -> None:
    """Y is freed while X's free is being flushed: Y is not in that flush, so when
    it ends Y stays pending; an alloc during Y's own flush gets X, never Y."""
    h = IoHooks()
    p = roomy(tmp_path / "p.mpp", "fast", "0.2", h)
    try:
        y, x = p.alloc(), p.alloc()  # Y is the lowest page
        barrier = [0]
        got: list[int] = []
        threads: list[threading.Thread] = []

        def wait_for(cond: object) -> None:
            for _ in range(2000):
                if cond():  # type: ignore[operator]
                    return
                threading.Event().wait(0.005)
            raise AssertionError("the other thread never applied its change")

        def on_barrier(kind: int, offset: int, length: int) -> None:
            barrier[0] += 1
            if barrier[0] == 1:  # X's flush is in flight: free Y meanwhile
                t = threading.Thread(target=p.free, args=(y,))
                threads.append(t)
                t.start()
                wait_for(lambda: y not in allocated(p))
            elif barrier[0] == 2:  # Y's flush is in flight: allocate meanwhile
                t = threading.Thread(target=lambda: got.append(p.alloc()))
                threads.append(t)
                t.start()
                wait_for(lambda: len(allocated(p)) == 1)

        h.set_barrier_callback(on_barrier)
        p.free(x)
        for t in threads:
            t.join(30)
        h.set_barrier_callback(None)
        h.check_errors()
        assert barrier[0] >= 2
        assert got == [x], f"handed out {got}, freed-not-durable page was {y}"
    finally:
        close_quietly(p)


@pytest.mark.parametrize("mode", ["fast", "compat"])
def test_a_held_group_is_never_interleaved(tmp_path: Path, mode: str) -> None:
    p = roomy(tmp_path / "l.mpp", mode, "0.3")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            p.free(p.alloc())

    others = [threading.Thread(target=churn) for _ in range(3)]
    for t in others:
        t.start()
    try:
        for _ in range(20):
            with p.lock():
                before = allocated(p)
                mine = [p.alloc() for _ in range(3)]
                # No other thread's change got in between (it would during a
                # flush that released the mutex).
                assert allocated(p) == sorted(before + mine)
                for i in mine:
                    p.free(i)
                assert allocated(p) == before
    finally:
        stop.set()
        for t in others:
            t.join()
        p.close()


def test_a_failed_flush_reaches_every_call_it_carried(tmp_path: Path) -> None:
    h = IoHooks()
    p = roomy(tmp_path / "e.mpp", "fast", "0.3", h)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        try:
            for _ in range(200):
                p.free(p.alloc())
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    h.fail(lib.MP_IO_MSYNC, 20, errno.EIO, persistent=True)
    h.fail(lib.MP_IO_FSYNC, 20, errno.EIO, persistent=True)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a waiter was never woken"
    assert len(errors) == 4
    # The flush's own error to the calls it carried; Unavailable to later ones.
    assert any(isinstance(e, OSError) and e.errno == errno.EIO for e in errors)
    assert all(isinstance(e, (OSError, Unavailable)) for e in errors)
    with pytest.raises(Unavailable):
        p.alloc()
    h.clear_faults()
    close_quietly(p)


# --------------------------------------------------------------------------
# Power loss with 4 threads committing
# --------------------------------------------------------------------------


@dataclass
class Event:
    page: int
    alloc: bool  # else a free
    start: int  # the clock when the call started
    end: int = 1 << 62  # when it returned (acknowledged from then on)
    thread: int = 0


class Concurrent:
    """4 threads doing alloc/free; each call's start and return on one clock,
    and every barrier's crash points stamped with that clock."""

    def __init__(self, path: Path, mode: str, layout: str) -> None:
        self.clock = itertools.count(1)
        self.rec = CrashRecorder(path, 1024, mode)
        self.stamps: list[int] = []  # the clock of each crash point
        self.hooks = IoHooks(self.on_barrier)
        self.pager = create_pager(path, 1024, self.hooks, durability=mode, layout=layout)
        self.pager.free_bulk(self.pager.alloc_bulk(48))  # no growth below
        self.events: list[Event] = []

    def on_barrier(self, kind: int, offset: int, length: int) -> None:
        # The leader's thread, with the flush in flight: no copy is written
        # meanwhile, so the file read here is the one being flushed.
        now = next(self.clock)
        before = len(self.rec.points)
        self.rec.on_barrier(kind, offset, length)
        self.stamps += [now] * (len(self.rec.points) - before)
        # A slow flush, as a disk's: the other threads' changes pile up
        # meanwhile and the next flush carries several.
        time.sleep(0.002)

    def thread(self, seed: int, rounds: int) -> None:
        rnd = random.Random(seed)
        held: list[int] = []
        p = self.pager
        for _ in range(rounds):
            if held and (len(held) >= 2 or rnd.random() < 0.5):
                page = held.pop(rnd.randrange(len(held)))
                ev = Event(page, False, next(self.clock), thread=seed)
                self.events.append(ev)
                p.free(page)
                ev.end = next(self.clock)
            else:
                ev = Event(-1, True, next(self.clock), thread=seed)
                page = p.alloc()
                ev.page = page
                ev.end = next(self.clock)
                self.events.append(ev)
                held.append(page)

    def run(self, rounds: int) -> None:
        self.rec.start()
        self.stamps += [0] * len(self.rec.points)
        threads = [threading.Thread(target=self.thread, args=(s, rounds)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.rec.stop()
        self.hooks.check_errors()
        close_quietly(self.pager)

    def histories(self) -> dict[int, list[Event]]:
        """Each page's events in the order they were applied.

        A page is allocated by one thread, which alone frees it: the history
        is alloc, free, alloc, free ... by pairs, and each pair's alloc
        returned before the next pair's alloc could take the page (after the
        free, which that thread made after its alloc returned)."""
        pairs: list[tuple[Event, Event | None]] = []
        for t in range(4):
            open_allocs: dict[int, Event] = {}
            for ev in (e for e in self.events if e.thread == t):  # program order
                if ev.alloc:
                    open_allocs[ev.page] = ev
                else:
                    pairs.append((open_allocs.pop(ev.page), ev))
            pairs += [(a, None) for a in open_allocs.values()]
        out: dict[int, list[Event]] = {}
        for a, f in sorted(pairs, key=lambda pair: pair[0].end):
            out.setdefault(a.page, []).append(a)
            if f is not None:
                out[a.page].append(f)
        return out

    def problem(self, stamp: int, allocated: frozenset[int]) -> str | None:
        """Why ``allocated`` cannot be the state at clock ``stamp``, or None.

        Per page, the image must show the page as some prefix of its events
        leaves it: every event acknowledged before the stamp applied, none
        started after it (an alloc's page is known only once it returned, so
        an alloc still in flight may or may not show)."""
        for page, evs in self.histories().items():
            acked = [i for i, e in enumerate(evs) if e.end < stamp]
            started = [i for i, e in enumerate(evs) if e.start < stamp]
            lo = acked[-1] + 1 if acked else 0
            hi = started[-1] + 1 if started else 0
            options = {evs[k - 1].alloc if k else False for k in range(lo, hi + 1)}
            if (page in allocated) not in options:
                state = "allocated" if page in allocated else "free"
                return f"page {page} {state}; allowed {sorted(options)} at clock {stamp}"
        return None


def judge(run: Concurrent, workdir: Path) -> tuple[int, int, int, list[str]]:
    """Images, images showing no allowed state, unopenable images, and why."""
    checker = ImageChecker(workdir, reopen=True)
    images = lost = unknown = 0
    failures: list[str] = []
    rnd = random.Random(0)
    for point, stamp in zip(run.rec.points, run.stamps):
        for image in crash_images(point, 1024, exhaustive_pages=3, samples=12, rnd=rnd):
            images += 1
            out = checker.open_image(image.data)
            if out.kind != "ok" or out.state is None:
                unknown += 1
                failures.append(f"unopenable: {image.describe()}: {out.detail}")
                continue
            why = run.problem(stamp, out.state.allocated)
            if why is not None:
                lost += 1
                failures.append(f"{image.describe()}: {why}")
    return images, lost, unknown, failures


@pytest.mark.parametrize(("mode", "layout"), [("fast", "0.3"), ("compat", "0.2")])
def test_power_loss_with_four_threads_committing(
    tmp_path: Path, mode: str, layout: str
) -> None:
    run = Concurrent(tmp_path / "w.mpp", mode, layout)
    run.run(rounds=24)
    images, lost, unknown, failures = judge(run, tmp_path / "img")
    assert images > 0 and len(run.rec.points) > 10
    # Flushes were shared: fewer barriers than commits, v0.2 "compat" has two each.
    per_commit = 2 if mode == "compat" and layout == "0.2" else 1
    assert run.rec.barrier_count < per_commit * len(run.events) * 0.75
    assert lost == 0 and unknown == 0, "\n".join(failures[:5])


def test_the_concurrent_harness_notices_a_skipped_flush(tmp_path: Path) -> None:
    """One msync made a silent no-op: a commit acknowledged without reaching the
    disk must show up as lost in some image."""
    run = Concurrent(tmp_path / "w.mpp", "fast", "0.2")
    run.hooks.skip_msync(6)
    run.run(rounds=24)
    images, lost, unknown, _ = judge(run, tmp_path / "img")
    assert images > 0 and lost + unknown > 0


def test_grouped_async_calls_cancelled_anywhere_leak_nothing(tmp_path: Path) -> None:
    """alloc_async/free_async go through the pager's batch committer: tasks
    cancelled at any point (queued, in a batch, after its commit) leave no page
    allocated that no task holds, and every page a task got was its own."""
    rng = random.Random(7)
    with Pager.create(tmp_path / "f", 1024, durability="fast", layout="0.3") as p:
        held: set[int] = set()

        async def one(delay: float) -> None:
            task = asyncio.ensure_future(p.alloc_async())
            await asyncio.sleep(delay)
            if rng.random() < 0.5:
                task.cancel()
            try:
                pid = await task
            except asyncio.CancelledError:
                return
            assert pid not in held  # never handed out twice
            held.add(pid)

        async def main() -> None:
            await asyncio.gather(*(one(rng.random() / 2000) for _ in range(400)))
            # Undos of allocs cancelled after their commit are queued frees:
            # let them run before looking.
            for _ in range(50):
                await p.free_async(await p.alloc_async())

        asyncio.run(main())
        assert set(p.allocated_pages()) == held


def test_grouped_alloc_cancelled_after_its_result_arrived_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task is cancelled after its batch set the future's result and before
    the task resumed: the await raises CancelledError, so the page it was given
    must be freed again, not left allocated with no holder."""
    with Pager.create(tmp_path / "f", 4096, durability="fast", layout="0.3") as p:

        async def main() -> None:
            task = asyncio.ensure_future(p.alloc_async())
            deliver = p._deliver

            def deliver_then_cancel(results: list[object]) -> None:
                deliver(results)  # type: ignore[arg-type]
                task.cancel()  # the result is set; the task has not resumed

            monkeypatch.setattr(p, "_deliver", deliver_then_cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
            monkeypatch.undo()
            await p.free_async(await p.alloc_async())  # runs the queued undo first

        asyncio.run(main())
        assert list(p.allocated_pages()) == []
