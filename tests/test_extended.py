"""The extended layout (file format 0.3): files that grow past the v0.2 cap.

A v0.2 file keeps its free bitmap in one metadata page, so it holds at most
C pages (the v0.2 cap: 7968 at 1 KiB, support.geometry.layout). When growth takes a file past
C it is upgraded in place, in one crash-safe commit, to minor version 3: each
chunk i >= 1 of C pages starts with four layout pages (two copies of its
free-map page, two of directory-index page i-1), each copy stamped with the
generation of the commit that wrote it. Most tests use 1 KiB pages, so the cap
is cheap to reach. What is checked, against the independent reader of the
layout in conftest (read_v03, check_valid_v03):

* growth across the cap: the ids handed out, data, counts, format_version,
  the layout pages refused, reopening as writer and as reader;
* commits in the extended state: each writes the inactive copies and leaves
  page 0 alone; copies left by a commit that never reached its commit point
  are ignored, then cleared; a damaged copy falls back or is refused;
* the upgrade under a crash: the file each step of it can leave, and a child
  killed with SIGKILL around the crossing;
* a sparse file of 2**27 pages; the grow_step and preallocate options;
* a model-based test in both layouts; protected pages, a directory larger
  than page 0 could index, and transactions, in the extended state.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
import tempfile
import textwrap
import warnings
import zlib
from array import array
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support.edit import flip_byte, patch, read_at
from support.format_v02 import OFF_MINOR, check_valid_v02, entries_per_dir_page, max_dir_blocks
from support.format_v03 import (
    CHUNK_HEADER,
    LAYOUT_PAGES,
    check_valid_any,
    check_valid_v03,
    chunk_count,
    chunk_pages,
    expected_free_count,
    inspect_v03,
    is_layout_page,
    layout_page_ids,
    parse_layout_copy,
    read_v03,
    regular_page_id,
    regular_page_total,
    seal,
)
from support.pagers import commit_bytes, force_close, kill_when_ready, read_page, read_protected

from mappedpages import (
    CorruptMetadata,
    CorruptSuperblock,
    DoubleFree,
    OutOfBounds,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
    ReservedPage,
)

PS = 1024
C = chunk_pages(PS)  # 7968: the v0.2 cap, pages per chunk
R = max_dir_blocks(PS)  # 58: directory blocks per directory-index page
EPP = entries_per_dir_page(PS)  # 33: protected pages per directory block
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def tag(pid: int, size: int, salt: int = 0) -> bytes:
    """A page-specific pattern that is quick to build: id, salt, a mixed word repeated."""
    word = ((pid + 1) * 0x9E3779B97F4A7C15 ^ (salt + 1) * 0xBF58476D1CE4E5B9) & MASK64
    return (
        pid.to_bytes(8, "little")
        + salt.to_bytes(8, "little")
        + word.to_bytes(8, "little") * ((size - 16) // 8)
    )


def pdata(pid: int, version: int) -> bytes:
    """Content of protected page pid at its version-th write."""
    return random.Random(pid * 1_000_003 + version).randbytes(PS)


def write_tag(p, pid: int, salt: int = 0) -> None:
    v = p.page(pid)
    try:
        v[:] = tag(pid, len(v), salt)
    finally:
        v.release()





def open_clean(path, cls=Pager, **kw):
    """Open a file that no crash or damage touched: any RecoveryWarning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        return cls.open(path, **kw)


