"""A file created with ``layout="0.3"`` is in the extended layout from its creation.

The contract: page 0 says minor 3 with the mark ``EXA`` (an upgraded v0.2
file keeps ``EXT``, and so do files earlier versions created with
``layout="0.3"``); a new file has 8 pages: 0-2 (superblock, metadata copies),
page 3 free, pages 4/5 the root-page copies A/B and pages 6/7 the copies A/B
of directory-index page 0, the four of them allocated system pages. The
protected-page directory is named by that index page, sealed with the
metadata commit, so a protected alloc, write, free, or a transaction holding
a protected write, a data page and a root, costs one flush in "compat" and
"fast" and none in "none". Nothing else changes for a user: ids, contents,
reopen, growth past v0.2's cap, trim, backup, readers and the command line.

An old-style small minor-3 file (``EXT``) keeps v0.2's directory named by
page 0, and its costs. Losing both copies of index page 0 is corruption
(open refuses and changes nothing); losing the inactive copy changes nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.edit import patch, read_at
from support.geometry import layout
from support.iohooks import (
    DURABILITY_MODES,
    IoHooks,
    create_pager,
    open_pager,
    protected_commit_flushes,
)
from support.pagers import commit_bytes, force_close, read_page, read_protected

import mappedpages
from mappedpages import (
    CorruptFileError,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
    ReservedPage,
)

PS = 1024
C = layout(PS).chunk_pages  # v0.2's cap, from the core
assert C == 7968
ROOT_PAGES = (4, 5)
INDEX_PAGES = (6, 7)
SYSTEM = ROOT_PAGES + INDEX_PAGES
NEVER_HANDED_OUT = frozenset((0, 1, 2) + SYSTEM)


def flushes(hooks: IoHooks) -> int:
    c = hooks.counts()
    return c["msync"] + c["fsync"]


def content(tag: int) -> bytes:
    return random.Random(tag).randbytes(PS)


def superblock(path) -> bytes:
    return read_at(path, 0, 16)


def run_cli(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "mappedpages", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def open_clean(cls, path, **kw):
    """Open, failing on any RecoveryWarning: a healthy file needs no recovery."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        return cls.open(path, **kw)


def populated(path, *, n_protected: int = 3, n_regular: int = 10):
    """A layout="0.3" file with protected pages, regular pages and roots.

    Returns what it must show: {pid: content}, {page: content}, roots.
    """
    prot: dict[int, bytes] = {}
    regular: dict[int, bytes] = {}
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        pids = [p.alloc_protected() for _ in range(n_protected)]
        assert pids == list(range(n_protected))
        for i, pid in enumerate(pids):
            commit_bytes(p, pid, content(100 + i))
            commit_bytes(p, pid, content(200 + i))  # both copies of each page written
            prot[pid] = content(200 + i)
        for page_id in p.alloc_bulk(n_regular):
            v = p.page(page_id)
            v[:] = content(1000 + page_id)
            v.release()
            regular[page_id] = content(1000 + page_id)
        with p.transaction() as tx:
            node = p.alloc()
            tx.page(node)[:] = content(5000)
            regular[node] = content(5000)
            with p.write_protected(pids[0]) as w:
                w.page[:] = content(300)
            prot[pids[0]] = content(300)
            p.set_root(0, node)
            p.set_root(7, 0xDEADBEEF)
        p.sync()
        roots = p.roots
    assert roots[0] == node and roots[7] == 0xDEADBEEF
    return prot, regular, roots


def shows(p, prot: dict, regular: dict, roots) -> None:
    """P (a Pager or ReadOnlyPager) shows exactly this state."""
    assert sorted(p.allocated_protected_pages()) == sorted(prot)
    for pid, data in prot.items():
        assert read_protected(p, pid) == data, f"protected page {pid}"
        assert p.verify_protected(pid), f"protected page {pid} fails its CRC"
    assert sorted(p.allocated_pages()) == sorted(regular)
    for page_id, data in regular.items():
        assert read_page(p, page_id) == data, f"page {page_id}"
    assert tuple(p.roots) == tuple(roots)

