"""One flush per engine transaction in the extended layout (issue 15, issue 18).

Past the v0.2 cap a transaction's dirty data pages, allocations, roots and
(test_protected_one_flush.py) protected writes commit under one fdatasync: the
root page's record carries the CRC of every page the commit wrote that no
generation marks, and the seal covers the root page (FORMAT.md, "Root pages").
Open rejects a commit whose data did not all reach the disk and falls back to
the one before.
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import pytest
from support.format_v03 import inspect_v03, record_sum
from support.geometry import layout
from support.iohooks import DURABILITY_MODES, IoHooks, create_pager
from support.powerloss import ImageChecker, all_but_one_images, crash_images, record_workload
from support.workloads import Op, engine_workload

from mappedpages import Pager, ReadOnlyPager, RecoveryWarning

PS = 1024
CHUNK = layout(PS).chunk_pages
ROOM = min(256, (PS - 84) // 16)  # record entries one root page holds (59 at 1 KiB)
FLUSHES = {"compat": 1, "fast": 1, "none": 0}


def flushes(hooks: IoHooks) -> int:
    c = hooks.counts()
    return c["msync"] + c["fsync"]


def _extended(tmp_path, mode: str, layout_name: str):
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", PS, hooks, durability=mode, layout=layout_name)
    old = p.alloc_bulk(CHUNK)  # past the v0.2 cap
    p.sync()
    assert p.format_version == "0.3" and p.page_count > CHUNK
    return p, hooks, list(old)


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_one_flush_per_transaction_past_the_v02_cap(tmp_path, mode, layout_name):
    p, hooks, old = _extended(tmp_path, mode, layout_name)
    try:
        for i in range(4):
            before = flushes(hooks)
            with p.transaction() as tx:
                new = p.alloc_bulk(3)
                for pid in new:
                    tx.page(pid)[:8] = i.to_bytes(8, "little")
                p.free(old.pop())
                p.set_root(0, new[0])
            assert flushes(hooks) - before == FLUSHES[mode], hooks.counts()
        before = flushes(hooks)
        with p.transaction() as tx:  # data pages only
            tx.write(old[5], b"data only")
        assert flushes(hooks) - before == FLUSHES[mode]
        if mode != "none":
            c = hooks.counts()
            assert c["fsync"] >= 1
    finally:
        p.close()
    with Pager.open(tmp_path / "f") as q:
        assert bytes(q.page(q.roots[0])[:8]) == (3).to_bytes(8, "little")
        assert bytes(q.page(old[5])[:9]) == b"data only"


def test_a_transaction_too_large_for_the_record_flushes_data_first(tmp_path):
    p, hooks, old = _extended(tmp_path, "fast", "0.2")
    try:
        before = flushes(hooks)
        with p.transaction() as tx:
            for pid in old[: 2 * (ROOM + 1) : 2]:  # ROOM + 1 runs
                tx.page(pid)[0] = 1
            p.set_root(2, 1)
        assert flushes(hooks) - before == 2  # data, then the sealed commit
        before = flushes(hooks)
        with p.transaction() as tx:
            for pid in old[1 : 2 * ROOM : 2]:  # ROOM runs: they fit
                tx.page(pid)[0] = 2
            p.set_root(2, 2)
        assert flushes(hooks) - before == 1
    finally:
        p.close()
    assert len(inspect_v03(tmp_path / "f").record) == ROOM


def _commit_two(path):
    with Pager.create(path, PS, durability="fast") as p:
        p.alloc_bulk(CHUNK)
        with p.transaction() as tx:
            a = p.alloc()
            tx.page(a)[:4] = b"AAAA"
            p.set_root(0, a)
        with p.transaction() as tx:
            b = p.alloc()
            tx.page(b)[:4] = b"BBBB"
            p.set_root(0, b)
    return a, b


def test_the_root_page_records_the_committed_data(tmp_path):
    path = tmp_path / "f"
    a, b = _commit_two(path)
    img = inspect_v03(path)
    assert img.roots[0] == b
    assert [(first, count) for first, count, _ in img.record] == [(b, 1)]
    page = path.read_bytes()[b * PS : (b + 1) * PS]
    assert img.record[0][2] == record_sum(page, b)


@pytest.mark.parametrize("past_the_cap", [False, True])
def test_a_lost_write_of_a_page_ending_with_its_own_crc_is_seen(tmp_path, past_the_cap):
    """A data page in a format that ends each page with the CRC-32 of the rest:
    every such page has the same CRC-32, so only a sum that is not a CRC tells
    the committed content from the older one a lost write leaves."""
    path = tmp_path / "f"

    def framed(tag: bytes) -> bytes:
        body = tag * ((PS - 4) // len(tag))
        body += bytes(PS - 4 - len(body))
        return body + zlib.crc32(body).to_bytes(4, "little")

    with Pager.create(path, PS, durability="fast") as p:
        if past_the_cap:
            p.alloc_bulk(CHUNK)
        y = p.alloc()
        with p.transaction() as tx:
            tx.write(y, framed(b"old!"))
            p.set_root(0, 1)
        p.set_root(0, 2)  # a commit after it: y's record is retired
        before = path.read_bytes()
        with p.transaction() as tx:
            tx.write(y, framed(b"new!"))
            p.set_root(0, 3)
    with open(path, "r+b") as f:  # y's write never reached the disk: its old bytes
        f.seek(y * PS)
        f.write(before[y * PS : (y + 1) * PS])
    assert zlib.crc32(before[y * PS : (y + 1) * PS]) == zlib.crc32(framed(b"new!"))
    with pytest.warns(RecoveryWarning, match="data page"), Pager.open(path) as q:
        assert q.roots[0] == 2


def test_open_falls_back_when_recorded_data_missed_the_disk(tmp_path):
    path = tmp_path / "f"
    a, b = _commit_two(path)
    # A power loss that kept the metadata copy and the root page but not one
    # sector of the new page.
    with open(path, "r+b") as f:
        f.seek(b * PS + 512)
        f.write(b"\x55" * 512)
    with pytest.warns(RecoveryWarning, match="data page"):
        p = Pager.open(path)
    with p:
        assert p.roots[0] == a
        assert bytes(p.page(a)[:4]) == b"AAAA"
        assert b not in set(p.allocated_pages())
    with pytest.warns(RecoveryWarning), ReadOnlyPager.open(path) as r:
        assert r.roots[0] == a
    with pytest.warns(RecoveryWarning), Pager.open(path) as p:
        p.set_root(1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(path) as p:
            assert p.roots[:2] == (a, 1)


def test_rewriting_a_recorded_page_retires_the_record_first(tmp_path):
    path = tmp_path / "f"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks, durability="fast")
    try:
        p.alloc_bulk(CHUNK)
        with p.transaction() as tx:
            x = p.alloc()
            tx.page(x)[:4] = b"ONE!"
            p.set_root(0, x)
        before = flushes(hooks)
        with p.transaction() as tx:
            tx.page(x)[:4] = b"TWO!"  # retires the record: an msync of the copy
            p.set_root(1, 5)
        assert flushes(hooks) - before == 2
        assert inspect_v03(path).record == [(x, 1, inspect_v03(path).record[0][2])]
    finally:
        p.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(path) as q:
            assert q.roots[:2] == (x, 5) and bytes(q.page(x)[:4]) == b"TWO!"


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_engine_transactions_past_the_cap_survive_power_loss(tmp_path, mode, layout_name):
    """Copy-on-write transactions (data pages through tx.page, roots naming
    them) in the extended state, one flush each: every crash image opens and
    shows an acknowledged transaction or the one in flight, whole; no root
    names a page whose content is not the committed content."""
    ops = [Op("alloc_bulk", "alloc_bulk past the v0.2 cap",
              lambda p, c: p.alloc_bulk(CHUNK) and None),
           Op("sync", "sync", lambda p, c: p.sync())]
    ops += engine_workload(seed=21, n_txns=8)
    rec = record_workload(tmp_path / "work", ops, PS, mode=mode, layout=layout_name)
    assert rec.states[-1].roots[1] == 8
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
