"""What other processes may trust: fork children, read-only mappings, reader refreshes.

* A fork child's inherited views keep showing the file (what the parent wrote
  before fork and what it writes after), read-only, while the child lets go of
  the writer lock; ``close()`` in a child always succeeds.
* A ReadOnlyPager maps its file without write permission, and every buffer it
  exports is read-only: a write through a view or ``view.obj`` is a TypeError.
* ``refresh()`` gives a state the writer committed: it looks again, without a
  warning, when it meets a commit in progress or one made while it read.

Everything that could kill the interpreter runs in a child and is checked
for signals.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from array import array
from pathlib import Path

import pytest
from support.iohooks import IoHooks, create_pager
from support.pagers import force_close, in_fork

from mappedpages import Locked, Pager, ReadOnlyPager, RecoveryWarning, Unavailable

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

LINUX = sys.platform.startswith("linux")
SANITIZED = bool(os.environ.get("MAPPEDPAGES_SANITIZED"))


def in_child(fn, timeout: float = 30.0):
    """Run fn() in a forked child; return (its JSON result, the signal that killed it or 0)."""
    out, sig = in_fork(fn, timeout)
    return out.get("ok"), sig


def mapping_perms(path: Path) -> list[str]:
    """Permissions of every mapping of path's file in this process (/proc/self/maps).

    Mappings are matched by device and inode, not by name: a file made by
    Pager.create is mapped under the temporary name it was built under.
    """
    st = os.stat(path)
    perms = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(None, 5)
            if len(fields) < 5 or fields[4] == "0":
                continue
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            if int(fields[4]) == st.st_ino and os.makedev(major, minor) == st.st_dev:
                perms.append(fields[1])
    return perms


def fds_on(path: Path) -> list[int]:
    """Descriptors of this process open on path's file (matched by device and inode)."""
    st = os.stat(path)
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fst = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (fst.st_ino, fst.st_dev) == (st.st_ino, st.st_dev):
            out.append(int(name))
    return out


def stamp(view, value: int) -> None:
    view[:8] = value.to_bytes(8, "little")


def read_stamp(view) -> int:
    return int.from_bytes(bytes(view[:8]), "little")


@pytest.fixture
def writer(tmp_path):
    path = tmp_path / "procs.mpp"
    p = Pager.create(path)
    ids = p.alloc_bulk(4)
    for i, pid in enumerate(ids):
        p.page(pid)[:] = bytes([i + 1]) * p.page_size
    p.sync()
    yield p, ids
    force_close(p)


# --------------------------------------------------------------------------
# Fork children keep reading the file
# --------------------------------------------------------------------------

_POOL_ARRAYS: list = []


def _pool_sum(k):
    return int(_POOL_ARRAYS[k].sum())


def test_fork_pool_numpy_sums_are_the_real_sums(writer):
    """The issue's case: a fork pool summing NumPy arrays over pages read [0, 0, 0, 0]."""
    np = pytest.importorskip("numpy")
    p, ids = writer
    _POOL_ARRAYS[:] = [np.frombuffer(p.page(pid), dtype=np.uint64) for pid in ids]
    try:
        expected = [int(a.sum()) for a in _POOL_ARRAYS]
        assert all(expected)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            assert pool.map(_pool_sum, range(4)) == expected
            # Written after the workers forked: a shared mapping shows it too.
            _POOL_ARRAYS[2][:] = 5
            expected[2] = 5 * len(_POOL_ARRAYS[2])
            assert pool.map(_pool_sum, range(4)) == expected
    finally:
        _POOL_ARRAYS.clear()


