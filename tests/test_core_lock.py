"""The pager's lock lives in the C core (csrc/lock.c).

Every C call holds the pager's mutex for its own run; ``pager.lock()`` holds
it across several calls, re-entrant in the owning thread; a close waits for
calls in flight and every later call fails cleanly with ``ValueError``; a fork
child never waits for a mutex a parent's thread held.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support.pagers import in_fork

from mappedpages import Pager, SubPageAllocator, Unavailable
from mappedpages._core import ffi, lib

CLOSED = "I/O operation on closed pager"


def _alloc_in_thread(p: Pager) -> tuple[threading.Thread, list[int]]:
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(p.alloc()))
    t.start()
    return t, got


def test_group_holds_other_threads_calls(tmp_path: Path) -> None:
    with Pager.create(tmp_path / "a.mpp", durability="fast") as p:
        with p.lock():
            with p.lock():  # re-entrant in the owning thread
                first = p.alloc()
                t, got = _alloc_in_thread(p)
                time.sleep(0.2)
                # The other thread's call waits in C for the mutex.
                assert got == [] and t.is_alive()
                p.free(first)
            assert got == []
        t.join(10)
        # The group's alloc and free both ran first: the other thread got the
        # page the group freed.
        assert got == [first]


def test_release_by_a_thread_that_does_not_hold_it(tmp_path: Path) -> None:
    with Pager.create(tmp_path / "a.mpp") as p:
        lock = p.lock()
        with pytest.raises(RuntimeError, match="un-acquired"):
            lock.release()
        assert lib.mp_pager_unlock(p._handle) == lib.MP_EINVALID_ARGUMENT
        held = threading.Event()
        done = threading.Event()

        def holder() -> None:
            with lock:
                held.set()
                done.wait(10)

        t = threading.Thread(target=holder)
        t.start()
        held.wait(10)
        try:
            # Another thread holds it: neither form lets this thread release it.
            assert lib.mp_pager_unlock(p._handle) == lib.MP_EINVALID_ARGUMENT
            with pytest.raises(RuntimeError):
                lock.release()
        finally:
            done.set()
            t.join(10)
        assert lock.acquire() is True
        lock.release()
        with pytest.raises(ValueError):
            lock.acquire(blocking=False)


def test_calls_after_close_fail_with_the_closed_code(tmp_path: Path) -> None:
    p = Pager.create(tmp_path / "a.mpp", durability="fast")
    pid = p.alloc()
    handle = p._handle
    sub = SubPageAllocator(p, 512)
    sub_id = sub.alloc()
    sub.free(sub_id)
    sub.detach()
    p.close()
    out = ffi.new("uint64_t *")
    assert lib.mp_pager_alloc(handle, 0, out) == lib.MP_ECLOSED
    assert lib.mp_pager_free(handle, pid) == lib.MP_ECLOSED
    assert lib.mp_pager_stats(handle, ffi.new("mp_stats *")) == lib.MP_ECLOSED
    assert lib.mp_pager_close(handle) == lib.MP_OK  # idempotent
    for call in (p.alloc, lambda: p.free(pid), lambda: p.alloc_bulk(2), lambda: p.page(pid)):
        with pytest.raises(ValueError) as exc:
            call()
        assert str(exc.value) == CLOSED
    # The lock itself still works on a closed pager (a group may end in a close).
    with p._lock:
        pass


def test_closed_code_raises_value_error_worded_as_files_do(tmp_path: Path) -> None:
    from mappedpages._errors import error_for

    exc = error_for(lib.MP_ECLOSED, "alloc", str(tmp_path))
    assert type(exc) is ValueError and str(exc) == CLOSED


def test_lock_keeps_the_handle_alive_after_the_pager_is_gone(tmp_path: Path) -> None:
    p = Pager.create(tmp_path / "a.mpp")
    lock = p.lock()
    p.close()
    del p
    gc.collect()
    with lock:  # the struct is freed only with its last owner: the lock holds it
        pass


def test_hot_paths_take_no_python_lock(tmp_path: Path) -> None:
    class Refuse:
        def __enter__(self) -> None:
            raise AssertionError("the Python layer took the pager's lock")

        __exit__ = acquire = release = __enter__

    with Pager.create(tmp_path / "a.mpp", durability="none") as p:
        p.free(p.alloc_bulk(8)[0])  # room: no growth below
        real, p._lock = p._lock, Refuse()
        try:
            pid = p.alloc()
            p.page(pid)
            p.free(pid)
        finally:
            p._lock = real
        sub = SubPageAllocator(p, 512)
        keep = sub.alloc()  # its page is held from here on
        real, p._lock = p._lock, Refuse()
        try:
            sub.free(sub.alloc())
        finally:
            p._lock = real
        sub.free(keep)
        sub.detach()


CLOSE_RACE = textwrap.dedent(
    """
    import os, sys, threading, time
    from mappedpages import Pager, SubPageAllocator, MappedPageError
    path = sys.argv[1]
    bad = []
    for rnd in range(20):
        p = Pager.create(os.path.join(path, f"r{rnd}.mpp"), durability="none")
        sub = SubPageAllocator(p, 256)
        start = threading.Barrier(5)

        def hammer(kind):
            start.wait()
            try:
                for _ in range(100000):
                    if kind == 0:
                        p.free(p.alloc())
                    elif kind == 1:
                        p.alloc()
                    elif kind == 2:
                        p.page(3)
                    else:
                        sub.free(sub.alloc())
            except ValueError as e:
                if "closed" not in str(e) and "detached" not in str(e):
                    bad.append(repr(e))
            except (BufferError, MappedPageError) as e:
                # BufferError: a view of page 3 was alive at the close.
                if not isinstance(e, BufferError):
                    bad.append(repr(e))
            except BaseException as e:
                bad.append(repr(e))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        start.wait()
        time.sleep(0.002 * (rnd % 5))
        for _ in range(1000):
            try:
                p.close()
                break
            except BufferError:
                time.sleep(0.001)  # a page() view in flight; try again
        for t in threads:
            t.join()
        assert p.closed
    assert not bad, bad
    print("done")
    """
)


def test_close_while_other_threads_call(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CLOSE_RACE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    detail = f"returncode={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode >= 0, "killed by a signal\n" + detail
    assert proc.returncode == 0, detail
    assert proc.stdout.split() == ["done"], detail


def test_fork_while_another_thread_holds_the_lock(tmp_path: Path) -> None:
    p = Pager.create(tmp_path / "a.mpp")
    held = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with p.lock():
            held.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    try:

        def child() -> str:
            # The parent's holder thread does not exist here; its hold must not
            # make the child wait.
            try:
                p.alloc()
            except Unavailable as exc:
                message = str(exc)
            with p._lock:  # a fresh mutex: forget initialised it again
                pass
            p.close()
            return message

        out, sig = in_fork(child, timeout=20)
        assert sig == 0
        assert "fork" in out["ok"]
    finally:
        done.set()
        t.join(10)
    assert p.alloc() >= 3
    p.close()


def test_fork_child_refuses_every_call_without_locking(tmp_path: Path) -> None:
    with Pager.create(tmp_path / "a.mpp") as p:

        def child() -> int:
            out = ffi.new("uint64_t *")
            return int(lib.mp_pager_alloc(p._handle, 0, out))

        out, sig = in_fork(child)
        assert sig == 0 and out["ok"] == lib.MP_EUNAVAILABLE
        assert os.path.exists(tmp_path / "a.mpp")
