"""Giving space back: Pager.trim, Pager.punch_free, trim_on_close, punch_on_free.

Crash safety is checked two ways in both layouts: a child killed (SIGKILL) at
each durability barrier of a trim or a punching free, and after the call
returns; and the power-loss images the barriers allow
(tests/support/powerloss.py).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from support.iohooks import IoHooks, create_pager
from support.powerloss import CrashRecorder, crash_images

import mappedpages
from mappedpages import Pager, ReadOnlyPager, RecoveryWarning

PS = 1024
CHUNK = 7968  # pages per chunk at 1 KiB pages
EXTENDED_N = CHUNK + 2000  # allocations that move a file to the extended layout
TESTS = Path(__file__).resolve().parent


def stamp(pid: int) -> bytes:
    return pid.to_bytes(8, "little") * (PS // 8)


def disk_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def fill(p: Pager, n: int) -> list[int]:
    ids = p.alloc_bulk(n)
    for i in ids:
        p.page(i)[:] = stamp(i)
    p.sync()
    return ids


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def reopen_clean(path: Path) -> Pager:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        return Pager.open(path)


# ------------------------------------------------------------------ trim


@pytest.mark.parametrize("n", [600, EXTENDED_N], ids=["v02", "extended"])
def test_trim_cuts_past_the_last_page_in_use(tmp_path: Path, n: int) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS, preallocate=False) as p:
        ids = fill(p, n)
        keep = ids[: n // 3]
        p.free_bulk(ids[n // 3 :])
        before = p.page_count
        given = p.trim()
        assert given == before - p.page_count > 0
        assert os.path.getsize(path) == p.page_count * PS
        floor = 4 if n < CHUNK else CHUNK + 4
        assert p.page_count == max(max(keep) + 1, floor)
    with reopen_clean(path) as q:
        assert sorted(q.allocated_pages()) == keep
        assert all(bytes(q.page(i)) == stamp(i) for i in keep)


def test_trim_v02_goes_down_to_four_pages(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS) as p:
        p.free_bulk(fill(p, 100))
        p.trim()
        assert p.page_count == 4 and os.path.getsize(path) == 4 * PS
        assert p.format_version.startswith("0.2")
    with reopen_clean(path) as q:
        assert q.page_count == 4 and list(q.allocated_pages()) == []


def test_trim_extended_file_stays_extended(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS, preallocate=False) as p:
        ids = fill(p, EXTENDED_N)
        p.free_bulk(ids)
        p.trim()
        assert p.page_count == CHUNK + 4
        assert p.format_version.startswith("0.3")
        p.alloc()  # still usable, and grows again when needed
        fill(p, CHUNK)
    with reopen_clean(path) as q:
        assert len(list(q.allocated_pages())) == CHUNK + 1


def test_trim_keeps_protected_pages_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS) as p:
        ids = fill(p, 300)
        pid = p.alloc_protected()
        with p.write_protected(pid) as w:
            w.page[:5] = b"hello"
        p.free_bulk(ids)
        p.trim()
        assert bytes(p.protected_page(pid)[:5]) == b"hello"
    with reopen_clean(path) as q:
        assert list(q.allocated_protected_pages()) == [pid]
        assert q.verify_protected(pid)


def test_trim_then_growth_starts_from_the_new_size(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    step = 64 * PS
    with Pager.create(path, PS, grow_step=step, preallocate=False) as p:
        ids = fill(p, 2000)
        p.free_bulk(ids[200:])
        p.trim()
        small = p.page_count
        assert p.free_page_count == 0
        p.alloc()
        assert p.page_count == small + 64


def test_trim_inside_a_transaction_raises_and_changes_nothing(tmp_path: Path) -> None:
    with Pager.create(tmp_path / "f.mpp", PS) as p:
        p.free_bulk(fill(p, 100))
        count = p.page_count
        with p.transaction():
            with pytest.raises(ValueError):
                p.trim()
            with pytest.raises(ValueError):
                p.punch_free()
        assert p.page_count == count


def test_trim_on_close(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    p = Pager.create(path, PS, trim_on_close=True)
    p.free_bulk(fill(p, 500))
    p.close()
    assert os.path.getsize(path) == 4 * PS
    q = Pager.open(path)  # default: no trim at close
    q.free_bulk(fill(q, 500))
    q.close()
    assert os.path.getsize(path) > 4 * PS


def test_trim_in_lazy_durability_modes(tmp_path: Path) -> None:
    for mode in ("fast", "none"):
        path = tmp_path / f"{mode}.mpp"
        with Pager.create(path, PS, durability=mode) as p:
            ids = fill(p, 400)
            p.free_bulk(ids[10:])
            p.trim()
            assert os.path.getsize(path) == p.page_count * PS
        with reopen_clean(path) as q:
            assert sorted(q.allocated_pages()) == ids[:10]


def test_views_of_cut_pages_stay_valid_in_the_writer(tmp_path: Path) -> None:
    # In a child: a fault there would kill it with SIGBUS.
    code = """
        import sys
        from mappedpages import Pager
        p = Pager.create(sys.argv[1], 1024, preallocate=False)
        ids = p.alloc_bulk(3000)
        tail = p.page(ids[-1])
        big = p.view(ids[1000], 1000)
        tail[:4] = b"abcd"
        p.free_bulk(ids[10:])
        assert p.trim() > 0
        assert bytes(tail[:4]) == bytes(4)  # zero memory now, not the file
        assert sum(big) == 0
        tail[:4] = b"wxyz"  # writable memory, never the file
        p.alloc_bulk(2000)  # grows over the range again
        print(p.page_count, bytes(tail[:4]) in (b"wxyz", bytes(4), b"abcd"))
        del tail, big
        p.close()
        print("ok")
    """
    out = run_child(code, str(tmp_path / "f.mpp"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_trim_leaves_a_live_reader_its_pages(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    code = """
        import sys
        from mappedpages import ReadOnlyPager
        r = ReadOnlyPager.open(sys.argv[1])
        last = max(r.allocated_pages())
        view = r.page(last)
        print(r.page_count, last, flush=True)
        sys.stdin.readline()  # the writer trims meanwhile
        ok = bytes(view[:8]) == last.to_bytes(8, "little")
        print("same" if ok else "changed", r.page_count, flush=True)
        del view
        r.close()
    """
    with Pager.create(path, PS, preallocate=False) as p:
        ids = fill(p, 3000)
        env = dict(os.environ)
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        assert child.stdout is not None and child.stdin is not None
        pages, last = map(int, child.stdout.readline().split())
        assert last == ids[-1]
        p.free_bulk(ids[100:])
        p.trim()
        # The reader's snapshot still counts its pages: the file keeps them.
        assert os.path.getsize(path) >= pages * PS
        child.stdin.write("\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, (child.returncode, err)
        assert out.split()[0] == "same"
        # The reader is gone: now the file is cut to the live extent.
        p.trim()
        assert os.path.getsize(path) == p.page_count * PS == (max(ids[:100]) + 1) * PS


def test_a_reader_that_refreshed_keeps_its_older_views_valid(tmp_path: Path) -> None:
    # The reader holds a view of a page of an older, longer commit, then
    # refreshes to a trimmed one: the writer must not cut under that view
    # (the reader publishes the most pages it has mapped, not its commit's).
    path = tmp_path / "f.mpp"
    code = """
        import sys
        from mappedpages import ReadOnlyPager
        r = ReadOnlyPager.open(sys.argv[1])
        last = max(r.allocated_pages())
        view = r.page(last)
        print(last, flush=True)
        for _ in range(2):
            sys.stdin.readline()
            r.refresh()
            print(r.page_count, flush=True)
        sys.stdin.readline()
        print("read", bytes(view[:8]).hex(), flush=True)
        del view
        r.close()
    """
    with Pager.create(path, PS, preallocate=False) as p:
        ids = fill(p, 3000)
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert child.stdout is not None and child.stdin is not None

        def step() -> int:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("\n")
            child.stdin.flush()
            return int(child.stdout.readline())

        last = int(child.stdout.readline())
        p.free_bulk(ids[100:])
        p.trim()  # the freed pages are pinned for the reader: kept in the state
        step()
        p.trim()  # pins released: the state is cut to the live extent
        assert p.page_count == max(ids[:100]) + 1
        assert step() == p.page_count < last  # the reader's commit is short now
        p.trim()
        assert os.path.getsize(path) > last * PS  # its mapping is not
        child.stdin.write("\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, (child.returncode, err)
        assert out.split()[0] == "read"
    # Closed: nothing holds the tail any more.
    with Pager.open(path) as q:
        q.trim()
        assert os.path.getsize(path) == q.page_count * PS


def test_trim_leaves_an_in_process_snapshot_its_pages(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS, preallocate=False) as p:
        ids = fill(p, 2000)
        snap = p.snapshot()
        p.free_bulk(ids[50:])
        p.trim()
        assert os.path.getsize(path) >= snap.page_count * PS
        assert bytes(snap.page(ids[-1])) == stamp(ids[-1])
        snap.close()
        p.trim()
        assert os.path.getsize(path) == p.page_count * PS


# ------------------------------------------------------------------ punch


def test_punch_free_gives_back_the_blocks_of_free_pages(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    rnd = random.Random(7)
    with Pager.create(path, PS) as p:
        ids = fill(p, 4000)
        gone = set(rnd.sample(ids, 3600))
        p.free_bulk(sorted(gone))
        before = disk_bytes(path)
        released = p.punch_free()
        after = disk_bytes(path)
        assert released > 0 and after <= before - released + 4096
        assert after < before * 0.5
        for i in ids:
            if i not in gone:
                assert bytes(p.page(i)) == stamp(i)
        assert p.punched_pages() > 0
        assert p.punch_free() == 0  # nothing left to punch
    with reopen_clean(path) as q:
        assert sorted(q.allocated_pages()) == sorted(set(ids) - gone)


def test_punch_skips_pages_a_reader_still_sees(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS) as p:
        ids = fill(p, 1000)
        snap = p.snapshot()
        p.free_bulk(ids)
        p.punch_free()
        # The snapshot's commit has them allocated: their bytes are intact.
        assert all(bytes(snap.page(i)) == stamp(i) for i in ids[::37])
        assert p.punched_pages() < len(ids)
        snap.close()
        p.punch_free()
        assert p.punched_pages() >= len(ids)


def test_a_punched_page_gets_blocks_before_alloc_hands_it_out(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS, preallocate=True) as p:
        ids = fill(p, 2000)
        p.free_bulk(ids)
        p.punch_free()
        low = disk_bytes(path)
        punched = p.punched_pages()
        again = p.alloc_bulk(1000, zero=True)
        assert sorted(again) == ids[:1000]
        assert p.punched_pages() == punched - 1000
        assert disk_bytes(path) >= low + 1000 * PS - 8192
        assert all(not any(p.page(i)) for i in again[::50])  # punched pages read as zeros


def test_enospc_while_refilling_a_punched_page_is_an_oserror(tmp_path: Path) -> None:
    hooks = IoHooks()
    path = tmp_path / "f.mpp"
    p = create_pager(path, PS, hooks)
    try:
        ids = p.alloc_bulk(500)
        p.free_bulk(ids)
        assert p.punch_free() >= 0
        assert p.punched_pages() > 0
        free, count = p.free_page_count, p.page_count
        hooks.fail(lib_kind("fallocate"), 1, errno.ENOSPC, persistent=True)
        with pytest.raises(OSError) as info:
            p.alloc()
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            p.alloc_bulk(3)
        assert (p.free_page_count, p.page_count) == (free, count)
        hooks.clear_faults()
        assert p.alloc() == ids[0]
    finally:
        p.close()


def lib_kind(name: str) -> int:
    from support.iohooks import KINDS

    return KINDS[name]


def test_punch_unsupported_warns_once_and_changes_nothing(tmp_path: Path) -> None:
    hooks = IoHooks()
    p = create_pager(tmp_path / "f.mpp", PS, hooks)
    try:
        p.free_bulk(p.alloc_bulk(100))
        hooks.fail(lib_kind("fallocate"), 1, errno.EOPNOTSUPP, persistent=True)
        with pytest.warns(RuntimeWarning, match="punching holes"):
            assert p.punch_free() == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert p.punch_free() == 0  # said once
        assert p.punched_pages() == 0
    finally:
        p.close()


def test_punch_on_free(tmp_path: Path) -> None:
    path = tmp_path / "f.mpp"
    with Pager.create(path, PS, punch_on_free=True) as p:
        ids = fill(p, 2000)
        before = disk_bytes(path)
        p.free_bulk(ids[:1500])
        p.free(ids[1500])
        assert p.punched_pages() == 1501
        assert disk_bytes(path) < before - 1000 * PS
    with Pager.open(path) as q:  # off by default
        q.free(ids[1501])
        assert q.punched_pages() == 0


# ------------------------------------------------------- crashes: kill -9

KILL_CHILD = """
    import os, signal, sys
    from support.iohooks import IoHooks, create_pager
    path, n, at, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks)
    ids = p.alloc_bulk(n)
    for i in ids:
        p.page(i)[:] = i.to_bytes(8, "little") * 128
    p.sync()
    if what == "punch":
        p._space_options(False, True)  # punch_on_free
    seen = [0]
    def barrier(kind, offset, length):
        seen[0] += 1
        if seen[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    hooks.set_barrier_callback(barrier)
    if what == "trim":
        p.free_bulk(ids[n // 4:])
        p.trim()
    else:
        for i in ids[::3]:
            p.free(i)
        p.punch_free()
    print("barriers", seen[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("what", ["trim", "punch"])
@pytest.mark.parametrize("n", [400, EXTENDED_N], ids=["v02", "extended"])
def test_kill_at_every_step(tmp_path: Path, what: str, n: int) -> None:
    # First learn how many barriers the operation makes, then kill at each.
    probe = run_child(KILL_CHILD, str(tmp_path / "probe.mpp"), str(n), "0", what)
    assert probe.returncode == -signal.SIGKILL, probe.stderr
    total = int(probe.stdout.split()[1])
    steps = sorted({1, 2, 3, 4, total // 2, total - 1, total, total + 1} - {0})
    if n < CHUNK or what == "trim":
        steps = sorted(set(range(1, min(total, 40) + 2)) | set(steps))
    for at in steps:
        path = tmp_path / f"{what}-{at}.mpp"
        out = run_child(KILL_CHILD, str(path), str(n), str(at), what)
        assert out.returncode == -signal.SIGKILL, out.stderr
        with Pager.open(path) as q:
            alloc = sorted(q.allocated_pages())
            for i in alloc:
                assert bytes(q.page(i)[:8]) == i.to_bytes(8, "little"), (at, i)
            assert os.path.getsize(path) >= q.page_count * PS
            q.trim()
            q.punch_free()


# ------------------------------------------------------ crashes: power loss


@pytest.mark.parametrize("n", [300, EXTENDED_N], ids=["v02", "extended"])
def test_power_loss_during_trim_and_punch(tmp_path: Path, n: int) -> None:
    path = tmp_path / "f.mpp"
    rec = CrashRecorder(path, PS)
    hooks = IoHooks(rec.on_barrier)
    p = create_pager(path, PS, hooks)
    ids = p.alloc_bulk(n)
    for i in ids:
        p.page(i)[:] = stamp(i)
    p.sync()
    keep = ids[: n // 5]
    rec.start()
    rec.begin(1, "free the tail")
    p.free_bulk(ids[n // 5 :])
    rec.end(1, "free_bulk")
    rec.begin(2, "trim")
    p.trim()
    rec.end(2, "trim")
    rec.begin(3, "punch")
    p.free_bulk(keep[1::2])
    p.punch_free()
    rec.end(3, "punch")
    rec.stop()
    p.close()
    hooks.check_errors()
    states = [set(ids), set(keep), set(keep[::2])]
    rnd = random.Random(1)
    checked = 0
    img_path = tmp_path / "img.mpp"
    for point in rec.points:
        for image in crash_images(point, PS, exhaustive_pages=3, samples=6, rnd=rnd):
            img_path.write_bytes(image.data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecoveryWarning)
                r = ReadOnlyPager.open(img_path, snapshot=False)
            try:
                alloc = set(r.allocated_pages())
                assert alloc in states, (point.label, image.describe())
                for i in sorted(alloc)[:: max(1, len(alloc) // 50)]:
                    assert bytes(r.page(i)) == stamp(i), (point.label, i)
            finally:
                r.close()
            checked += 1
    assert checked > 20


def test_exported_names() -> None:
    assert callable(mappedpages.Pager.trim)
    assert callable(mappedpages.Pager.punch_free)
    assert callable(mappedpages.Pager.backup)
    assert callable(mappedpages.ReadOnlyPager.backup)
