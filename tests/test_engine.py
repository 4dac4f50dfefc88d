"""Engine transactions: roots, data pages committed with the allocation state.

What is checked:

* roots: 8 zeros in a new file; ``set_root`` commits on its own or joins a
  transaction; rollback, reopen and ``ReadOnlyPager.roots``; where they live
  (the metadata tail, read by the independent reader of conftest.py, and the
  v0.2 file still valid for the crate); the limit past which they do not fit;
* ``layout="0.3"`` on create;
* the ``Transaction`` handle: ``page``/``view``/``mark_dirty``/``dirty_pages``,
  its errors, and that it is dead after its block;
* flush calls per transaction, per durability mode and layout (the README's
  table), counted with the I/O hooks;
* a commit whose recorded data did not reach the disk is not believed: open
  falls back to the commit before it; a page the last commit recorded and a
  new transaction writes again never makes open doubt the last commit;
* ``sync(pages=...)`` and ``sync_run``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import warnings
import zlib
from array import array

import pytest
from support.format_v02 import check_valid_v02, read_image
from support.format_v03 import inspect_v03, record_sum
from support.geometry import layout as geometry
from support.iohooks import IoHooks, create_pager

from mappedpages import (
    OutOfBounds,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
    ReservedPage,
    Transaction,
)
from mappedpages._core import lib

MODES = ["compat", "fast", "none"]


def flushes(hooks: IoHooks) -> int:
    c = hooks.counts()
    return c["msync"] + c["fsync"]


# ------------------------------------------------------------------ roots


def test_new_file_has_eight_zero_roots(tmp_path):
    with Pager.create(tmp_path / "f", 4096) as p:
        assert p.roots == (0,) * 8
        assert isinstance(p.roots, tuple)


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", MODES)
def test_set_root_survives_reopen_and_reader_sees_it(tmp_path, layout, mode):
    path = tmp_path / "f"
    with Pager.create(path, 1024, durability=mode, layout=layout) as p:
        p.set_root(0, 7)
        p.set_root(7, (1 << 64) - 1)
        assert p.roots == (7, 0, 0, 0, 0, 0, 0, (1 << 64) - 1)
        p.sync()
        with ReadOnlyPager.open(path) as r:
            assert r.roots == (7, 0, 0, 0, 0, 0, 0, (1 << 64) - 1)
    with Pager.open(path) as p:
        assert p.roots == (7, 0, 0, 0, 0, 0, 0, (1 << 64) - 1)
        assert p.format_version == layout


def test_set_root_outside_a_transaction_is_a_commit(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, 1024) as p:
        gen = read_image(path).newest().generation
        p.set_root(3, 42)
        assert read_image(path).newest().generation == gen + 1
        assert read_image(path).newest().roots[3] == 42
        p.set_root(3, 42)  # unchanged: no commit
        assert read_image(path).newest().generation == gen + 1


def test_set_root_bad_input_changes_nothing(tmp_path):
    with Pager.create(tmp_path / "f", 1024) as p:
        for slot, value, exc in [
            (8, 1, ValueError),
            (-1, 1, ValueError),
            (0, -1, ValueError),
            (0, 1 << 64, ValueError),
            ("0", 1, TypeError),
            (0, 1.0, TypeError),
            (True, 1, TypeError),
        ]:
            with pytest.raises(exc):
                p.set_root(slot, value)  # type: ignore[arg-type]
        assert p.roots == (0,) * 8


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_set_root_on_a_closed_pager_raises_and_changes_nothing(tmp_path, layout):
    # A valid call in the extended layout (or of 0) is one core call: the core
    # refuses the closed pager, and the error names it as every other call does.
    path = tmp_path / "f"
    p = Pager.create(path, 1024, layout=layout)
    p.set_root(2, 7)
    p.close()
    for slot, value in [(0, 1), (2, 0), (7, (1 << 64) - 1)]:
        with pytest.raises(ValueError, match="closed pager"):
            p.set_root(slot, value)
    with ReadOnlyPager.open(path) as r:
        assert r.roots == (0, 0, 7, 0, 0, 0, 0, 0)


def test_a_transaction_used_from_another_thread_waits_for_its_block(tmp_path):
    # The block holds the pager: another thread's call on its handle waits for
    # the block to end, then finds the transaction ended and joins nothing.
    import threading

    with Pager.create(tmp_path / "f", 1024, layout="0.3") as p:
        seen: list[BaseException | None] = []
        entered, done = threading.Event(), threading.Event()

        def other(tx: Transaction) -> None:
            entered.set()
            try:
                tx.tree_apply(0, b"")
                seen.append(None)
            except BaseException as e:
                seen.append(e)
            done.set()

        with p.transaction() as tx:
            p.set_root(0, 9)
            t = threading.Thread(target=other, args=(tx,))
            t.start()
            assert entered.wait(5)
            assert not done.wait(0.2), "another thread's call ran inside the block"
        t.join(5)
        assert len(seen) == 1 and isinstance(seen[0], ValueError), seen
        assert "ended" in str(seen[0])
        assert p.roots[0] == 9


def test_roots_roll_back_with_the_transaction(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, 1024) as p:
        p.set_root(0, 1)
        with pytest.raises(KeyError):
            with p.transaction():
                p.set_root(0, 2)
                p.set_root(1, 3)
                assert p.roots[:2] == (2, 3)
                raise KeyError
        assert p.roots == (1,) + (0,) * 7
    with Pager.open(path) as p:
        assert p.roots == (1,) + (0,) * 7


def test_v02_file_with_roots_stays_valid_for_the_crate(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, 1024) as p:
        ids = p.alloc_bulk(5)
        for slot in range(8):
            p.set_root(slot, 0x0102030405060708 + slot)
        p.free(ids[1])
    img = check_valid_v02(path, allocated=[i for i in ids if i != ids[1]])
    assert img.selected().roots == tuple(0x0102030405060708 + s for s in range(8))
    # The tail sits past the bitmap bytes the crate reads: the last 68 bytes
    # before the CRC hold the roots.
    raw = path.read_bytes()
    page = raw[1024 * (1 + img.selector) : 1024 * (2 + img.selector)]
    assert page[1024 - 68 : 1024 - 4] == b"".join(
        (0x0102030405060708 + s).to_bytes(8, "little") for s in range(8)
    )
    assert zlib.crc32(page[:-4]) == int.from_bytes(page[-4:], "little")


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_roots_move_to_the_extended_layout_where_the_bitmap_leaves_no_room(tmp_path, layout):
    # 1 KiB pages: the v0.2 tail holds roots while the bitmap has at most
    # (1024 - 100) * 8 pages; past that a state with roots moves to the
    # extended layout's root pages instead of stopping (it used to: FileFull).
    room = (1024 - 100) * 8
    chunk = geometry(1024).chunk_pages
    path = tmp_path / "f"
    with Pager.create(path, 1024, layout=layout) as p:
        p.set_root(0, 1)
        ids = []
        while p.page_count <= chunk:
            ids.extend(p.alloc_bulk(p.free_page_count + 1))
        assert p.page_count > chunk and p.format_version == "0.3"
        assert p.roots == (1,) + (0,) * 7
        p.set_root(7, 2**64 - 1)
        ids.extend(p.alloc_bulk(5000))
    img = inspect_v03(path)
    assert img.state == "extended" and img.roots == (1,) + (0,) * 6 + (2**64 - 1,)
    # The root pages were taken with chunk 1, right after its layout pages (a
    # file created in the extended layout has them from the start: 4 and 5).
    assert img.roots_page == (4 if layout == "0.3" else chunk + 4)
    assert img.regular == set(ids)
    for cls in (Pager, ReadOnlyPager):
        with cls.open(path) as q:
            assert q.roots == (1,) + (0,) * 6 + (2**64 - 1,)
    assert room < chunk


def test_set_root_past_the_tail_moves_the_file_to_the_extended_layout(tmp_path):
    room = (1024 - 100) * 8
    path = tmp_path / "f"
    with Pager.create(path, 1024) as p:
        ids = list(p.alloc_bulk(room + 10))  # no roots: stays v0.2, past the tail
        assert p.format_version == "0.2" and p.page_count > room
        p.set_root(2, 99)
        assert p.format_version == "0.3" and p.roots[2] == 99
        with ReadOnlyPager.open(path) as r:
            assert r.roots == (0, 0, 99, 0, 0, 0, 0, 0)
        assert list(p.allocated_pages()) == ids
        p.set_root(2, 0)
        p.set_root(3, 5)
    with ReadOnlyPager.open(path) as r:
        assert r.roots == (0, 0, 0, 5, 0, 0, 0, 0)
    assert inspect_v03(path).roots == (0, 0, 0, 5, 0, 0, 0, 0)


# ----------------------------------------------------------------- layout


def test_create_in_extended_layout(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, 1024, layout="0.3") as p:
        assert p.format_version == "0.3"
        a = p.alloc()
        p.set_root(0, a)
    assert read_image(path).minor == 3
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert p.roots[0] == a
    with pytest.raises(ValueError):
        Pager.create(tmp_path / "g", 1024, layout="0.4")
    with pytest.raises(TypeError):
        Pager.create(tmp_path / "g", 1024, layout=3)  # type: ignore[arg-type]
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------ Transaction


def test_transaction_handle(tmp_path):
    with Pager.create(tmp_path / "f", 1024) as p:
        ids = p.alloc_bulk(6)
        with p.transaction() as tx:
            assert isinstance(tx, Transaction)
            assert tx.pager is p
            assert tx.dirty_pages == 0
            tx.page(ids[0])[:3] = b"abc"
            assert tx.dirty_pages == 1
            v = tx.view(ids[1], 3)
            assert len(v) == 3 * 1024
            v.release()
            assert tx.dirty_pages == 4
            tx.mark_dirty(ids[1], 2)  # already in the set
            assert tx.dirty_pages == 4
            tx.mark_dirty(ids[5])
            assert tx.dirty_pages == 5
            with p.transaction() as inner:
                assert inner is tx
            with pytest.raises(OutOfBounds):
                tx.mark_dirty(p.page_count)
            with pytest.raises(ReservedPage):
                tx.mark_dirty(1)
            with pytest.raises(ValueError):
                tx.mark_dirty(ids[0], 0)
            assert tx.dirty_pages == 5
        with pytest.raises(ValueError):
            tx.page(ids[0])
        with pytest.raises(ValueError):
            _ = tx.dirty_pages
        assert bytes(p.page(ids[0])[:3]) == b"abc"


def test_rollback_forgets_the_dirty_set(tmp_path):
    with Pager.create(tmp_path / "f", 1024) as p:
        a = p.alloc()
        with pytest.raises(KeyError):
            with p.transaction() as tx:
                tx.page(a)[0] = 1
                raise KeyError
        with p.transaction() as tx:
            assert tx.dirty_pages == 0


# ---------------------------------------------------------------- flushes

# (layout, mode) -> flush calls for a transaction with data pages, an
# allocation, a free and a root; the README's table.
FLUSH_TABLE = {
    ("0.2", "compat"): 2,
    ("0.2", "fast"): 1,
    ("0.2", "none"): 0,
    ("0.3", "compat"): 1,
    ("0.3", "fast"): 1,
    ("0.3", "none"): 0,
}


@pytest.mark.parametrize("layout,mode", sorted(FLUSH_TABLE))
def test_flushes_per_transaction(tmp_path, layout, mode):
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 4096, hooks, durability=mode, layout=layout)
    try:
        old = p.alloc_bulk(64)
        for i in range(5):
            before = flushes(hooks)
            with p.transaction() as tx:
                new = p.alloc_bulk(3)
                for pid in new:
                    tx.page(pid)[:8] = i.to_bytes(8, "little")
                p.free(old.pop())
                p.set_root(0, new[0])
            assert flushes(hooks) - before == FLUSH_TABLE[(layout, mode)], hooks.counts()
        # A data-only transaction costs the same.
        before = flushes(hooks)
        with p.transaction() as tx:
            tx.page(old[0])[0] = 9
        assert flushes(hooks) - before == FLUSH_TABLE[(layout, mode)]
        # Writing again a page the last commit wrote costs one msync more
        # (that commit's record is retired first), outside "none" mode too.
        before = flushes(hooks)
        with p.transaction() as tx:
            tx.page(old[0])[0] = 10
        retire = 0 if mode == "none" else 1
        assert flushes(hooks) - before == FLUSH_TABLE[(layout, mode)] + retire
    finally:
        p.close()


def test_too_many_runs_for_the_record_flush_data_first(tmp_path):
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 1024, hooks, durability="fast")
    try:
        ids = p.alloc_bulk(400)
        before = hooks.counts()["fsync"]
        with p.transaction() as tx:
            for pid in ids[::2]:  # 200 runs: more than a 1 KiB tail holds
                tx.page(pid)[0] = 1
        assert hooks.counts()["fsync"] - before == 1
        assert flushes(hooks) - before == 2  # data, then the metadata commit
        img = read_image(tmp_path / "f")
        assert img.newest().record == []
    finally:
        p.close()


# ------------------------------------------------------- torn data commits


def _commit_two(path, mode="fast"):
    with Pager.create(path, 1024, durability=mode) as p:
        with p.transaction() as tx:
            a = p.alloc()
            tx.page(a)[:4] = b"AAAA"
            p.set_root(0, a)
        with p.transaction() as tx:
            b = p.alloc()
            tx.page(b)[:4] = b"BBBB"
            p.set_root(0, b)
    return a, b


def test_record_lists_the_committed_pages(tmp_path):
    path = tmp_path / "f"
    a, b = _commit_two(path)
    newest = read_image(path).newest()
    assert [(first, count) for first, count, _ in newest.record] == [(b, 1)]
    page = path.read_bytes()[b * 1024 : (b + 1) * 1024]
    assert newest.record[0][2] == record_sum(page, b)


def test_open_falls_back_when_recorded_data_missed_the_disk(tmp_path):
    path = tmp_path / "f"
    a, b = _commit_two(path)
    # What a power loss leaves when the metadata copy reached the disk and
    # one sector of the new node did not.
    with open(path, "r+b") as f:
        f.seek(b * 1024 + 512)
        f.write(b"\x55" * 512)
    with pytest.warns(RecoveryWarning, match="data page"):
        p = Pager.open(path)
    with p:
        assert p.roots[0] == a
        assert bytes(p.page(a)[:4]) == b"AAAA"
        assert b not in set(p.allocated_pages())
    with pytest.warns(RecoveryWarning), ReadOnlyPager.open(path) as r:
        assert r.roots[0] == a
    # As any damaged copy, it is the inactive one: the next commit replaces it.
    with pytest.warns(RecoveryWarning), Pager.open(path) as p:
        p.set_root(1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(path) as p:
            assert p.roots[:2] == (a, 1)


def test_rewriting_a_recorded_page_never_loses_the_last_commit(tmp_path):
    # A child commits a transaction that writes page X, then starts another
    # that writes X again and dies before committing: the first commit must
    # survive (open must not doubt it because X changed).
    path = tmp_path / "f"
    code = textwrap.dedent(
        f"""
        import os
        from mappedpages import Pager
        p = Pager.create({str(path)!r}, 1024, durability="fast")
        with p.transaction() as tx:
            x = p.alloc()
            tx.page(x)[:4] = b"ONE!"
            p.set_root(0, x)
        with p.transaction() as tx:
            tx.page(x)[:4] = b"TWO!"
            p.set_root(1, 5)
            os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(path) as p:
            assert p.roots[:2] == (3, 0)


