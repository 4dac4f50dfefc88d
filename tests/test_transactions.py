"""Transactions: ``with pager.transaction():`` as one atomic commit.

What is checked, in every durability mode where it matters:

* commit: everything done in the block is applied, in one metadata commit
  (the newest metadata copy's generation goes up by exactly one, read from
  the raw file) and one page-0 write that switches every protected page
  written in the block;
* rollback: an exception in the block (the caller's or the library's) undoes
  everything: allocations, frees, growth (the pages stay, free), protected
  writes, protected allocs and frees; the file on disk is untouched;
* nesting joins the outermost block; reads inside see the block's own
  changes, a ReadOnlyPager does not until the commit; pages freed inside are
  not reused inside; a protected page is written at most once per block;
  ``sync()`` is refused inside, SubPageAllocator calls join the block; the block holds
  the pager's lock;
* crashes: the file is copied at every durability barrier of a commit (what a
  kill at that instant leaves) and judged; the power-loss model of
  tests/iohooks.py runs transactions in every mode; the one known limit of
  the v0.2 layout (a crash between the page-0 commit and the metadata commit
  of a transaction that mixes both kinds of change) leaves exactly what the
  README says; a child process running transactions in a loop is killed with
  SIGKILL and each reopen shows all or nothing of the last transaction's
  protected writes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
import zlib
from pathlib import Path

import pytest
from support.format_v02 import read_image
from support.iohooks import DURABILITY_MODES, IoHooks, create_pager
from support.pagers import force_close, kill_when_ready
from support.powerloss import ImageChecker, check_recording, record_workload
from support.workloads import Op, count_problem, state_of

from mappedpages import (
    DoubleFree,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
    SubPageAllocator,
    Transaction,
    WriterOpen,
)
from mappedpages._core import lib

REPO = Path(__file__).resolve().parents[1]
KILL_ROUNDS = int(os.environ.get("MAPPEDPAGES_KILL_ROUNDS", "4"))

modes = pytest.mark.parametrize("mode", DURABILITY_MODES)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fill(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write(p: Pager, pid: int, data: bytes) -> None:
    with p.write_protected(pid) as w:
        w.page[:] = data


def content(p, pid: int) -> bytes:
    v = p.protected_page(pid)
    try:
        return bytes(v)
    finally:
        v.release()


def snapshot(p) -> dict:
    """Everything a transaction may change, as seen through the API."""
    return {
        "allocated": list(p.allocated_pages()),
        "protected": {pid: zlib.crc32(content(p, pid)) for pid in p.allocated_protected_pages()},
        "free": p.free_page_count,
        "pages": p.page_count,
    }


def same_but_maybe_grown(before: dict, after: dict) -> None:
    assert after["allocated"] == before["allocated"]
    assert after["protected"] == before["protected"]
    assert after["pages"] >= before["pages"]
    # Pages added by growth inside a rolled-back block are free.
    assert after["free"] == before["free"] + (after["pages"] - before["pages"])


def newest_generation(path) -> int:
    img = read_image(path)
    return img.newest().generation


def new_pager(tmp_path, mode: str, name: str = "t.mpp", page_size: int = 4096) -> Pager:
    return Pager.create(tmp_path / name, page_size, durability=mode)


def reopen_snapshot(path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        with Pager.open(path) as q:
            return snapshot(q)


class Boom(Exception):
    pass


# --------------------------------------------------------------------------
# commit
# --------------------------------------------------------------------------


@modes
def test_commit_applies_everything(tmp_path, mode):
    p = new_pager(tmp_path, mode)
    try:
        keep = p.alloc_bulk(6)
        pids = [p.alloc_protected() for _ in range(3)]
        ps = p.page_size
        with p.transaction() as t:
            assert isinstance(t, Transaction) and t.pager is p
            a = p.alloc()
            b = p.alloc(zero=True)
            p.free(keep[0])
            bulk = p.alloc_bulk(4)
            p.free_bulk([keep[1], keep[2]])
            new_pid = p.alloc_protected()
            p.free_protected(pids[2])
            write(p, pids[0], fill(1, ps))
            write(p, new_pid, fill(2, ps))
        expected = sorted(set(keep[3:]) | {a, b} | set(bulk))
        assert list(p.allocated_pages()) == expected
        assert list(p.allocated_protected_pages()) == sorted([pids[0], pids[1], new_pid])
        assert content(p, pids[0]) == fill(1, ps)
        assert content(p, new_pid) == fill(2, ps)
        assert p.verify_protected(pids[0]) and p.verify_protected(new_pid)
        want = snapshot(p)
    finally:
        force_close(p)
    assert reopen_snapshot(tmp_path / "t.mpp") == want


@pytest.mark.parametrize("mode", ["compat", "fast"])
def test_one_metadata_commit_per_transaction(tmp_path, mode):
    """The newest metadata copy's generation rises by exactly one per block."""
    path = tmp_path / "gen.mpp"
    hooks = IoHooks()
    hooks.record_barriers = True
    p = create_pager(path, 4096, hooks, durability=mode)
    try:
        keep = p.alloc_bulk(20)
        pids = [p.alloc_protected() for _ in range(3)]
        gen = newest_generation(path)
        hooks.barriers.clear()
        with p.transaction():
            for _ in range(50):
                p.alloc()
            p.free_bulk(keep[:10])
            for pid in keep[10:15]:
                p.free(pid)
            p.alloc_bulk(7)
        assert newest_generation(path) == gen + 1
        msyncs = [off // 4096 for kind, off, _ in hooks.barriers if kind == lib.MP_IO_MSYNC]
        assert msyncs.count(1) + msyncs.count(2) == 1, msyncs  # one metadata flush
        assert msyncs.count(0) == (1 if mode == "compat" else 0), msyncs

        gen = newest_generation(path)
        hooks.barriers.clear()
        with p.transaction():
            p.alloc()
            for i, pid in enumerate(pids):
                write(p, pid, fill(i, 4096))
        assert newest_generation(path) == gen + 1
        msyncs = [off // 4096 for kind, off, _ in hooks.barriers if kind == lib.MP_IO_MSYNC]
        assert msyncs.count(1) + msyncs.count(2) == 1, msyncs
        # Page 0 switches all three protected pages in one write (plus, in
        # "compat", the rewrite that names the new metadata copy).
        assert msyncs.count(0) == (2 if mode == "compat" else 1), msyncs
    finally:
        force_close(p)


def test_none_mode_transaction_defers_like_any_commit(tmp_path):
    path = tmp_path / "none.mpp"
    hooks = IoHooks()
    p = create_pager(path, 4096, hooks, durability="none")
    try:
        p.alloc_bulk(8)
        p.sync()
        gen = newest_generation(path)
        before = hooks.counts()
        with p.transaction():
            ids = [p.alloc() for _ in range(5)]
            p.free(ids[0])
        assert hooks.counts() == before  # no flush, no write of the metadata
        assert newest_generation(path) == gen
        p.sync()
        assert newest_generation(path) == gen + 1
        img = read_image(path)
        assert img.selected().generation == gen + 1
    finally:
        force_close(p)


# --------------------------------------------------------------------------
# rollback
# --------------------------------------------------------------------------


@modes
def test_exception_rolls_everything_back(tmp_path, mode):
    p = new_pager(tmp_path, mode)
    try:
        keep = p.alloc_bulk(5)
        pids = [p.alloc_protected() for _ in range(3)]
        for i, pid in enumerate(pids):
            write(p, pid, fill(100 + i, p.page_size))
        p.sync()
        before = snapshot(p)
        system_before = set(p._system)
        gen = newest_generation(tmp_path / "t.mpp")
        with pytest.raises(Boom):
            with p.transaction():
                p.alloc()
                p.free(keep[0])
                p.alloc_bulk(40)  # grows the file
                p.free_bulk(keep[1:3])
                write(p, pids[0], fill(1, p.page_size))
                write(p, pids[1], fill(2, p.page_size))
                p.free_protected(pids[2])
                for _ in range(140):  # fills the first directory block: a new block
                    p.alloc_protected()
                raise Boom
        after = snapshot(p)
        same_but_maybe_grown(before, after)
        assert set(p._system) == system_before
        for i, pid in enumerate(pids):
            assert content(p, pid) == fill(100 + i, p.page_size)
            assert p.verify_protected(pid)
        assert newest_generation(tmp_path / "t.mpp") == gen
        # The pager goes on working, and what the block allocated is free again.
        more = p.alloc_bulk(10)
        assert not set(more) & set(keep[3:])
        write(p, pids[2], fill(3, p.page_size))
        p.free_bulk(more)
        want = snapshot(p)
    finally:
        force_close(p)
    assert reopen_snapshot(tmp_path / "t.mpp") == want


@modes
def test_a_library_error_inside_rolls_back(tmp_path, mode):
    p = new_pager(tmp_path, mode)
    try:
        keep = p.alloc_bulk(3)
        before = snapshot(p)
        with pytest.raises(DoubleFree):
            with p.transaction():
                p.alloc_bulk(4)
                p.free(keep[0])
                p.free(keep[0])
        same_but_maybe_grown(before, snapshot(p))
    finally:
        force_close(p)


@modes
def test_rollback_then_reopen_shows_the_state_before(tmp_path, mode):
    path = tmp_path / "t.mpp"
    p = new_pager(tmp_path, mode)
    try:
        p.alloc_bulk(4)
        pid = p.alloc_protected()
        p.sync()
        before = snapshot(p)
        with pytest.raises(Boom):
            with p.transaction():
                p.alloc_bulk(3)
                write(p, pid, fill(9, p.page_size))
                raise Boom
    finally:
        force_close(p)
    after = reopen_snapshot(path)
    assert after["allocated"] == before["allocated"]
    assert after["protected"] == before["protected"]


def test_rollback_keeps_a_writer_opened_before_the_block(tmp_path):
    """A writer opened before the block is not part of it: after a rollback it
    still commits, and its page can be written again afterwards."""
    p = new_pager(tmp_path, "compat")
    try:
        pid = p.alloc_protected()
        w = p.write_protected(pid)
        w.page[:4] = b"keep"
        with pytest.raises(Boom):
            with p.transaction():
                p.alloc()
                raise Boom
        assert not w.spent
        w.commit()
        assert content(p, pid)[:4] == b"keep"
        write(p, pid, fill(1, p.page_size))
    finally:
        force_close(p)


def test_rollback_releases_writers_opened_inside(tmp_path):
    """A writer left open inside a rolled-back block is discarded: its page can
    be written and freed afterwards."""
    p = new_pager(tmp_path, "compat")
    try:
        pid = p.alloc_protected()
        with pytest.raises(Boom):
            with p.transaction():
                w = p.write_protected(pid)
                w.page[:4] = b"gone"
                raise Boom
        assert w.spent
        write(p, pid, fill(2, p.page_size))
        assert content(p, pid) == fill(2, p.page_size)
        p.free_protected(pid)
    finally:
        force_close(p)


# --------------------------------------------------------------------------
# nesting, reads, reuse, refusals, lock
# --------------------------------------------------------------------------


@modes
def test_nested_blocks_join_the_outer_one(tmp_path, mode):
    path = tmp_path / "t.mpp"
    hooks = IoHooks()
    p = create_pager(path, 4096, hooks, durability=mode)
    try:
        p.alloc_bulk(4)
        p.sync()
        gen = newest_generation(path)
        with p.transaction():
            a = p.alloc()
            with p.transaction():
                b = p.alloc()
                before_inner_end = hooks.counts()
            # The inner block's end commits nothing.
            assert hooks.counts() == before_inner_end
            assert newest_generation(path) == gen
            assert {a, b} <= set(p.allocated_pages())
        if mode != "none":
            assert newest_generation(path) == gen + 1
        assert {a, b} <= set(p.allocated_pages())

        # An exception after an inner block rolls the inner block back too.
        before = snapshot(p)
        with pytest.raises(Boom):
            with p.transaction():
                with p.transaction():
                    p.alloc_bulk(3)
                raise Boom
        same_but_maybe_grown(before, snapshot(p))

        # An exception out of the inner block, not caught, rolls back all.
        with pytest.raises(Boom):
            with p.transaction():
                p.alloc()
                with p.transaction():
                    p.alloc()
                    raise Boom
        same_but_maybe_grown(before, snapshot(p))
    finally:
        force_close(p)


def test_reads_inside_see_the_blocks_own_changes(tmp_path):
    path = tmp_path / "t.mpp"
    p = new_pager(tmp_path, "compat")
    reader = None
    try:
        keep = p.alloc_bulk(4)
        pid = p.alloc_protected()
        ps = p.page_size
        reader = ReadOnlyPager.open(path)
        with p.transaction():
            free_before = p.free_page_count
            a = p.alloc()
            p.free(keep[0])
            assert a in set(p.allocated_pages())
            assert keep[0] not in set(p.allocated_pages())
            assert p.free_page_count == free_before
            grown = p.alloc_bulk(60)
            assert p.page_count >= 64
            assert set(grown) <= set(p.allocated_pages())
            write(p, pid, fill(7, ps))
            assert content(p, pid) == fill(7, ps)
            assert p.verify_protected(pid)
            new_pid = p.alloc_protected()
            assert new_pid in list(p.allocated_protected_pages())
            assert content(p, new_pid) == bytes(ps)
            # Nothing reached the committed state: a reader, even refreshed,
            # sees the state before the block.
            reader.refresh()
            assert a not in set(reader.allocated_pages())
            assert keep[0] in set(reader.allocated_pages())
            assert new_pid not in list(reader.allocated_protected_pages())
            assert bytes(reader.protected_page(pid)) == bytes(ps)
        reader.refresh()
        assert a in set(reader.allocated_pages())
        assert keep[0] not in set(reader.allocated_pages())
        assert new_pid in list(reader.allocated_protected_pages())
        assert bytes(reader.protected_page(pid)) == fill(7, ps)
    finally:
        if reader is not None:
            force_close(reader)
        force_close(p)


@modes
def test_pages_freed_inside_are_not_reused_inside(tmp_path, mode):
    p = new_pager(tmp_path, mode)
    try:
        keep = p.alloc_bulk(8)
        with p.transaction():
            p.free_bulk(keep[:4])
            p.free(keep[4])
            got = [p.alloc() for _ in range(3)] + p.alloc_bulk(5)
            assert not set(got) & set(keep)
            pid = p.alloc_protected()
            assert not set(p._backing(pid)) & set(keep)
        if mode == "none":
            p.sync()
        # Once the frees are durable the pages are reused, lowest first.
        assert p.alloc() == min(keep[:5])
    finally:
        force_close(p)


@modes
def test_alloc_bulk_after_a_block_takes_only_pages_of_the_file(tmp_path, mode):
    """Pages freed in a block become reusable at its commit, below the point
    where later allocations continue: alloc_bulk of exactly the free pages must
    return free pages of the file, and the commit must survive a reopen."""
    path = tmp_path / "t.mpp"
    p = new_pager(tmp_path, mode)
    try:
        ids = p.alloc_bulk(5)  # pages 3..7, a file of 8 pages
        with p.transaction():
            p.free(ids[0])
            p.alloc()  # page 3 is not reusable yet: grows the file
        if mode == "none":
            p.sync()
        n = p.free_page_count
        got = p.alloc_bulk(n)
        assert len(set(got)) == n
        assert max(got) < p.page_count, f"alloc_bulk returned ids past the file: {got}"
        assert ids[0] in got
        want = snapshot(p)
    finally:
        force_close(p)
    assert reopen_snapshot(path) == want


def test_a_protected_page_is_written_once_per_block(tmp_path):
    p = new_pager(tmp_path, "compat")
    try:
        a, b = p.alloc_protected(), p.alloc_protected()
        ps = p.page_size
        with p.transaction():
            write(p, a, fill(1, ps))
            with pytest.raises(WriterOpen):
                p.write_protected(a)
            write(p, b, fill(2, ps))
        assert content(p, a) == fill(1, ps)
        assert content(p, b) == fill(2, ps)
        write(p, a, fill(3, ps))  # a new block may write it again
        assert content(p, a) == fill(3, ps)
    finally:
        force_close(p)


def test_a_discarded_writer_inside_leaves_the_page_as_it_was(tmp_path):
    p = new_pager(tmp_path, "compat")
    try:
        a = p.alloc_protected()
        write(p, a, fill(1, p.page_size))
        with p.transaction():
            w = p.write_protected(a)
            w.page[:] = fill(2, p.page_size)
            w.discard()
            p.alloc()
        assert content(p, a) == fill(1, p.page_size)
    finally:
        force_close(p)


def test_sync_inside_is_refused(tmp_path):
    p = new_pager(tmp_path, "none")
    try:
        with p.transaction():
            a = p.alloc()
            with pytest.raises(ValueError):
                p.sync()
            b = p.alloc()
        assert {a, b} <= set(p.allocated_pages())
        p.sync()
    finally:
        force_close(p)


def test_subpage_calls_inside_join_the_block(tmp_path):
    p = new_pager(tmp_path, "compat")
    try:
        sub = SubPageAllocator(p, 256)
        s1 = sub.alloc()
        before_ids = sub.live_ids()
        before_pages = set(p.allocated_pages())
        # Rolled back: the allocator's state and the pager's pages, together.
        with pytest.raises(KeyError):
            with p.transaction():
                many = sub.alloc_bulk(40)  # takes new big pages inside the block
                sub.free(s1)
                sub.free_bulk(many[:3])
                assert set(p.allocated_pages()) > before_pages
                raise KeyError
        assert sub.live_ids() == before_ids
        assert set(p.allocated_pages()) == before_pages
        assert sub.alloc() not in before_ids  # no sub-page handed out twice
        # Committed: what the block did stays, durably.
        with p.transaction():
            kept = sub.alloc_bulk(20)
            sub.free(s1)
        assert set(kept) <= set(sub.live_ids()) and s1 not in sub.live_ids()
        held = set(sub.big_pages())
        path = p.path
        force_close(p)
        with Pager.open(path) as q:
            assert held <= set(q.allocated_pages())
    finally:
        force_close(p)


def test_the_block_holds_the_pager_lock(tmp_path):
    p = new_pager(tmp_path, "compat")
    try:
        done = threading.Event()
        got: list[int] = []

        def other():
            got.append(p.alloc())
            done.set()

        with p.transaction():
            mine = p.alloc()
            t = threading.Thread(target=other)
            t.start()
            assert not done.wait(0.2), "another thread committed inside the block"
        t.join(5)
        assert done.is_set()
        assert got[0] != mine
        assert {mine, got[0]} <= set(p.allocated_pages())
    finally:
        force_close(p)


def test_every_way_out_of_a_block_lets_go_of_the_pager(tmp_path):
    p = new_pager(tmp_path, "compat")
    try:
        block = p.transaction()  # not entered: nothing begins, nothing is held
        a = p.alloc()  # a commit of its own
        with pytest.raises(KeyError):
            with p.transaction():
                p.free(a)
                raise KeyError  # rolled back
        with pytest.raises(WriterOpen):
            with p.transaction():
                writer = p.write_protected(p.alloc_protected())  # left open: rolled back
        del writer
        with block as tx:
            with p.transaction() as inner:  # nested: the same handle
                assert inner is tx
            b = p.alloc()
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(p.alloc()))
        t.start()
        t.join(5)
        assert got and not t.is_alive(), "a way out of a block kept the pager's lock"
        assert {a, b, got[0]} <= set(p.allocated_pages())
    finally:
        force_close(p)


def test_a_closed_pager_refuses_a_block(tmp_path):
    p = new_pager(tmp_path, "compat")
    p.close()
    with pytest.raises(ValueError):
        with p.transaction():
            pass


CLOSE_INSIDE = """
import sys
from mappedpages import Pager

p = Pager.create(sys.argv[1])
keep = p.alloc_bulk(2)
with p.transaction():
    more = p.alloc_bulk(3)
    try:
        p.close()
    except ValueError:
        print("refused", flush=True)
    print("closed" if p.closed else "open", flush=True)
print("allocated", sorted(p.allocated_pages()), flush=True)
p.close()
"""


def test_close_inside_a_block_is_refused(tmp_path):
    """close() inside the block is refused, as sync() is: closing frees the C
    pager that the end of the block then commits through. Run in a child
    process, since the failure is a use of freed memory."""
    path = tmp_path / "t.mpp"
    out = subprocess.run([sys.executable, "-c", CLOSE_INSIDE, str(path)],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[:2] == ["refused", "open"], out.stdout + out.stderr
    assert out.returncode == 0, out.stderr
    assert reopen_snapshot(path)["allocated"] == [3, 4, 5, 6, 7]


# --------------------------------------------------------------------------
# crashes: the page cache at every barrier
# --------------------------------------------------------------------------


def judge_copy(path: Path, pids: list[int], old: dict[int, bytes], new: dict[int, bytes]) -> str:
    """Open a copy; return "old" or "new" for its protected pages (all the same)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        q = Pager.open(path)
    try:
        st = state_of(q)
        assert count_problem(q, st) is None, count_problem(q, st)
        seen = {pid: content(q, pid) for pid in pids}
        for pid in pids:
            assert q.verify_protected(pid)
    finally:
        force_close(q)
    if all(seen[pid] == old[pid] for pid in pids):
        return "old"
    if all(seen[pid] == new[pid] for pid in pids):
        return "new"
    mixed = {pid: "old" if seen[pid] == old[pid] else "new" if seen[pid] == new[pid] else "?"
             for pid in pids}
    raise AssertionError(f"protected pages of one transaction disagree: {mixed}")


@modes
@pytest.mark.parametrize("page_size", [1024, 4096])
def test_protected_writes_switch_together_at_every_barrier(tmp_path, mode, page_size):
    """Copy the file (what a kill leaves) at every barrier of the commit of a
    block that writes protected pages in two directory blocks."""
    path = tmp_path / "t.mpp"
    hooks = IoHooks()
    p = create_pager(path, page_size, hooks, durability=mode)
    copies: list[Path] = []

    def at_barrier(kind, offset, length):
        dst = tmp_path / f"copy{len(copies)}.mpp"
        shutil.copyfile(path, dst)
        copies.append(dst)

    try:
        epp = (page_size - 12) // 30
        allp = [p.alloc_protected() for _ in range(epp + 2)]
        pids = [allp[0], allp[1], allp[epp], allp[epp + 1]]  # two directory blocks
        old = {pid: fill(pid, page_size) for pid in pids}
        new = {pid: fill(1000 + pid, page_size) for pid in pids}
        for pid in pids:
            write(p, pid, old[pid])
        p.sync()
        hooks.set_barrier_callback(at_barrier)
        with p.transaction():
            p.alloc()
            for pid in pids:
                write(p, pid, new[pid])
            at_barrier(None, 0, 0)  # inside the block, before its commit
        hooks.set_barrier_callback(None)
        at_barrier(None, 0, 0)  # after the commit
    finally:
        hooks.set_barrier_callback(None)
        force_close(p)
    hooks.check_errors()
    verdicts = [judge_copy(c, pids, old, new) for c in copies]
    assert verdicts[-1] == "new"
    assert "old" in verdicts
    # Once a copy shows the new contents, every later one does.
    first_new = verdicts.index("new")
    assert all(v == "new" for v in verdicts[first_new:]), verdicts


def _txn_workload() -> list[Op]:
    """Transactions of one kind of change each (allocations, or protected
    writes), with growth, syncs and a rolled-back block."""

    def store(key, fn):
        def run(p, c):
            c[key] = fn(p)
        return run

    def txn_allocs(p, c):
        with p.transaction():
            c.setdefault("ids", []).extend(p.alloc() for _ in range(3))
            p.free(c["ids"].pop(0))
            c["ids"].extend(p.alloc_bulk(2))
            p.free_bulk(c["ids"][:2])
            del c["ids"][:2]

    def txn_writes(seed):
        def run(p, c):
            with p.transaction():
                for i, pid in enumerate(c["pids"]):
                    write(p, pid, fill(seed + i, p.page_size))
        return run

    def txn_rollback(p, c):
        try:
            with p.transaction():
                p.alloc_bulk(3)
                write(p, c["pids"][0], fill(999, p.page_size))
                raise Boom
        except Boom:
            pass

    # Room for the protected pages first: an alloc_protected that grows the
    # file is tested by test_powerloss.py.
    return [
        Op("alloc_bulk", "grow the file", store("room", lambda p: p.alloc_bulk(8))),
        Op("free_bulk", "free the room", lambda p, c: p.free_bulk(c["room"])),
        Op("alloc_protected", "a protected page",
           store("pids", lambda p: [p.alloc_protected()])),
        Op("alloc_protected", "another protected page",
           lambda p, c: c["pids"].append(p.alloc_protected())),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("alloc", "txn: allocs and frees", txn_allocs),
        Op("protected_commit", "txn: two protected writes", txn_writes(10)),
        Op("alloc", "txn: allocs and frees (grows)", txn_allocs),
        Op("alloc", "txn: allocs and frees", txn_allocs),
        Op("protected_commit", "txn: rolled back", txn_rollback),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("protected_commit", "txn: two protected writes", txn_writes(20)),
        Op("alloc", "txn: allocs and frees", txn_allocs),
        Op("protected_commit", "txn: two protected writes", txn_writes(30)),
        Op("sync", "sync", lambda p, c: p.sync()),
    ]


@modes
def test_transactions_under_the_power_loss_model(tmp_path, mode):
    """Every file a power loss could leave during the workload opens and shows
    the last acknowledged state or the one in flight (in "none" mode: any
    state since the last sync)."""
    rec = record_workload(tmp_path / "work", _txn_workload(), 1024, mode=mode)
    tally = check_recording(rec, ImageChecker(tmp_path / "img"),
                            exhaustive_pages=3, samples=12, max_points=60)
    assert tally.bad == 0, tally.summary() + "\n" + tally.failure_report(3)


@modes
def test_crash_between_the_two_commit_points(tmp_path, mode):
    """The known limit of the v0.2 layout: a block that changes both the
    directory and the allocations commits page 0 first, then the metadata. A
    crash between the two (the file copied at the page-0 flush) leaves: the
    protected writes done, protected pages allocated in the block dropped, its
    other allocation changes undone, and the backing pages of protected pages
    freed in it still allocated (they show as regular pages: leaked)."""
    path = tmp_path / "t.mpp"
    hooks = IoHooks()
    hooks.record_barriers = True
    p = create_pager(path, 4096, hooks, durability=mode)
    snap = tmp_path / "between.mpp"
    ps = 4096
    try:
        p.free_bulk(p.alloc_bulk(28))  # room: nothing below grows the file
        keep = p.alloc_bulk(4)
        r, q = p.alloc_protected(), p.alloc_protected()
        write(p, r, fill(1, ps))
        q_backing = set(p._backing(q))
        p.sync()
        before = snapshot(p)
        taken: list[int] = []

        def at_barrier(kind, offset, length):
            if kind == lib.MP_IO_MSYNC and offset == 0 and not snap.exists():
                shutil.copyfile(path, snap)
                taken.append(len(hooks.barriers))

        hooks.barriers.clear()
        pages = p.page_count
        with p.transaction():
            new_pages = [p.alloc(), p.alloc()]
            p.free(keep[0])
            new_pid = p.alloc_protected()
            p.free_protected(q)
            write(p, r, fill(2, ps))
            hooks.set_barrier_callback(at_barrier)
        hooks.set_barrier_callback(None)
        assert p.page_count == pages
        after = snapshot(p)
    finally:
        hooks.set_barrier_callback(None)
        force_close(p)
    hooks.check_errors()
    assert taken, "no page-0 flush in the commit"
    # The page-0 flush came before the metadata flush of the block.
    kinds = [off // ps for kind, off, _ in hooks.barriers if kind == lib.MP_IO_MSYNC]
    assert kinds.index(0) < min(i for i, k in enumerate(kinds) if k in (1, 2)), kinds

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mid = Pager.open(snap)
    try:
        st = state_of(mid)
        assert count_problem(mid, st) is None
        allocated = set(mid.allocated_pages())
        protected = list(mid.allocated_protected_pages())
        assert content(mid, r) == fill(2, ps)  # the protected write is done
        assert new_pid not in protected  # the protected alloc is dropped
        assert q not in protected  # the protected free is done...
        assert q_backing <= allocated  # ...but its pages stay allocated: leaked
        assert not set(new_pages) & allocated  # allocations undone
        assert keep[0] in allocated  # frees undone
        assert allocated == set(before["allocated"]) | q_backing
    finally:
        force_close(mid)
    assert any(issubclass(w.category, RecoveryWarning) for w in rec)
    # The file the pager left after the commit holds the whole block.
    assert reopen_snapshot(path)["allocated"] == after["allocated"]


# --------------------------------------------------------------------------
# SIGKILL in a loop of transactions
# --------------------------------------------------------------------------

CHILD = """
import os, sys, random
from mappedpages import Pager

path, mode, log = sys.argv[1], sys.argv[2], sys.argv[3]
p = Pager.open(path, durability=mode)
ps = p.page_size
pids = list(p.allocated_protected_pages())
seq = int.from_bytes(p.protected_page(pids[0])[:8], "little")
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
held = list(p.allocated_pages())
rng = random.Random(os.getpid())
print("ready", flush=True)
while True:
    seq += 1
    with p.transaction():
        for _ in range(rng.randrange(1, 4)):
            held.append(p.alloc())
        if len(held) > 20:
            p.free_bulk([held.pop(rng.randrange(len(held))) for _ in range(3)])
        for pid in pids:
            with p.write_protected(pid) as w:
                w.page[:8] = seq.to_bytes(8, "little")
                w.page[8:16] = pid.to_bytes(8, "little")
                w.page[16:] = random.Random(seq * 7919 + pid).randbytes(ps - 16)
    if mode == "none" and seq % 3 == 0:
        p.sync()
    os.write(fd, f"{seq}\\n".encode())
"""


@modes
def test_sigkill_in_a_loop_of_transactions(tmp_path, mode):
    path = tmp_path / "kill.mpp"
    log = tmp_path / "acks.log"
    with Pager.create(path, 4096, durability=mode) as p:
        for _ in range(4):
            p.alloc_protected()
        p.alloc_bulk(5)
    rng = random.Random(1234)
    last_seen = 0
    for rnd in range(KILL_ROUNDS):
        kill_when_ready(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(path), mode, str(log)],
            rng.uniform(0.05, 0.3),
        )
        acks = log.read_text().split()
        acked = int(acks[-1]) if acks else last_seen
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecoveryWarning)
            q = Pager.open(path, durability=mode)
        try:
            st = state_of(q)
            assert count_problem(q, st) is None, f"round {rnd}: {count_problem(q, st)}"
            pids = list(q.allocated_protected_pages())
            assert len(pids) == 4
            seqs = set()
            for pid in pids:
                data = content(q, pid)
                s = int.from_bytes(data[:8], "little")
                seqs.add(s)
                if s:
                    assert data[8:16] == pid.to_bytes(8, "little")
                    assert data[16:] == random.Random(s * 7919 + pid).randbytes(4096 - 16)
                assert q.verify_protected(pid)
            assert len(seqs) == 1, f"round {rnd}: one transaction's writes disagree: {seqs}"
            (seen,) = seqs
            # Protected writes commit through page 0 in every mode, so even in
            # "none" mode an acknowledged block's writes are durable.
            assert seen in (acked, acked + 1), f"round {rnd}: shows {seen}, acknowledged {acked}"
            last_seen = seen
        finally:
            force_close(q)
