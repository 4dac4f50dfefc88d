"""Reader snapshots (issue 16): readers see one commit, and the writer never
reuses a page under them.

Multiprocess stress tests run a few seconds; MAPPEDPAGES_STRESS_SCALE (a
number, default 1) multiplies their work for longer runs.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mappedpages
from mappedpages import (
    MappedPageError,
    Pager,
    ReaderInfo,
    ReadersFull,
    ReadOnlyPager,
)

SCALE = float(os.environ.get("MAPPEDPAGES_STRESS_SCALE", "1"))


def stamp(view, value: int) -> None:
    view[:8] = struct.pack("<Q", value)


def read_stamp(view) -> int:
    return struct.unpack("<Q", bytes(view[:8]))[0]


# ------------------------------------------------------------- the basics


def test_refresh_returns_whether_the_commit_changed(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path) as w, ReadOnlyPager.open(path) as r:
        assert r.snapshot is True
        g0 = r.generation
        assert r.refresh() is False
        w.alloc()
        assert r.refresh() is True
        assert r.generation > g0
        assert r.generation == g0 + 1
        assert r.refresh() is False
        # A protected write is a commit too (in v0.2 it moves page 0 only).
        pid = w.alloc_protected()
        assert r.refresh() is True
        with w.write_protected(pid) as pw:
            pw.page[:3] = b"new"
        assert r.refresh() is True
        assert bytes(r.protected_page(pid)[:3]) == b"new"
        assert r.refresh() is False


def test_idle_refresh_is_microseconds_on_a_file_of_2_20_pages(tmp_path):
    path = tmp_path / "big.mpp"
    with Pager.create(path, page_size=1024, preallocate=False) as w:
        w.alloc_bulk((1 << 20) - 8)
        assert w.page_count >= 1 << 20
        with ReadOnlyPager.open(path) as r:
            assert r.page_count >= 1 << 20
            for _ in range(200):
                r.refresh()
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(2000):
                    r.refresh()
                samples.append((time.perf_counter() - t) / 2000)
            best = min(samples)
            assert best < 10e-6, f"an idle refresh took {best * 1e6:.1f} us"


def test_freed_pages_are_not_reused_while_a_reader_holds_them(tmp_path):
    path = tmp_path / "pin.mpp"
    with Pager.create(path, page_size=1024) as w:
        ids = w.alloc_bulk(20)
        for i in ids:
            stamp(w.page(i), 1000 + i)
        with ReadOnlyPager.open(path) as r:
            assert w.pinned_free_pages == 0
            w.free_bulk(ids[:10])
            for i in ids[10:15]:
                w.free(i)
            assert w.pinned_free_pages == 15
            fresh = w.alloc_bulk(40)
            fresh += [w.alloc() for _ in range(10)]
            assert not set(fresh) & set(ids[:15]), "a page of the reader's commit was reused"
            for i in fresh:
                stamp(w.page(i), 7)
            # The reader's commit is intact: its pages, counts and content.
            assert list(r.allocated_pages()) == ids
            for i in ids:
                assert read_stamp(r.page(i)) == 1000 + i
            # Moving on releases them: the lowest free page comes next.
            assert r.refresh() is True
            assert w.pinned_free_pages == 0
            assert w.alloc() == min(ids[:15])


def test_readers_lists_live_readers(tmp_path):
    path = tmp_path / "list.mpp"
    with Pager.create(path) as w:
        assert w.readers() == []
        a = ReadOnlyPager.open(path)
        w.alloc()
        b = ReadOnlyPager.open(path)
        c = ReadOnlyPager.open(path, snapshot=False)
        got = w.readers()
        assert [type(x) for x in got] == [ReaderInfo, ReaderInfo]
        assert [x.generation for x in got] == sorted([a.generation, b.generation])
        assert all(x.pid == os.getpid() and x.age >= 0 for x in got)
        assert c.snapshot is False and c.readers() == []  # it holds no table
        a.close()
        assert [x.generation for x in w.readers()] == [b.generation]
        b.close()
        c.close()
        assert w.readers() == []
        assert os.path.exists(str(path) + "-readers")


def test_max_readers_and_readers_full(tmp_path):
    path = tmp_path / "full.mpp"
    with Pager.create(path, max_readers=2) as w:
        r1 = ReadOnlyPager.open(path)
        r2 = w.snapshot()
        with pytest.raises(ReadersFull) as err:
            ReadOnlyPager.open(path)
        assert isinstance(err.value, MappedPageError)
        assert mappedpages.ReadersFull is ReadersFull
        with pytest.raises(ReadersFull):
            w.snapshot()
        # Unregistered readers do not count.
        ReadOnlyPager.open(path, snapshot=False).close()
        r1.close()
        ReadOnlyPager.open(path).close()
        r2.close()
    with Pager.open(path, max_readers=0):
        with pytest.raises(ReadersFull):
            ReadOnlyPager.open(path)
    for bad, exc in ((-1, ValueError), (1 << 20, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            Pager.open(path, max_readers=bad)
    with pytest.raises(TypeError):
        ReadOnlyPager.open(path, snapshot=1)


def test_reader_table_permission_error(tmp_path):
    """A reader that cannot create or write the table: PermissionError, unless snapshot=False."""
    # Somewhere another user can reach (pytest's folders are private to us).
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="mp-perm-"))
    os.chmod(base, 0o755)
    folder = base / "ro"
    folder.mkdir()
    path = folder / "f.mpp"
    Pager.create(path).close()
    os.unlink(str(path) + "-readers")
    os.chmod(folder, 0o555)
    code = textwrap.dedent(
        f"""
        import os, sys
        from mappedpages import ReadOnlyPager
        if os.getuid() == 0:
            os.setgid(65534); os.setuid(65534)
        try:
            ReadOnlyPager.open({str(path)!r})
        except PermissionError as e:
            assert "reader table" in str(e) and "snapshot=False" in str(e), e
            print("permission")
        with ReadOnlyPager.open({str(path)!r}, snapshot=False) as r:
            print(r.page_count)
        """
    )
    try:
        os.chmod(path, 0o644)
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == ["permission", "4"]
        assert not os.path.exists(str(path) + "-readers")
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_table_gets_the_data_files_permission_bits(tmp_path):
    path = tmp_path / "mode.mpp"
    Pager.create(path).close()
    os.unlink(str(path) + "-readers")
    os.chmod(path, 0o640)
    old = os.umask(0o077)
    try:
        ReadOnlyPager.open(path).close()
    finally:
        os.umask(old)
    assert os.stat(str(path) + "-readers").st_mode & 0o777 == 0o640


# --------------------------------------------------------- protected pages


def test_protected_pages_stay_at_the_readers_commit(tmp_path):
    path = tmp_path / "prot.mpp"
    with Pager.create(path) as w:
        pid = w.alloc_protected()
        with w.write_protected(pid) as pw:
            pw.page[:4] = b"v000"
        r = ReadOnlyPager.open(path)
        for n in range(1, 40):
            with w.write_protected(pid) as pw:
                pw.page[:4] = b"v%03d" % n
            if n % 7 == 0:
                w.free(w.alloc())  # allocation commits in between
            assert bytes(r.protected_page(pid)[:4]) == b"v000"
            assert r.verify_protected(pid) is True
        view = r.protected_page(pid)
        with pytest.raises(TypeError):
            view[0] = 1
        with pytest.raises(TypeError):
            view.obj[0] = 1
        assert r.refresh() is True
        assert bytes(r.protected_page(pid)[:4]) == b"v039"
        assert r.verify_protected(pid) is True
        # The copy taken earlier keeps its content.
        assert bytes(view[:4]) == b"v000"
        del view
        r.close()


def test_unregistered_reader_shows_the_live_protected_copy(tmp_path):
    path = tmp_path / "plain.mpp"
    with Pager.create(path) as w:
        pid = w.alloc_protected()
        with w.write_protected(pid) as pw:
            pw.page[:2] = b"v1"
        with ReadOnlyPager.open(path, snapshot=False) as r:
            assert bytes(r.protected_page(pid)[:2]) == b"v1"
            assert r.refresh() is False


# ------------------------------------------------- a reader that stays old


def test_never_refreshing_reader_grows_the_file_until_it_closes(tmp_path):
    path = tmp_path / "old.mpp"
    with Pager.create(path, page_size=1024) as w:
        keep = w.alloc_bulk(4)
        r = ReadOnlyPager.open(path)
        before = w.page_count
        freed: set[int] = set()
        for _ in range(200):
            a = w.alloc()
            w.free(a)
            freed.add(a)
        assert w.page_count > before, "the writer should have grown the file"
        assert w.pinned_free_pages == 200
        assert len(freed) == 200, "a pinned page was reused"
        assert list(r.allocated_pages()) == keep
        r.close()
        assert w.pinned_free_pages == 0
        grown = w.page_count
        again = {w.alloc() for _ in range(150)}
        assert again <= freed | set(range(grown)), again
        assert w.page_count == grown, "pages were free again, yet the file grew"


# ------------------------------------------------------ in-process readers


def test_snapshot_in_the_writers_process(tmp_path):
    path = tmp_path / "snap.mpp"
    with Pager.create(path) as w:
        ids = w.alloc_bulk(8)
        for i in ids:
            stamp(w.page(i), i)
        s = w.snapshot()
        assert type(s) is ReadOnlyPager and s.snapshot
        assert list(s.allocated_pages()) == ids
        stop = threading.Event()
        errors: list[str] = []

        def read() -> None:
            while not stop.is_set():
                for i in ids:
                    if read_stamp(s.page(i)) != i:
                        errors.append(f"page {i} changed under the snapshot")

        t = threading.Thread(target=read)
        t.start()
        try:
            for _ in range(30):
                w.free_bulk(w.alloc_bulk(3))
            w.free_bulk(ids)
            for i in w.alloc_bulk(20):
                stamp(w.page(i), 99)
        finally:
            stop.set()
            t.join()
        assert errors == []
        assert list(s.allocated_pages()) == ids
        with w.transaction():
            w.alloc()
            inner = w.snapshot()
            assert inner.generation == w.snapshot().generation
        inner.close()
        s.close()


def test_snapshot_in_none_mode_sees_the_last_commit(tmp_path):
    path = tmp_path / "none.mpp"
    with Pager.create(path, durability="none") as w:
        a = w.alloc()
        with w.snapshot() as s:
            assert list(s.allocated_pages()) == [a]


# ------------------------------------------------------------------ fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_keeps_reading_and_does_not_register_twice(tmp_path):
    # In a fresh interpreter: a fork from this process copies whatever threads
    # and allocator locks earlier tests left, which under AddressSanitizer can
    # stop the child before it runs a line of this test.
    code = textwrap.dedent(
        f"""
        import os, struct, sys
        import mappedpages
        from mappedpages import Pager, ReadOnlyPager
        path = {str(tmp_path / "fork.mpp")!r}
        def stamp(view, value):
            view[:8] = struct.pack("<Q", value)
        def read_stamp(view):
            return struct.unpack("<Q", bytes(view[:8]))[0]
        with Pager.create(path) as w:
            ids = w.alloc_bulk(3)
            for i in ids:
                stamp(w.page(i), 500 + i)
            r = ReadOnlyPager.open(path)
            view = r.page(ids[0])
            to_parent_r, to_parent_w = os.pipe()
            to_child_r, to_child_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ok = read_stamp(view) == 500 + ids[0]
                    try:
                        r.refresh()
                        ok = False
                    except mappedpages.Unavailable:
                        pass
                    os.write(to_parent_w, b"1" if ok else b"0")
                    os.read(to_child_r, 1)  # wait while the parent looks at the table
                    code = 0 if ok else 1
                finally:
                    os._exit(code)
            os.close(to_parent_w)  # (a child that dies gives end of file, not a wait)
            os.close(to_child_r)
            assert os.read(to_parent_r, 1) == b"1", "the child's inherited view"
            # One reader, registered once, whatever the child holds.
            assert [x.pid for x in w.readers()] == [os.getpid()]
            os.write(to_child_w, b"x")
            os.close(to_parent_r)
            os.close(to_child_w)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            # The child's exit leaves the parent's slot alone.
            assert [x.pid for x in w.readers()] == [os.getpid()]
            w.free(ids[1])
            assert w.pinned_free_pages == 1
            del view
            r.close()
            assert w.readers() == [] and w.pinned_free_pages == 0
        print("done")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["done"], proc.stderr[-3000:]


