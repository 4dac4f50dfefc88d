"""One flush per protected write in the extended layout (issue 18).

The staged copy and the new directory copy (both written with pwrite into
inactive pages) no longer get a flush of their own before the commit point:
their CRCs go in the commit's record in the sealed root page, and one
fdatasync makes them durable with the index, free-map and root pages and the
metadata copy. Open rejects a commit whose copies did not all reach the disk
and falls back to the state before, which those copies did not overwrite.
"""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
from support.format_v03 import inspect_v03
from support.geometry import layout
from support.iohooks import DURABILITY_MODES, IoHooks, create_pager, protected_commit_flushes
from support.pagers import commit_bytes, read_protected
from support.powerloss import ImageChecker, all_but_one_images, crash_images, record_workload
from support.workloads import Op, _store, _write_protected

from mappedpages import Pager, ReadOnlyPager, RecoveryWarning

PS = 1024
CHUNK = layout(PS).chunk_pages


def flushes(hooks: IoHooks) -> int:
    c = hooks.counts()
    return c["msync"] + c["fsync"]


def _content(tag: int) -> bytes:
    return random.Random(tag).randbytes(PS)


def _extended(tmp_path, mode="fast", layout_name="0.2"):
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", PS, hooks, durability=mode, layout=layout_name)
    pids = p.alloc_protected_bulk(3)
    p.alloc_bulk(CHUNK)  # past the v0.2 cap
    commit_bytes(p, pids[0], _content(1))
    p.sync()
    return p, hooks, pids


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", ["compat", "fast"])
def test_a_protected_write_and_a_transaction_holding_them_are_one_flush(
    tmp_path, mode, layout_name
):
    p, hooks, pids = _extended(tmp_path, mode, layout_name)
    try:
        before = flushes(hooks)
        with p.write_protected(pids[0]) as w:
            w.page[:] = _content(2)
        assert flushes(hooks) - before == 1
        before = flushes(hooks)
        with p.transaction() as tx:
            new = p.alloc()
            tx.write(new, b"node")
            p.set_root(0, new)
            for i, pid in enumerate(pids):
                with p.write_protected(pid) as w:
                    w.page[:] = _content(10 + i)
        assert flushes(hooks) - before == 1, hooks.counts()
    finally:
        p.close()
    img = inspect_v03(tmp_path / "f")
    assert len(img.record) == 1 + 3 + 1  # the data page, 3 staged copies, 1 directory copy
    with Pager.open(tmp_path / "f") as q:
        for i, pid in enumerate(pids):
            assert read_protected(q, pid) == _content(10 + i)
        assert bytes(q.page(q.roots[0])[:4]) == b"node"


@pytest.mark.parametrize(("mode", "write", "txn"), [("compat", 1, 1), ("fast", 1, 1)])
def test_a_small_03_file_is_one_flush(tmp_path, mode, write, txn):
    """What the README's flush table says of a layout="0.3" file below v0.2's cap.

    It is in the extended layout from its creation: its directory index is
    sealed with the metadata copy (pages 6-7), so a protected write, and a
    transaction holding one with a data page and a root, are one flush, as
    data pages, allocations and roots alone are. (A file that earlier
    versions created with layout="0.3" keeps v0.2's costs below the cap:
    tests/test_extended_from_creation.py.)
    """
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", PS, hooks, durability=mode, layout="0.3")
    try:
        _, counts = protected_commit_flushes(p, hooks)
        assert counts == (write, txn, 1), hooks.counts()
        assert p.page_count < CHUNK
    finally:
        p.close()