def test_none_mode_transactions_are_durable_at_sync(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability="none")
    try:
        before = flushes(hooks)
        with p.transaction() as tx:
            a = p.alloc()
            tx.page(a)[:2] = b"ok"
            p.set_root(0, a)
        assert flushes(hooks) == before
        p.sync()
    finally:
        p.close()
    with Pager.open(path) as q:
        assert q.roots[0] == a and bytes(q.page(a)[:2]) == b"ok"


# ------------------------------------------------------------------- sync


def test_sync_pages_and_runs(tmp_path):
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 1024, hooks)
    try:
        ids = p.alloc_bulk(8)
        before = hooks.counts()
        p.sync(pages=[ids[0], ids[1], ids[5]])
        after = hooks.counts()
        assert after["msync"] - before["msync"] == 2
        assert after["fsync"] == before["fsync"]
        p.sync_run(ids[2], 3)
        assert hooks.counts()["msync"] - after["msync"] == 1
        with p.transaction():
            p.sync(pages=[ids[0]])  # data only: allowed inside a block
        with pytest.raises(OutOfBounds):
            p.sync(pages=[ids[0], p.page_count])
        with pytest.raises(OutOfBounds):
            p.sync_run(p.page_count - 1, 2)
        p.sync(pages=[])
        p.sync()
    finally:
        p.close()