# ------------------------------------------------- processes, kill -9, stress

READER_SCRIPT = textwrap.dedent(
    """
    import json, struct, sys, time, zlib
    from mappedpages import ReadOnlyPager

    path, root, scans, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    least = float(sys.argv[5])
    r = ReadOnlyPager.open(path)
    print("ready", flush=True)
    done = bad = refreshed = 0
    first_bad = []
    start = time.monotonic()
    deadline = start + 60
    while (done < scans or scans < 0 or time.monotonic() - start < least) and (
        time.monotonic() < deadline
    ):
        head = bytes(r.protected_page(root)[:8])
        n = struct.unpack("<Q", head)[0]
        body = bytes(r.protected_page(root)[8 : 8 + 12 * n])
        for k in range(n):
            page, crc = struct.unpack_from("<QI", body, 12 * k)
            if zlib.crc32(r.page(page)) != crc:
                bad += 1
                if len(first_bad) < 5:
                    first_bad.append([r.generation, page])
                break
        done += 1
        if mode == "refresh" and done % 3 == 0:
            refreshed += r.refresh()
    print(json.dumps({"scans": done, "bad": bad, "refreshed": refreshed,
                      "first_bad": first_bad}), flush=True)
    """
)

WRITER_SCRIPT = textwrap.dedent(
    """
    import os, random, struct, sys, zlib
    from mappedpages import Pager

    path, root, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(7)
    w = Pager.open(path, page_size=1024, durability="fast")
    print("ready", flush=True)
    n = struct.unpack("<Q", bytes(w.protected_page(root)[:8]))[0]
    body = bytes(w.protected_page(root)[8 : 8 + 12 * n])
    nodes = [struct.unpack_from("<QI", body, 12 * k)[0] for k in range(n)]
    commits = 0
    while not os.path.exists(stop):
        # Copy-on-write: new pages for a few nodes, the root moved, the old freed.
        pick = rng.sample(range(n), 3)
        old = [nodes[k] for k in pick]
        new = w.alloc_bulk(3)
        for k, page in zip(pick, new):
            w.page(page)[:] = os.urandom(1024)
            nodes[k] = page
        with w.write_protected(root) as pw:
            pw.page[:8] = struct.pack("<Q", n)
            for k, page in enumerate(nodes):
                crc = zlib.crc32(w.page(page))
                pw.page[8 + 12 * k : 20 + 12 * k] = struct.pack("<QI", page, crc)
        w.free_bulk(old)
        commits += 1
    print(commits, w.page_count, flush=True)
    w.close()
    """
)


