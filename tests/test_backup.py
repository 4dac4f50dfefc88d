"""Online backup: Pager.backup, ReadOnlyPager.backup and ``mappedpages backup``/``compact``.

The copies are checked page by page against the commit they copy, and, for
v0.2 sources, with the tests' own reader of the format (conftest.py), which
never goes through the pager: what the Rust crate requires of a file.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
from support.format_v02 import check_valid_v02
from support.format_v03 import read_v03

from mappedpages import Pager, ReadOnlyPager, RecoveryWarning

PS = 1024
CHUNK = 7968
TESTS = Path(__file__).resolve().parent


def stamp(pid: int, salt: int = 0) -> bytes:
    return (pid * 7919 + salt).to_bytes(8, "little") * (PS // 8)


def open_clean(path: Path) -> ReadOnlyPager:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        return ReadOnlyPager.open(path, snapshot=False)


def same_commit(src: ReadOnlyPager | Pager, dst: ReadOnlyPager) -> None:
    """dst holds exactly src's commit: pages, counts, protected pages, content."""
    assert dst.page_count == src.page_count
    assert dst.free_page_count == src.free_page_count
    alloc = sorted(src.allocated_pages())
    assert sorted(dst.allocated_pages()) == alloc
    for i in alloc:
        assert bytes(dst.page(i)) == bytes(src.page(i)), i
    prot = sorted(src.allocated_protected_pages())
    assert sorted(dst.allocated_protected_pages()) == prot
    for pid in prot:
        assert bytes(dst.protected_page(pid)) == bytes(src.protected_page(pid)), pid
        assert dst.verify_protected(pid)


