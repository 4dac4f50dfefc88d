"""One writer per file: the exclusive advisory lock that Pager.open/create take.

A second writer, in this process or another, fails at once with Locked, or
waits up to lock_timeout seconds. Readers take no lock and never block a
writer. The lock lasts for the pager's life and goes with its process.
"""

from __future__ import annotations

import errno
import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support.format_v02 import check_valid_v02
from support.pagers import force_close

import mappedpages
from mappedpages import Locked, MappedPageError, Pager, ReadOnlyPager


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "lock.mpp"
    with Pager.create(p) as w:
        w.alloc_bulk(3)
    return p


# --------------------------------------------------------------------------
# In one process
# --------------------------------------------------------------------------


def test_locked_is_a_mapped_page_error_and_blocking_io_error():
    assert issubclass(Locked, MappedPageError)
    assert issubclass(Locked, BlockingIOError)
    assert issubclass(Locked, OSError)
    assert mappedpages.Locked is Locked


def test_second_writer_in_this_process_fails_at_once(path):
    with Pager.open(path) as first:
        t0 = time.monotonic()
        with pytest.raises(Locked) as info:
            Pager.open(path)
        elapsed = time.monotonic() - t0
        assert elapsed < 0.25, f"a second open without lock_timeout waited {elapsed:.2f} s"
        err = info.value
        assert isinstance(err, MappedPageError)
        assert isinstance(err, BlockingIOError)
        assert err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        assert "lock" in str(err).lower()
        # The first writer is unharmed.
        first.alloc()
        assert len(list(first.allocated_pages())) == 4


def test_create_takes_the_lock(tmp_path):
    p = tmp_path / "new.mpp"
    with Pager.create(p):
        with pytest.raises(Locked):
            Pager.open(p)
    with Pager.open(p) as w:
        assert w.page_count == 4


def test_lock_lasts_for_the_pagers_life(path):
    w = Pager.open(path)
    try:
        for _ in range(3):
            w.alloc()
            with pytest.raises(Locked):
                Pager.open(path)
    finally:
        force_close(w)


def test_lock_timeout_waits_then_fails(path):
    with Pager.open(path):
        t0 = time.monotonic()
        with pytest.raises(Locked):
            Pager.open(path, lock_timeout=0.3)
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 2.0, f"lock_timeout=0.3 gave up after {elapsed:.3f} s"


def test_lock_timeout_succeeds_when_the_holder_closes(path):
    first = Pager.open(path)
    first_ids = list(first.allocated_pages())
    extra = first.alloc()

    def close_later():
        time.sleep(0.2)
        first.close()

    t = threading.Thread(target=close_later)
    t0 = time.monotonic()
    t.start()
    try:
        second = Pager.open(path, lock_timeout=5)
    finally:
        t.join()
    elapsed = time.monotonic() - t0
    try:
        assert first.closed
        assert 0.15 <= elapsed < 4.0, f"waited {elapsed:.3f} s for a lock released at 0.2 s"
        assert list(second.allocated_pages()) == first_ids + [extra]
        second.alloc()
    finally:
        force_close(second)


def test_lock_timeout_on_create(tmp_path):
    p = tmp_path / "c.mpp"
    with Pager.create(p, lock_timeout=1.5) as w:
        assert w.page_count == 4
    with Pager.open(p, lock_timeout=0) as w:
        assert w.page_count == 4


@pytest.mark.parametrize("bad", [-1, -0.001])
def test_negative_lock_timeout(path, bad):
    with pytest.raises(ValueError):
        Pager.open(path, lock_timeout=bad)
    # The failed call took no lock.
    with Pager.open(path):
        pass


@pytest.mark.parametrize("bad", ["1", None, True, [1]])
def test_lock_timeout_type(path, bad):
    with pytest.raises(TypeError):
        Pager.open(path, lock_timeout=bad)
    with Pager.open(path):
        pass


def test_reader_never_blocks_a_writer(path):
    readers = [ReadOnlyPager.open(path) for _ in range(3)]
    try:
        t0 = time.monotonic()
        with Pager.open(path) as w:  # no lock_timeout: must not wait at all
            assert time.monotonic() - t0 < 0.25
            w.alloc()
            with pytest.raises(Locked):
                Pager.open(path)
        with Pager.open(path):
            pass
    finally:
        for r in readers:
            r.close()


def test_readers_open_while_a_writer_holds_the_lock(path):
    with Pager.open(path) as w:
        w.alloc()
        with ReadOnlyPager.open(path) as r:
            assert list(r.allocated_pages()) == list(w.allocated_pages())


def test_another_writer_can_open_after_close(path):
    for _ in range(5):
        w = Pager.open(path)
        w.alloc()
        w.close()
    with Pager.open(path) as w:
        assert len(list(w.allocated_pages())) == 8
    check_valid_v02(path)