def build_tree(path: Path, nodes: int) -> int:
    with Pager.create(path, page_size=1024) as w:
        root = w.alloc_protected()
        pages = w.alloc_bulk(nodes)
        with w.write_protected(root) as pw:
            pw.page[:8] = struct.pack("<Q", nodes)
            for k, page in enumerate(pages):
                w.page(page)[:] = os.urandom(1024)
                crc = zlib.crc32(w.page(page))
                pw.page[8 + 12 * k : 20 + 12 * k] = struct.pack("<QI", page, crc)
    return root


def spawn_reader(
    path: Path, root: int, scans: int, mode: str, least: float = 0.0
) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(path), str(root), str(scans), mode,
         str(least)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_copy_on_write_writer_beside_scanning_reader_processes(tmp_path):
    """0 inconsistent scans of a copy-on-write structure over >= 10,000 scans."""
    path = tmp_path / "cow.mpp"
    root = build_tree(path, 16)
    stop = tmp_path / "stop"
    per_reader = int(3400 * SCALE)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(root), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        readers = [
            spawn_reader(path, root, per_reader, "refresh", 3.0 * SCALE) for _ in range(3)
        ]
        results = []
        for p in readers:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.touch()
        wout, werr = writer.communicate(timeout=60)
    assert writer.returncode == 0, werr[-2000:]
    commits, pages = map(int, wout.split())
    scans = sum(r["scans"] for r in results)
    assert scans >= 10_000 * min(SCALE, 1.0) - 10
    assert sum(r["bad"] for r in results) == 0, results
    assert commits > 20, "the writer hardly ran beside the readers"
    assert all(r["refreshed"] > 0 for r in results), results
    # Readers that keep refreshing let the writer reuse pages: the file stays small.
    assert pages < 16 + 3 * commits + 64 or pages < 4096, (pages, commits)