def test_engine_names_are_exported():
    import mappedpages

    assert "Transaction" in mappedpages.__all__
    assert mappedpages.Transaction is Transaction
    assert os.path.basename(mappedpages.__file__) == "__init__.py"


def test_none_mode_rollback_keeps_the_unwritten_state(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability="none")
    try:
        a = p.alloc()
        x = p.alloc()
        p.sync()
        p.free(x)  # pending until durable
        p.set_root(2, a)
        before = flushes(hooks)
        with pytest.raises(KeyError):
            with p.transaction():
                b = p.alloc()
                p.set_root(0, b)
                raise KeyError
        assert flushes(hooks) == before  # neither begin nor rollback wrote
        assert p.roots == (0, 0, a, 0, 0, 0, 0, 0)
        assert a in set(p.allocated_pages()) and x not in set(p.allocated_pages())
        assert x not in p.alloc_bulk(3)  # the free is still not durable
        with p.transaction():
            pid = p.alloc_protected()  # a directory commit inside the block
            c = p.alloc()
            p.set_root(1, c)
    finally:
        p.close()
    with Pager.open(path) as q:
        assert q.roots[1:3] == (c, a)
        assert pid in set(q.allocated_protected_pages())
        assert c in set(q.allocated_pages())


def test_tx_write_goes_through_the_page_cache_and_commits(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability="fast")
    try:
        ids = p.alloc_bulk(4)
        with p.transaction() as tx:
            tx.write(ids[0], b"abc", 10)
            tx.write(ids[1], b"x" * 1500)  # runs on into the next page
            assert tx.dirty_pages == 3
            assert bytes(p.page(ids[0])[10:13]) == b"abc"  # views see it at once
            with pytest.raises(ValueError):
                tx.write(ids[0], b"")
            with pytest.raises(ValueError):
                tx.write(ids[0], b"a", 1024)
            with pytest.raises(OutOfBounds):
                tx.write(p.page_count - 1, b"y" * 2000)
            with pytest.raises(ReservedPage):
                tx.write(2, b"y")
            p.set_root(0, ids[1])
        assert [(f, c) for f, c, _ in read_image(path).newest().record] == [(ids[0], 3)]
    finally:
        p.close()
    with Pager.open(path) as q:
        assert bytes(q.page(ids[2])[:476]) == b"x" * 476
        assert q.roots[0] == ids[1]
    with Pager.open(path) as q, pytest.raises(ValueError):
        tx.write(ids[0], b"late")  # the handle is dead after its block