def populate(p: Pager, n: int, rnd: random.Random) -> None:
    ids = p.alloc_bulk(n)
    for i in ids:
        p.page(i)[:] = stamp(i)
    p.free_bulk(sorted(rnd.sample(ids, n // 2)))
    for k in range(3):
        pid = p.alloc_protected()
        with p.write_protected(pid) as w:
            w.page[:] = stamp(pid, 100 + k)
    p.sync()


def test_backup_of_a_v02_file_is_a_v02_file_with_the_same_commit(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, PS, durability="fast") as p:
        populate(p, 800, random.Random(1))
        p.backup(dst)
        with open_clean(dst) as r:
            same_commit(p, r)
            assert r.format_version.startswith("0.2")
    img = check_valid_v02(dst)
    assert img.minor == 2
    with Pager.open(src) as p:
        allocated = sorted(set(p.allocated_pages()))
    check_valid_v02(dst, allocated=allocated)


def test_backup_of_an_extended_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, PS, preallocate=False) as p:
        populate(p, CHUNK + 3000, random.Random(2))
        p.backup(dst)
        with open_clean(dst) as r:
            same_commit(p, r)
    img = read_v03(dst)
    assert img.problems == [] and img.state == "extended"


def test_the_copy_is_sparse(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, 4096, preallocate=False) as p:
        ids = p.alloc_bulk(20000)
        keep = set(random.Random(3).sample(ids, 500))
        for i in keep:
            p.page(i)[:8] = b"livepage"
        p.free_bulk(sorted(set(ids) - keep))
        p.backup(dst)
        live = (p.page_count - p.free_page_count) * 4096
    assert os.path.getsize(dst) == os.path.getsize(src)
    assert os.stat(dst).st_blocks * 512 <= 1.1 * live + 64 * 4096


def test_existing_destination_raises_and_is_left_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    dst.write_bytes(b"precious")
    with Pager.create(src, PS) as p:
        p.alloc()
        with pytest.raises(FileExistsError):
            p.backup(dst)
        with p.snapshot() as r, pytest.raises(FileExistsError):
            r.backup(dst)
    assert dst.read_bytes() == b"precious"
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_a_reader_backs_up_its_own_snapshot(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, PS) as p:
        populate(p, 300, random.Random(4))
        snap = p.snapshot()
        expected = {i: bytes(snap.page(i)) for i in snap.allocated_pages()}
        # The writer moves on: frees everything, allocates new pages.
        p.free_bulk(list(p.allocated_pages()))
        for i in p.alloc_bulk(200):
            p.page(i)[:] = stamp(i, 9)
        snap.backup(dst)
        with open_clean(dst) as r:
            assert {i: bytes(r.page(i)) for i in r.allocated_pages()} == expected
            assert r.generation == snap.generation
        snap.close()


def test_backup_under_a_writer_committing_in_another_process(tmp_path: Path) -> None:
    # The writer allocates, stamps, frees and rewrites protected pages as fast
    # as it can; a page's content never changes while it is allocated. Each
    # page is stamped in the transaction that allocates it: stamped after its
    # alloc commit, a fresh page would be zero in that commit (and its backup)
    # and stamped when the test reads the live file.
    src = tmp_path / "a.mpp"
    writer = textwrap.dedent(
        """
        import random, sys
        from mappedpages import Pager
        p = Pager.create(sys.argv[1], 1024, durability="fast")
        pids = [p.alloc_protected() for _ in range(4)]
        live = []
        rnd = random.Random(5)
        print("ready", flush=True)
        n = 0
        while True:
            with p.transaction() as tx:
                for i in p.alloc_bulk(rnd.randrange(1, 40)):
                    tx.page(i)[:] = ((i * 7919).to_bytes(8, "little")) * 128
                    live.append(i)
            rnd.shuffle(live)
            cut = rnd.randrange(len(live) + 1) // 2
            if cut:
                p.free_bulk(live[:cut])
                del live[:cut]
            pid = pids[n % 4]
            with p.write_protected(pid) as w:
                w.page[:8] = n.to_bytes(8, "little")
            n += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(src)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
        for k in range(5):
            dst = tmp_path / f"b{k}.mpp"
            with ReadOnlyPager.open(src) as snap:
                for _attempt in range(20):
                    try:
                        snap.backup(dst)
                        break
                    except Exception as exc:  # noqa: BLE001 - Unavailable: try a newer commit
                        from mappedpages import Unavailable

                        assert isinstance(exc, Unavailable), exc
                        snap.refresh()
                else:
                    pytest.fail("no backup succeeded in 20 commits")
                with open_clean(dst) as r:
                    assert r.generation == snap.generation
                    same_commit(snap, r)
                    for i in r.allocated_pages():
                        assert bytes(r.page(i)[:8]) == (i * 7919).to_bytes(8, "little")
            time.sleep(0.05)
        assert proc.poll() is None, "the writer stopped"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


def test_writer_backup_while_other_threads_commit(tmp_path: Path) -> None:
    src = tmp_path / "a.mpp"
    stop = threading.Event()
    errors: list[BaseException] = []
    with Pager.create(src, PS, durability="fast") as p:
        populate(p, 500, random.Random(6))

        def churn() -> None:
            rnd = random.Random(7)
            try:
                # Bounded: pages freed under a backup's pin are not reused, so
                # endless churn would grow the file past v0.2's cap.
                for _ in range(300):
                    if stop.is_set():
                        break
                    # A page is stamped in the same hold of the lock that
                    # allocates it: a commit never shows it allocated unstamped.
                    with p.lock():
                        ids = p.alloc_bulk(rnd.randrange(1, 30))
                        for i in ids:
                            p.page(i)[:] = stamp(i)
                    p.free_bulk(ids[: len(ids) // 2])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=churn) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for k in range(4):
                dst = tmp_path / f"b{k}.mpp"
                p.backup(dst)
                with open_clean(dst) as r:
                    for i in r.allocated_pages():
                        assert bytes(r.page(i)) == stamp(i), i
                    for pid in r.allocated_protected_pages():
                        assert r.verify_protected(pid)
                check_valid_v02(dst)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not errors, errors


def test_killed_backup_leaves_nothing_at_dest(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, 4096, preallocate=False) as p:
        ids = p.alloc_bulk(60000)
        for i in ids[::2]:
            p.page(i)[:8] = b"xxxxxxxx"
        p.sync()
    code = textwrap.dedent(
        """
        import sys
        from mappedpages import ReadOnlyPager
        r = ReadOnlyPager.open(sys.argv[1])
        print("ready", flush=True)
        while True:
            r.backup(sys.argv[2])
            import os
            os.unlink(sys.argv[2])
        """
    )
    for delay in (0.0, 0.02, 0.05, 0.1):
        proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        if sys.platform.startswith("linux"):
            # The copy is made without a name (O_TMPFILE): a kill leaves no file.
            left = {f.name for f in tmp_path.iterdir()} - {"a.mpp", "a.mpp-readers"}
            assert left in (set(), {"b.mpp"}), left
        if dst.exists():
            # Only a whole copy is ever published.
            with open_clean(dst) as r:
                assert len(list(r.allocated_pages())) == len(ids)
            dst.unlink()


# ---------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mappedpages", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_backup_and_compact(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.mpp", tmp_path / "b.mpp"
    with Pager.create(src, PS) as p:
        ids = p.alloc_bulk(3000)
        for i in ids:
            p.page(i)[:] = stamp(i)
        p.free_bulk(ids[200:])
    out = cli("backup", str(src), str(dst), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "->" in out.stdout and out.stderr == ""
    with open_clean(dst) as r:
        assert sorted(r.allocated_pages()) == ids[:200]
    again = cli("backup", str(src), str(dst))
    assert again.returncode != 0 and "exists" in again.stderr
    size = os.path.getsize(src)
    out = cli("compact", str(src))
    assert out.returncode == 0, out.stderr
    assert "gave back" in out.stdout
    assert os.path.getsize(src) < size
    with open_clean(src) as r:
        assert sorted(r.allocated_pages()) == ids[:200]


def test_cli_compact_refuses_a_held_file_naming_the_holder(tmp_path: Path) -> None:
    src = tmp_path / "a.mpp"
    with Pager.create(src, PS) as p:
        p.free_bulk(p.alloc_bulk(500))
        out = cli("compact", str(src))
        assert out.returncode != 0
        assert "Locked" in out.stderr or "writer holds" in out.stderr
        assert f"pid {os.getpid()}" in out.stderr
        assert p.page_count > 4


def test_cli_progress_bar_for_slow_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from mappedpages import _cli, _cli_space

    src, dst, dst2 = tmp_path / "a.mpp", tmp_path / "b.mpp", tmp_path / "c.mpp"
    with Pager.create(src, PS) as p:
        p.alloc_bulk(100)
    monkeypatch.setattr(_cli_space, "_BAR_AFTER", 0.0)
    real = ReadOnlyPager._backup

    def slow(self: ReadOnlyPager, dest: object, progress: object) -> int:
        time.sleep(0.3)
        return real(self, dest, progress)

    monkeypatch.setattr(ReadOnlyPager, "_backup", slow)
    assert _cli.main(["backup", str(src), str(dst)]) == 0
    err = capsys.readouterr().err
    assert "backup [" in err and "100%" in err
    assert _cli.main(["backup", str(src), str(dst2), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