def test_kill_9_readers_mid_scan_clears_their_slots(tmp_path):
    path = tmp_path / "kill.mpp"
    root = build_tree(path, 8)
    with Pager.open(path, page_size=1024, max_readers=3) as w:
        victims = [spawn_reader(path, root, -1, "stay") for _ in range(3)]
        time.sleep(0.1)
        assert len(w.readers()) == 3
        with pytest.raises(ReadersFull):
            ReadOnlyPager.open(path)
        for _ in range(20):
            w.free(w.alloc())
        assert w.pinned_free_pages == 20
        for p in victims:
            p.send_signal(signal.SIGKILL)
        for p in victims:
            p.wait(timeout=30)
            assert p.returncode == -signal.SIGKILL
            p.stdout.close()
            p.stderr.close()
        # The writer sees the holders gone, clears their slots, reuses pages.
        assert w.pinned_free_pages == 0
        assert w.readers() == []
        size = w.page_count
        for _ in range(200):
            w.free(w.alloc())
        assert w.pinned_free_pages == 0
        assert w.page_count == size, "growth after the readers died"
        # And a new reader finds a slot, in a table that was full of the dead.
        again = [spawn_reader(path, root, -1, "stay") for _ in range(3)]
        for p in again:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            p.stdout.close()
            p.stderr.close()
        with ReadOnlyPager.open(path) as r:  # clears a dead slot to take it
            assert [x.pid for x in w.readers()] == [os.getpid()]
            assert r.snapshot