def open_after_crash(path, cls=Pager, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        return cls.open(path, **kw)


def assert_format(p) -> None:
    """format_version is "0.3" exactly when the file is past the cap."""
    want = "0.3" if p.page_count > C else "0.2"
    got = p.format_version
    assert isinstance(got, str)
    assert got == want, f"page_count {p.page_count}: format_version {got!r}, expected {want!r}"


def growth_targets(old: int, max_id: int) -> set:
    """Page counts growth from OLD pages may reach so that page MAX_ID exists.

    The spec: double (grow_step is 1 GiB by default, far above these sizes);
    a target that would leave a chunk with fewer than its 4 layout pages is
    rounded up. It does not say whether a doubling that crosses the v0.2 cap
    stops at the cap first (4096 -> 7968 -> 15936) or not (4096 -> 8192):
    both are accepted.
    """
    out = set()
    for stop_at_cap in (False, True):
        n = old
        while n <= max_id:
            n = C if stop_at_cap and n < C < 2 * n else 2 * n
            if n > C and 0 < n % C < LAYOUT_PAGES:
                n += LAYOUT_PAGES - n % C
        out.add(n)
    return out


def check_growth(old: int, new: int, ids) -> None:
    """The page count after an allocation of IDS that found OLD pages."""
    top = max(ids, default=-1)
    if top < old:
        assert new == old, f"the file grew from {old} to {new} pages with pages free"
    else:
        assert new in growth_targets(old, top), (
            f"grew from {old} to {new} pages for page {top}; expected one of "
            f"{sorted(growth_targets(old, top))}"
        )


def assert_layout_refused(p, writer: bool) -> None:
    """Every layout page: page() and (writer) free() raise ReservedPage."""
    total = p.page_count
    for lp in layout_page_ids(total, PS):
        with pytest.raises(ReservedPage):
            p.page(lp)
        if writer:
            with pytest.raises(ReservedPage):
                p.free(lp)
    for i in range(1, chunk_count(total, PS) + 1):
        read_page(p, i * C - 1)  # the pages either side of the layout pages are regular
        if i * C + LAYOUT_PAGES < total:
            read_page(p, i * C + LAYOUT_PAGES)


def assert_layout_refused_by_view(p) -> None:
    """view() over a run that includes a layout page raises ReservedPage (as page())."""
    total = p.page_count
    for i in range(1, chunk_count(total, PS) + 1):
        with pytest.raises(ReservedPage):
            p.view(i * C - 1, 2)  # the last page of chunk i-1 and the first layout page
        if i * C + LAYOUT_PAGES < total:
            with pytest.raises(ReservedPage):
                p.view(i * C + 3, 2)
            v = p.view(i * C + LAYOUT_PAGES, 2)
            v.release()
        v = p.view(i * C - 3, 3)
        v.release()


def snapshot(p) -> dict:
    return {
        "allocated": list(p.allocated_pages()),
        "protected": {
            pid: zlib.crc32(read_protected(p, pid)) for pid in p.allocated_protected_pages()
        },
        "free": p.free_page_count,
        "pages": p.page_count,
    }


def upgraded_file(path, n_alloc: int, tags: bool = False, **kw) -> list:
    """A 1 KiB-page file with its first n_alloc regular pages allocated (past C: extended)."""
    with Pager.create(path, PS, **kw) as p:
        ids = p.alloc_bulk(n_alloc)
        assert ids == [regular_page_id(j, PS) for j in range(n_alloc)]
        if tags:
            for pid in ids:
                write_tag(p, pid)
            p.sync()
        assert_format(p)
    return ids


def file_at_cap(path, free_left: int = 0) -> list:
    """A v0.2 file of exactly C pages whose last free_left pages are free."""
    with Pager.create(path, PS) as p:
        ids = p.alloc_bulk(4093)
        assert p.page_count == 4096
    # 4096 pages are at least grow_step: the next growth adds exactly C - 4096.
    with Pager.open(path, grow_step=(C - 4096) * PS) as p:
        ids += p.alloc_bulk(C - 4096 - free_left)
        assert p.page_count == C
        assert p.free_page_count == free_left
        assert p.format_version == "0.2"
    assert read_at(path, OFF_MINOR, 1)[0] == 2
    check_valid_v02(path, allocated=ids)
    return ids


# --------------------------------------------------------------------------
# new files, growth across the cap
# --------------------------------------------------------------------------


@pytest.mark.parametrize("page_size,expected", [(1024, 2**34), (4096, 2**32)])
def test_new_file_format_version_and_max_pages(tmp_path, page_size, expected):
    path = tmp_path / "new.mpp"
    with Pager.create(path, page_size) as p:
        assert p.format_version == "0.2"
        assert p.max_pages == expected
    assert read_at(path, OFF_MINOR, 1)[0] == 2
    with open_clean(path, ReadOnlyPager) as r:
        assert r.format_version == "0.2"
    with open_clean(path) as p:
        assert p.format_version == "0.2"
        assert p.max_pages == expected


@pytest.mark.parametrize("how", ["alloc", "alloc_bulk"])
def test_growth_across_the_cap(tmp_path, how):
    """Fill a 1 KiB-page file to 2.6 C pages, crossing the cap in a single alloc()
    or inside one alloc_bulk(); every page keeps its data and every id is the
    lowest free regular page; reopen as writer and reader."""
    path = tmp_path / "grow.mpp"
    ids: list = []
    crossed = []
    p = Pager.create(path, PS)
    try:
        assert p.format_version == "0.2"

        def bulk(n: int, out: bool = False) -> None:
            old = p.page_count
            if out:
                buf = array("Q", bytes(8 * n))
                assert p.alloc_bulk(n, out=buf) is None
                got = list(buf)
            else:
                got = p.alloc_bulk(n)
            assert got == [regular_page_id(len(ids) + j, PS) for j in range(n)]
            check_growth(old, p.page_count, got)
            assert_format(p)
            if old <= C < p.page_count:
                crossed.append("alloc_bulk")
            ids.extend(got)

        def single() -> None:
            old = p.page_count
            pid = p.alloc()
            assert pid == regular_page_id(len(ids), PS)
            check_growth(old, p.page_count, [pid])
            assert_format(p)
            if old <= C < p.page_count:
                crossed.append("alloc")
            ids.append(pid)

        if how == "alloc":
            bulk(4080)  # pages 3..4082 of 4096
            for _ in range(30):  # across 4096: to 8192, or to the cap first
                single()
            if p.page_count <= C:  # growth stopped at the cap: cross it one alloc at a time
                bulk(C - 20 - len(ids))
                for _ in range(40):
                    single()
        else:
            bulk(C + 50)
        assert crossed == [how], crossed
        assert p.page_count > C
        k = 0
        while len(ids) < int(2.6 * C):
            bulk(min(3000, int(2.6 * C) - len(ids)), out=k % 2 == 1)
            k += 1
        assert chunk_count(p.page_count, PS) >= 2
        assert not [pid for pid in ids if is_layout_page(pid, PS)]

        for pid in ids:
            write_tag(p, pid)
        assert [pid for pid in ids if read_page(p, pid) != tag(pid, PS)] == []
        assert list(p.allocated_pages()) == ids
        assert p.free_page_count == expected_free_count(p.page_count, PS, len(ids))
        assert_layout_refused(p, writer=True)

        # A bulk free naming a layout page frees nothing.
        before = (p.page_count, p.free_page_count)
        with pytest.raises(ReservedPage):
            p.free_bulk([ids[0], C + 1, ids[-1]])
        with pytest.raises(ReservedPage):
            p.free_bulk(array("Q", [ids[5], 2 * C + 3]))
        assert (p.page_count, p.free_page_count) == before
        assert list(p.allocated_pages()) == ids
        p.sync()
        total, free = p.page_count, p.free_page_count
    finally:
        force_close(p)

    assert read_at(path, OFF_MINOR, 1)[0] == 3
    img = inspect_v03(path)
    assert img.state == "extended"
    assert img.total_pages == total
    assert img.free_count == free
    assert img.regular == set(ids)
    assert img.dir_blocks == 0 and img.system_pages == set()

    for cls in (Pager, ReadOnlyPager):
        q = open_clean(path, cls)
        try:
            assert q.format_version == "0.3"
            assert q.page_count == total
            assert q.free_page_count == free
            assert list(q.allocated_pages()) == ids
            assert [pid for pid in ids if read_page(q, pid) != tag(pid, PS)] == []
            assert_layout_refused(q, writer=cls is Pager)
        finally:
            force_close(q)
    check_valid_v03(path, ids)


@pytest.mark.parametrize("mode", ["compat", "fast", "none"])
def test_format_version_follows_page_count_in_every_durability_mode(tmp_path, mode):
    """format_version describes the pager's state: "0.3" as soon as page_count
    passes the cap, also in "none" mode where the commit reaches the disk later."""
    path = tmp_path / "m.mpp"
    with Pager.create(path, PS, durability=mode) as p:
        p.alloc_bulk(C - 100)
        assert_format(p)
        p.alloc_bulk(200)
        assert p.page_count > C
        assert_format(p)
        p.sync()
        assert_format(p)
    assert read_at(path, OFF_MINOR, 1)[0] == 3
    with open_clean(path, durability=mode) as p:
        assert_format(p)


def test_layout_pages_refused_by_view(tmp_path):
    path = tmp_path / "v.mpp"
    upgraded_file(path, 2 * C + 100)
    for cls in (Pager, ReadOnlyPager):
        with open_clean(path, cls) as q:
            assert chunk_count(q.page_count, PS) >= 2
            assert_layout_refused_by_view(q)


def test_reader_refresh_follows_the_upgrade(tmp_path):
    path = tmp_path / "r.mpp"
    with Pager.create(path, PS) as p:
        first = p.alloc_bulk(100)
        r = ReadOnlyPager.open(path)
        try:
            assert r.format_version == "0.2"
            old_count = r.page_count
            view = r.page(first[0])
            more = p.alloc_bulk(C + 100)
            assert p.format_version == "0.3"
            assert r.page_count == old_count  # the reader keeps its state until refresh()
            r.refresh()
            assert r.format_version == "0.3"
            assert r.page_count == p.page_count
            assert r.free_page_count == p.free_page_count
            assert list(r.allocated_pages()) == first + more
            assert_layout_refused(r, writer=False)
            write_tag(p, more[-1], salt=3)
            assert read_page(r, more[-1]) == tag(more[-1], PS, 3)
            assert len(view) == PS  # a view taken before the upgrade is still valid
            view.release()
        finally:
            force_close(r)


def test_reopen_free_and_alloc_across_chunks(tmp_path):
    """After the upgrade: free a pattern spread over every chunk (a whole chunk
    included), allocate again (lowest free page first, across chunks), reopen."""
    path = tmp_path / "re.mpp"
    ids = upgraded_file(path, 3 * C, tags=True)
    live = set(ids)
    salt = dict.fromkeys(ids, 0)
    with open_clean(path) as p:
        total = p.page_count
        assert p.format_version == "0.3"
        chunk2 = set(range(2 * C + LAYOUT_PAGES, 3 * C))
        assert chunk2 <= live
        boundary = {i * C - 1 for i in (1, 2, 3)} | {i * C + LAYOUT_PAGES for i in (1, 2, 3)}
        freed = sorted(({pid for pid in ids if pid % 7 == 0} | boundary | chunk2) & live)
        for pid in freed[:25]:
            p.free(pid)
        p.free_bulk(array("Q", freed[25:]))
        live -= set(freed)
        assert p.free_page_count == expected_free_count(total, PS, len(live))
        assert list(p.allocated_pages()) == sorted(live)
        with pytest.raises(DoubleFree):
            p.free(freed[-1])

        img = inspect_v03(path)
        assert img.chunk_free[2] == C - LAYOUT_PAGES  # all of chunk 2 is free
        assert img.regular == live

        got = [p.alloc() for _ in range(30)]
        assert got == freed[:30]
        got += p.alloc_bulk(500)
        assert got == freed[:530]
        buf = array("Q", bytes(8 * 40))
        p.alloc_bulk(40, out=buf)
        got += list(buf)
        assert got == freed[:570]
        for pid in got:
            write_tag(p, pid, salt=1)
            salt[pid] = 1
        live |= set(got)
        p.sync()
        assert p.page_count == total

    check_valid_v03(path, live)
    for cls in (Pager, ReadOnlyPager):
        with open_clean(path, cls) as q:
            assert q.page_count == total
            assert q.free_page_count == expected_free_count(total, PS, len(live))
            assert list(q.allocated_pages()) == sorted(live)
            bad = [pid for pid in sorted(live) if read_page(q, pid) != tag(pid, PS, salt[pid])]
            assert bad == []


# --------------------------------------------------------------------------
# commits in the extended state, on disk
# --------------------------------------------------------------------------


def test_commits_write_inactive_copies_and_leave_page0_alone(tmp_path):
    path = tmp_path / "c.mpp"
    ids = upgraded_file(path, 3 * C)
    with open_clean(path) as p:
        page0 = read_at(path, 0, PS)
        img0 = inspect_v03(path)
        g = img0.generation

        def chosen_raw(img, i):
            return read_at(path, (i * C + img.chunk_copy[i]) * PS, PS)

        raw0 = {i: chosen_raw(img0, i) for i in img0.chunk_copy}

        victim = 2 * C + 100
        p.free(victim)  # one commit that changes chunk 2 only
        img1 = inspect_v03(path)
        assert img1.generation == g + 1
        assert img1.meta_index != img0.meta_index, "the metadata copy is not written in place"
        assert img1.chunk_copy[2] == 1 - img0.chunk_copy[2]
        assert img1.chunk_generation[2] == g + 1
        assert read_at(path, (2 * C + img0.chunk_copy[2]) * PS, PS) == raw0[2], (
            "the free-map copy of the previous state was written in place"
        )
        for i in img0.chunk_copy:
            if i != 2:
                assert img1.chunk_copy[i] == img0.chunk_copy[i]
                assert img1.chunk_generation[i] == img0.chunk_generation[i]
                assert chosen_raw(img1, i) == raw0[i], f"chunk {i} was rewritten"
        assert img1.regular == set(ids) - {victim}

        p.free_bulk([C + 10, 3 * C + 10])  # one commit, chunks 1 and 3
        img2 = inspect_v03(path)
        assert img2.generation == g + 2
        assert img2.chunk_generation[1] == img2.chunk_generation[3] == g + 2
        assert img2.chunk_generation[2] == g + 1

        # Commits of every kind: each is one commit (the generation goes up by
        # exactly one), protected ones included, and none rewrites page 0.
        def one_commit(what, fn):
            before = inspect_v03(path).generation
            out = fn()
            after = inspect_v03(path).generation
            assert after == before + 1, f"{what}: generation {before} -> {after}"
            return out

        def txn():
            with p.transaction():
                p.alloc()
                p.free(ids[0])

        one_commit("alloc", p.alloc)
        one_commit("alloc_bulk", lambda: p.alloc_bulk(10))
        pid = one_commit("alloc_protected (a new directory block)", p.alloc_protected)
        one_commit("protected write", lambda: commit_bytes(p, pid, pdata(pid, 1)))
        pid2 = one_commit("alloc_protected", p.alloc_protected)
        one_commit("transaction", txn)
        one_commit("free_protected", lambda: p.free_protected(pid))
        assert read_protected(p, pid2) == bytes(PS)
        assert read_at(path, 0, PS) == page0, "a commit in the extended state rewrote page 0"
    check_valid_v03(path)


def test_leftover_copy_is_ignored_then_cleared(tmp_path):
    """A copy with a valid CRC and a generation above the committed one (written
    by a commit that never reached its commit point) is not the state; the next
    writer clears it, so later commits cannot make it count."""
    path = tmp_path / "l.mpp"
    ids = upgraded_file(path, 2 * C + 200)
    img = inspect_v03(path)
    g = img.generation
    w = img.chunk_copy[2]
    other = 2 * C + (1 - w)
    chosen = parse_layout_copy(read_at(path, (2 * C + w) * PS, PS), 2 * C + w)
    fake = bytearray(chosen.raw)
    struct.pack_into("<Q", fake, 0, g + 2)
    claim = range(2 * C + 1000, 2 * C + 1100)
    assert claim[-1] < img.total_pages and not set(claim) & set(ids)
    for pid in claim:
        j = pid - 2 * C
        fake[CHUNK_HEADER + j // 8] |= 1 << (j % 8)
    struct.pack_into("<Q", fake, 16, chosen.field16 - len(claim))
    patch(path, other * PS, seal(fake))
    assert other in read_v03(path).leftovers  # the page is what the test means it to be

    with open_after_crash(path, ReadOnlyPager) as r:
        assert list(r.allocated_pages()) == ids
    with open_after_crash(path) as p:
        assert list(p.allocated_pages()) == ids
        # Four commits in chunk 0 take the generation past the leftover's.
        p.free(ids[0])
        p.free(ids[1])
        assert p.alloc() == ids[0]
        assert p.alloc() == ids[1]
    assert read_at(path, other * PS, PS) == bytes(PS), "the leftover copy was not zeroed"
    with open_clean(path) as p:
        assert list(p.allocated_pages()) == ids
    check_valid_v03(path, ids)


def test_damaged_free_map_copy(tmp_path):
    """The copy the newest state uses is damaged: open falls back to the metadata
    copy before it (whose chunk copy is intact). Both copies damaged: no state
    can be read, CorruptMetadata."""
    path = tmp_path / "d.mpp"
    ids = upgraded_file(path, 2 * C + 200)
    victim = ids[-1]
    assert victim > 2 * C
    with Pager.open(path) as p:
        p.free(ids[0])
        assert p.alloc() == ids[0]  # both metadata copies now count chunk 2
        p.free(victim)  # the last commit changes chunk 2 only
    img = inspect_v03(path)
    w = img.chunk_copy[2]
    assert img.chunk_generation[2] == img.generation

    one = tmp_path / "one.mpp"
    shutil.copyfile(path, one)
    flip_byte(one, (2 * C + w) * PS + CHUNK_HEADER + 50)
    with pytest.warns(RecoveryWarning):
        q = Pager.open(one)
    try:
        assert list(q.allocated_pages()) == ids, "not the state before the last commit"
        q.free(victim)  # commit again
    finally:
        force_close(q)
    check_valid_v03(one, set(ids) - {victim})

    two = tmp_path / "two.mpp"
    shutil.copyfile(path, two)
    flip_byte(two, (2 * C) * PS + CHUNK_HEADER + 50)
    flip_byte(two, (2 * C + 1) * PS + CHUNK_HEADER + 50)
    for cls in (Pager, ReadOnlyPager):
        with pytest.raises(CorruptMetadata):
            open_after_crash(two, cls)


def test_newer_minor_version_is_refused(tmp_path):
    path = tmp_path / "m.mpp"
    Pager.create(path, PS).close()
    patch(path, OFF_MINOR, bytes([4]))
    for cls in (Pager, ReadOnlyPager):
        with pytest.raises(CorruptSuperblock):
            cls.open(path)


# --------------------------------------------------------------------------
# the upgrade under a crash
# --------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_upgrade_crash_images(tmp_path, step):
    """The file a crash leaves after each step of the upgrade: 1 file grown,
    2 page 0 says minor 3, 3 chunk 1's layout pages written, 4 the metadata
    commit. Before step 4 it must read as the v0.2 state it was (small state),
    and a writer must then be able to upgrade it."""
    before_path = tmp_path / "before.mpp"
    ids = file_at_cap(before_path)
    before = before_path.read_bytes()
    after_path = tmp_path / "after.mpp"
    shutil.copyfile(before_path, after_path)
    with Pager.open(after_path) as p:
        first = p.alloc()
        assert first == C + LAYOUT_PAGES
        assert p.page_count > C and p.format_version == "0.3"
        after_total = p.page_count
    after = after_path.read_bytes()
    assert len(after) > len(before) and after[OFF_MINOR] == 3

    if step == 4:
        image = bytearray(after)
    else:
        image = bytearray(before) + bytes(len(after) - len(before))
        if step >= 2:
            image[:PS] = after[:PS]
        if step >= 3:
            image[C * PS : (C + LAYOUT_PAGES) * PS] = after[C * PS : (C + LAYOUT_PAGES) * PS]
    path = tmp_path / "image.mpp"
    path.write_bytes(bytes(image))
    expect = ids + [first] if step == 4 else ids
    total = after_total if step == 4 else C

    assert check_valid_v03(path, after_crash=True) == set(expect)
    with open_after_crash(path, ReadOnlyPager) as r:
        assert r.page_count == total
        assert list(r.allocated_pages()) == expect
    q = open_after_crash(path)
    try:
        assert q.page_count == total
        assert list(q.allocated_pages()) == expect
        assert q.free_page_count == expected_free_count(total, PS, len(expect))
        nxt = q.alloc()
        assert nxt == regular_page_id(len(expect), PS)
        assert q.page_count > C
        assert q.format_version == "0.3"
    finally:
        force_close(q)
    check_valid_any(path, expect + [nxt])
    with open_clean(path) as p:
        assert list(p.allocated_pages()) == expect + [nxt]


CHILD_GROW = """
import os, sys
from mappedpages import Pager

path, log = sys.argv[1], sys.argv[2]
p = Pager.open(path)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
print("ready", flush=True)
while True:
    pid = p.alloc()
    os.write(fd, b"%d\\n" % pid)
"""

# (free pages left below the cap, seconds from "ready" to SIGKILL). With none
# left, the first alloc after "ready" is the upgrade (grow, fsync, page 0,
# chunk pages, metadata copy: a few flushes), so the short delays land inside
# it or just after it; with 3 or 40 left, a few allocations come first.
KILL_PLAN = [(0, d) for d in (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.02, 0.08)] + [
    (3, 0.0),
    (3, 0.002),
    (3, 0.005),
    (40, 0.01),
    (40, 0.03),
]


def test_sigkill_around_the_upgrade(tmp_path):
    """A child allocates one page at a time (acknowledging each id in a log
    after alloc() returns) from a full file of exactly C pages, and is killed
    with SIGKILL at several delays around the crossing. After each kill the
    file is well formed for its version, opens, holds every acknowledged page
    (and at most the one in flight), and can grow past the cap."""
    bases = {}
    for k in sorted({k for k, _ in KILL_PLAN}):
        base = tmp_path / f"base{k}.mpp"
        bases[k] = (base, file_at_cap(base, free_left=k))
    code = textwrap.dedent(CHILD_GROW)
    for rnd, (k, delay) in enumerate(KILL_PLAN):
        base, base_ids = bases[k]
        path = tmp_path / f"kill{rnd}.mpp"
        shutil.copyfile(base, path)
        log = tmp_path / f"acks{rnd}.log"
        kill_when_ready([sys.executable, "-c", code, str(path), str(log)], delay)
        text = log.read_text() if log.exists() else ""
        acked = [int(x) for x in text.split("\n")[:-1] if x]  # a cut last line is dropped
        order = [regular_page_id(len(base_ids) + j, PS) for j in range(len(acked) + 1)]
        where = f"round {rnd} (free {k}, delay {delay}, {len(acked)} acknowledged)"
        assert acked == order[: len(acked)], where

        # The file as the kill left it, read by the independent reader.
        on_disk = check_valid_v03(path, after_crash=True)
        assert set(base_ids) <= on_disk, f"{where}: pages of the base file lost"
        extra = on_disk - set(base_ids)
        assert extra in (set(order[: len(acked)]), set(order)), (
            f"{where}: allocated past the base file {sorted(extra)}, acknowledged {acked}"
        )

        q = open_after_crash(path)
        try:
            got = set(q.allocated_pages())
            assert got == on_disk, where
            total = q.page_count
            if total > C:
                assert q.format_version == "0.3", where
            assert q.free_page_count == expected_free_count(total, PS, len(got)), where
            more = q.alloc_bulk(300)  # past the cap, again if the kill undid the upgrade
            start = len(base_ids) + len(extra)
            assert more == [regular_page_id(start + j, PS) for j in range(300)], where
            assert q.page_count > C and q.format_version == "0.3", where
            final = got | set(more)
        finally:
            force_close(q)
        check_valid_any(path, final)
        with open_clean(path, ReadOnlyPager) as r:
            assert set(r.allocated_pages()) == final, where


# --------------------------------------------------------------------------
# a huge sparse file
# --------------------------------------------------------------------------

HUGE = 1 << 27  # pages: 128 GiB at 1 KiB, 16,846 chunks


def test_sparse_file_of_2_27_pages(tmp_path):
    """Grow a sparse file (preallocate=False) to 2**27 pages with bulk allocations
    into an array('Q'), free every 1000th page, reopen: counts exact, the freed
    pages free and handed out lowest first, the file still sparse."""
    path = tmp_path / "huge.mpp"
    batch = 1 << 22
    buf = array("Q", bytes(8 * batch))
    rng = random.Random(27)
    done = 0  # regular pages allocated: ids regular_page_id(0 .. done - 1)
    p = Pager.create(path, PS, preallocate=False, grow_step=1 << 34, durability="none")
    try:
        assert p.max_pages >= HUGE

        def take(n: int) -> None:
            nonlocal done
            assert p.alloc_bulk(n, out=buf) is None
            for j in sorted({0, 1, n // 2, n - 2, n - 1} | set(rng.sample(range(n), 32))):
                assert buf[j] == regular_page_id(done + j, PS), (done, j)
            done += n

        while p.page_count < HUGE:
            take(batch)
        while p.free_page_count:
            take(min(batch, p.free_page_count))
        total = p.page_count
        assert total >= HUGE
        assert done == regular_page_total(total, PS)

        freed = array("Q", (regular_page_id(r, PS) for r in range(0, done, 1000)))
        half = len(freed) // 2
        p.free_bulk(freed[:half])
        p.free_bulk(freed[half:])
        assert p.free_page_count == len(freed)
        far = [regular_page_id(done - 1, PS), regular_page_id(done // 2 + 7, PS)]
        for pid in far:
            write_tag(p, pid, salt=5)
        with pytest.raises(ReservedPage):
            p.page((total // C - 1) * C + 2)
        p.sync()
        assert p.format_version == "0.3"
    finally:
        force_close(p)

    st_ = os.stat(path)
    assert st_.st_size >= total * PS
    assert st_.st_blocks * 512 < st_.st_size // 100, (
        f"{st_.st_blocks * 512} bytes on disk for {st_.st_size}: not sparse"
    )
    img = inspect_v03(path, want_sets=False)
    assert img.total_pages == total
    assert img.free_count == len(freed)
    assert img.regular_count == done - len(freed)

    with open_clean(path) as q:
        assert q.page_count == total
        assert q.format_version == "0.3"
        assert q.free_page_count == len(freed)
        for i in range(0, len(freed), max(1, len(freed) // 50)):
            with pytest.raises(DoubleFree):
                q.free(freed[i])
        for pid in far:
            assert read_page(q, pid) == tag(pid, PS, 5)
        assert [q.alloc() for _ in range(3)] == list(freed[:3])
        out = array("Q", bytes(8 * 5))
        q.alloc_bulk(5, out=out)
        assert list(out) == list(freed[3:8])
        assert q.free_page_count == len(freed) - 8
    assert os.stat(path).st_blocks * 512 < st_.st_size // 100


# --------------------------------------------------------------------------
# grow_step and preallocate
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,exc",
    [
        (1.5, TypeError),
        ("65536", TypeError),
        (None, TypeError),
        (True, TypeError),
        (False, TypeError),
        (0, ValueError),
        (-1, ValueError),
        (-(1 << 70), ValueError),
    ],
)
def test_grow_step_argument_errors(tmp_path, bad, exc):
    path = tmp_path / "e.mpp"
    with pytest.raises(exc):
        Pager.create(path, PS, grow_step=bad)
    assert not path.exists()
    Pager.create(path, PS).close()
    with pytest.raises(exc):
        Pager.open(path, grow_step=bad)
    with open_clean(path) as p:  # the refused open left no lock behind
        assert p.page_count == 4


def _grow_one_at_a_time(p, upto: int) -> list:
    """Allocate single pages until page `upto` is handed out; the distinct page counts seen."""
    counts = [p.page_count]
    while True:
        pid = p.alloc()
        if p.page_count != counts[-1]:
            counts.append(p.page_count)
        if pid >= upto:
            return counts


@pytest.mark.parametrize("grow_step", [64 * PS, 64 * PS + PS // 2, 65 * PS - 1])
def test_grow_step_doubles_then_steps(tmp_path, grow_step):
    """Doubling until the file is grow_step bytes, then steps of grow_step
    (rounded down to whole pages)."""
    path = tmp_path / "s.mpp"
    with Pager.create(path, PS, grow_step=grow_step, durability="none") as p:
        counts = _grow_one_at_a_time(p, 449)
        assert counts == [4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 448, 512]
    assert os.path.getsize(path) == 512 * PS


def test_grow_step_given_at_open(tmp_path):
    path = tmp_path / "o.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(253)
        assert p.page_count == 256
    with Pager.open(path, grow_step=32 * PS, durability="none") as p:
        assert _grow_one_at_a_time(p, 340) == [256, 288, 320, 352]
    with Pager.open(path) as p:  # the default again: doubling
        p.alloc_bulk(p.free_page_count + 1)
        assert p.page_count == 704


@pytest.mark.parametrize("grow_step", [1, PS - 1, PS])
def test_grow_step_below_one_page_grows_by_one_page(tmp_path, grow_step):
    path = tmp_path / "one.mpp"
    with Pager.create(path, PS, grow_step=grow_step, durability="none") as p:
        assert _grow_one_at_a_time(p, 39) == list(range(4, 41))


def test_growth_target_rounded_up_to_the_layout_pages(tmp_path):
    """A growth that would end 1-3 pages into a chunk ends at its 4th page: at
    the crossing of the cap (the upgrade) and at the next chunk boundary."""
    path = tmp_path / "round.mpp"
    with Pager.create(path, PS) as p:
        ids = p.alloc_bulk(4093)
        assert p.page_count == 4096
    with Pager.open(path, grow_step=(C - 2 - 4096) * PS) as p:
        ids += p.alloc_bulk(C - 2 - 4096)
        assert p.page_count == C - 2 and p.free_page_count == 0
        assert p.format_version == "0.2"
    with Pager.open(path, grow_step=4 * PS) as p:
        assert p.alloc() == C - 2
        # C - 2 + 4 = C + 2 would leave chunk 1 two pages: rounded up to C + 4. The
        # spec does not say whether a growth from the v0.2 state may instead stop
        # at the cap (C) first: accepted; both reach the same state below.
        assert p.page_count in (C, C + LAYOUT_PAGES)
        assert_format(p)
        assert p.free_page_count == 1
        assert p.alloc() == C - 1
        assert p.alloc() == C + 4
        assert p.page_count == C + 8
        assert p.format_version == "0.3"
        ids += [C - 2, C - 1, C + 4]
    check_valid_v03(path, ids)

    step = 2 * C - 2 - (C + 8)
    with Pager.open(path, grow_step=step * PS) as p:
        ids += p.alloc_bulk(p.free_page_count + step)
        assert p.page_count == 2 * C - 2 and p.free_page_count == 0
    with Pager.open(path, grow_step=4 * PS) as p:
        assert p.alloc() == 2 * C - 2
        assert p.page_count == 2 * C + LAYOUT_PAGES  # 2C + 2, rounded up
        assert p.free_page_count == 1
        assert p.alloc() == 2 * C - 1
        assert p.alloc() == 2 * C + 4
        assert p.page_count == 2 * C + 8
        ids += [2 * C - 2, 2 * C - 1, 2 * C + 4]
        assert list(p.allocated_pages()) == ids
    check_valid_v03(path, ids)


@pytest.mark.parametrize("n", [4000, 20000])
def test_preallocate_and_sparse_growth(tmp_path, n):
    """preallocate=True gives every page disk blocks; preallocate=False grows
    with ftruncate only, so the new pages take none until written."""
    for pre in (True, False):
        path = tmp_path / f"f-{pre}.mpp"
        with Pager.create(path, PS, preallocate=pre, durability="none") as p:
            ids = p.alloc_bulk(n)
            total = p.page_count
        st_ = os.stat(path)
        assert st_.st_size >= total * PS
        if pre:
            assert st_.st_blocks * 512 >= st_.st_size, "preallocate=True left holes"
        else:
            assert st_.st_blocks * 512 <= st_.st_size // 4, "preallocate=False is not sparse"
        check_valid_any(path, ids)


def test_preallocate_given_at_open(tmp_path):
    sparse = tmp_path / "s.mpp"
    with Pager.create(sparse, PS, preallocate=False) as p:
        p.alloc_bulk(4000)
    old = os.stat(sparse).st_size
    with Pager.open(sparse, preallocate=True) as p:
        p.alloc_bulk(4000)
    new = os.stat(sparse)
    assert new.st_size > old
    assert new.st_blocks * 512 >= new.st_size - old, "the growth at open was not preallocated"

    full = tmp_path / "f.mpp"
    with Pager.create(full, PS) as p:
        p.alloc_bulk(4000)
    old = os.stat(full).st_size
    assert os.stat(full).st_blocks * 512 >= old
    with Pager.open(full, preallocate=False) as p:
        p.alloc_bulk(4000)
    new = os.stat(full)
    assert new.st_size > old
    assert new.st_blocks * 512 < old + (new.st_size - old) // 4, "the growth was preallocated"


# --------------------------------------------------------------------------
# model-based, in both layouts
# --------------------------------------------------------------------------


class ExtendedModel(RuleBasedStateMachine):
    """The pager against a Python set of live pages, in a file that starts fresh
    (and may cross the cap on the way) or starts upgraded."""

    upgraded = False

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mp-ext-model-")
        self.path = Path(self.dir) / "model.mpp"
        self.pager = Pager.create(self.path, page_size=PS)
        self.live: set = set()
        self.hint = 3  # every regular page below it is live
        self.content: dict = {}  # first 8 bytes of pages, as the model knows them
        self.tag = 0
        if self.upgraded:
            ids = self.pager.alloc_bulk(C + 100)
            assert ids == [regular_page_id(j, PS) for j in range(C + 100)]
            drop = sorted(set(ids[5::97]) | set(ids[C - 20 : C + 10]))
            self.pager.free_bulk(drop)
            self.live = set(ids) - set(drop)
            self.hint = min(drop)
        self.page_count = self.pager.page_count

    def teardown(self):
        try:
            force_close(self.pager)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- model

    def _lowest_free(self, n: int) -> list:
        out = []
        pid = self.hint
        while len(out) < n:
            if pid not in self.live and not is_layout_page(pid, PS):
                out.append(pid)
            pid += 1
        return out

    def _took(self, ids: list, old_count: int, zero: bool) -> None:
        check_growth(old_count, self.pager.page_count, ids)
        if old_count <= C < self.pager.page_count:
            event("crossed the v0.2 cap")
        self.page_count = self.pager.page_count
        self.live.update(ids)
        if ids:
            self.hint = max(self.hint, ids[-1] + 1)
        if zero:
            for pid in ids:
                self.content[pid] = bytes(8)

    def _freed(self, ids) -> None:
        self.live.difference_update(ids)
        if ids:
            self.hint = min(self.hint, min(ids))

    def _regular(self):
        return st.integers(0, regular_page_total(self.page_count, PS) - 1).map(
            lambda r: regular_page_id(r, PS)
        )

    # ------------------------------------------------------------- rules

    @rule(zero=st.booleans())
    def alloc(self, zero):
        want = self._lowest_free(1)
        old = self.pager.page_count
        assert self.pager.alloc(zero=zero) == want[0]
        self._took(want, old, zero)

    @rule(n=st.integers(0, 40), zero=st.booleans(), out=st.booleans())
    def alloc_bulk(self, n, zero, out):
        want = self._lowest_free(n)
        old = self.pager.page_count
        if out:
            buf = array("Q", bytes(8 * n))
            assert self.pager.alloc_bulk(n, zero=zero, out=buf) is None
            got = list(buf)
        else:
            got = self.pager.alloc_bulk(n, zero=zero)
        assert got == want
        self._took(want, old, zero)

    @rule(n=st.integers(1000, 8500))
    def alloc_many(self, n):
        want = self._lowest_free(n)
        old = self.pager.page_count
        buf = array("Q", bytes(8 * n))
        self.pager.alloc_bulk(n, out=buf)
        assert list(buf) == want
        self._took(want, old, False)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        pid = data.draw(st.sampled_from(sorted(self.live)))
        self.pager.free(pid)
        self._freed([pid])

    @precondition(lambda self: self.live)
    @rule(data=st.data(), as_array=st.booleans())
    def free_bulk(self, data, as_array):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True, max_size=30))
        self.pager.free_bulk(array("Q", ids) if as_array else ids)
        self._freed(ids)

    @rule(data=st.data())
    def free_invalid(self, data):
        kinds = {
            "reserved": (st.integers(0, 2), ReservedPage),
            "oob": (st.integers(self.page_count, 2**70), OutOfBounds),
            "negative": (st.integers(-(2**70), -1), OutOfBounds),
        }
        layout = layout_page_ids(self.page_count, PS)
        if layout:
            kinds["layout"] = (st.sampled_from(layout), ReservedPage)
        free_ids = [i for i in range(3, min(self.page_count, self.hint + 200))
                    if i not in self.live and not is_layout_page(i, PS)]
        if free_ids:
            kinds["free"] = (st.sampled_from(free_ids), DoubleFree)
        kind = data.draw(st.sampled_from(sorted(kinds)))
        strat, exc = kinds[kind]
        pid = data.draw(strat)
        bulk = data.draw(st.booleans())
        before = (self.pager.page_count, self.pager.free_page_count)
        with pytest.raises(exc):
            if bulk:
                self.pager.free_bulk(sorted(self.live)[:3] + [pid])
            else:
                self.pager.free(pid)
        assert (self.pager.page_count, self.pager.free_page_count) == before
        assert list(self.pager.allocated_pages()) == sorted(self.live)

    @rule(data=st.data())
    def write(self, data):
        pid = data.draw(self._regular())
        self.tag += 1
        payload = self.tag.to_bytes(8, "little")
        v = self.pager.page(pid)
        v[:8] = payload
        v.release()
        self.content[pid] = payload

    @rule()
    def check_contents(self):
        for r in range(regular_page_total(self.page_count, PS)):
            pid = regular_page_id(r, PS)
            v = self.pager.page(pid)
            got = bytes(v[:8])
            v.release()
            assert got == self.content.get(pid, bytes(8)), pid

    @rule(sync=st.booleans())
    def reopen(self, sync):
        if sync:
            self.pager.sync()
        self.pager.close()
        check_valid_any(self.path, self.live)
        self.pager = open_clean(self.path, page_size=PS)
        self.check_contents()

    # ------------------------------------------------------------- invariants

    @invariant()
    def counts_match(self):
        assert self.pager.page_count == self.page_count
        assert self.pager.free_page_count == expected_free_count(
            self.page_count, PS, len(self.live)
        )
        assert list(self.pager.allocated_pages()) == sorted(self.live)
        assert_format(self.pager)


class UpgradedModel(ExtendedModel):
    upgraded = True



def _model_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


ExtendedModel.TestCase.settings = _model_settings(25)
UpgradedModel.TestCase.settings = _model_settings(15)
TestModelFromFreshFile = ExtendedModel.TestCase
TestModelFromUpgradedFile = UpgradedModel.TestCase


# --------------------------------------------------------------------------
# protected pages
# --------------------------------------------------------------------------


def test_protected_pages_across_the_upgrade(tmp_path):
    path = tmp_path / "p.mpp"
    with Pager.create(path, PS) as p:
        pids = p.alloc_protected_bulk(5)
        for pid in pids:
            commit_bytes(p, pid, pdata(pid, 1))
        regular = p.alloc_bulk(50)
        for r in regular:
            write_tag(p, r)
        p.sync()
        assert p.format_version == "0.2"
        regular += p.alloc_bulk(C + 100)
        assert p.format_version == "0.3"
        for pid in pids:
            assert read_protected(p, pid) == pdata(pid, 1)
            assert p.verify_protected(pid)
        assert sorted(p.allocated_protected_pages()) == sorted(pids)
        assert list(p.allocated_pages()) == regular
        # one directory block: 2 pages, and 2 backing pages per protected page
        used = len(regular) + 2 * len(pids) + 2
        assert p.free_page_count == expected_free_count(p.page_count, PS, used)
        assert [r for r in regular[:50] if read_page(p, r) != tag(r, PS)] == []
    img = inspect_v03(path)
    assert img.dir_blocks == 1 and len(img.dir_refs) == 1
    assert set(img.index_copy) == {0}
    assert len(img.system_pages) == 2 + 2 * len(pids)
    assert img.regular == set(regular)

    with open_clean(path) as p:
        for pid in pids:
            assert read_protected(p, pid) == pdata(pid, 1)
            commit_bytes(p, pid, pdata(pid, 2))
        p.free_protected(pids[2])
        extra = p.alloc_protected_bulk(EPP)  # 4 + 33 pages: a second directory block
        for pid in extra:
            commit_bytes(p, pid, pdata(pid, 3))
        live = {pid: 2 for pid in pids if pid != pids[2]}
        live.update(dict.fromkeys(extra, 3))
        assert sorted(p.allocated_protected_pages()) == sorted(live)
        assert list(p.allocated_pages()) == regular
    img = inspect_v03(path)
    assert img.dir_blocks == 2 and len(img.dir_refs) == 2
    # The root pages came with the first one-flush protected write.
    assert img.roots_page and len(img.system_pages) == 2 * 2 + 2 * len(live) + 2
    assert img.regular == set(regular)

    for cls in (Pager, ReadOnlyPager):
        with open_clean(path, cls) as q:
            assert sorted(q.allocated_protected_pages()) == sorted(live)
            for pid, version in live.items():
                assert read_protected(q, pid) == pdata(pid, version), pid
                assert q.verify_protected(pid)
            assert list(q.allocated_pages()) == regular
            assert [r for r in regular[:50] if read_page(q, r) != tag(r, PS)] == []


def test_directory_larger_than_page0_could_index(tmp_path):
    """In the extended state the directory is indexed by directory-index pages,
    R blocks each: more than the R blocks page 0 held."""
    n = R * EPP + 2 * EPP  # R + 2 blocks: index page 1 (in chunk 2) holds 2 references
    path = tmp_path / "dir.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(2 * C)  # extended, chunk 2 present
        regular = list(p.allocated_pages())
        with p.transaction():
            pids = p.alloc_protected_bulk(n)
        assert len(set(pids)) == n
        sample = pids[:2] + pids[R * EPP - 2 : R * EPP + 2] + pids[-2:]
        for pid in sample:
            commit_bytes(p, pid, pdata(pid, 1))
        assert len(list(p.allocated_protected_pages())) == n
        assert list(p.allocated_pages()) == regular
    img = inspect_v03(path)
    assert img.dir_blocks == R + 2
    assert set(img.index_copy) == {0, 1}
    # + the 2 root pages the first one-flush protected write took
    assert len(img.system_pages) == 2 * (R + 2) + 2 * n + 2
    assert img.regular == set(regular)
    for cls in (Pager, ReadOnlyPager):
        with open_clean(path, cls) as q:
            assert sorted(q.allocated_protected_pages()) == sorted(pids)
            for pid in sample:
                assert read_protected(q, pid) == pdata(pid, 1)
                assert q.verify_protected(pid)


# --------------------------------------------------------------------------
# transactions
# --------------------------------------------------------------------------


def test_transaction_rollback_in_the_extended_state(tmp_path):
    path = tmp_path / "t.mpp"
    ids = upgraded_file(path, 2 * C + 200)
    with open_clean(path) as p:
        pid = p.alloc_protected()
        commit_bytes(p, pid, pdata(pid, 1))
        holes = [ids[10], ids[C], ids[-5]]  # in chunks 0, 1 and 2
        p.free_bulk(holes)
        before = snapshot(p)
        img0 = inspect_v03(path)
        with pytest.raises(RuntimeError, match="roll back"):
            with p.transaction():
                assert p.alloc_bulk(3) == sorted(holes)
                p.free_bulk([ids[0], ids[C + 1], ids[-1]])
                assert ids[0] not in p.alloc_bulk(100)
                with p.write_protected(pid) as w:
                    w.page[:] = pdata(pid, 2)
                p.alloc_protected()
                raise RuntimeError("roll back")
        assert snapshot(p) == before
        img1 = inspect_v03(path)  # and no copy was left behind for a later commit to adopt
        assert img1.generation == img0.generation
        assert img1.regular == img0.regular
        assert img1.chunk_generation == img0.chunk_generation
        assert p.alloc() == min(holes)
    with open_clean(path) as p:
        after = snapshot(p)
    assert after["allocated"] == sorted(set(before["allocated"]) | {min(holes)})
    assert after["protected"] == before["protected"]


def test_transaction_commit_is_one_commit_in_the_extended_state(tmp_path):
    path = tmp_path / "t.mpp"
    ids = upgraded_file(path, 3 * C)
    with open_clean(path) as p:
        pid = p.alloc_protected()
        commit_bytes(p, pid, pdata(pid, 1))
        holes = [ids[10], ids[C + 10], ids[2 * C + 10]]  # in chunks 0, 1 and 2
        p.free_bulk(holes)
        img0 = inspect_v03(path)
        g = img0.generation
        gone = [ids[0], ids[3 * C - 1]]  # chunks 0 and 3
        with p.transaction():
            got = p.alloc_bulk(3)
            p.free_bulk(gone)
            with p.write_protected(pid) as w:
                w.page[:] = pdata(pid, 2)
            pid2 = p.alloc_protected()
            with p.write_protected(pid2) as w:
                w.page[:] = pdata(pid2, 1)
        assert got == sorted(holes)
        img1 = inspect_v03(path)
        assert img1.generation == g + 1, "the transaction was not one commit"
        for i in (1, 2, 3):
            assert img1.chunk_generation[i] == g + 1, i
        live = set(ids) - set(gone)
        assert img1.regular == live
    for cls in (Pager, ReadOnlyPager):
        with open_clean(path, cls) as q:
            assert list(q.allocated_pages()) == sorted(live)
            assert sorted(q.allocated_protected_pages()) == sorted([pid, pid2])
            assert read_protected(q, pid) == pdata(pid, 2)
            assert read_protected(q, pid2) == pdata(pid2, 1)
    check_valid_v03(path, live)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_upgrade_inside_a_transaction(tmp_path, outcome):
    path = tmp_path / "u.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(4000)
        pid = p.alloc_protected()
        commit_bytes(p, pid, pdata(pid, 1))
        before = snapshot(p)
        more: list = []
        try:
            with p.transaction():
                more = p.alloc_bulk(C)  # past the cap
                with p.write_protected(pid) as w:
                    w.page[:] = pdata(pid, 2)
                if outcome == "rollback":
                    raise RuntimeError("roll back")
        except RuntimeError:
            assert outcome == "rollback"
        assert_format(p)
        if outcome == "commit":
            assert p.format_version == "0.3"
            live = before["allocated"] + more
            assert list(p.allocated_pages()) == live
            assert read_protected(p, pid) == pdata(pid, 2)
        else:
            after = snapshot(p)
            assert after["allocated"] == before["allocated"]
            assert after["protected"] == before["protected"]
            assert after["pages"] >= before["pages"]
            live = before["allocated"]
        # 1 protected page (2 backing pages) in 1 directory block (2 pages), and
        # once extended, the root pages of the transaction's one-flush commit
        roots = 2 if outcome == "commit" else 0
        assert p.free_page_count == expected_free_count(p.page_count, PS, len(live) + 4 + roots)
        nxt = p.alloc()
        assert nxt not in live and not is_layout_page(nxt, PS)
        live = live + [nxt]
    check_valid_any(path, live)
    with open_clean(path) as q:
        assert sorted(q.allocated_pages()) == sorted(live)
        assert read_protected(q, pid) == pdata(pid, 2 if outcome == "commit" else 1)