@pytest.mark.parametrize("mode", ["compat", "fast"])
def test_a_protected_alloc_is_one_flush(tmp_path, mode):
    """The zeroed backing page (and a new block's live directory page) are listed
    in the record too, instead of being flushed before the commit."""
    p, hooks, pids = _extended(tmp_path, mode)
    try:
        before = flushes(hooks)
        pid = p.alloc_protected()  # a free slot of the first block
        assert flushes(hooks) - before == 1
        before = flushes(hooks)
        with p.transaction():
            more = p.alloc_protected_bulk(40)  # past the first block: a new block
            with p.write_protected(more[-1]) as w:
                w.page[:] = _content(7)
            p.set_root(4, more[-1])
        assert flushes(hooks) - before == 1, hooks.counts()
    finally:
        p.close()
    with Pager.open(tmp_path / "f") as q:
        assert q.verify_protected(pid) and read_protected(q, pid) == bytes(PS)
        assert read_protected(q, more[-1]) == _content(7) and q.roots[4] == more[-1]
        assert all(q.verify_protected(x) for x in more)


def _damage(path, page: int) -> None:
    with open(path, "r+b") as f:
        f.seek(page * PS + 512)
        f.write(b"\x55" * 512)


@pytest.mark.parametrize("how", ["lost", "torn"])
@pytest.mark.parametrize("what", ["staged copy", "directory copy"])
def test_open_rejects_a_write_whose_copy_missed_the_disk(tmp_path, what, how):
    """A copy the commit wrote reached the disk torn, or not at all (its older
    content still there: for a directory copy, another valid directory page,
    which a CRC-32 of the page could not tell from the new one)."""
    p, hooks, pids = _extended(tmp_path)
    path = tmp_path / "f"
    try:
        p.set_root(3, 33)
        before_roots = p.roots
        image_before = path.read_bytes()
        with p.transaction():
            with p.write_protected(pids[0]) as w:
                w.page[:] = _content(2)
            p.set_root(3, 34)
        record = inspect_v03(path).record
        staged = p._backing(pids[0])
    finally:
        p.close()
    # The record: the staged copy, then the directory copy the commit wrote.
    assert [r[0] for r in record][0] in staged and len(record) == 2
    page = record[0][0] if what == "staged copy" else record[1][0]
    if how == "torn":
        _damage(path, page)
    else:
        with open(path, "r+b") as f:
            f.seek(page * PS)
            f.write(image_before[page * PS : (page + 1) * PS])
    with pytest.warns(RecoveryWarning, match="data page"):
        q = Pager.open(path)
    with q:
        assert q.roots == before_roots
        assert read_protected(q, pids[0]) == _content(1)
        assert q.verify_protected(pids[0])
    with pytest.warns(RecoveryWarning), ReadOnlyPager.open(path) as r:
        assert read_protected(r, pids[0]) == _content(1)


def _txn_with_protected(p: Pager, ctx: dict) -> None:
    r = ctx.setdefault("rnd", random.Random(5))
    with p.transaction() as tx:
        new = p.alloc()
        tx.page(new)[:] = r.randbytes(p.page_size)
        old = ctx.get("node")
        if old is not None:
            p.free(old)
        ctx["node"] = new
        p.set_root(0, new)
        p.set_root(1, ctx.setdefault("n", 0) + 1)
        ctx["n"] += 1
        w = p.write_protected(ctx["p0"])
        w.page[:] = r.randbytes(p.page_size)
        w.commit()