# ------------------------------------------------------------- hypothesis


class SnapshotModel(RuleBasedStateMachine):
    """Writer commits and reader open/refresh/close, against a model of what
    each reader may see: the pages allocated in its commit, with their content.
    """

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "model.mpp"
        self.w = Pager.create(self.path, page_size=1024)
        self.alloc: dict[int, int] = {}  # page -> stamp, the writer's state
        self.readers: list[tuple[ReadOnlyPager, dict[int, int]]] = []
        self.counter = 0
        # A protected page: its stamp is kept in the model under key -1.
        self.pid = self.w.alloc_protected()
        self.protected = 0
        with self.w.write_protected(self.pid) as pw:
            stamp(pw.page, 0)

    def state(self) -> dict[int, int]:
        return {**self.alloc, -1: self.protected}

    def teardown(self) -> None:
        for r, _ in self.readers:
            r.close()
        self.w.close()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def seen(self) -> set[int]:
        out: set[int] = set()
        for _, snap in self.readers:
            out |= set(snap) - {-1}
        return out

    @rule()
    def write_protected(self) -> None:
        self.counter += 1
        with self.w.write_protected(self.pid) as pw:
            stamp(pw.page, self.counter)
        self.protected = self.counter

    @rule(n=st.integers(1, 5))
    def alloc(self, n: int) -> None:
        ids = self.w.alloc_bulk(n)
        clash = set(ids) & self.seen()
        assert not clash, f"handed out pages a live reader's commit has: {clash}"
        for i in ids:
            self.counter += 1
            stamp(self.w.page(i), self.counter)
            self.alloc[i] = self.counter

    @precondition(lambda self: self.alloc)
    @rule(data=st.data())
    def free(self, data) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.alloc)), min_size=1, max_size=4,
                                 unique=True))
        self.w.free_bulk(ids)
        for i in ids:
            del self.alloc[i]

    @precondition(lambda self: len(self.readers) < 5)
    @rule()
    def open_reader(self) -> None:
        self.readers.append((ReadOnlyPager.open(self.path), self.state()))

    @precondition(lambda self: self.readers)
    @rule(k=st.integers(0, 4))
    def refresh(self, k: int) -> None:
        r, snap = self.readers[k % len(self.readers)]
        moved = r.refresh()
        if snap != self.state():
            assert moved is True
        self.readers[k % len(self.readers)] = (r, self.state())

    @precondition(lambda self: self.readers)
    @rule(k=st.integers(0, 4))
    def close_reader(self, k: int) -> None:
        r, _ = self.readers.pop(k % len(self.readers))
        r.close()

    @invariant()
    def readers_see_their_commit(self) -> None:
        for r, snap in self.readers:
            pages = {i: v for i, v in snap.items() if i >= 0}
            assert list(r.allocated_pages()) == sorted(pages)
            for i, value in pages.items():
                assert read_stamp(r.page(i)) == value
            assert read_stamp(r.protected_page(self.pid)) == snap[-1]
            assert r.verify_protected(self.pid)

    @invariant()
    def nothing_pinned_without_readers(self) -> None:
        if not self.readers:
            assert self.w.pinned_free_pages == 0