def test_tx_write_pages_one_pwrite_per_run_and_commits(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability="fast")
    try:
        ids = p.alloc_bulk(5)
        assert ids == list(range(ids[0], ids[0] + 5))
        pages = [ids[0], ids[1], ids[2], ids[4]]
        data = b"".join(bytes([65 + i]) * 1024 for i in range(4))
        with p.transaction() as tx:
            before = hooks.calls(lib.MP_IO_PWRITE)
            tx.write_pages(array("Q", pages), data)
            assert hooks.calls(lib.MP_IO_PWRITE) - before == 2  # runs ids[0..2] and ids[4]
            assert tx.dirty_pages == 4
            assert bytes(p.page(ids[4])) == b"D" * 1024  # views see it at once
            p.set_root(0, ids[4])
        record = read_image(path).newest().record
        assert [(f, c) for f, c, _ in record] == [(ids[0], 3), (ids[4], 1)]
    finally:
        p.close()
    with Pager.open(path) as q:
        assert [bytes(q.page(i)[:1]) for i in pages] == [b"A", b"B", b"C", b"D"]
        assert bytes(q.page(ids[3])) != b"D" * 1024
    with pytest.raises(ValueError):
        tx.write_pages([ids[0]], bytes(1024))  # the handle is dead after its block