def _txn_new_block(p: Pager, ctx: dict) -> None:
    with p.transaction():
        more = p.alloc_protected_bulk(35)  # fills the block, then a new one
        w = p.write_protected(more[-1])
        w.page[:] = _content(9)
        w.commit()
        p.set_root(1, 100)


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_protected_writes_past_the_cap_survive_power_loss(tmp_path, mode, layout_name):
    """Protected writes alone and inside transactions with data pages and roots,
    in the extended state, one flush each: every crash image opens and shows an
    acknowledged state or the one in flight (protected contents, roots, the
    pages they name), never content that is not the committed content."""
    ops = [
        Op("alloc_protected", "alloc_protected", _store("p0", lambda p: p.alloc_protected())),
        Op("alloc_protected", "alloc_protected", _store("p1", lambda p: p.alloc_protected())),
        Op("alloc_bulk", "alloc_bulk past the v0.2 cap", lambda p, c: p.alloc_bulk(CHUNK) and None),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("protected_commit", "protected write", _write_protected("p0", 1)),
        Op("protected_commit", "protected write", _write_protected("p1", 2)),
        Op("txn", "transaction with a protected write", _txn_with_protected),
        Op("protected_commit", "protected write", _write_protected("p0", 3)),
        Op("txn", "transaction with a protected write", _txn_with_protected),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("txn", "transaction with a protected write", _txn_with_protected),
        Op("free_protected", "free_protected", lambda p, c: p.free_protected(c["p1"])),
        Op("alloc_protected", "alloc_protected (extended)",
           _store("p2", lambda p: p.alloc_protected())),
        Op("txn", "transaction: a new directory block and a protected write", _txn_new_block),
        Op("sync", "sync", lambda p, c: p.sync()),
    ]
    rec = record_workload(tmp_path / "work", ops, PS, mode=mode, layout=layout_name)
    assert rec.states[-1].roots[1] == 100
    checker = ImageChecker(tmp_path / "img")
    bad = []
    images = 0
    for pt in rec.points:
        # Sampled images, and every image with all pages but one on disk.
        for img in itertools.chain(crash_images(pt, PS, exhaustive_pages=3, samples=8),
                                   all_but_one_images(pt, PS)):
            images += 1
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert images > 40
    assert not bad, f"{len(bad)} of {images} image(s) fail:\n" + "\n".join(bad[:3])


def _first_commit_then_second(path, layout_name: str, first, second) -> tuple[bytes, bytes]:
    """The file's bytes after FIRST's commit and after SECOND's (fast mode)."""
    with Pager.create(path, PS, durability="fast", layout=layout_name) as p:
        if layout_name == "0.2":
            p.free_bulk(p.alloc_bulk(CHUNK))  # past the cap: the extended state
        spare = p.alloc_bulk(80)
        p.free_bulk(spare)
        p.sync()
        ctx: dict = {}
        first(p, ctx)
        before = path.read_bytes()
        second(p, ctx)
        after = path.read_bytes()
    return before, after


def _alloc_in_a_new_block(p, ctx) -> None:
    ctx["pid"] = p.alloc_protected()  # the file's first: a new directory block


def _alloc_and_write_in_one_transaction(p, ctx) -> None:
    with p.transaction():
        ctx["pid"] = p.alloc_protected()  # its zeroed copy, then the written one
        commit_bytes(p, ctx["pid"], _content(2))


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("first", [_alloc_in_a_new_block, _alloc_and_write_in_one_transaction])
def test_a_commit_never_rewrites_a_page_the_committed_record_vouches_for(
    tmp_path, layout_name, first
):
    """A commit's record lists only the copies its state names. Here the next
    protected write reaches the disk whole but for its metadata copy: open must
    find the first commit, whole, with no warning. (When a commit listed a copy it
    left inactive, the next write staged into that copy at once, and open then
    doubted the durable commit and fell back past it.)"""
    path = tmp_path / "f"
    before, after = _first_commit_then_second(
        path, layout_name, first, lambda p, c: commit_bytes(p, c["pid"], _content(9))
    )
    image = bytearray(after[: len(before)])
    image[PS : 3 * PS] = before[PS : 3 * PS]  # the metadata copies as they were
    assert image != bytearray(before), "the second commit wrote other pages"
    crashed = tmp_path / "image"
    crashed.write_bytes(bytes(image))
    with Pager.open(path) as p:
        (pid,) = p.allocated_protected_pages()
    want = bytes(PS) if first is _alloc_in_a_new_block else _content(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        with Pager.open(crashed) as q:
            assert list(q.allocated_protected_pages()) == [pid]
            assert read_protected(q, pid) == want
