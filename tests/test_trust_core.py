"""The core trusts no memory the caller can change, and refusing a file is cheap.

- free_bulk and alloc_bulk read the caller's id buffer once, into memory the
  core owns: a thread changing that buffer meanwhile cannot make the core free
  pages 0-2, touch memory past its bitmaps, or zero a page it did not hand out.
- Refusing a hostile file costs memory bounded by what the file holds, not by
  the page count or page size it claims (checked with ru_maxrss in a child).
- create builds the file under a temporary name and links it into place, so a
  crash leaves no file or a complete one under the final name.
- Small argument promises: bool is not an id, lock() on a closed pager, a
  non-finite lock_timeout, out= that is not a buffer, a page-size mismatch.

Risky sequences run in a child process, which must end cleanly (no signal).
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.edit import edit_meta, patch, read_at
from support.pagers import kill_when_ready
from support.rust_fixtures import TESTS_DIR

import mappedpages as mp


def run_child(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter; fail on a signal or a non-zero exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode >= 0, (
        f"child killed by {signal.Signals(-proc.returncode).name}:\n{proc.stderr}"
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


# --------------------------------------------------------------------------
# free_bulk / alloc_bulk and a buffer another thread changes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "numpy"])
def test_free_bulk_buffer_changed_by_another_thread(tmp_path: Path, kind: str) -> None:
    """Ids swapped for 1, 2 and 2**40 during free_bulk: no signal, pages 0-2 never freed."""
    if kind == "numpy":
        pytest.importorskip("numpy")
    path = tmp_path / "race.mpp"
    run_child(
        f"""
        import threading, time
        from array import array
        import mappedpages as mp

        N = 20000
        p = mp.Pager.create({str(path)!r}, 1024)
        ids = p.alloc_bulk(N)
        good = array("Q", ids)
        bad = array("Q", ids)
        for i in range(0, N, 7):
            bad[i] = (1, 2, 1 << 40)[i % 3]
        if {kind!r} == "numpy":
            import numpy
            good = numpy.array(good, dtype=numpy.uint64)
            bad = numpy.array(bad, dtype=numpy.uint64)
            buf = good.copy()
        else:
            buf = array("Q", good)
        stop = False

        def mutate():
            while not stop:
                buf[:] = bad
                buf[:] = good

        t = threading.Thread(target=mutate)
        t.start()
        freed = failed = 0
        deadline = time.monotonic() + 3.0
        try:
            while time.monotonic() < deadline:
                try:
                    p.free_bulk(buf)
                except (mp.ReservedPage, mp.OutOfBounds, mp.DoubleFree):
                    # (a copy taken mid-change may hold one bad id twice)
                    failed += 1
                    continue
                freed += 1
                again = p.alloc_bulk(N)
                assert min(again) >= 3, f"a reserved page was handed out: {{min(again)}}"
                assert sorted(again) == sorted(ids), "free_bulk freed other pages than checked"
        finally:
            stop = True
            t.join()
        p.close()
        with mp.Pager.open({str(path)!r}) as q:
            assert sorted(q.allocated_pages()) == sorted(ids)
        print(freed, failed)
        """
    )


def test_alloc_bulk_out_changed_by_another_thread(tmp_path: Path) -> None:
    """out= overwritten with 0, 1 and 2**40 while zeroing: no signal, the file still opens."""
    path = tmp_path / "race.mpp"
    run_child(
        f"""
        import threading, time
        from array import array
        import mappedpages as mp

        N = 2000
        p = mp.Pager.create({str(path)!r}, 1024, durability="none")
        p.free_bulk(p.alloc_bulk(N))
        hostile = array("Q", [(0, 1, 1 << 40)[i % 3] for i in range(N)])
        out = array("Q", bytes(8 * N))
        stop = False

        def mutate():
            while not stop:
                out[:] = hostile

        t = threading.Thread(target=mutate)
        t.start()
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                p.alloc_bulk(N, zero=True, out=out)
                p.free_bulk(list(p.allocated_pages()))
        finally:
            stop = True
            t.join()
        p.close()
        with mp.Pager.open({str(path)!r}) as q:
            assert q.free_page_count == q.page_count - 3
        """
    )


@pytest.mark.parametrize("durability", ["compat", "fast", "none"])
def test_alloc_bulk_out_is_a_view_of_a_page_it_zeroes(tmp_path: Path, durability: str) -> None:
    """out= a view of the free page handed out first: ids right, page 0 intact after a crash."""
    path = tmp_path / "self.mpp"
    proc = run_child(
        f"""
        import json, os
        import mappedpages as mp

        p = mp.Pager.create({str(path)!r}, 4096, durability={durability!r})
        first = p.alloc()
        p.free(first)
        p.sync()
        page = p.page(first)
        page[:] = b"\\xff" * len(page)
        out = page.cast("Q")[:8]
        p.alloc_bulk(8, zero=True, out=out)
        ids = list(out)
        print(json.dumps(ids))
        assert ids[0] == first, ids
        assert sorted(ids) == sorted(set(ids)) and min(ids) >= 3, ids
        assert sorted(ids) == sorted(p.allocated_pages()), ids
        for i in ids[1:]:
            assert bytes(p.page(i)) == bytes(len(page)), f"page {{i}} not zeroed"
        os._exit(0)  # a crash: no close(), nothing flushed at exit
        """
    )
    ids = json.loads(proc.stdout.strip().splitlines()[-1])
    with mp.Pager.open(path) as q:
        assert q.page_size == 4096
        if durability != "none":
            assert sorted(q.allocated_pages()) == sorted(ids)


@pytest.mark.parametrize("out", [[0] * 4, (0,) * 4, "abcd", b"\0" * 32, range(4), 7])
def test_alloc_bulk_out_not_a_buffer_raises_type_error(new_pager, out: object) -> None:
    before = (new_pager.page_count, new_pager.free_page_count)
    with pytest.raises(TypeError, match=type(out).__name__):
        new_pager.alloc_bulk(4, out=out)
    assert (new_pager.page_count, new_pager.free_page_count) == before
    assert list(new_pager.allocated_pages()) == []


# --------------------------------------------------------------------------
# Refusing hostile files costs what is in them
# --------------------------------------------------------------------------

# ru_maxrss grows by what the open touches; the bound is far above an honest
# open of these files and far below what the claims used to cost.
RSS_BOUND_MB = 100


def _open_costs(path: Path, read_only: bool) -> tuple[str, float]:
    """Open path in a child; return the exception's class name and the RSS growth in MiB."""
    cls = "ReadOnlyPager" if read_only else "Pager"
    proc = run_child(
        f"""
        import resource
        import mappedpages as mp
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            mp.{cls}.open({str(path)!r})
            name = "opened"
        except Exception as exc:
            name = type(exc).__name__
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(name, (after - before) / 1024)
        """
    )
    name, mib = proc.stdout.split()
    return name, float(mib)