def test_failed_open_leaves_the_lock_with_its_holder(path):
    holder = Pager.open(path)
    try:
        for _ in range(3):
            with pytest.raises(Locked):
                Pager.open(path)
        holder.alloc()
    finally:
        holder.close()
    with Pager.open(path) as w:
        assert len(list(w.allocated_pages())) == 4


def test_dropped_pager_releases_the_lock(path):
    w = Pager.open(path)
    w.alloc()
    del w
    gc.collect()
    with Pager.open(path) as again:
        assert len(list(again.allocated_pages())) == 4


def test_close_refused_for_live_views_keeps_the_lock(path):
    w = Pager.open(path)
    view = w.page(3)
    with pytest.raises(BufferError):
        w.close()
    with pytest.raises(Locked):
        Pager.open(path)
    del view
    w.close()
    with Pager.open(path):
        pass


def test_lock_is_per_file(tmp_path):
    a = Pager.create(tmp_path / "a.mpp")
    b = Pager.create(tmp_path / "b.mpp")
    try:
        with pytest.raises(Locked):
            Pager.open(tmp_path / "a.mpp")
        with pytest.raises(Locked):
            Pager.open(tmp_path / "b.mpp")
    finally:
        a.close()
        b.close()


def test_threads_race_to_open(path):
    """Of many threads opening at once, exactly one holds the writer at a time."""
    holders = []
    failures = []
    errors = []
    barrier = threading.Barrier(6)
    release = threading.Event()

    def opener():
        try:
            barrier.wait()
            w = Pager.open(path)
        except Locked:
            failures.append(1)
            return
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            return
        holders.append(w)
        release.wait(5)
        w.close()

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(holders) == 1 and len(failures) == 5


# --------------------------------------------------------------------------
# Across processes
# --------------------------------------------------------------------------

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys
    from mappedpages import Pager
    w = Pager.open(sys.argv[1])
    w.alloc()
    print("locked", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            w.close()
            print("closed", flush=True)
        elif line.strip() == "quit":
            break
    """
)


class Holder:
    """A child process that opens the file as its writer and waits for orders."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"holder did not start: {line!r} {err[-2000:]}")

    def say(self, what: str) -> str:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def end(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        self.proc.communicate(timeout=30)


def test_writer_in_another_process_locks_us_out(path):
    holder = Holder(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(Locked):
            Pager.open(path)
        assert time.monotonic() - t0 < 0.25
        t0 = time.monotonic()
        with pytest.raises(Locked):
            Pager.open(path, lock_timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 2.0
        # Readers are welcome meanwhile, and see the child's commit.
        with ReadOnlyPager.open(path) as r:
            assert len(list(r.allocated_pages())) == 4
        assert holder.say("close") == "closed"
        with Pager.open(path) as w:
            assert len(list(w.allocated_pages())) == 4
    finally:
        holder.end()


def test_wait_for_a_writer_in_another_process(path):
    holder = Holder(path)
    try:

        def close_later():
            time.sleep(0.2)
            holder.say("close")

        t = threading.Thread(target=close_later)
        t0 = time.monotonic()
        t.start()
        try:
            w = Pager.open(path, lock_timeout=5)
        finally:
            t.join()
        assert 0.15 <= time.monotonic() - t0 < 4.0
        w.close()
    finally:
        holder.end()


def test_lock_goes_with_a_killed_process(path):
    holder = Holder(path)
    with pytest.raises(Locked):
        Pager.open(path)
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.communicate(timeout=30)
    assert holder.proc.returncode == -signal.SIGKILL
    with Pager.open(path, lock_timeout=2) as w:
        assert len(list(w.allocated_pages())) == 4
    check_valid_v02(path)


def test_our_writer_locks_out_another_process(path):
    code = textwrap.dedent(
        """
        import sys, time
        from mappedpages import Locked, Pager, ReadOnlyPager
        try:
            Pager.open(sys.argv[1])
        except Locked:
            print("locked")
        else:
            print("opened")
        t0 = time.monotonic()
        try:
            Pager.open(sys.argv[1], lock_timeout=0.2)
        except Locked:
            print("locked-after", round(time.monotonic() - t0, 1))
        with ReadOnlyPager.open(sys.argv[1]) as r:
            print("reader", len(list(r.allocated_pages())))
        """
    )
    with Pager.open(path) as w:
        w.alloc()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split("\n")
        assert lines[0] == "locked", proc.stdout
        assert lines[1].startswith("locked-after"), proc.stdout
        assert float(lines[1].split()[1]) >= 0.2
        assert lines[2] == "reader 4", proc.stdout
        w.alloc()  # still ours