@pytest.mark.parametrize("mode", MODES)
def test_written_pages_start_their_writeback_and_a_failed_hint_changes_nothing(tmp_path, mode):
    # tx.write_pages (and tree_apply, which writes through it) of 16 pages or
    # more starts each run's writeback at once in the durable modes: one hint
    # per run, never a flush. Fewer pages are left to the commit's flush, and
    # "none" writes pages back at sync only. The hint failing (injected, every
    # call) changes nothing: the commit's flush makes the pages durable.
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability=mode, layout="0.3")
    try:
        p.alloc()  # page 3: the next run starts past the file's pages 4-7
        ids = p.alloc_bulk(41)
        assert ids == list(range(ids[0], ids[0] + 41))
        many = ids[:20] + ids[21:41]  # two runs of 20
        data = b"".join(bytes([65 + i % 26]) * 1024 for i in range(40))
        with p.transaction() as tx:
            hints, flushed = hooks.calls(lib.MP_IO_WRITEBACK), flushes(hooks)
            tx.write_pages(array("Q", ids[:4]), data[: 4 * 1024])
            assert hooks.calls(lib.MP_IO_WRITEBACK) == hints  # a few pages: the flush's
            tx.write_pages(array("Q", many), data)
            assert hooks.calls(lib.MP_IO_WRITEBACK) - hints == (0 if mode == "none" else 2)
            assert flushes(hooks) == flushed
        hooks.fail(lib.MP_IO_WRITEBACK, hooks.calls(lib.MP_IO_WRITEBACK) + 1, errno.EIO,
                   persistent=True)
        with p.transaction() as tx:
            tx.write_pages(array("Q", many), bytes(reversed(data)))
            p.set_root(0, ids[40])
        p.alloc()  # the pager carries on: a failed hint does not poison it
    finally:
        p.close()
    with Pager.open(path) as q:
        assert q.roots[0] == ids[40]
        assert b"".join(bytes(q.page(i)) for i in many) == bytes(reversed(data))


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_record_sums_cover_runs_of_every_length(tmp_path, page_size):
    # The record keeps each run's record sum (FORMAT.md, "Root pages"),
    # computed here independently of the core.
    path = tmp_path / "f"
    with Pager.create(path, page_size, durability="fast") as p:
        ids = p.alloc_bulk(7)
        pages = [ids[0], ids[2], ids[3], ids[4], ids[6]]  # runs of 1, 3 and 1
        data = os.urandom(len(pages) * page_size)
        with p.transaction() as tx:
            tx.write_pages(pages, data)
        image = path.read_bytes()
        record = read_image(path).newest().record
    assert [(f, c) for f, c, _ in record] == [(ids[0], 1), (ids[2], 3), (ids[6], 1)]
    for first, count, total in record:
        assert total == record_sum(image[first * page_size : (first + count) * page_size], first)


