"""A Pager shared by threads: atomic calls, pager.lock(), and the GIL released.

Every call is atomic with respect to the others; `with pager.lock():` groups
calls (re-entrant within a thread); the C core lets other threads run while it
waits on msync, grows the file or works through a bulk call.
"""

from __future__ import annotations

import random
import struct
import sys
import threading
import time
import traceback

import pytest
from support.format_v02 import check_valid_v02
from support.pagers import force_close

import mappedpages
from mappedpages import Pager


def stamp_of(tid: int, pid: int, seq: int) -> bytes:
    return struct.pack("<QQQ", tid + 1, pid, seq)


def run_threads(targets, timeout=60.0):
    errors: list[str] = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except BaseException:
                errors.append(traceback.format_exc())

        return inner

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread hung"
    assert errors == [], "\n".join(errors)


def test_stress_four_threads(tmp_path):
    """4 threads alloc/free/bulk/write/read for ~2.5 s; invariants hold throughout and after."""
    path = tmp_path / "stress.mpp"
    pager = Pager.create(path, page_size=1024)
    live: dict[int, int] = {}  # page id -> owning thread, while allocated
    live_lock = threading.Lock()
    violations: list[str] = []
    owned: list[dict[int, bytes]] = [{} for _ in range(4)]
    ops = [0] * 4
    deadline = time.monotonic() + 2.5

    def claim(tid, pid):
        with live_lock:
            if pid in live:
                violations.append(
                    f"page {pid} handed to thread {tid} while thread {live[pid]} holds it"
                )
            live[pid] = tid

    def unclaim(pid):
        with live_lock:
            del live[pid]

    def worker(tid):
        rng = random.Random(1234 + tid)
        mine = owned[tid]
        seq = 0

        def take(pid):
            nonlocal seq
            claim(tid, pid)
            seq += 1
            s = stamp_of(tid, pid, seq)
            pager.page(pid)[: len(s)] = s
            mine[pid] = s

        def check_mine(sample):
            for pid in sample:
                got = bytes(pager.page(pid)[:24])
                assert got == mine[pid], f"thread {tid} page {pid}: {got!r} != {mine[pid]!r}"

        def body():
            while time.monotonic() < deadline:
                r = rng.random()
                if len(mine) > 250:
                    r = 0.95  # bring it down
                if r < 0.25:
                    take(pager.alloc(zero=rng.random() < 0.3))
                elif r < 0.40:
                    for pid in pager.alloc_bulk(rng.randint(1, 20), zero=rng.random() < 0.3):
                        take(pid)
                elif r < 0.55 and mine:
                    pid = rng.choice(list(mine))
                    del mine[pid]
                    unclaim(pid)
                    pager.free(pid)
                elif r < 0.65 and mine:
                    n = rng.randint(1, min(20, len(mine)))
                    batch = rng.sample(list(mine), n)
                    for pid in batch:
                        del mine[pid]
                        unclaim(pid)
                    pager.free_bulk(batch)
                elif r < 0.80 and mine:
                    check_mine(rng.sample(list(mine), min(10, len(mine))))
                elif r < 0.85:
                    with pager.lock():
                        pc = pager.page_count
                        fc = pager.free_page_count
                        listed = list(pager.allocated_pages())
                    assert pc - 3 - fc == len(listed), (pc, fc, len(listed))
                    assert listed == sorted(set(listed))
                    assert set(mine) <= set(listed), "a live page of ours is not listed"
                elif r < 0.90:
                    check_mine(list(mine))
                elif mine:
                    batch = rng.sample(list(mine), max(1, len(mine) // 2))
                    for pid in batch:
                        del mine[pid]
                        unclaim(pid)
                    pager.free_bulk(batch)
                ops[tid] += 1
            check_mine(list(mine))

        return body

    try:
        run_threads([worker(t) for t in range(4)])
        assert violations == [], violations[:5]
        assert min(ops) > 20, f"too few operations per thread: {ops}"
        union = {pid: s for mine in owned for pid, s in mine.items()}
        assert set(union) == set(live)
        listed = list(pager.allocated_pages())
        assert sorted(union) == listed
        assert pager.page_count - 3 - pager.free_page_count == len(listed)
        pager.sync()
        state = (pager.page_count, pager.free_page_count, listed)
    finally:
        force_close(pager)
    with Pager.open(path) as again:
        assert (again.page_count, again.free_page_count, list(again.allocated_pages())) == state
        for pid, s in union.items():
            assert bytes(again.page(pid)[:24]) == s, f"page {pid} after reopen"
    check_valid_v02(path, allocated=sorted(union))


def test_lock_groups_calls(tmp_path):
    """Under pager.lock(), two allocs with no free between give consecutive ids."""
    pager = Pager.create(tmp_path / "group.mpp", page_size=1024)
    broken: list[tuple[int, int]] = []

    def worker():
        for _ in range(25):
            with pager.lock():
                a = pager.alloc()
                b = pager.alloc()
                count = pager.free_page_count
                total = pager.page_count
                listed_top = list(pager.allocated_pages())[-2:]
            if b != a + 1 or listed_top != [a, b] or count != total - 3 - (b - 2):
                broken.append((a, b))

    try:
        run_threads([worker] * 4)
        assert broken == [], f"calls interleaved inside pager.lock(): {broken[:5]}"
        assert list(pager.allocated_pages()) == list(range(3, 3 + 200))
    finally:
        force_close(pager)


def test_lock_is_reentrant_and_blocks_other_threads(new_pager):
    pager = new_pager
    done = threading.Event()
    got: list[int] = []

    def other():
        got.append(pager.alloc())
        done.set()

    with pager.lock():
        with pager.lock():  # re-entrant in this thread
            a = pager.alloc()
            t = threading.Thread(target=other)
            t.start()
            assert not done.wait(0.2), "another thread ran a call while pager.lock() was held"
            b = pager.alloc()
            assert b == a + 1
        assert not done.wait(0.05)
        pager.free(b)
        assert pager.alloc() == b
    assert done.wait(10)
    t.join()
    assert got == [b + 1]


def test_lock_releases_on_exception(new_pager):
    with pytest.raises(RuntimeError):
        with new_pager.lock():
            new_pager.alloc()
            raise RuntimeError("boom")
    result = []
    t = threading.Thread(target=lambda: result.append(new_pager.alloc()))
    t.start()
    t.join(5)
    assert result == [4]


def test_other_threads_run_during_durable_commits(tmp_path):
    """A pure-Python thread keeps counting while the main thread does 200 durable allocs."""
    pager = Pager.create(tmp_path / "gil.mpp")
    counter = 0
    stop = False
    started = threading.Event()

    def count():
        nonlocal counter
        started.set()
        while not stop:
            counter += 1

    # A short switch interval keeps the main thread from queueing 5 ms for
    # the GIL after every commit while the counter runs.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    t = threading.Thread(target=count)
    try:
        t.start()
        started.wait()
        before = counter
        ids = [pager.alloc() for _ in range(200)]
        advanced = counter - before
    finally:
        stop = True
        t.join()
        sys.setswitchinterval(old_interval)
        force_close(pager)
    assert len(set(ids)) == 200
    assert advanced > 1000, f"the counting thread advanced only {advanced} during 200 commits"


def test_other_threads_run_during_a_long_bulk_call(tmp_path):
    """While one thread works through bulk calls and syncs, another keeps running."""
    pager = Pager.create(tmp_path / "bulk.mpp", page_size=1024)
    ticks = 0
    stop = threading.Event()

    def ticker():
        nonlocal ticks
        while not stop.is_set():
            time.sleep(0.0005)
            ticks += 1

    t = threading.Thread(target=ticker)
    t.start()
    try:
        t0 = time.monotonic()
        for _ in range(20):
            ids = pager.alloc_bulk(5000, zero=True)
            for pid in ids[::97]:
                pager.page(pid)[0] = 1
            pager.sync()
            pager.free_bulk(ids)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
        force_close(pager)
    # The ticker sleeps 0.5 ms per tick; without the GIL released it would
    # get few chances to run inside those calls.
    assert ticks > 20, f"only {ticks} ticks in {elapsed:.3f} s of bulk calls"


VERSIONS = 15


def test_protected_writers_in_threads(tmp_path):
    """Threads commit their own protected pages; a reader thread sees only whole versions."""
    path = tmp_path / "prot.mpp"
    pager = Pager.create(path, page_size=1024)
    pids = pager.alloc_protected_bulk(3)
    final: dict[int, int] = {}
    stop = threading.Event()
    torn: list[str] = []
    seen = 0

    def writer(pid):
        def body():
            for version in range(1, VERSIONS + 1):
                with pager.write_protected(pid) as w:
                    w.page[:] = struct.pack("<Q", version) * (1024 // 8)
                if version % 3 == 0:  # regular traffic beside it
                    a = pager.alloc()
                    pager.free(a)
            final[pid] = VERSIONS

        return body

    def reader():
        nonlocal seen
        last = {pid: 0 for pid in pids}
        while not stop.is_set():
            for pid in pids:
                with pager.lock():
                    data = bytes(pager.protected_page(pid))
                words = set(struct.unpack("<128Q", data))
                if len(words) != 1:
                    torn.append(f"page {pid} mixes versions {sorted(words)[:4]}")
                    return
                (v,) = words
                if v < last[pid]:
                    torn.append(f"page {pid} went back from {last[pid]} to {v}")
                    return
                last[pid] = v
                seen += 1
            time.sleep(0.0005)  # leave the lock to the writers now and then

    rt = threading.Thread(target=reader)
    rt.start()
    try:
        run_threads([writer(pid) for pid in pids])
    finally:
        stop.set()
        rt.join()
    try:
        assert torn == []
        assert seen > 0
        for pid in pids:
            assert bytes(pager.protected_page(pid)[:8]) == struct.pack("<Q", VERSIONS)
            assert pager.verify_protected(pid)
        assert list(pager.allocated_protected_pages()) == pids
    finally:
        force_close(pager)
    with Pager.open(path) as again:
        for pid in pids:
            assert bytes(again.protected_page(pid)[:8]) == struct.pack("<Q", VERSIONS)


def test_views_shared_across_threads_survive_growth(tmp_path):
    """One thread writes through views it took early while another grows the file."""
    pager = Pager.create(tmp_path / "views.mpp", page_size=1024)
    first = pager.alloc_bulk(10)
    views = [pager.page(pid) for pid in first]

    def scribbler():
        for round_ in range(300):
            for i, v in enumerate(views):
                v[:8] = struct.pack("<Q", round_ * 100 + i)
                assert struct.unpack("<Q", bytes(v[:8]))[0] == round_ * 100 + i

    def grower():
        for _ in range(12):
            pager.alloc_bulk(200)

    try:
        run_threads([scribbler, grower])
        assert pager.page_count >= 2048
        for i, pid in enumerate(first):
            assert struct.unpack("<Q", bytes(pager.page(pid)[:8]))[0] == 29900 + i
    finally:
        views.clear()
        force_close(pager)


def test_errors_in_one_thread_do_not_disturb_others(new_pager):
    pager = new_pager
    ids = pager.alloc_bulk(50)
    wrong: list[Exception] = []

    def double_freer():
        for pid in ids[:25]:
            pager.free(pid)
        for pid in ids[:25]:
            try:
                pager.free(pid)
            except mappedpages.DoubleFree as e:
                wrong.append(e)

    def bulk_bad():
        for _ in range(25):
            with pytest.raises(mappedpages.DoubleFree):
                pager.free_bulk([ids[30], ids[30]])

    run_threads([double_freer, bulk_bad])
    assert len(wrong) == 25
    assert list(pager.allocated_pages()) == ids[25:]