TestSnapshotModel = SnapshotModel.TestCase
TestSnapshotModel.settings = settings(
    max_examples=int(40 * SCALE),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------- info


def test_info_shows_readers_and_pinned_pages(tmp_path):
    path = tmp_path / "info.mpp"

    def info() -> tuple[str, dict]:
        run = [sys.executable, "-m", "mappedpages", "info", str(path)]
        text = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert text.returncode == 0, text.stderr
        js = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
        return text.stdout, json.loads(js.stdout)["reader_table"]

    with Pager.create(path) as w:
        ids = w.alloc_bulk(4)
        with ReadOnlyPager.open(path) as r:
            w.free_bulk(ids[:3])
            text, table = info()
            assert f"pid {os.getpid()}, generation {r.generation}" in text
            assert "pinned free pages  3" in text
            assert table["pinned_free_pages"] == 3 and table["writer_pid"] == os.getpid()
            assert [x["generation"] for x in table["readers"]] == [r.generation]
        w.alloc()  # the writer looks again, and publishes what it still holds
        text, table = info()
        assert "readers            none live" in text
        assert table["pinned_free_pages"] == 0 and table["readers"] == []
    _, table = info()
    assert table["writer_pid"] == 0


def test_a_reader_listing_readers_keeps_its_own_slot(tmp_path):
    """Its slot's lock is its own: a scan from the reader must not take it as dead."""
    path = tmp_path / "own.mpp"
    with Pager.create(path) as w:
        a = w.alloc()
        with ReadOnlyPager.open(path) as r:
            for _ in range(3):
                assert [x.generation for x in r.readers()] == [r.generation]
            w.free(a)
            assert w.alloc() != a, "the reader's page was handed out again"
            assert [x.pid for x in w.readers()] == [os.getpid()]


# ------------------------------------- both layouts, lazy modes, rollbacks


def extended_file(path: Path) -> Pager:
    """A writer on a file past v0.2's cap (the extended layout, format 0.3)."""
    w = Pager.create(path, page_size=1024, preallocate=False)
    w.free_bulk(w.alloc_bulk(w._chunk + 16))  # past the v0.2 cap (a chunk)
    assert w.format_version == "0.3"
    return w


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_both_layouts_pin_pages_and_protected_content(tmp_path, layout):
    path = tmp_path / f"l{layout}.mpp"
    w = extended_file(path) if layout == "0.3" else Pager.create(path, page_size=1024)
    with w:
        ids = w.alloc_bulk(10)
        for i in ids:
            stamp(w.page(i), i)
        pid = w.alloc_protected()
        with w.write_protected(pid) as pw:
            pw.page[:2] = b"p0"
        with ReadOnlyPager.open(path) as r:
            assert r.format_version == layout
            w.free_bulk(ids)
            for n in range(5):
                with w.write_protected(pid) as pw:
                    pw.page[:2] = b"p%d" % (n + 1)
            fresh = w.alloc_bulk(30)
            assert not set(fresh) & set(ids)
            for i in fresh:
                stamp(w.page(i), 0)
            assert [read_stamp(r.page(i)) for i in ids] == ids
            assert bytes(r.protected_page(pid)[:2]) == b"p0" and r.verify_protected(pid)
            assert w.pinned_free_pages == 10
            assert r.refresh() is True
            assert bytes(r.protected_page(pid)[:2]) == b"p5"
            w.alloc()
            assert w.pinned_free_pages == 0


def test_none_mode_pins_until_durable_and_readers_move(tmp_path):
    path = tmp_path / "lazy.mpp"
    with Pager.create(path, page_size=1024, durability="none") as w:
        ids = w.alloc_bulk(6)
        w.sync()
        with ReadOnlyPager.open(path) as r:
            assert list(r.allocated_pages()) == ids
            w.free_bulk(ids[:3])
            assert not set(w.alloc_bulk(5)) & set(ids[:3])
            w.sync()  # durable now, and still held for the reader
            assert w.pinned_free_pages == 3
            assert not set(w.alloc_bulk(5)) & set(ids[:3])
            assert r.refresh() is True
            assert w.alloc() == min(ids[:3])


def test_rollback_keeps_earlier_pins_and_drops_its_own(tmp_path):
    path = tmp_path / "txn.mpp"
    with Pager.create(path, page_size=1024) as w:
        ids = w.alloc_bulk(8)
        r = ReadOnlyPager.open(path)
        w.free_bulk(ids[:2])
        assert w.pinned_free_pages == 2
        with pytest.raises(RuntimeError), w.transaction():
            w.free_bulk(ids[2:4])
            w.alloc_bulk(3)
            raise RuntimeError("roll back")
        assert list(w.allocated_pages()) == ids[2:]
        assert w.pinned_free_pages == 2
        assert not set(w.alloc_bulk(20)) & set(ids[:2])
        r.close()
        assert w.pinned_free_pages == 0
        assert w.alloc() == min(ids[:2])


def test_releasing_a_protected_view_keeps_the_snapshot_copy(tmp_path):
    path = tmp_path / "rel.mpp"
    with Pager.create(path) as w:
        pid = w.alloc_protected()
        with w.write_protected(pid) as pw:
            pw.page[:2] = b"ok"
        with ReadOnlyPager.open(path) as r:
            v = r.protected_page(pid)
            v.release()
            assert bytes(r.protected_page(pid)[:2]) == b"ok"
            assert r.verify_protected(pid) is True


def test_the_writer_reads_the_table_only_when_a_pin_waits(tmp_path):
    from mappedpages._core import ffi, lib

    def scans(w: Pager) -> int:
        out = ffi.new("uint64_t *")
        assert lib.mp_readers_scans(w._handle, out) == 0
        return int(out[0])

    path = tmp_path / "scan.mpp"
    with Pager.create(path, page_size=1024) as w:
        with ReadOnlyPager.open(path):
            start = scans(w)
            for _ in range(20):
                w.alloc_bulk(3)  # allocation commits free nothing: no look at the table
            assert scans(w) == start
            a = w.alloc()
            w.free(a)  # a pin: the commit looks once
            assert start < scans(w) <= start + 2


def test_a_new_writer_holds_back_pages_an_older_reader_may_have(tmp_path):
    """Pins live in the writer's memory: a writer that opens beside a reader of an
    older commit holds back every free page until that reader moves on."""
    path = tmp_path / "handover.mpp"
    w = Pager.create(path, page_size=1024)
    ids = w.alloc_bulk(6)
    for i in ids:
        stamp(w.page(i), 40 + i)
    r = ReadOnlyPager.open(path)
    w.free_bulk(ids)
    w.close()  # its pins go with it
    with Pager.open(path) as w2:
        assert w2.pinned_free_pages >= 6
        fresh = w2.alloc_bulk(10)
        assert not set(fresh) & set(ids)
        for i in fresh:
            stamp(w2.page(i), 0)
        assert [read_stamp(r.page(i)) for i in ids] == [40 + i for i in ids]
        assert r.refresh() is True
        w2.alloc()
        assert w2.pinned_free_pages == 0
    r.close()
    # With no older reader, a writer opens holding nothing back.
    with ReadOnlyPager.open(path), Pager.open(path) as w3:
        assert w3.pinned_free_pages == 0


def test_a_reader_table_that_cannot_be_opened_fails_create_and_open_cleanly(tmp_path):
    path = tmp_path / "blocked.mpp"
    os.mkdir(str(path) + "-readers")  # not a file: the table cannot be opened
    with pytest.raises(OSError):
        Pager.create(path)
    assert not path.exists(), "a failed create left its file behind"
    os.rmdir(str(path) + "-readers")
    Pager.create(path).close()
    os.unlink(str(path) + "-readers")
    os.mkdir(str(path) + "-readers")
    before = path.read_bytes()
    with pytest.raises(OSError):
        Pager.open(path)
    with pytest.raises(OSError):
        ReadOnlyPager.open(path)
    with ReadOnlyPager.open(path, snapshot=False) as r:
        assert r.page_count == 4
    assert path.read_bytes() == before
    os.rmdir(str(path) + "-readers")
    with Pager.open(path):  # the writer lock was released by the failed opens
        pass


def test_roots_are_the_snapshots(tmp_path):
    path = tmp_path / "roots.mpp"
    with Pager.create(path, page_size=1024) as w:
        w.set_root(0, 11)
        with ReadOnlyPager.open(path) as r, w.snapshot() as s:
            w.set_root(0, 22)
            w.set_root(1, 33)
            assert r.roots[:2] == (11, 0) and s.roots[:2] == (11, 0)
            assert r.refresh() is True
            assert r.roots[:2] == (22, 33)
            assert s.roots[:2] == (11, 0)


def test_a_refresh_writes_its_whole_slot_again(tmp_path):
    """The table is writable by every reader of the file: a slot someone wrote
    over is put right by its reader's next refresh that moves."""
    path = tmp_path / "over.mpp"
    with Pager.create(path) as w, ReadOnlyPager.open(path) as r:
        table = str(path) + "-readers"
        with open(table, "r+b") as fh:
            data = bytearray(fh.read())
            slots = [i for i in range(64, len(data), 64) if any(data[i : i + 8])]
            assert len(slots) == 1
            fh.seek(slots[0])
            fh.write(bytes(64))
        assert w.readers() == []
        w.alloc()
        assert r.refresh() is True
        assert [(x.pid, x.generation) for x in w.readers()] == [(os.getpid(), r.generation)]