def test_write_pages_retires_the_record_only_for_its_pages(tmp_path):
    # The record of the last commit holds four runs; writing a page of a run
    # (its first, a middle or its last page) retires it first (one msync
    # more), writing a page between or past the runs does not. The core looks
    # the page up by binary search in the record's ascending runs.
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 1024, hooks, durability="fast")
    try:
        ids = p.alloc_bulk(40)
        assert ids == list(range(ids[0], ids[0] + 40))
        recorded = ids[2:5] + ids[8:9] + ids[12:16] + ids[20:23]

        def cost(pid: int) -> int:
            with p.transaction() as tx:
                tx.write_pages(recorded, bytes(1024 * len(recorded)))
            runs = [(f, c) for f, c, _ in read_image(tmp_path / "f").newest().record]
            assert runs == [(ids[2], 3), (ids[8], 1), (ids[12], 4), (ids[20], 3)]
            before = flushes(hooks)
            with p.transaction() as tx:
                tx.write_pages([ids[39], pid], bytes(2048))
            return flushes(hooks) - before

        base = cost(ids[38])
        inside = [ids[i] for i in (2, 3, 4, 8, 12, 14, 15, 20, 22)]
        outside = [ids[i] for i in (0, 1, 5, 7, 9, 11, 16, 19, 23, 37)]
        assert [cost(pid) - base for pid in inside] == [1] * len(inside)
        assert [cost(pid) - base for pid in outside] == [0] * len(outside)
    finally:
        p.close()


