"""Wrong call sequences run in a child interpreter: none may kill it.

Each case is a script run with ``python -c``. The child must exit normally
(return code 0, not a signal) and print the marker ``done``; a segfault, an
abort or a hang fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

PRELUDE = textwrap.dedent(
    """
    import gc, os, random, struct, sys, threading, warnings, zlib
    import mappedpages
    from mappedpages import Pager, MappedPageError
    warnings.simplefilter("ignore")
    TMP = os.environ["MP_CHILD_TMP"]  # the parent's, removed when the child ends
    def fresh(name="f.mpp", ps=4096):
        return Pager.create(os.path.join(TMP, name), page_size=ps)
    def attempt(fn, *allowed):
        allowed = allowed or (Exception,)
        try:
            return fn()
        except allowed as e:
            return e
    """
)


def run_child(body: str, timeout: float = 120):
    code = PRELUDE + textwrap.dedent(body) + "\nprint('done', flush=True)\n"
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)
    # The child's files go in a folder the parent removes, however the child
    # ends (some are meant to die by a signal, and would leave it behind).
    with tempfile.TemporaryDirectory(prefix="mp-child-") as tmp:
        env["MP_CHILD_TMP"] = tmp
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    detail = (
        f"returncode={proc.returncode}\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert proc.returncode >= 0, "child killed by a signal\n" + detail
    assert proc.returncode == 0, detail
    assert proc.stdout.splitlines()[-1:] == ["done"], detail
    return proc


def test_child_harness_detects_a_crash():
    """The harness itself must notice a child killed by a signal."""
    with pytest.raises(AssertionError, match="signal"):
        run_child("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")


def test_use_views_after_failed_close():
    run_child(
        """
        p = fresh()
        a = p.alloc()
        v = p.page(a)
        s = v[100:200]
        e = attempt(p.close, BufferError)
        assert isinstance(e, BufferError), e
        assert not p.closed
        v[:] = b"x" * 4096
        s[0] = 1
        p.alloc_bulk(50)          # growth while views are alive
        v[4095] = 2
        assert v[100] == 1 and v[4095] == 2
        e = attempt(p.close, BufferError)
        assert isinstance(e, BufferError)
        v.release()
        e = attempt(p.close, BufferError)   # the slice still holds it
        assert isinstance(e, BufferError)
        s[5] = 5
        del s
        gc.collect()
        p.close()
        assert p.closed
        """
    )


def test_calls_after_close():
    run_child(
        """
        p = fresh()
        ids = p.alloc_bulk(10)
        it = p.allocated_pages()
        p.close()
        for call in (
            lambda: p.page(3), lambda: p.page(0), lambda: p.page(2**70), lambda: p.alloc(),
            lambda: p.alloc(zero=True), lambda: p.alloc_bulk(5), lambda: p.free(3),
            lambda: p.free_bulk([3, 4]), lambda: p.sync(), lambda: list(p.allocated_pages()),
            lambda: p.page_count, lambda: p.free_page_count,
        ):
            e = attempt(call)
            assert isinstance(e, ValueError), (call, e)
        attempt(lambda: list(it))
        p.close()
        p.close()
        """
    )


def test_view_released_then_closed_then_touched():
    run_child(
        """
        p = fresh()
        v = p.page(3)
        v.release()
        p.close()
        for call in (lambda: v[0], lambda: v.__setitem__(0, 1), lambda: bytes(v),
                     lambda: v.tobytes()):
            e = attempt(call)
            assert isinstance(e, ValueError), e
        """
    )


def test_wrong_frees_and_huge_ids():
    run_child(
        """
        p = fresh()
        ids = p.alloc_bulk(20)
        p.free_bulk(ids[:5])
        huge = [0, 1, 2, -1, -2**63, 2**63, 2**64 - 1, 2**64, 2**70, 10**40, p.page_count]
        for pid in ids[:5] + huge:
            attempt(lambda: p.free(pid))
            attempt(lambda: p.page(pid))
            attempt(lambda: p.free_bulk([ids[6], pid]))
        for bad in ("3", 3.5, None, b"x", [], object(), 2**200, -2**200):
            attempt(lambda: p.free(bad))
            attempt(lambda: p.page(bad))
            attempt(lambda: p.alloc_bulk(bad))
            attempt(lambda: p.free_bulk([bad]))
            attempt(lambda: p.free_bulk(bad))
        for n in (-1, 2**32, 2**40, 2**63, 2**64, 2**64 + 1):
            attempt(lambda: p.alloc_bulk(n))
        assert list(p.allocated_pages()) == ids[5:]
        v = p.page(p.page_count - 1)
        v[-1] = 1
        e = attempt(lambda: v.__setitem__(4096, 1))
        assert isinstance(e, IndexError)
        v.release()
        p.close()
        q = Pager.open(os.path.join(TMP, "f.mpp"))
        assert list(q.allocated_pages()) == ids[5:]
        q.close()
        """
    )


def test_view_outlives_pager_object():
    run_child(
        """
        v = fresh().page(3)
        gc.collect()
        v[:] = b"\\x01" * 4096
        assert bytes(v) == b"\\x01" * 4096
        w = fresh("g.mpp", 1024).page(3)
        gc.collect()
        w[0] = 5
        del v
        gc.collect()
        w[1] = 6
        assert w[0] == 5 and w[1] == 6
        del w
        gc.collect()
        p = Pager.open(os.path.join(TMP, "f.mpp"))
        v = p.page(3)
        assert bytes(v) == b"\\x01" * 4096
        v.release()
        p.close()
        """
    )


def test_numpy_array_outlives_pager():
    pytest.importorskip("numpy")
    run_child(
        """
        import numpy as np
        p = fresh()
        arr = np.frombuffer(p.page(p.alloc()), dtype=np.uint8)
        assert isinstance(attempt(p.close, BufferError), BufferError)
        p.alloc_bulk(100)
        del p
        gc.collect()
        arr[:] = 3
        assert int(arr.sum()) == 3 * 4096
        del arr
        gc.collect()
        """
    )


def test_open_hostile_files():
    run_child(
        """
        ps = 1024
        path = os.path.join(TMP, "h.mpp")
        with Pager.create(path, page_size=ps) as p:
            p.alloc_bulk(30)
            p.free_bulk([4, 9, 17])
        good = open(path, "rb").read()

        def reseal(buf, idx):
            off = (1 + idx) * ps
            struct.pack_into("<I", buf, off + ps - 4, zlib.crc32(bytes(buf[off:off + ps - 4])))

        def try_open(data, label):
            with open(path, "wb") as fh:
                fh.write(data)
            for kw in ({}, {"page_size": ps}):
                try:
                    q = Pager.open(path, **kw)
                except (MappedPageError, OSError):
                    continue
                try:
                    n = q.page_count
                    for pid in list(q.allocated_pages())[:50]:
                        v = q.page(pid); v[0] = v[-1]; v.release()
                    attempt(q.alloc)
                    attempt(lambda: q.free(5))
                    attempt(lambda: q.alloc_bulk(3))
                    last = q.page(q.page_count - 1); last[-1] = 0; last.release()
                finally:
                    q.close()

        # huge and impossible totals, with the CRC made good
        for total in (0, 1, 3, 4, 31, 33, 64, 2**20, 2**32, 2**63, 2**64 - 1):
            for idx in ((0,), (1,), (0, 1)):
                buf = bytearray(good)
                for i in idx:
                    struct.pack_into("<Q", buf, (1 + i) * ps, total)
                    reseal(buf, i)
                try_open(bytes(buf), ("total", total, idx))
        # free counts and generations
        for fc in (0, 2**64 - 1, 2**63):
            buf = bytearray(good)
            for i in (0, 1):
                struct.pack_into("<Q", buf, (1 + i) * ps + 16, fc)
                reseal(buf, i)
            try_open(bytes(buf), ("free", fc))
        # truncations and extensions
        for size in (0, 1, 19, 20, 21, ps - 1, ps, 3 * ps, 4 * ps - 1, 4 * ps, 5 * ps + 7,
                     16 * ps, 31 * ps, 32 * ps - 1):
            try_open(good[:size], ("trunc", size))
        try_open(good + b"\\xee" * (3 * ps + 5), "extended")
        # page size fields
        for log2 in (0, 9, 10, 11, 12, 16, 20, 30, 31, 64, 2**32 - 1):
            buf = bytearray(good)
            struct.pack_into("<I", buf, 8, log2)
            try_open(bytes(buf), ("log2", log2))
        # directory index pointing anywhere
        for count, a, b, act in ((1, 3, 4, 0), (1, 2**63, 2**64 - 1, 1), (1, 0, 1, 0), (2, 5, 5, 1),
                                 (57, 7, 8, 0), (58, 10, 11, 1), (0xFFFFFFFF, 3, 3, 0)):
            buf = bytearray(good)
            struct.pack_into("<I", buf, 20, count)
            for k in range(min(count, 58)):
                struct.pack_into("<QQB", buf, 24 + 17 * k, a + k, b + k, act)
            struct.pack_into("<I", buf, ps - 4, zlib.crc32(bytes(buf[20:ps - 4])))
            try_open(bytes(buf), ("dir", count, a, b))
        # random garbage pages 0-2
        rng = random.Random(1234)
        for _ in range(150):
            buf = bytearray(good)
            for _ in range(rng.randint(1, 12)):
                off = rng.randrange(0, 3 * ps)
                buf[off] = rng.randrange(256)
            if rng.random() < 0.5:
                reseal(buf, rng.randrange(2))
            try_open(bytes(buf), "random")
        """,
        timeout=300,
    )


def test_evil_index_closes_pager():
    """An id whose __index__ closes the pager must not leave a view of unmapped memory."""
    run_child(
        """
        p = fresh()
        p.alloc_bulk(5)
        class Evil:
            def __index__(self):
                attempt(p.close)
                return 3
        r = attempt(lambda: p.page(Evil()))
        if isinstance(r, memoryview):
            r[0] = 1          # must point at live memory
            assert r[0] == 1
            r.release()
        attempt(lambda: p.free(Evil()))
        attempt(lambda: p.free_bulk([Evil(), 4]))
        attempt(lambda: p.alloc_bulk(Evil()))
        attempt(p.close)
        """
    )


def test_free_bulk_generator_closes_pager():
    run_child(
        """
        p = fresh()
        p.alloc_bulk(10)
        def gen():
            yield 3
            attempt(p.close)
            yield 4
        attempt(lambda: p.free_bulk(gen()))
        def gen2():
            yield 5
            attempt(p.alloc)
            attempt(lambda: p.free(6))
            yield 7
        attempt(lambda: p.free_bulk(gen2()))
        if not p.closed:
            v = p.page(3); v[0] = 1; v.release()
            p.close()
        """
    )


def test_threads_racing_close():
    run_child(
        """
        p = fresh(ps=1024)
        stop = threading.Event()
        errors = []
        def worker(seed):
            rng = random.Random(seed)
            mine = []
            while not stop.is_set():
                try:
                    op = rng.random()
                    if op < 0.4 or not mine:
                        mine.append(p.alloc())
                    elif op < 0.6:
                        p.free(mine.pop(rng.randrange(len(mine))))
                    elif op < 0.7:
                        mine.extend(p.alloc_bulk(rng.randint(0, 20)))
                    else:
                        v = p.page(rng.choice(mine))
                        v[0] = seed
                        v.release()
                except ValueError:
                    return
                except BufferError:
                    pass
                except MappedPageError as e:
                    errors.append(e)
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        import time
        time.sleep(0.5)
        for _ in range(200):
            try:
                p.close()
                break
            except BufferError:
                time.sleep(0.005)
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        attempt(p.close)
        assert p.closed
        assert not errors, errors
        q = Pager.open(os.path.join(TMP, "f.mpp"))
        n = len(list(q.allocated_pages()))
        # (the layout's own pages: 0-2, and four per chunk once the threads
        # grew the file past the v0.2 cap, as a fast machine does in 0.5 s)
        assert q.free_page_count == q.page_count - n - q._layout_pages_below(q.page_count)
        q.close()
        """,
        timeout=180,
    )


def test_reopen_while_open_elsewhere():
    """A second open of a file that is open for writing fails cleanly or works."""
    run_child(
        """
        p = fresh()
        p.alloc_bulk(3)
        r = attempt(lambda: Pager.open(os.path.join(TMP, "f.mpp")), MappedPageError, OSError)
        if isinstance(r, Pager):
            r.close()
        p.free(4)
        p.close()
        q = Pager.open(os.path.join(TMP, "f.mpp"))
        assert list(q.allocated_pages()) == [3, 5]
        q.close()
        """
    )


def test_interpreter_exit_with_open_pager_and_views():
    run_child(
        """
        p = fresh()
        views = [p.page(i) for i in p.alloc_bulk(30)]
        for v in views:
            v[:4] = b"exit"
        keep = (p, views)
        """
    )


def test_exit_after_failed_close():
    run_child(
        """
        p = fresh()
        v = p.page(3)
        attempt(p.close)
        s = v[1:]
        """
    )


def test_abandoned_writer_collected_in_one_cycle_with_its_pager():
    """The collector finalizes a cycle's objects in any order: when the pager's
    C state goes first, the writer's finalizer must not call the core with the
    freed handle (it hung or crashed the collecting thread)."""
    run_child(
        """
        for layout in ("0.2", "0.3"):
            for i in range(10):
                path = os.path.join(TMP, f"cycle-{layout}-{i}.mpp")
                p = Pager.create(path, layout=layout, durability="none")
                prot = p.alloc_protected()
                with p.write_protected(prot) as w:
                    w.page[:9] = b"committed"
                p.sync()
                w = p.write_protected(prot)
                w.page[:9] = b"abandoned"
                cycle = [p, w]
                cycle.append(cycle)
                del p, w, cycle
                gc.collect()
                with Pager.open(path) as again:
                    assert bytes(again.protected_page(prot)[:9]) == b"committed"
        """,
        timeout=60,
    )


def test_abandoned_writer_and_pager_collected_in_a_fork_child():
    """The same cycle left over in the parent, collected in a fork child."""
    run_child(
        """
        gc.disable()
        p = fresh("forked.mpp")
        prot = p.alloc_protected()
        w = p.write_protected(prot)
        cycle = [p, w]
        cycle.append(cycle)
        del p, w, cycle
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        gc.collect()
        """,
        timeout=60,
    )
