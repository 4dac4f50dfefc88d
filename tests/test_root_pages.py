"""Roots at every size (issue 15): the extended layout's root pages.

Past the room the v0.2 bitmap leaves its metadata tail, a state with a non-zero
root moves to the extended layout, which keeps the roots (and, later, the
commit record) in a sealed pair of root pages (FORMAT.md, "Root pages"). These
tests cover where they live, that every reader shows the roots of the commit it
sees, and that a power loss anywhere never pairs roots with the allocations of
another commit.
"""

from __future__ import annotations

import io

import pytest
from support.format_v03 import inspect_v03
from support.geometry import layout
from support.iohooks import DURABILITY_MODES
from support.powerloss import ImageChecker, crash_images, record_workload
from support.workloads import Op, _store

from mappedpages import Pager, ReadOnlyPager, ReservedPage
from mappedpages._cli import _print_info
from mappedpages._inspect import info_data

PS = 1024
CHUNK = layout(PS).chunk_pages
TAIL_ROOM = (PS - 100) * 8  # the most pages whose v0.2 bitmap leaves the tail its room


def _extended_with_roots(path, layout_name: str = "0.2") -> list[int]:
    with Pager.create(path, PS, layout=layout_name) as p:
        p.set_root(0, 11)
        ids = list(p.alloc_bulk(CHUNK))  # past the v0.2 cap: the move
        p.set_root(1, 22)
    return ids


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
def test_root_pages_are_system_pages_named_by_the_metadata(tmp_path, layout_name):
    path = tmp_path / "f"
    ids = _extended_with_roots(path, layout_name)
    img = inspect_v03(path)
    # A file created in the extended layout has its root pages from the start
    # (4 and 5); one that moved there takes them with chunk 1.
    want = 4 if layout_name == "0.3" else CHUNK + 4
    assert img.roots_page == want and img.roots[:2] == (11, 22)
    assert {img.roots_page, img.roots_page + 1} <= img.system_pages
    with Pager.open(path) as p:
        for page in (img.roots_page, img.roots_page + 1):
            with pytest.raises(ReservedPage):
                p.free(page)
            with pytest.raises(ReservedPage):
                p.page(page)
        assert img.roots_page not in set(p.allocated_pages())
        assert sorted(p.allocated_pages()) == sorted(ids)


def test_snapshot_reader_keeps_the_roots_of_its_commit(tmp_path):
    path = tmp_path / "f"
    _extended_with_roots(path)
    with Pager.open(path) as p:
        r = ReadOnlyPager.open(path)  # a snapshot reader
        try:
            p.set_root(0, 111)
            with p.transaction():
                p.alloc()
                p.set_root(1, 222)
            assert r.roots[:2] == (11, 22)
            assert r.refresh()
            assert r.roots[:2] == (111, 222)
        finally:
            r.close()
        snap = p.snapshot()
        try:
            p.set_root(0, 0)
            assert snap.roots[0] == 111 and p.roots[0] == 0
        finally:
            snap.close()


def test_backup_keeps_the_roots(tmp_path):
    path = tmp_path / "f"
    _extended_with_roots(path)
    with Pager.open(path) as p:
        p.set_root(5, 55)
        p.backup(tmp_path / "copy")
    with Pager.open(tmp_path / "copy") as q:
        assert q.roots == (11, 22, 0, 0, 0, 55, 0, 0)
    inspect_v03(tmp_path / "copy")


def test_info_shows_the_roots_and_where_they_live(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    with Pager.create(small, PS) as p:
        p.set_root(3, 7)
    _extended_with_roots(big)
    data = info_data(str(small))
    assert data["roots"] == [0, 0, 0, 7, 0, 0, 0, 0] and data["root_pages"] is None
    data = info_data(str(big))
    assert data["roots"][:2] == [11, 22] and data["root_pages"] == [CHUNK + 4, CHUNK + 5]
    assert data["counts"]["metadata"] == 4  # copies A and B, and the two root pages
    assert not data["conflicts"]
    out = io.StringIO()
    _print_info(data, out)
    assert f"11, 22, 0, 0, 0, 0, 0, 0 (in the root pages {CHUNK + 4} and {CHUNK + 5})" in (
        out.getvalue()
    )


def test_rollback_of_a_move_to_the_extended_layout_keeps_the_v02_roots(tmp_path):
    path = tmp_path / "f"
    with Pager.create(path, PS) as p:
        p.set_root(0, 5)
        with pytest.raises(RuntimeError), p.transaction():
            p.alloc_bulk(CHUNK)
            p.set_root(0, 6)
            assert p.format_version == "0.3"
            raise RuntimeError("roll back")
        assert p.roots[0] == 5
        p.set_root(1, 9)
    with Pager.open(path) as q:
        assert q.roots[:2] == (5, 9)


@pytest.mark.parametrize("layout_name", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_roots_across_the_move_survive_power_loss(tmp_path, mode, layout_name):
    """A root set in the v0.2 tail, the growth that moves the state past the tail
    to the extended layout's root pages, and root and allocation commits after
    it: every crash image opens and shows an acknowledged state or the one in
    flight, roots and allocations of the same commit."""
    ops = [
        Op("set_root", "set_root (v0.2 tail)", lambda p, c: p.set_root(1, 41)),
        Op("alloc_bulk", "alloc_bulk up to the tail's room",
           _store("fill", lambda p: p.alloc_bulk(TAIL_ROOM - 3 - 8))),
        Op("alloc_bulk", "alloc_bulk(20): the move", _store("up", lambda p: p.alloc_bulk(20))),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("set_root", "set_root (root pages)", lambda p, c: p.set_root(1, 42)),
        Op("txn", "transaction: free, alloc and a root",
           lambda p, c: _txn(p, c)),
        Op("set_root", "set_root to 0", lambda p, c: p.set_root(1, 0)),
        Op("sync", "sync", lambda p, c: p.sync()),
    ]
    rec = record_workload(tmp_path / "work", ops, PS, mode=mode, layout=layout_name)
    assert rec.states[-1].roots[1] == 0 and rec.states[-3].roots[1] == 43
    checker = ImageChecker(tmp_path / "img")
    bad = []
    images = 0
    for pt in rec.points:
        for img in crash_images(pt, PS, exhaustive_pages=2, samples=4):
            images += 1
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert images > (20 if mode == "none" else 40)
    assert not bad, f"{len(bad)} of {images} image(s) fail:\n" + "\n".join(bad[:3])


def _txn(p: Pager, ctx: dict) -> None:
    with p.transaction():
        p.free(ctx["up"][0])
        p.alloc()
        p.set_root(1, 43)