def test_tx_write_pages_bad_input_changes_nothing(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, 1024, hooks, durability="fast")
    try:
        ids = p.alloc_bulk(3)
        contents = [bytes(p.page(i)) for i in ids]
        with p.transaction() as tx:
            writes = hooks.calls(lib.MP_IO_PWRITE)
            for pages, data, exc in [
                ([ids[0], ids[1]], bytes(1024), ValueError),  # one page short
                ([ids[0]], bytes(1025), ValueError),
                ([], b"", ValueError),
                ([ids[0], p.page_count], bytes(2048), OutOfBounds),  # the last id is bad
                ([ids[0], 2], bytes(2048), ReservedPage),
                ([ids[0], -1], bytes(2048), OutOfBounds),
                ([ids[0], True], bytes(2048), TypeError),
                ("ab", bytes(2048), TypeError),
            ]:
                with pytest.raises(exc):
                    tx.write_pages(pages, data)
            assert tx.dirty_pages == 0
            assert hooks.calls(lib.MP_IO_PWRITE) == writes
            assert [bytes(p.page(i)) for i in ids] == contents
            tx.write_pages(iter(ids), b"z" * 3072)  # any iterable of ids
            assert tx.dirty_pages == 3
    finally:
        p.close()


def test_pages_freed_in_the_transaction_are_not_recorded(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, 1024, durability="fast") as p:
        keep, gone = p.alloc_bulk(2)
        with p.transaction() as tx:
            tx.write(keep, b"k")
            tx.write(gone, b"g")
            p.free(gone)
        assert [(f, c) for f, c, _ in read_image(path).newest().record] == [(keep, 1)]


@pytest.mark.parametrize(
    "name", ["f1_regular_4096", "f2_regular_1024", "f3_protected_4096", "f4_regular_65536"]
)
def test_crate_files_take_roots_and_stay_crate_files(tmp_path, name):
    """A file the Rust crate wrote, given roots and an engine transaction here,
    keeps the crate's layout: the same allocated pages, read the crate's way
    (the independent reader: page 0's selector, CRC, bitmap), and the roots
    sit in bytes the crate does not read."""
    from support.rust_fixtures import copy_fixture

    path = copy_fixture(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        p = Pager.open(path, durability="compat")
    with p:
        before = sorted(p.allocated_pages())
        with p.transaction() as tx:
            tx.write(before[0], b"engine")
            p.set_root(0, before[0])
            p.set_root(5, 12345)
        assert p.format_version == "0.2"
    img = check_valid_v02(path, allocated=before)
    assert img.selected().roots[0] == before[0] and img.selected().roots[5] == 12345
    with Pager.open(path) as q:
        assert q.roots[:1] == (before[0],) and bytes(q.page(before[0])[:6]) == b"engine"


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_none_mode_rollback_after_growth_and_upgrade(tmp_path, page_size):
    """A "none"-mode transaction that grows the file (past the v0.2 cap at 1 KiB,
    into the extended layout) and rolls back: the unwritten state before it is
    back, in memory, and what follows commits and reopens consistently."""
    path = tmp_path / "f"
    with Pager.create(path, page_size, durability="none") as p:
        kept = p.alloc_bulk(10)
        p.free(kept[0])
        before = (sorted(p.allocated_pages()), p.page_count, p.free_page_count, p.roots)
        with pytest.raises(KeyError):
            with p.transaction():
                p.alloc_bulk(9000)
                if page_size == 4096:  # at 1 KiB 9,000 pages leave roots no room
                    p.set_root(1, 1)
                raise KeyError
        assert (sorted(p.allocated_pages()), p.page_count, p.free_page_count, p.roots) == before
        more = p.alloc_bulk(9000)
        p.sync()
        expect = sorted(before[0] + more)
    with Pager.open(path) as q:
        assert sorted(q.allocated_pages()) == expect
        assert kept[0] not in set(q.allocated_pages()) or kept[0] in more