@pytest.mark.parametrize("read_only", [False, True])
def test_hostile_total_costs_nothing_per_claimed_page(tmp_path: Path, read_only: bool) -> None:
    """Both copies claim 2**30 pages of a sparse extended file: refused, no per-page memory."""
    path = tmp_path / "claims.mpp"
    ps = 1024
    mp.Pager.create(path, ps).close()
    total = 1 << 30
    for copy in (0, 1):
        edit_meta(path, copy, total_pages=total, generation=5 + copy, free_count=0)
    patch(path, 5, b"\x03")  # minor version 3, the extended layout
    patch(path, 13, b"EXT")
    try:
        os.truncate(path, total * ps)
    except OSError as exc:
        pytest.fail(f"this file system cannot hold a sparse 1 TiB file: {exc}")
    name, mib = _open_costs(path, read_only)
    assert name == "CorruptMetadata"
    assert mib < RSS_BOUND_MB, f"refusing the file grew the process by {mib:.0f} MiB"


@pytest.mark.parametrize("read_only", [False, True])
def test_huge_page_superblock_refused_cheaply(tmp_path: Path, read_only: bool) -> None:
    """A superblock claiming 1 GiB pages over a sparse 4 GiB file: refused without copying GiBs."""
    path = tmp_path / "huge.mpp"
    mp.Pager.create(path, 4096).close()
    patch(path, 8, struct.pack("<I", 30))
    os.truncate(path, 4 << 30)
    name, mib = _open_costs(path, read_only)
    assert name == "CorruptMetadata"
    assert mib < RSS_BOUND_MB, f"refusing the file grew the process by {mib:.0f} MiB"