def reopened_shows(path, prot: dict, regular: dict, roots) -> None:
    """The file reopens clean, shows that content, and `check` finds no problem."""
    with open_clean(Pager, path) as p:
        shows(p, prot, regular, roots)
    r = run_cli("check", path, cwd=path.parent)
    assert r.returncode == 0, r.stdout + r.stderr



# ---------------------------------------------------------------- the new file


def test_the_superblock_says_minor_3_and_EXA(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        sb = superblock(path)
        assert sb[0:4] == b"MPPG"
        assert sb[4] == 0 and sb[5] == 3
        assert sb[13:16] == b"EXA", sb
        assert p.format_version == "0.3"
        pid = p.alloc_protected()
        commit_bytes(p, pid, b"x")
        p.alloc()
    # No commit rewrites the mark.
    sb = superblock(path)
    assert sb[0:4] == b"MPPG" and sb[5] == 3 and sb[13:16] == b"EXA"
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
    assert superblock(path)[13:16] == b"EXA"


def test_an_upgraded_v02_file_keeps_EXT(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, preallocate=False) as p:
        sb = superblock(path)
        assert sb[5] == 2 and sb[13:16] == b"\0\0\0"
        p.alloc_bulk(C)  # past the cap: the upgrade
        assert p.format_version == "0.3"
    sb = superblock(path)
    assert sb[5] == 3 and sb[13:16] == b"EXT"


def test_a_new_file_has_eight_pages_and_page_3_free(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        assert p.page_count == 8
        assert p.free_page_count == 1
        assert list(p.allocated_pages()) == []
        assert list(p.allocated_protected_pages()) == []
        assert p.roots == (0,) * 8
        assert os.path.getsize(path) == 8 * PS
    with Pager.open(path) as p:
        assert p.page_count == 8 and p.free_page_count == 1
        assert list(p.allocated_pages()) == []


@pytest.mark.parametrize("page_id", SYSTEM)
def test_pages_4_to_7_are_reserved(tmp_path, page_id):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        with pytest.raises(ReservedPage):
            p.page(page_id)
        with pytest.raises(ReservedPage):
            p.free(page_id)
        with pytest.raises(ReservedPage):
            p.free_bulk([page_id])
        assert p.free_page_count == 1 and p.page_count == 8
        assert list(p.allocated_pages()) == []
    with Pager.open(path) as p:
        with pytest.raises(ReservedPage):
            p.page(page_id)
        with pytest.raises(ReservedPage):
            p.free(page_id)
        assert p.free_page_count == 1 and p.page_count == 8


def test_alloc_returns_3_then_8(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        assert p.alloc() == 3
        assert p.page_count == 8
        assert p.alloc() == 8  # the file grows
        assert p.page_count > 8
        assert p.format_version == "0.3"
        assert list(p.allocated_pages()) == [3, 8]
    with Pager.create(tmp_path / "g.mpp", page_size=PS, layout="0.3") as p:
        assert p.alloc_bulk(5) == [3, 8, 9, 10, 11]
        ids = p.alloc_bulk(100)
        assert not set(ids) & NEVER_HANDED_OUT
    with Pager.open(path) as p:
        assert list(p.allocated_pages()) == [3, 8]
        assert p.alloc() == 9


def test_protected_backing_pages_are_never_4_to_7(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3") as p:
        pids = p.alloc_protected_bulk(40)  # more than one directory block at 1 KiB
        backing = {page for pid in pids for page in p._backing(pid)}
        assert not backing & NEVER_HANDED_OUT
        assert not backing & set(p.allocated_pages())


# ---------------------------------------------------------------- flushes


def _counted(path, mode: str, layout_name: str = "0.3", past_cap: bool = False):
    """A file with hooks and enough free pages that nothing below grows
    (past_cap: grown past the v0.2 cap first, so in the extended state)."""
    hooks = IoHooks()
    p = create_pager(path, PS, hooks, durability=mode, layout=layout_name)
    if past_cap:
        p.free_bulk(p.alloc_bulk(C))
    spare = p.alloc_bulk(24)
    p.free_bulk(spare)
    p.sync()  # in "none" a free is reusable once durable
    return p, hooks


def _protected_costs(p, hooks) -> tuple[dict[str, int], tuple[int, int, int, int]]:
    """Flush calls of each protected commit of one sequence (and of an alloc
    and a free between them); returns them and the ids the sequence left."""
    cost: dict[str, int] = {}

    def measure(name, fn):
        before = flushes(hooks)
        out = fn()
        cost[name] = flushes(hooks) - before
        return out

    size = p.page_count
    pid0 = measure("alloc_protected (its directory block new)", p.alloc_protected)
    pid1 = measure("alloc_protected", p.alloc_protected)
    measure("write_protected", lambda: commit_bytes(p, pid0, content(1)))
    measure("write_protected again", lambda: commit_bytes(p, pid1, content(2)))
    data = measure("alloc", p.alloc)
    leaf = p.alloc()

    def txn():
        with p.transaction() as tx:
            with p.write_protected(pid0) as w:
                w.page[:] = content(3)
            tx.page(data)[:] = content(4)
            p.set_root(0, data)

    measure("transaction: protected write + data page + root", txn)

    def txn2():
        with p.transaction() as tx:
            tx.page(leaf)[:] = content(5)
            p.set_root(1, leaf)
            with p.write_protected(pid1) as w:
                w.page[:] = content(6)

    measure("a second such transaction", txn2)
    measure("free_protected", lambda: p.free_protected(pid1))
    measure("free", lambda: p.free(leaf))
    assert p.page_count == size, "the counted calls must not grow the file"
    return cost, (pid0, pid1, data, leaf)


@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_each_protected_commit_costs_one_flush(tmp_path, mode):
    """One flush per commit in "compat" and "fast"; in "none" each costs what
    it costs in the extended state of a file that grew past the cap (the
    staged and directory copies are flushed before the state that names
    them), and a plain alloc or free nothing."""
    p, hooks = _counted(tmp_path / "f.mpp", mode)
    try:
        cost, (pid0, _pid1, data, leaf) = _protected_costs(p, hooks)
        if mode == "none":
            big, big_hooks = _counted(tmp_path / "big.mpp", mode, "0.2", past_cap=True)
            try:
                want, _ = _protected_costs(big, big_hooks)
            finally:
                big.close()
            assert cost == want, (cost, want)
            assert cost["alloc"] == cost["free"] == 0
        else:
            assert cost == dict.fromkeys(cost, 1), (mode, cost, hooks.counts())
        before = flushes(hooks)
        p.sync()
        assert flushes(hooks) > before
        # In "none", durable at close() too: this write has no sync after it.
        before = flushes(hooks)
        commit_bytes(p, pid0, content(7))
        assert flushes(hooks) - before == (cost["write_protected"])
    finally:
        p.close()
    with open_clean(Pager, tmp_path / "f.mpp") as q:
        assert list(q.allocated_protected_pages()) == [pid0]
        assert read_protected(q, pid0) == content(7)
        assert q.roots[:2] == (data, leaf)
        assert read_page(q, data) == content(4)
        assert sorted(q.allocated_pages()) == [data]


@pytest.mark.parametrize("mode", ["compat", "fast"])
def test_a_reopened_file_keeps_the_one_flush_costs(tmp_path, mode):
    path = tmp_path / "f.mpp"
    prot, _, _ = populated(path)
    hooks = IoHooks()
    q = open_pager(path, hooks, durability=mode)
    try:
        data = q.alloc()
        before = flushes(hooks)
        commit_bytes(q, 1, content(11))
        assert flushes(hooks) - before == 1
        before = flushes(hooks)
        with q.transaction() as tx:
            with q.write_protected(2) as w:
                w.page[:] = content(12)
            tx.page(data)[:] = content(13)
            q.set_root(3, data)
        assert flushes(hooks) - before == 1, hooks.counts()
    finally:
        q.close()
    with open_clean(Pager, path) as r:
        assert read_protected(r, 1) == content(11)
        assert read_protected(r, 2) == content(12)
        assert read_protected(r, 0) == prot[0]
        assert r.roots[3] == data and read_page(r, data) == content(13)


# ---------------------------------------------------------------- the old-style file


def old_style_03(path) -> None:
    """What earlier versions wrote for layout="0.3": a v0.2 file marked minor 3, EXT."""
    with Pager.create(path, page_size=PS) as p:
        assert p.format_version == "0.2"
    patch(path, 5, b"\x03")
    patch(path, 13, b"EXT")


def test_an_old_style_03_file_stays_as_it_was(tmp_path):
    path = tmp_path / "f.mpp"
    old_style_03(path)
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert p.page_count == 4
        assert p.alloc() == 3
        assert p.alloc() == 4  # pages 4-7 are not system pages here
        pid = p.alloc_protected()
        commit_bytes(p, pid, content(1))
        p.set_root(0, 4)
    sb = superblock(path)
    assert sb[5] == 3 and sb[13:16] == b"EXT"
    with open_clean(Pager, path) as p:
        assert sorted(p.allocated_pages()) == [3, 4]
        assert read_protected(p, pid) == content(1)
        assert p.roots[0] == 4
    r = run_cli("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("mode", "write", "txn"), [("compat", 3, 6), ("fast", 2, 4)])
def test_an_old_style_03_file_keeps_the_v02_directory_costs(tmp_path, mode, write, txn):
    """Its directory is still named by page 0, a commit point of its own."""
    path = tmp_path / "f.mpp"
    old_style_03(path)
    hooks = IoHooks()
    p = open_pager(path, hooks, durability=mode)
    try:
        pid, counts = protected_commit_flushes(p, hooks)
        assert counts == (write, txn, 1), hooks.counts()
        assert p.page_count < C
    finally:
        p.close()
    assert superblock(path)[13:16] == b"EXT"
    with open_clean(Pager, path) as q:
        assert read_protected(q, pid)[:8] == b"y" * 8
        assert read_page(q, q.roots[0])[:4] == b"node"
        assert read_page(q, q.roots[1])[:4] == b"leaf"


# ---------------------------------------------------------------- nothing else changes


def test_protected_pages_survive_reopen(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    for _ in range(2):
        with open_clean(Pager, path) as p:
            shows(p, prot, regular, roots)
            assert p.page_count >= 8
    with open_clean(Pager, path) as p:
        commit_bytes(p, 2, content(77))
        prot[2] = content(77)
        p.free_protected(1)
        del prot[1]
        assert p.alloc_protected() == 1  # the lowest free id again
        prot[1] = bytes(PS)
    with open_clean(Pager, path) as p:
        shows(p, prot, regular, roots)


def test_protected_pages_survive_growth_past_the_v02_cap(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    with open_clean(Pager, path, preallocate=False) as p:
        bulk = p.alloc_bulk(C + 50)
        assert p.page_count > C
        assert p.format_version == "0.3"
        assert not set(bulk) & NEVER_HANDED_OUT
        shows(p, prot, {**regular, **{i: read_page(p, i) for i in bulk}}, roots)
        # Writes and new protected pages after the growth.
        commit_bytes(p, 1, content(41))
        prot[1] = content(41)
        new = p.alloc_protected()
        assert new == 3
        commit_bytes(p, new, content(42))
        prot[new] = content(42)
        regular.update({i: read_page(p, i) for i in bulk})
    assert superblock(path)[13:16] == b"EXA"
    reopened_shows(path, prot, regular, roots)


def test_protected_pages_survive_trim_of_a_small_file(tmp_path):
    """Below v0.2's cap. Whether trim may cut a small extended file down to its
    last page in use or keeps a floor (as an upgraded file keeps chunk 1) is
    not the contract: either way it never cuts what is in use."""
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    with open_clean(Pager, path, preallocate=False) as p:
        extra = p.alloc_bulk(300)
        p.free_bulk(extra)
        before = p.page_count
        given = p.trim()
        assert given == before - p.page_count >= 0
        assert os.path.getsize(path) >= p.page_count * PS
        shows(p, prot, regular, roots)
    reopened_shows(path, prot, regular, roots)


def test_trim_of_an_emptied_file_keeps_pages_4_to_7(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path, page_size=PS, layout="0.3", preallocate=False) as p:
        ids = p.alloc_bulk(50)
        assert ids[:2] == [3, 8]
        p.free_bulk(ids)
        before = p.page_count
        given = p.trim()
        # Down to the system pages: 8 (the file fits chunk 0).
        assert (given, p.page_count) == (before - 8, 8)
        assert p.free_page_count == p.page_count - 7
    with open_clean(Pager, path) as p:
        assert p.free_page_count == p.page_count - 7
        for page_id in SYSTEM:
            with pytest.raises(ReservedPage):
                p.page(page_id)
        assert p.alloc() == 3 and p.alloc() == 8
    r = run_cli("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_protected_pages_survive_trim_past_the_v02_cap(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    with open_clean(Pager, path, preallocate=False) as p:
        new = p.alloc_protected()
        bulk = p.alloc_bulk(C + 100)
        assert p.format_version == "0.3" and p.page_count > C
        commit_bytes(p, new, content(55))
        prot[new] = content(55)
        p.free_bulk(bulk)
        before = p.page_count
        given = p.trim()
        assert given > 0 and given == before - p.page_count
        assert p.page_count <= C + 8  # past the cap, the trim goes down to chunk 1 at most
        assert os.path.getsize(path) == p.page_count * PS
        shows(p, prot, regular, roots)
    reopened_shows(path, prot, regular, roots)


def test_backup_keeps_protected_pages_and_roots(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    with open_clean(Pager, path) as p:
        p.backup(tmp_path / "copy.mpp")
        with open_clean(ReadOnlyPager, path, snapshot=False) as r:
            r.backup(tmp_path / "copy2.mpp")
    for name in ("copy.mpp", "copy2.mpp"):
        dest = tmp_path / name
        sb = superblock(dest)
        assert sb[0:4] == b"MPPG" and sb[5] == 3 and sb[13:16] == b"EXA", (name, sb)
        with open_clean(Pager, dest) as q:
            shows(q, prot, regular, roots)
            with pytest.raises(ReservedPage):
                q.page(6)
            commit_bytes(q, 0, content(66))  # the copy is a working file
        with open_clean(Pager, dest) as q:
            assert read_protected(q, 0) == content(66)
        r = run_cli("check", dest, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_reader_sees_the_same_protected_pages_and_roots(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    with open_clean(ReadOnlyPager, path, snapshot=False) as r:
        shows(r, prot, regular, roots)
        count = r.page_count
    with open_clean(Pager, path) as p:
        assert p.page_count == count
        with open_clean(ReadOnlyPager, path) as r:  # a snapshot reader beside the writer
            shows(r, prot, regular, roots)
            commit_bytes(p, 2, content(88))
            with p.transaction() as tx:
                node = p.alloc()
                tx.page(node)[:] = content(89)
                p.set_root(5, node)
            # The snapshot still shows its commit ...
            shows(r, prot, regular, roots)
            assert r.refresh()
            # ... and the writer's latest once it moves.
            prot2 = {**prot, 2: content(88)}
            regular2 = {**regular, node: content(89)}
            roots2 = tuple(node if i == 5 else v for i, v in enumerate(roots))
            shows(r, prot2, regular2, roots2)


def test_check_and_info_on_a_new_file(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    r = run_cli("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    fresh = tmp_path / "fresh.mpp"
    Pager.create(fresh, page_size=PS, layout="0.3").close()
    r = run_cli("check", fresh, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "EXA" in r.stdout, r.stdout
    r = run_cli("info", "--json", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format_layout"] == "0.3"
    assert info["page_size"] == PS
    assert info["roots"] == list(roots)
    assert sorted(int(k) for k in info["protected_pages"]) == sorted(prot)
    with open_clean(Pager, path) as p:
        assert info["page_count"] == p.page_count
        assert info["free_count"] == p.free_page_count
    r = run_cli("info", "--json", fresh, cwd=tmp_path)
    info = json.loads(r.stdout)
    assert info["page_count"] == 8 and info["free_count"] == 1


# ---------------------------------------------------------------- corruption


def index_copies(path) -> list[tuple[int, bool, int, int]]:
    """(page, CRC ok, generation, index page number) of pages 6 and 7."""
    out = []
    for page_id in INDEX_PAGES:
        raw = read_at(path, page_id * PS, PS)
        ok = zlib.crc32(raw[:-4]) & 0xFFFFFFFF == struct.unpack_from("<I", raw, PS - 4)[0]
        gen, k = struct.unpack_from("<QI", raw, 0)
        out.append((page_id, ok, gen, k))
    return out


def zero_page(path, page_id: int) -> None:
    patch(path, page_id * PS, bytes(PS))


@pytest.mark.parametrize("cls", [Pager, ReadOnlyPager])
def test_both_index_copies_zeroed_is_corruption(tmp_path, cls):
    path = tmp_path / "f.mpp"
    populated(path)
    zero_page(path, 6)
    zero_page(path, 7)
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        with pytest.raises(CorruptFileError) as e:
            cls.open(path)
    assert type(e.value) is not CorruptFileError, "a CorruptFileError subclass"
    assert isinstance(e.value, mappedpages.MappedPageError)
    assert path.read_bytes() == before, "a refused open changed the file"
    r = run_cli("check", path, cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    assert path.read_bytes() == before


def test_the_inactive_index_copy_zeroed_changes_nothing(tmp_path):
    path = tmp_path / "f.mpp"
    prot, regular, roots = populated(path)
    copies = index_copies(path)
    assert all(ok and k == 0 for _, ok, _, k in copies), copies
    assert copies[0][2] != copies[1][2], copies
    inactive = min(copies, key=lambda c: c[2])[0]
    assert read_at(path, inactive * PS, PS) != bytes(PS)
    zero_page(path, inactive)
    with open_clean(ReadOnlyPager, path, snapshot=False) as r:
        shows(r, prot, regular, roots)
    with open_clean(Pager, path) as p:
        shows(p, prot, regular, roots)
        commit_bytes(p, 1, content(99))  # and the next commit goes on from there
        prot[1] = content(99)
    with open_clean(Pager, path) as p:
        shows(p, prot, regular, roots)


# ---------------------------------------------------------------- a model


class Model:
    """Regular and protected pages and roots of a layout="0.3" file, against a dict model."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.p = Pager.create(path, page_size=PS, layout="0.3")
        self.regular: dict[int, bytes] = {}  # page -> its 16-byte tag
        self.prot: dict[int, bytes] = {}
        self.roots = [0] * 8
        self.n = 0

    def close(self) -> None:
        force_close(self.p)

    def _tag(self, page_id: int, view=None) -> None:
        assert page_id not in NEVER_HANDED_OUT, page_id
        assert page_id not in self.regular, page_id
        self.n += 1
        t = page_id.to_bytes(8, "little") + self.n.to_bytes(8, "little")
        v = view if view is not None else self.p.page(page_id)
        v[:16] = t
        if view is None:
            v.release()
        self.regular[page_id] = t

    def step(self, op: str, seed: int) -> None:
        rnd = random.Random(seed)
        p = self.p
        if op == "alloc":
            n = rnd.choice([1, 1, 2, 5])
            for page_id in [p.alloc()] if n == 1 else p.alloc_bulk(n):
                self._tag(page_id)
        elif op == "free" and self.regular:
            ids = rnd.sample(sorted(self.regular), min(len(self.regular), rnd.choice([1, 1, 3])))
            if len(ids) == 1:
                p.free(ids[0])
            else:
                p.free_bulk(ids)
            for page_id in ids:
                del self.regular[page_id]
        elif op == "alloc_protected":
            expect = min(set(range(len(self.prot) + 1)) - set(self.prot))
            pid = p.alloc_protected()
            assert pid == expect
            self.prot[pid] = bytes(PS)
        elif op == "write_protected" and self.prot:
            pid = rnd.choice(sorted(self.prot))
            data = rnd.randbytes(PS)
            w = p.write_protected(pid)
            w.page[:] = data
            if rnd.random() < 0.2:
                w.discard()
            else:
                w.commit()
                self.prot[pid] = data
        elif op == "free_protected" and self.prot:
            pid = rnd.choice(sorted(self.prot))
            p.free_protected(pid)
            del self.prot[pid]
        elif op == "txn":
            with p.transaction() as tx:
                node = p.alloc()
                self._tag(node, tx.page(node))
                if self.prot:
                    pid = rnd.choice(sorted(self.prot))
                    data = rnd.randbytes(PS)
                    with p.write_protected(pid) as w:
                        w.page[:] = data
                    self.prot[pid] = data
                slot = rnd.randrange(8)
                p.set_root(slot, node)
                self.roots[slot] = node
        elif op == "reopen":
            self.close()
            self.p = open_clean(Pager, self.path)
        self.check(full=op == "reopen")

    def check(self, full: bool = False) -> None:
        p = self.p
        assert sorted(p.allocated_pages()) == sorted(self.regular)
        assert sorted(p.allocated_protected_pages()) == sorted(self.prot)
        assert list(p.roots) == self.roots
        if full:
            for page_id, t in self.regular.items():
                assert read_page(p, page_id)[:16] == t, page_id
            for pid, data in self.prot.items():
                assert read_protected(p, pid) == data, pid
            for page_id in SYSTEM:
                with pytest.raises(ReservedPage):
                    p.page(page_id)


OPS = ["alloc", "free", "alloc_protected", "write_protected", "free_protected", "txn", "reopen"]


def run_model(path: Path, ops) -> None:
    m = Model(path)
    try:
        for op, seed in ops:
            m.step(op, seed)
        m.step("reopen", 0)
    finally:
        m.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**32)), max_size=30))
def test_random_operations_match_a_model(tmp_path, ops):
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        run_model(d / "m.mpp", ops)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_long_seeded_run_matches_a_model(tmp_path, seed):
    rnd = random.Random(seed)
    weights = [6, 4, 3, 6, 2, 4, 1]
    ops = [(rnd.choices(OPS, weights)[0], rnd.randrange(2**32)) for _ in range(300)]
    run_model(tmp_path / "m.mpp", ops)


@pytest.mark.parametrize("past_cap", [False, True], ids=["created-0.3", "grown-past-the-cap"])
def test_a_rollback_in_none_mode_keeps_the_unwritten_roots(tmp_path, past_cap):
    """In "none" mode a rolled-back transaction reloads the committed state and
    puts back the unwritten one: its roots too, which the extended layout then
    writes to its root page (and, in a file that claimed its root pages in that
    unwritten state, the pair stays claimed, not leaked as regular pages)."""
    path = tmp_path / "f.mpp"
    layout_name = "0.2" if past_cap else "0.3"
    with Pager.create(path, page_size=PS, durability="none", layout=layout_name) as p:
        if past_cap:
            p.free_bulk(p.alloc_bulk(C))
            p.sync()
        with p.transaction():
            a = p.alloc()
            p.set_root(0, a)
        with pytest.raises(KeyError):
            with p.transaction():
                p.set_root(0, p.alloc())
                raise KeyError
        assert p.roots[0] == a
    with Pager.open(path) as q:
        assert q.roots[0] == a
        assert sorted(q.allocated_pages()) == [a]
