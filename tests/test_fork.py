"""The fork rule: a child may not use the Pager its parent opened.

After fork() every call on an inherited Pager raises Unavailable (saying why)
instead of writing behind the parent's back; close() succeeds. Views the child
inherited keep reading the file, read-only (tests/test_procs_trust.py). The
child may open its own ReadOnlyPager; the parent carries on as if nothing
happened.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest
from support.format_v02 import check_valid_v02
from support.pagers import force_close, in_fork

import mappedpages
from mappedpages import Locked, Pager, ReadOnlyPager, Unavailable

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn, timeout: float = 20.0):
    """Run fn() in a forked child; return what it returned (JSON), or raise with its traceback."""
    out, sig = in_fork(fn, timeout)
    assert "ok" in out, f"the forked child died without a result (signal {sig})"
    return out["ok"]


def attempt(call):
    """(exception class name, message) of call(), or ('ok', repr(result))."""
    try:
        result = call()
        if hasattr(result, "__next__"):
            result = list(result)
        return ("ok", repr(result))
    except BaseException as e:
        return (type(e).__name__, str(e))


def calls_on(pager: Pager, pid: int, prot: int):
    return {
        "alloc": lambda: pager.alloc(),
        "alloc_zero": lambda: pager.alloc(zero=True),
        "free": lambda: pager.free(pid),
        "alloc_bulk": lambda: pager.alloc_bulk(3),
        "free_bulk": lambda: pager.free_bulk([pid]),
        "sync": lambda: pager.sync(),
        "page": lambda: pager.page(pid),
        "page_count": lambda: pager.page_count,
        "free_page_count": lambda: pager.free_page_count,
        "allocated_pages": lambda: pager.allocated_pages(),
        "allocated_protected_pages": lambda: pager.allocated_protected_pages(),
        "alloc_protected": lambda: pager.alloc_protected(),
        "alloc_protected_bulk": lambda: pager.alloc_protected_bulk(2),
        "free_protected": lambda: pager.free_protected(prot),
        "free_protected_bulk": lambda: pager.free_protected_bulk([prot]),
        "write_protected": lambda: pager.write_protected(prot),
        "protected_page": lambda: pager.protected_page(prot),
        "verify_protected": lambda: pager.verify_protected(prot),
        "set_root": lambda: pager.set_root(0, pid),
        "set_root_zero": lambda: pager.set_root(1, 0),
        "roots": lambda: pager.roots,
    }


@pytest.fixture
def parent(tmp_path):
    path = tmp_path / "fork.mpp"
    p = Pager.create(path)
    ids = p.alloc_bulk(4)
    for pid in ids:
        p.page(pid)[:8] = pid.to_bytes(8, "little")
    prot = p.alloc_protected()
    with p.write_protected(prot) as w:
        w.page[:6] = b"parent"
    p.sync()
    yield p, ids, prot
    force_close(p)


def parent_state(p: Pager):
    return (
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
        list(p.allocated_protected_pages()),
    )


def test_every_call_in_a_forked_child_raises_unavailable(parent):
    p, ids, prot = parent
    before = parent_state(p)
    on_disk = Path(p.path).read_bytes()

    def child():
        return {name: attempt(call) for name, call in calls_on(p, ids[0], prot).items()}

    results = in_child(child)
    wrong = {name: r for name, r in results.items() if r[0] != "Unavailable"}
    assert wrong == {}, f"calls in a fork child that did not raise Unavailable: {wrong}"
    for name, (_, message) in results.items():
        assert "fork" in message.lower(), f"{name}: message does not say why: {message!r}"
    # Nothing happened behind the parent's back.
    assert parent_state(p) == before
    assert Path(p.path).read_bytes() == on_disk
    a = p.alloc()
    assert a not in ids
    p.free(a)
    check_valid_v02(p.path, allocated=ids)


def test_unavailable_is_a_mapped_page_error(parent):
    p, ids, _ = parent

    def child():
        try:
            p.alloc()
        except mappedpages.MappedPageError as e:
            return [type(e).__name__, isinstance(e, Unavailable)]
        return ["no error", False]

    assert in_child(child) == ["Unavailable", True]


def test_child_opens_its_own_reader(parent):
    p, ids, prot = parent
    more = p.alloc_bulk(100)  # growth the child must see through its own reader
    for pid in more:
        p.page(pid)[:8] = pid.to_bytes(8, "little")
    p.sync()

    def child():
        with ReadOnlyPager.open(p.path) as r:
            listed = list(r.allocated_pages())
            stamps = {str(i): int.from_bytes(bytes(r.page(i)[:8]), "little") for i in listed}
            return {
                "page_count": r.page_count,
                "allocated": listed,
                "stamps": stamps,
                "protected": list(r.allocated_protected_pages()),
                "content": bytes(r.protected_page(prot)[:6]).decode(),
            }

    got = in_child(child)
    assert got["page_count"] == p.page_count
    assert got["allocated"] == ids + more
    assert got["stamps"] == {str(i): i for i in ids + more}
    assert got["protected"] == [prot]
    assert got["content"] == "parent"


def test_child_cannot_open_a_second_writer(parent):
    p, _, _ = parent

    def child():
        return attempt(lambda: Pager.open(p.path))[0]

    assert in_child(child) == "Locked"


def test_child_closing_its_copy_leaves_the_parent_alone(parent):
    p, ids, prot = parent
    before = parent_state(p)

    def child():
        outcome = attempt(p.close)
        import gc

        gc.collect()
        return outcome[0]

    outcome = in_child(child)
    assert outcome == "ok", "close() in a fork child must always succeed"
    assert parent_state(p) == before
    a = p.alloc()
    with p.write_protected(prot) as w:
        w.page[:6] = b"after!"
    p.sync()
    assert int.from_bytes(bytes(p.page(ids[0])[:8]), "little") == ids[0]
    # Still the writer: nobody else may open.
    with pytest.raises(Locked):
        Pager.open(p.path)
    p.free(a)


def test_child_dropping_the_pager_leaves_the_parent_alone(tmp_path):
    path = tmp_path / "drop.mpp"
    holder = {"p": Pager.create(path)}
    pid0 = holder["p"].alloc()

    def child():
        import gc

        del holder["p"]
        gc.collect()
        return "dropped"

    assert in_child(child) == "dropped"
    p = holder["p"]
    try:
        assert list(p.allocated_pages()) == [pid0]
        p.alloc()
    finally:
        p.close()
    with Pager.open(path) as again:
        assert len(list(again.allocated_pages())) == 2


def test_fork_while_another_thread_holds_the_pager_lock(parent):
    """The child must get Unavailable, not hang on a lock a parent thread held at fork time."""
    p, _, _ = parent
    held = threading.Event()
    release = threading.Event()

    def holder():
        with p.lock():
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    try:

        def child():
            def on_alarm(*_):
                raise TimeoutError("p.alloc() hung in the fork child")

            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(2)
            try:
                return attempt(p.alloc)
            finally:
                signal.alarm(0)

        result = in_child(child)
    finally:
        release.set()
        t.join()
    assert result[0] == "Unavailable", (
        "a fork child whose parent had another thread inside pager.lock() at fork time "
        f"got {result} from p.alloc() instead of Unavailable"
    )


def test_live_fork_child_does_not_keep_the_writer_lock(tmp_path):
    """Once the parent closes its writer, another writer can open, even while a fork child lives.

    The child signals once it runs (the window between fork() and the child's
    first instruction is not covered: until then it holds what it inherited).
    """
    path = tmp_path / "inherit.mpp"
    p = Pager.create(path)
    view = p.page(3)  # a view the child inherits too
    go_r, go_w = os.pipe()
    up_r, up_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(go_w)
            os.close(up_r)
            os.write(up_w, b"u")  # running
            os.read(go_r, 1)  # wait until the parent is done
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(up_w)
    try:
        assert os.read(up_r, 1) == b"u"
        del view
        p.close()
        try:
            again = Pager.open(path)
        except Locked:
            again = None
        assert again is not None, (
            "the parent closed its Pager, yet Pager.open raised Locked while a forked "
            "child (that never touched the pager) is alive: the child's inherited "
            "descriptor (or mapping) keeps the flock"
        )
        again.alloc()
        again.close()
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(up_r)
        os.waitpid(child, 0)
    with Pager.open(path) as last:
        assert list(last.allocated_pages()) == [3]


# --------------------------------------------------------------------------
# multiprocessing with the 'fork' start method
# --------------------------------------------------------------------------


def _mp_child(pager, path, ids, queue):
    results = {
        name: attempt(call)
        for name, call in calls_on(pager, ids[0], 0).items()
        if name
        in (
            "alloc",
            "free",
            "alloc_bulk",
            "free_bulk",
            "sync",
            "page",
            "page_count",
            "allocated_pages",
        )
    }
    with ReadOnlyPager.open(path) as r:
        results["reader"] = ("ok", list(r.allocated_pages()))
    results["second_writer"] = attempt(lambda: Pager.open(path))
    queue.put(results)


def _mp_child_exit_code(pager):
    try:
        pager.alloc()
    except Unavailable:
        raise SystemExit(7) from None
    raise SystemExit(0)


def test_multiprocessing_fork_child_gets_unavailable(parent):
    p, ids, _ = parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_mp_child, args=(p, p.path, ids, queue))
    proc.start()
    try:
        results = queue.get(timeout=30)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    for name in (
        "alloc",
        "free",
        "alloc_bulk",
        "free_bulk",
        "sync",
        "page",
        "page_count",
        "allocated_pages",
    ):
        assert results[name][0] == "Unavailable", (name, results[name])
        assert "fork" in results[name][1].lower()
    assert results["reader"] == ("ok", ids)
    assert results["second_writer"][0] == "Locked"
    before = parent_state(p)
    a = p.alloc()
    assert parent_state(p)[2] == before[2] + [a]


def test_multiprocessing_fork_exit_code(parent):
    p, _, _ = parent
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_mp_child_exit_code, args=(p,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 7, f"child exit code {proc.exitcode}: alloc() did not raise Unavailable"


_POOL_PAGER: list = []


def _pool_task(_):
    return attempt(_POOL_PAGER[0].alloc)[0]


def test_multiprocessing_pool_workers(parent):
    p, ids, _ = parent
    _POOL_PAGER[:] = [p]
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            names = pool.map(_pool_task, range(4))
    finally:
        _POOL_PAGER.clear()
    assert names == ["Unavailable"] * 4
    assert list(p.allocated_pages()) == ids