def _reader_and_writer_faults(path: Path) -> tuple[int, int]:
    """Page faults of refusing path: a writer's open (one look), then a reader's."""
    proc = run_child(
        f"""
        import resource
        import mappedpages as mp

        def faults(cls):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            try:
                cls.open({str(path)!r})
            except mp.CorruptMetadata:
                pass
            else:
                raise AssertionError("opened")
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        faults(mp.Pager)  # the file's pages come into the page cache once
        print(faults(mp.Pager), faults(mp.ReadOnlyPager))
        """
    )
    writer, reader = (int(v) for v in proc.stdout.split())
    return writer, reader


# Each look copies pages 0-2 into fresh memory (16 MiB pages: 48 MiB, so malloc
# maps it anew and every look shows in the page-fault count); a writer never
# retries, so its count is what one look costs.
BIG_PAGE = 1 << 24


def test_damage_with_intact_crcs_is_not_retried_as_a_race(tmp_path: Path) -> None:
    """Both copies sealed by their CRCs but impossible: a reader looks once, as a writer does."""
    path = tmp_path / "sealed.mpp"
    mp.Pager.create(path, BIG_PAGE).close()
    for copy in (0, 1):
        edit_meta(path, copy, free_count=99)
    writer, reader = _reader_and_writer_faults(path)
    assert reader < 2 * writer + 1000, f"reader {reader} page faults, writer {writer}"


def test_reader_retries_of_huge_pages_fit_a_budget(tmp_path: Path) -> None:
    """Both copies fail their CRCs (a race could explain it): with 16 MiB pages, one retry."""
    path = tmp_path / "torn.mpp"
    mp.Pager.create(path, BIG_PAGE).close()
    for copy in (0, 1):
        edit_meta(path, copy, raw={100: 0x5A}, fix_crc=False)
    writer, reader = _reader_and_writer_faults(path)
    assert reader < 3 * writer + 1000, f"reader {reader} page faults, writer {writer}"


# --------------------------------------------------------------------------
# Atomic create
# --------------------------------------------------------------------------


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.startswith(f".{name}.") and f.endswith(".tmp"))


def test_create_killed_before_the_name_leaves_no_file(tmp_path: Path) -> None:
    """Killed inside create (blocked after the fsync): nothing under the final name,
    and on Linux nothing at all (the file is made without a name, O_TMPFILE, and
    goes with the killed process); elsewhere its temporary file stays."""
    path = tmp_path / "new.mpp"
    code = f"""
        import sys, time
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from support.iohooks import IoHooks, create_pager

        def stop_here(kind, offset, length):
            print("ready", flush=True)
            time.sleep(600)

        create_pager({str(path)!r}, 1024, IoHooks(stop_here))
        """
    kill_when_ready([sys.executable, "-c", textwrap.dedent(code)], 0.05)
    assert not path.exists(), "a partial file was left under the final name"
    if sys.platform.startswith("linux"):
        assert os.listdir(tmp_path) == []
    else:
        assert len(_leftovers(tmp_path, path.name)) == 1  # the killed create's temporary file
    with pytest.raises(FileNotFoundError):
        mp.ReadOnlyPager.open(path)
    with mp.Pager.create(path, 1024) as p:
        assert p.page_count == 4
    with mp.Pager.open(path) as p:
        assert p.free_page_count == 1