def test_fork_child_views_show_writes_before_and_after_fork(writer):
    p, ids = writer
    views = [p.page(pid) for pid in ids]
    run = p.view(ids[0], 4)
    ps = p.page_size
    stamp(views[0], 111)
    go_r, go_w = os.pipe()

    def child():
        os.close(go_w)
        before = [read_stamp(v) for v in views]
        os.read(go_r, 1)  # the parent has written again
        after = [read_stamp(v) for v in views]
        return {"before": before, "after": after, "run": read_stamp(run[3 * ps :])}

    def parent_writes():
        time.sleep(0.2)
        stamp(views[1], 222)
        p.page(ids[3])[:8] = (333).to_bytes(8, "little")
        os.write(go_w, b"x")

    t = threading.Thread(target=parent_writes)
    t.start()
    try:
        out, sig = in_child(child)
    finally:
        t.join()
        os.close(go_r)
        os.close(go_w)
    assert sig == 0
    b2 = int.from_bytes(bytes([2]) * 8, "little")
    assert out["before"][:2] == [111, b2], "the child's inherited views do not show the file"
    assert out["after"][1] == 222 and out["after"][3] == 333, (
        "the child's inherited views do not follow what the parent writes after fork"
    )
    assert out["run"] == 333


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_fork_child_maps_the_file_read_only_and_holds_no_descriptor(writer):
    p, ids = writer
    view = p.page(ids[0])

    def child():
        return {"perms": mapping_perms(Path(p.path)), "fds": fds_on(Path(p.path)), "byte": view[0]}

    out, sig = in_child(child)
    assert sig == 0
    assert out["byte"] == 1
    assert out["perms"], "the child does not map the file at all (its views read zeros)"
    assert all(perm == "r--s" for perm in out["perms"]), out["perms"]
    assert out["fds"] == [], "the child still holds a descriptor on the writer's file"
    assert any("w" in perm for perm in mapping_perms(Path(p.path))), "the parent lost its mapping"
    p.page(ids[0])[0] = 9  # the parent still writes


def test_live_fork_child_with_views_lets_another_writer_in(tmp_path):
    """The parent closes; another writer opens while the child lives, holding views.

    The child then sees what that new writer writes: its views are a shared
    mapping of the same file, not of the parent's locked file description.
    """
    path = tmp_path / "handover.mpp"
    p = Pager.create(path)
    pid = p.alloc()
    stamp(p.page(pid), 1)
    p.sync()
    view = p.page(pid)
    go_r, go_w = os.pipe()
    up_r, up_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 3
        try:
            os.close(go_w)
            os.close(up_r)
            first = read_stamp(view)
            os.write(up_w, b"u")
            os.read(go_r, 1)  # the other writer has written
            status = 0 if (first, read_stamp(view)) == (1, 2) else 4
        finally:
            os._exit(status)
    os.close(go_r)
    os.close(up_w)
    try:
        assert os.read(up_r, 1) == b"u"
        del view
        p.close()
        try:
            other = Pager.open(path)
        except Locked:
            other = None
        assert other is not None, "a fork child holding views keeps the parent's writer lock"
        stamp(other.page(pid), 2)
        other.sync()
        other.close()
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(up_r)
        _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status), f"the child died of signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0, "the child's view did not show the new writer's data"


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_fork_child_lets_go_of_a_dropped_pager_whose_views_live(tmp_path):
    """The Pager object is gone, its views keep the handle: the child must let go of it too."""
    import gc

    path = tmp_path / "dropped.mpp"
    p = Pager.create(path)
    pid = p.alloc()
    held = [p.page(pid)]
    stamp(held[0], 77)
    del p
    gc.collect()

    def child():
        return {"stamp": read_stamp(held[0]), "perms": mapping_perms(path), "fds": fds_on(path)}

    out, sig = in_child(child)
    assert sig == 0
    assert out["stamp"] == 77
    assert out["perms"] and all(x == "r--s" for x in out["perms"]), out["perms"]
    assert out["fds"] == [], "the child holds the dropped writer's descriptor (and its lock)"
    stamp(held[0], 78)  # the parent still writes through it
    held.clear()
    gc.collect()
    with Pager.open(path) as again:
        assert read_stamp(again.page(pid)) == 78


@pytest.mark.skipif(not LINUX, reason="reopens the file through /proc/self/fd")
def test_fork_child_views_survive_a_deleted_file(writer):
    p, ids = writer
    view = p.page(ids[1])
    os.unlink(p.path)

    def child():
        return bytes(view[:4]).hex()

    out, sig = in_child(child)
    assert sig == 0, f"the child died of signal {sig}"
    assert out == "02020202"