@pytest.mark.parametrize("kind", ["fsync", "fallocate", "ftruncate"])
def test_create_failing_leaves_nothing(tmp_path: Path, kind: str) -> None:
    """An I/O failure inside create: OSError, no file, no temporary file left."""
    import errno

    from support.iohooks import KINDS, IoHooks, create_pager

    hooks = IoHooks()
    hooks.fail(KINDS[kind], 1, errno.EIO, persistent=True)
    path = tmp_path / "new.mpp"
    try:
        create_pager(path, 1024, hooks).close()
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        # This call did not reach that kind (e.g. fallocate unsupported): nothing to check.
        assert hooks.calls(KINDS[kind]) == 0
        return
    assert not path.exists()
    assert _leftovers(tmp_path, path.name) == []
    with mp.Pager.create(path, 1024) as p:
        assert p.page_count == 4


def test_create_on_an_existing_path_touches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "there.mpp"
    path.write_bytes(b"not a pager" * 100)
    with pytest.raises(FileExistsError):
        mp.Pager.create(path, 1024)
    assert path.read_bytes() == b"not a pager" * 100
    link = tmp_path / "dangling.mpp"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        mp.Pager.create(link, 1024)
    assert not (tmp_path / "nowhere").exists()
    assert _leftovers(tmp_path, "there.mpp") == [] and _leftovers(tmp_path, "dangling.mpp") == []


def test_create_holds_the_lock_on_the_final_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.mpp"
    with mp.Pager.create(path, 1024) as p:
        assert p.alloc() == 3
        with pytest.raises(mp.Locked):
            mp.Pager.open(path)
        assert _leftovers(tmp_path, path.name) == []
    with mp.Pager.open(path) as q:
        assert list(q.allocated_pages()) == [3]


def test_create_with_a_long_name(tmp_path: Path) -> None:
    """The temporary name stays within the file system's limit for a 250-byte name."""
    path = tmp_path / ("n" * 250)
    with mp.Pager.create(path, 1024) as p:
        assert p.page_count == 4
    # Beside it only its reader table, under a short name of its own (the
    # file's name plus "-readers" would pass the limit).
    others = sorted(n for n in os.listdir(tmp_path) if n != path.name)
    assert len(others) == 1 and others[0].startswith(".mp-") and others[0].endswith("-readers")


# --------------------------------------------------------------------------
# Small argument promises
# --------------------------------------------------------------------------


def test_bool_is_not_an_id(new_pager) -> None:
    new_pager.alloc_bulk(3)
    for call in (
        lambda: new_pager.page(True),
        lambda: new_pager.free(True),
        lambda: new_pager.view(True, 1),
        lambda: new_pager.view(3, True),
        lambda: new_pager.alloc_bulk(True),
        lambda: new_pager.free_bulk([True]),
        lambda: mp.SubPageAllocator(new_pager, True),
    ):
        with pytest.raises(TypeError, match="bool"):
            call()
    assert new_pager.free_page_count == new_pager.page_count - 6


def test_lock_on_a_closed_pager(new_pager) -> None:
    new_pager.close()
    with pytest.raises(ValueError):
        new_pager.lock()


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf])
def test_lock_timeout_must_be_finite(tmp_path: Path, timeout: float) -> None:
    path = tmp_path / "t.mpp"
    with pytest.raises(ValueError, match=str(timeout)):
        mp.Pager.create(path, 1024, lock_timeout=timeout)
    assert not path.exists()
    mp.Pager.create(path, 1024).close()
    with pytest.raises(ValueError, match=str(timeout)):
        mp.Pager.open(path, lock_timeout=timeout)


def test_page_size_mismatch_names_the_files_size(tmp_path: Path) -> None:
    path = tmp_path / "ps.mpp"
    mp.Pager.create(path, 4096).close()
    with pytest.raises(mp.InvalidPageSize, match=r"page size is 4096.*8192"):
        mp.Pager.open(path, 8192)
    with pytest.raises(mp.InvalidPageSize, match=r"page size is 4096.*1024"):
        mp.ReadOnlyPager.open(path, 1024)
    assert read_at(path, 0, 4) == b"MPPG"