@pytest.mark.skipif(not LINUX, reason="Linux permission check on /proc/self/fd")
def test_fork_child_views_read_zeros_when_the_file_cannot_open_again():
    """The documented fallback: no read permission, so the views become zero memory.

    Never unmapped memory, never a signal. Runs in a child interpreter, as an
    unprivileged user when the tests run as root (root may open anything).
    """
    # Not under tmp_path: pytest keeps its folders private to the user.
    folder = Path(tempfile.mkdtemp(prefix="mappedpages-procs-"))
    os.chmod(folder, 0o777)
    code = textwrap.dedent(
        f"""
        import os
        import mappedpages  # imported first: the unprivileged user may not read it
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        path = {str(folder / "locked.mpp")!r}
        p = mappedpages.Pager.create(path)
        pid = p.alloc()
        view = p.page(pid)
        view[:4] = b"data"
        os.chmod(path, 0)
        child = os.fork()
        if child == 0:
            os._exit(7 if bytes(view[:4]) == bytes(4) else 8)
        _, status = os.waitpid(child, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status), os.WEXITSTATUS(status))
        print(bytes(view[:4]).decode())
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.split() == ["False", "7", "data"], proc.stdout


def test_fork_child_write_through_inherited_view_never_reaches_the_file(writer):
    """Read-only from fork on: a store through an inherited view faults in the child.

    The fault is the child's (documented); the file and the parent are untouched.
    """
    p, ids = writer
    view = p.page(ids[0])

    def child():
        import faulthandler

        faulthandler.disable()  # the fault is expected: no traceback dump
        view[0] = 0xEE
        return "wrote"

    out, sig = in_child(child)
    # Under the sanitizer build AddressSanitizer reports the fault and aborts.
    faults = (signal.SIGSEGV, signal.SIGABRT) if SANITIZED else (signal.SIGSEGV,)
    assert out is None and sig in faults, (out, sig)
    assert view[0] == 1
    p.sync()
    with open(p.path, "rb") as fh:
        fh.seek(ids[0] * p.page_size)
        assert fh.read(1) == b"\x01"


def test_fork_child_pager_calls_stay_unavailable(writer):
    p, ids = writer

    def child():
        try:
            p.alloc()
        except Unavailable as e:
            return str(e)
        return "no error"

    out, sig = in_child(child)
    assert sig == 0 and "fork" in out


# --------------------------------------------------------------------------
# close() in a fork child always succeeds
# --------------------------------------------------------------------------


def test_fork_child_closes_a_pager_inside_a_parent_transaction(writer):
    p, ids = writer
    prot = p.alloc_protected()
    inside = threading.Event()
    leave = threading.Event()

    def in_transaction():
        with p.transaction():
            with p.write_protected(prot) as w:
                w.page[:4] = b"txn!"
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=in_transaction)
    t.start()
    assert inside.wait(30)
    try:

        def child():
            p.close()
            p.close()  # idempotent
            return p.closed

        out, sig = in_child(child)
    finally:
        leave.set()
        t.join()
    assert (out, sig) == (True, 0)
    assert bytes(p.protected_page(prot)[:4]) == b"txn!"
    p.alloc()


def test_fork_child_close_with_inherited_views_succeeds_and_views_stay_readable(writer):
    p, ids = writer
    view = p.page(ids[2])

    def child():
        p.close()
        import gc

        gc.collect()
        return [p.closed, view[0], view[-1]]

    out, sig = in_child(child)
    assert (out, sig) == ([True, 3, 3], 0)
    assert not p.closed


# --------------------------------------------------------------------------
# A reader's mapping and buffers are read-only
# --------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_reader_maps_read_only_shared_also_after_growth(writer):
    p, ids = writer
    with ReadOnlyPager.open(p.path) as r:
        assert mapping_perms(Path(p.path)).count("rw-s") == 1  # the writer's
        reader_perms = [x for x in mapping_perms(Path(p.path)) if x != "rw-s"]
        assert reader_perms and all(x == "r--s" for x in reader_perms), reader_perms
        p.alloc_bulk(200)  # grows the file
        r.refresh()
        assert r.page_count == p.page_count
        bytes(r.page(p.page_count - 1))
        perms = mapping_perms(Path(p.path))
        assert perms.count("rw-s") == 1
        assert all(x in ("rw-s", "r--s") for x in perms), perms
        assert not any(x.endswith("p") for x in perms), "a private (copy-on-write) mapping"


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_moved_ranges_stay_read_only_for_readers_and_fork_children(tmp_path):
    """Past the first reserved range (256 GiB, sparse): a reader's new range is r--s,
    and a fork child maps the writer's old and new ranges again, read-only."""
    path = tmp_path / "far.mpp"
    big = 65536
    w = Pager.create(path, big, preallocate=False, grow_step=1 << 40, durability="none")
    first = w.alloc()
    old = w.page(first)
    stamp(old, 5)
    r = ReadOnlyPager.open(path)
    n = (256 << 30) // big + 10
    ids = array("Q", bytes(8 * n))
    w.alloc_bulk(n, out=ids)
    far = ids[-1]
    new = w.page(far)
    stamp(new, 6)
    w.sync()  # "none": the state reaches the file at sync
    r.refresh()
    assert bytes(r.page(far)[:8]) == (6).to_bytes(8, "little")
    perms = mapping_perms(path)
    assert all(x in ("rw-s", "r--s") for x in perms), perms
    assert perms.count("r--s") >= 2  # the reader's core mapping and its view mapping

    def child():
        return [read_stamp(old), read_stamp(new), mapping_perms(path)]

    try:
        out, sig = in_child(child)
        assert sig == 0
        assert out[:2] == [5, 6], "a view in the old or the new range lost the file"
        assert out[2] and all(x == "r--s" for x in out[2]), out[2]
    finally:
        old.release()
        new.release()
        r.close()
        w.close()


def test_reader_buffers_are_read_only_and_writes_raise_type_error(writer):
    p, ids = writer
    prot = p.alloc_protected()
    with p.write_protected(prot) as w:
        w.page[:4] = b"prot"
    code = textwrap.dedent(
        f"""
        import mappedpages
        r = mappedpages.ReadOnlyPager.open({p.path!r})
        views = [r.page({ids[0]}), r.view({ids[0]}, 2), r.protected_page({prot})]
        out = []
        for v in views:
            assert v.readonly
            for attempt in (
                lambda: v.__setitem__(0, 7),
                lambda: v.obj.__setitem__(0, 7),
                lambda: memoryview(v.obj).__setitem__(0, 7),
                lambda: memoryview(v.obj)[{ids[0]} * {p.page_size}:].__setitem__(0, 7),
            ):
                try:
                    attempt()
                    out.append("wrote")
                except TypeError:
                    out.append("TypeError")
        print(",".join(out), flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        f"a write through a reader's buffer killed the process (returncode "
        f"{proc.returncode}): {proc.stderr[-1500:]}"
    )
    assert proc.stdout.strip().split(",") == ["TypeError"] * 12
    assert bytes(p.page(ids[0])[:1]) == b"\x01"
    assert bytes(p.protected_page(prot)[:4]) == b"prot"


def test_reader_view_obj_keeps_the_close_rules(writer):
    p, ids = writer
    r = ReadOnlyPager.open(p.path)
    v = r.page(ids[0])
    obj = v.obj
    del v
    with pytest.raises(BufferError):
        r.close()
    del obj
    r.close()
    assert r.closed


def test_reader_numpy_arrays_are_not_writeable(writer):
    np = pytest.importorskip("numpy")
    p, ids = writer
    with ReadOnlyPager.open(p.path) as r:
        a = np.frombuffer(r.page(ids[1]), dtype=np.uint8)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = 1
        assert int(a.sum()) == 2 * p.page_size
        del a


# --------------------------------------------------------------------------
# refresh(): a state the writer committed, and no warning for work in progress
# --------------------------------------------------------------------------


def test_refresh_during_a_directory_append_looks_again_instead_of_warning(tmp_path):
    """The reader refreshes exactly between the append's page-0 flush and its bitmap commit.

    Page size 4096 (the OS page), so that the flush of page 0 is its own barrier.
    """
    path = tmp_path / "append.mpp"
    hooks = IoHooks()
    w = create_pager(path, page_size=4096, hooks=hooks)
    first = w.alloc_protected()
    epp = (4096 - 12) // 30
    for _ in range(epp - 1):
        w.alloc_protected()
    r = ReadOnlyPager.open(path)
    r.refresh()
    assert len(list(r.allocated_protected_pages())) == epp
    errors: list[BaseException] = []
    seen: list[int] = []
    armed = {"on": False, "threads": []}

    def refresh_now():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RecoveryWarning)
                r.refresh()
            seen.append(len(list(r.allocated_protected_pages())))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def on_barrier(kind, offset, length):
        # The first flush of page 0 after arming: the new block is in page 0,
        # the bitmap commit that counts its pages comes after this returns.
        if armed["on"] and offset == 0:
            armed["on"] = False
            t = threading.Thread(target=refresh_now)
            armed["threads"].append(t)
            t.start()
            time.sleep(0.02)

    hooks.set_barrier_callback(on_barrier)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        armed["on"] = True
        new = w.alloc_protected()  # appends block 1
        for t in armed["threads"]:
            t.join(30)
    hooks.check_errors()
    assert new // epp == 1 and first == 0
    assert armed["threads"], "the append never flushed page 0"
    assert not errors, f"refresh beside a healthy writer's append: {errors[0]!r}"
    assert seen == [epp + 1], seen
    r.close()
    w.close()


def test_a_crashed_append_is_still_reported_by_a_reader(tmp_path):
    """With no writer to finish it, the reader looks for a moment, then reports the leftover."""
    path = tmp_path / "crashed.mpp"
    epp = (4096 - 12) // 30

    def child():
        hooks = IoHooks()
        w = create_pager(path, page_size=4096, hooks=hooks)
        for _ in range(epp):
            w.alloc_protected()
        armed = {"on": True}

        def die_after_page0(kind, offset, length):
            if armed["on"] and offset == 0:
                os._exit(0)  # a crash between the append's page 0 and its bitmap commit

        hooks.set_barrier_callback(die_after_page0)
        w.alloc_protected()
        return "no crash"

    out, sig = in_child(child)
    assert (out, sig) == (None, 0)
    start = time.monotonic()
    with pytest.warns(RecoveryWarning, match="unfinished protected-page directory block"):
        r = ReadOnlyPager.open(path)
    waited = time.monotonic() - start
    assert len(list(r.allocated_protected_pages())) == epp
    r.close()
    assert waited < 5, f"a reader of a crashed file waited {waited:.2f} s"
    with pytest.warns(RecoveryWarning, match="unfinished protected-page directory block"):
        Pager.open(path).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        ReadOnlyPager.open(path).close()  # repaired by the writer


WRITER = textwrap.dedent(
    """
    import sys, time
    import mappedpages
    path, group, seconds = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], float(sys.argv[3])
    p = mappedpages.Pager.open(path)
    regular = list(p.allocated_pages())
    end = time.monotonic() + seconds
    counter = 0
    while time.monotonic() < end:
        counter += 1
        with p.transaction():
            for pid in group:
                with p.write_protected(pid) as w:
                    w.page[:8] = counter.to_bytes(8, "little")
            # The bitmap moves in the same commit: one regular page out, one in.
            p.free(regular.pop(0))
            regular.append(p.alloc())
        if counter % 3 == 0:
            extra = p.alloc_protected()  # a new directory block now and then
            with p.write_protected(extra) as w:
                w.page[:8] = counter.to_bytes(8, "little")
        if counter % 7 == 0:
            gone = p.alloc_protected()
            p.free_protected(gone)
    p.close()
    print(counter)
    """
)


@pytest.mark.parametrize(
    ("page_size", "regular"), [(1024, 8), (4096, 8), (1024, 8000)], ids=["1k", "4k", "extended"]
)
def test_refresh_beside_a_busy_writer_only_sees_committed_states(tmp_path, page_size, regular):
    """Stress: every refreshed state is one the writer committed, with no warning.

    The writer rewrites a group of protected pages spread over several directory
    blocks in one transaction per round (with an alloc and a free), and appends
    directory blocks. After each refresh the reader reads every group page and
    checks it against its directory entry: when all of them verify, they come
    from one transaction (one counter), never older than a previous refresh.
    """
    path = tmp_path / f"busy{page_size}.mpp"
    epp = (page_size - 12) // 30
    with Pager.create(path, page_size=page_size) as p:
        pids = p.alloc_protected_bulk(2 * epp + 1)
        group = [pids[0], pids[epp // 2], pids[epp], pids[2 * epp]]
        p.alloc_bulk(regular)  # 8000 pages of 1 KiB: past v0.2, the extended layout
        assert p.format_version == ("0.3" if regular > 1000 else "0.2")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), ",".join(map(str, group)), "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    refreshes = verified = 0
    last = 0
    r = ReadOnlyPager.open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RecoveryWarning)
            while proc.poll() is None:
                r.refresh()
                refreshes += 1
                live = set(r.allocated_protected_pages())
                assert set(group) <= live
                assert len(list(r.allocated_pages())) == regular
                values = [read_stamp(r.protected_page(pid)) for pid in group]
                if all(r.verify_protected(pid) for pid in group):
                    verified += 1
                    assert len(set(values)) == 1, (
                        f"one transaction wrote {group}, yet the reader's state mixes "
                        f"counters {values}"
                    )
                    assert values[0] >= last, "the reader went back in time"
                    last = values[0]
    finally:
        r.close()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert int(out) > 10, "the writer made too little progress to test anything"
    assert refreshes > 10 and verified > 0, (refreshes, verified)
    with ReadOnlyPager.open(path) as final:
        assert [read_stamp(final.protected_page(pid)) for pid in group] == [int(out)] * 4
