"""Protected pages: the API contract, the bytes left on disk, and the fixtures.

A protected page is a slot of the directory (its id), backed by two physical
pages; a writer stages a copy and commit flips which copy is live. These tests
check the calls and their errors, that the regular and protected views of the
file never overlap, what a commit writes (read back with the independent
reader in conftest), and the crate's files f3, f4, e12 and e14.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import threading
import warnings
import weakref
import zlib

import pytest
from support.edit import patch, read_at
from support.format_v02 import (
    DIR_ENTRY_SIZE,
    DIR_PAGE_HEADER,
    DIR_REF_SIZE,
    crc32,
    entries_per_dir_page,
    max_dir_blocks,
    pattern,
    read_image,
)
from support.format_v03 import check_valid_v03
from support.geometry import layout
from support.pagers import commit_bytes, force_close, read_protected
from support.rust_fixtures import copy_fixture, load_manifest

import mappedpages
from mappedpages import (
    CorruptFileError,
    DirectoryFull,
    DoubleFree,
    MappedPageError,
    OutOfBounds,
    Pager,
    ProtectedWriter,
    ReadOnlyPager,
    RecoveryWarning,
    ReservedPage,
    WriterOpen,
)

PS = 4096


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fixture_pattern(pid: int, k: int, size: int) -> bytes:
    """The fixtures' protected pattern: commit k of protected id p."""
    return bytes((pid * 37 + k * 101 + i) % 253 for i in range(size))


def regular_pattern(page_id: int, size: int) -> bytes:
    return bytes((page_id * 31 + i) % 251 for i in range(size))




def dir_blocks_on_disk(path) -> list[tuple[int, int, int]]:
    """(page_a, page_b, active) of every block ref in page 0."""
    ps = read_image(path).page_size
    page0 = read_at(path, 0, ps)
    count = struct.unpack_from("<I", page0, 20)[0]
    out = []
    for i in range(count):
        a, b, act = struct.unpack_from("<QQB", page0, 24 + DIR_REF_SIZE * i)
        out.append((a, b, act))
    return out


def parse_dir_page(raw: bytes):
    """Entries of one directory page, or None when its CRC or capacity is wrong."""
    ps = len(raw)
    if crc32(raw[: ps - 4]) != struct.unpack_from("<I", raw, ps - 4)[0]:
        return None
    cap = struct.unpack_from("<I", raw, 0)[0]
    if cap != entries_per_dir_page(ps):
        return None
    entries = []
    for s in range(cap):
        off = DIR_PAGE_HEADER + s * DIR_ENTRY_SIZE
        in_use = raw[off]
        a, b = struct.unpack_from("<QQ", raw, off + 1)
        active = raw[off + 17]
        gen = struct.unpack_from("<Q", raw, off + 18)[0]
        crc = struct.unpack_from("<I", raw, off + 26)[0]
        entries.append({"in_use": in_use, "a": a, "b": b, "active": active, "gen": gen, "crc": crc})
    return entries


def disk_entry(path, pid: int) -> dict:
    """The entry of protected id pid in the active directory page of its block."""
    ps = read_image(path).page_size
    epp = entries_per_dir_page(ps)
    a, b, act = dir_blocks_on_disk(path)[pid // epp]
    raw = read_at(path, (b if act else a) * ps, ps)
    entries = parse_dir_page(raw)
    assert entries is not None, "the active directory page does not parse"
    return entries[pid % epp]


def backing_pages(p) -> set[int]:
    """Physical pages behind in-use protected pages and directory pages, from disk."""
    return set(read_image(p.path).system_pages)


def assert_accounting(p) -> None:
    """Every allocated page is reserved, regular, a backing page or a directory page."""
    protected = list(p.allocated_protected_pages())
    blocks = len(dir_blocks_on_disk(p.path))
    regular = list(p.allocated_pages())
    assert p.page_count - 3 - p.free_page_count == len(regular) + 2 * len(protected) + 2 * blocks
    system = backing_pages(p)
    assert len(system) == 2 * len(protected) + 2 * blocks
    assert not set(regular) & system, "a page is listed as regular and as a protected page"


def check_crate_readable(path, allocated=None):
    """Assert that the crate can read PATH as this library left it; return its view.

    What the crate checks: magic and version, page 0's selector naming a
    metadata copy with a good CRC whose bitmap fits, and (when the directory
    count is not 0) page 0's directory CRC, count and active bytes. It reads
    ``ceil(total/8)`` bitmap bytes and nothing after them, so this reads the
    same. allocated: the regular pages the crate must find (the selected bitmap
    minus pages 0-2 minus directory and in-use backing pages).
    """
    img = read_image(path)
    ps = img.page_size
    data = read_at(path, 0, 3 * ps)
    assert data[:4] == b"MPPG" and data[4] == 0 and data[5] <= 2
    sel = data[12]
    assert sel in (0, 1), f"selector byte {sel}"
    metas = []
    for i in (0, 1):
        page = data[(1 + i) * ps : (2 + i) * ps]
        ok = crc32(page[: ps - 4]) == struct.unpack_from("<I", page, ps - 4)[0]
        total, gen, free = struct.unpack_from("<QQQ", page, 0)
        metas.append((ok, total, gen, free, page))
    ok, total, gen, free, page = metas[sel]
    assert ok, "the metadata copy page 0 selects has a bad CRC"
    assert 24 + (total + 7) // 8 <= ps - 4, "its bitmap does not fit"
    other = metas[1 - sel]
    if other[0]:
        assert gen >= other[2], "page 0 selects the older metadata copy"
    bits = {i for i in range(total) if page[24 + i // 8] >> (i % 8) & 1}
    assert {0, 1, 2} <= bits
    assert free == total - len(bits)
    assert img.file_len >= total * ps
    if img.dir_count:
        assert img.dir_crc_ok, "page 0's directory CRC is wrong"
        assert img.dir_count <= max_dir_blocks(ps)
        for a, b, act in dir_blocks_on_disk(path):
            assert act in (0, 1)
            assert parse_dir_page(read_at(path, (b if act else a) * ps, ps)) is not None
    if allocated is not None:
        assert sorted(bits - {0, 1, 2} - img.system_pages) == sorted(allocated)
    return {"total": total, "generation": gen, "bits": bits, "system": img.system_pages}


@pytest.fixture
def pager(tmp_path):
    p = Pager.create(tmp_path / "prot.mpp", page_size=PS)
    yield p
    force_close(p)


@pytest.fixture
def small(tmp_path):
    p = Pager.create(tmp_path / "small.mpp", page_size=1024)
    yield p
    force_close(p)


def reopen(p):
    path = p.path
    gc.collect()
    p.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Pager.open(path)


# --------------------------------------------------------------------------
# alloc / free
# --------------------------------------------------------------------------


def test_alloc_protected_zero_filled(pager):
    pid = pager.alloc_protected()
    assert pid == 0
    assert isinstance(pid, int)
    assert read_protected(pager, pid) == bytes(PS)
    assert list(pager.allocated_protected_pages()) == [0]
    assert pager.verify_protected(pid)


def test_ids_are_sequential_slots(pager):
    ids = [pager.alloc_protected() for _ in range(5)]
    assert ids == [0, 1, 2, 3, 4]
    assert list(pager.allocated_protected_pages()) == ids


def test_freed_slot_is_reused_lowest_first(pager):
    ids = [pager.alloc_protected() for _ in range(5)]
    pager.free_protected(3)
    pager.free_protected(1)
    assert list(pager.allocated_protected_pages()) == [0, 2, 4]
    assert pager.alloc_protected() == 1
    assert pager.alloc_protected() == 3
    assert pager.alloc_protected() == 5
    assert list(pager.allocated_protected_pages()) == ids + [5]


def test_reused_slot_and_pages_start_zeroed(pager):
    pid = pager.alloc_protected()
    commit_bytes(pager, pid, b"\xaa" * PS)
    commit_bytes(pager, pid, b"\xbb" * PS)
    pager.free_protected(pid)
    # the freed backing pages become regular pages that get written
    regs = pager.alloc_bulk(4)
    for r in regs:
        v = pager.page(r)
        v[:] = b"\xcc" * PS
        v.release()
    pager.free_bulk(regs)
    again = pager.alloc_protected()
    assert again == pid
    assert read_protected(pager, again) == bytes(PS)
    assert pager.verify_protected(again)
    w = pager.write_protected(again)
    assert bytes(w.page) == bytes(PS), "the staged copy starts as the (zero) active content"
    w.discard()


def test_ids_stable_across_reopen(pager):
    ids = [pager.alloc_protected() for _ in range(6)]
    for pid in ids:
        commit_bytes(pager, pid, pattern(pid, PS, salt=3))
    pager.free_protected(2)
    pager.free_protected(4)
    p2 = reopen(pager)
    try:
        assert list(p2.allocated_protected_pages()) == [0, 1, 3, 5]
        for pid in (0, 1, 3, 5):
            assert read_protected(p2, pid) == pattern(pid, PS, salt=3)
            assert p2.verify_protected(pid)
        assert p2.alloc_protected() == 2
    finally:
        force_close(p2)


def test_alloc_protected_bulk(pager):
    assert pager.alloc_protected_bulk(0) == []
    ids = pager.alloc_protected_bulk(7)
    assert ids == list(range(7))
    assert list(pager.allocated_protected_pages()) == ids
    for pid in ids:
        assert read_protected(pager, pid) == bytes(PS)
    assert_accounting(pager)


def test_alloc_protected_bulk_bad_args(pager):
    with pytest.raises(ValueError):
        pager.alloc_protected_bulk(-1)
    with pytest.raises(TypeError):
        pager.alloc_protected_bulk("3")
    with pytest.raises(TypeError):
        pager.alloc_protected_bulk(2.0)
    assert list(pager.allocated_protected_pages()) == []


def test_free_protected_bulk(pager):
    ids = pager.alloc_protected_bulk(6)
    pager.free_protected_bulk(i for i in (1, 3, 5))
    assert list(pager.allocated_protected_pages()) == [0, 2, 4]
    pager.free_protected_bulk([])
    assert list(pager.allocated_protected_pages()) == [0, 2, 4]
    pager.free_protected_bulk([4, 0, 2])
    assert list(pager.allocated_protected_pages()) == []
    assert ids == list(range(6))
    assert_accounting(pager)


def _state(p):
    return (
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
        list(p.allocated_protected_pages()),
    )


@pytest.mark.parametrize(
    "bad, exc",
    [
        ([1, 2, 1], DoubleFree),  # a repeat
        ([1, 2, 2], DoubleFree),
        ([0, 3], DoubleFree),  # 3 was freed before
        ([0, 50], DoubleFree),  # never allocated, inside the existing block
        ([0, 10_000], OutOfBounds),  # past every block
        ([0, -1], OutOfBounds),
    ],
)
def test_free_protected_bulk_validates_first(pager, bad, exc):
    pager.alloc_protected_bulk(5)
    pager.free_protected(3)
    before = _state(pager)
    disk = pager.path and open(pager.path, "rb").read()
    with pytest.raises(exc):
        pager.free_protected_bulk(bad)
    assert _state(pager) == before
    assert open(pager.path, "rb").read() == disk, "a refused bulk free must not write"


def test_free_protected_bulk_type_errors(pager):
    pager.alloc_protected_bulk(2)
    before = _state(pager)
    with pytest.raises(TypeError):
        pager.free_protected_bulk([0, "1"])
    with pytest.raises(TypeError):
        pager.free_protected_bulk(0)
    with pytest.raises(TypeError):
        pager.free_protected_bulk([0, 1.0])
    assert _state(pager) == before


def test_free_protected_errors(pager):
    pager.alloc_protected_bulk(3)
    pager.free_protected(1)
    with pytest.raises(DoubleFree):
        pager.free_protected(1)
    with pytest.raises(DoubleFree):
        pager.free_protected(100)  # in block 0 (136 entries), never allocated
    with pytest.raises(OutOfBounds):
        pager.free_protected(entries_per_dir_page(PS))  # first id of block 1
    with pytest.raises(OutOfBounds):
        pager.free_protected(-1)
    with pytest.raises(OutOfBounds):
        pager.free_protected(1 << 64)
    with pytest.raises(TypeError):
        pager.free_protected("1")
    assert list(pager.allocated_protected_pages()) == [0, 2]
    assert issubclass(OutOfBounds, IndexError)


def test_free_protected_on_empty_directory(pager):
    with pytest.raises(OutOfBounds):
        pager.free_protected(0)


@pytest.mark.parametrize("call", ["protected_page", "write_protected", "verify_protected"])
def test_freed_or_unknown_ids_out_of_bounds(pager, call):
    fn = getattr(pager, call)
    with pytest.raises(OutOfBounds):
        fn(0)  # no directory yet
    pager.alloc_protected_bulk(3)
    pager.free_protected(1)
    for pid in (1, 3, 135, 136, 10_000, -1, 1 << 64):
        with pytest.raises(OutOfBounds):
            fn(pid)
    with pytest.raises(TypeError):
        fn(1.0)
    with pytest.raises(TypeError):
        fn(None)


# --------------------------------------------------------------------------
# views and writers
# --------------------------------------------------------------------------


def test_protected_page_view_is_read_only(pager):
    pid = pager.alloc_protected()
    v = pager.protected_page(pid)
    assert v.readonly
    assert len(v) == PS
    assert v.format == "B"
    with pytest.raises(TypeError):
        v[0] = 1
    with pytest.raises(TypeError):
        v[0:4] = b"abcd"
    v.release()


def test_writer_commit(pager):
    pid = pager.alloc_protected()
    w = pager.write_protected(pid)
    assert isinstance(w, ProtectedWriter)
    assert w.pid == pid
    assert not w.page.readonly
    assert len(w.page) == PS
    w.page[0:5] = b"hello"
    # not visible before commit
    assert read_protected(pager, pid)[:5] == bytes(5)
    w.commit()
    assert w.spent
    assert read_protected(pager, pid)[:5] == b"hello"
    assert pager.verify_protected(pid)


def test_staged_copy_starts_as_active_content(pager):
    pid = pager.alloc_protected()
    full = pattern(7, PS, salt=1)
    commit_bytes(pager, pid, full)
    # the inactive copy now holds zeros; a ten-byte change must keep the rest
    w = pager.write_protected(pid)
    assert bytes(w.page) == full
    w.page[100:110] = b"0123456789"
    w.commit()
    expect = full[:100] + b"0123456789" + full[110:]
    assert read_protected(pager, pid) == expect
    # once more, so both physical copies have been the staged one
    commit_bytes(pager, pid, b"ABCDEFGHIJ", offset=2000)
    expect = expect[:2000] + b"ABCDEFGHIJ" + expect[2010:]
    assert read_protected(pager, pid) == expect
    assert pager.verify_protected(pid)


def test_writer_discard(pager):
    pid = pager.alloc_protected()
    commit_bytes(pager, pid, b"keep")
    w = pager.write_protected(pid)
    w.page[:] = b"\xff" * PS
    w.discard()
    assert w.spent
    assert read_protected(pager, pid)[:4] == b"keep"
    assert read_protected(pager, pid)[4:] == bytes(PS - 4)
    # a new writer starts from the committed content, not the discarded bytes
    w = pager.write_protected(pid)
    assert bytes(w.page[:4]) == b"keep"
    assert bytes(w.page[4:]) == bytes(PS - 4)
    w.discard()


def test_context_manager_commits_on_clean_exit(pager):
    pid = pager.alloc_protected()
    with pager.write_protected(pid) as w:
        w.page[0:3] = b"abc"
    assert w.spent
    assert read_protected(pager, pid)[:3] == b"abc"


def test_context_manager_discards_on_error(pager):
    pid = pager.alloc_protected()
    commit_bytes(pager, pid, b"old")
    with pytest.raises(KeyError):
        with pager.write_protected(pid) as w:
            w.page[0:3] = b"new"
            raise KeyError("boom")
    assert w.spent
    assert read_protected(pager, pid)[:3] == b"old"
    # the page can be written again
    with pager.write_protected(pid) as w2:
        w2.page[0:3] = b"NEW"
    assert read_protected(pager, pid)[:3] == b"NEW"


def test_context_manager_after_explicit_commit(pager):
    pid = pager.alloc_protected()
    with pager.write_protected(pid) as w:
        w.page[0] = 9
        w.commit()
    assert read_protected(pager, pid)[0] == 9
    with pager.write_protected(pid) as w:
        w.page[0] = 10
        w.discard()
    assert read_protected(pager, pid)[0] == 9


@pytest.mark.parametrize("finish", ["commit", "discard"])
def test_spent_writer(pager, finish):
    pid = pager.alloc_protected()
    w = pager.write_protected(pid)
    view = w.page
    getattr(w, finish)()
    with pytest.raises(ValueError):
        w.commit()
    with pytest.raises(ValueError):
        w.discard()
    with pytest.raises(ValueError):
        w.page  # noqa: B018
    with pytest.raises((ValueError, TypeError)):
        view[0] = 1  # the handed-out view may not be used to write
    assert read_protected(pager, pid) == bytes(PS)


def test_second_writer_raises_writer_open(pager):
    pid = pager.alloc_protected()
    w = pager.write_protected(pid)
    with pytest.raises(WriterOpen):
        pager.write_protected(pid)
    assert issubclass(WriterOpen, MappedPageError)
    w.page[0] = 1
    w.commit()
    w2 = pager.write_protected(pid)  # allowed again after commit
    w2.discard()
    w3 = pager.write_protected(pid)  # and after discard
    w3.discard()
    assert read_protected(pager, pid)[0] == 1


def test_writers_on_different_pages(pager):
    a, b = pager.alloc_protected_bulk(2)
    wa = pager.write_protected(a)
    wb = pager.write_protected(b)
    wa.page[0] = 1
    wb.page[0] = 2
    wb.commit()
    assert read_protected(pager, a)[0] == 0
    wa.commit()
    assert read_protected(pager, a)[0] == 1
    assert read_protected(pager, b)[0] == 2


def test_free_protected_with_open_writer(pager):
    a, b = pager.alloc_protected_bulk(2)
    commit_bytes(pager, a, b"data")
    w = pager.write_protected(a)
    before = _state(pager)
    with pytest.raises(WriterOpen):
        pager.free_protected(a)
    with pytest.raises(MappedPageError):
        pager.free_protected_bulk([b, a])
    assert _state(pager) == before
    w.page[0:4] = b"DATA"
    w.commit()  # the writer still works
    assert read_protected(pager, a)[:4] == b"DATA"
    pager.free_protected(a)
    assert list(pager.allocated_protected_pages()) == [b]


def test_writer_view_survives_growth(tmp_path):
    p = Pager.create(tmp_path / "g.mpp", page_size=1024)
    try:
        pid = p.alloc_protected()
        w = p.write_protected(pid)
        before = p.page_count
        p.alloc_bulk(300)  # the file grows several times while the writer is open
        more = p.alloc_protected_bulk(40)  # and gains a directory block
        assert p.page_count > before
        w.page[:] = b"\x5a" * 1024
        w.commit()
        assert read_protected(p, pid) == b"\x5a" * 1024
        assert p.verify_protected(pid)
        assert more == list(range(1, 41))
        assert_accounting(p)
    finally:
        force_close(p)


def test_abandoned_writer_is_discarded(pager):
    """A writer dropped without commit or discard must not lock its page forever."""
    pid = pager.alloc_protected()
    w = pager.write_protected(pid)
    w.page[0] = 5
    ref = weakref.ref(w)
    del w
    gc.collect()
    leaked = ref()
    if leaked is not None:
        leaked.discard()  # let the pager close at teardown
    assert leaked is None, (
        "an abandoned ProtectedWriter is never collected (the pager keeps a strong "
        "reference in Pager._writers), so ProtectedWriter.__del__ never discards it: "
        "write_protected() of that id then raises WriterOpen and close() raises "
        "BufferError for the pager's whole life"
    )
    w = pager.write_protected(pid)
    assert w.page[0] == 0
    w.discard()


def test_close_refused_while_writer_open(tmp_path):
    p = Pager.create(tmp_path / "w.mpp")
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    with pytest.raises(BufferError):
        p.close()
    assert not p.closed
    w.page[0] = 3
    w.commit()
    p.close()
    with Pager.open(tmp_path / "w.mpp") as p2:
        assert read_protected(p2, pid)[0] == 3


def test_commit_is_durable_without_sync(tmp_path):
    path = tmp_path / "d.mpp"
    p = Pager.create(path)
    pid = p.alloc_protected()
    commit_bytes(p, pid, b"durable")
    p.close()
    # read the file itself, not through the pager
    e = disk_entry(path, pid)
    active = e["b"] if e["active"] else e["a"]
    raw = read_at(path, active * PS, PS)
    assert raw[:7] == b"durable"
    assert crc32(raw) == e["crc"]


def test_closed_pager_raises_value_error(tmp_path):
    p = Pager.create(tmp_path / "c.mpp")
    pid = p.alloc_protected()
    p.close()
    for call, args in [
        ("alloc_protected", ()),
        ("free_protected", (pid,)),
        ("alloc_protected_bulk", (1,)),
        ("free_protected_bulk", ([pid],)),
        ("protected_page", (pid,)),
        ("write_protected", (pid,)),
        ("verify_protected", (pid,)),
    ]:
        with pytest.raises(ValueError):
            getattr(p, call)(*args)
    with pytest.raises(ValueError):
        list(p.allocated_protected_pages())


# --------------------------------------------------------------------------
# regular and protected pages never overlap
# --------------------------------------------------------------------------


def test_iterators_disjoint(pager):
    regs = pager.alloc_bulk(3)
    prot = pager.alloc_protected_bulk(3)
    regs += [pager.alloc() for _ in range(3)]
    assert list(pager.allocated_pages()) == sorted(regs)
    assert list(pager.allocated_protected_pages()) == prot
    assert_accounting(pager)
    system = backing_pages(pager)
    for pid in prot:
        a, b = pager._backing(pid)
        assert {a, b} <= system
        assert a not in regs and b not in regs


def test_free_of_backing_or_directory_page_raises_reserved(pager):
    reg = pager.alloc()
    pid = pager.alloc_protected()
    commit_bytes(pager, pid, b"xyz")
    system = backing_pages(pager)
    assert len(system) == 4
    before = _state(pager)
    for page in sorted(system):
        with pytest.raises(ReservedPage):
            pager.free(page)
        with pytest.raises(ReservedPage):
            pager.free_bulk([page])
        with pytest.raises(ReservedPage):
            pager.free_bulk([reg, page])
        with pytest.raises(ReservedPage):
            pager.page(page)
    assert _state(pager) == before
    assert read_protected(pager, pid)[:3] == b"xyz"
    # once the protected page is freed, its backing pages are free pages
    pager.free_protected(pid)
    dirs = {p for blk in dir_blocks_on_disk(pager.path) for p in blk[:2]}
    for page in sorted(system - dirs):
        with pytest.raises(DoubleFree):
            pager.free(page)
        pager.page(page).release()
    for page in sorted(dirs):
        with pytest.raises(ReservedPage):
            pager.free(page)


def test_freed_backing_pages_reused_by_alloc(pager):
    pid = pager.alloc_protected()
    a, b = pager._backing(pid)
    pager.free_protected(pid)
    got = {pager.alloc(), pager.alloc()}
    assert got == {a, b}
    assert list(pager.allocated_protected_pages()) == []
    assert_accounting(pager)


def test_regular_pages_not_touched_by_protected_ops(pager):
    regs = pager.alloc_bulk(10)
    for r in regs:
        v = pager.page(r)
        v[:] = regular_pattern(r, PS)
        v.release()
    prot = pager.alloc_protected_bulk(5)
    for pid in prot:
        commit_bytes(pager, pid, b"\x77" * PS)
    pager.free_protected_bulk(prot[::2])
    pager.free_bulk(regs[::2])
    more = pager.alloc_protected_bulk(4)
    for pid in more:
        commit_bytes(pager, pid, b"\x55" * PS)
    for r in regs[1::2]:
        v = pager.page(r)
        assert bytes(v) == regular_pattern(r, PS), r
        v.release()
    assert_accounting(pager)


# --------------------------------------------------------------------------
# on-disk effects
# --------------------------------------------------------------------------


def test_new_block_writes_both_copies(tmp_path):
    path = tmp_path / "blk.mpp"
    with Pager.create(path, page_size=1024) as p:
        p.alloc_protected()
        refs = dir_blocks_on_disk(path)
        assert len(refs) == 1
        a, b, _ = refs[0]
        ea = parse_dir_page(read_at(path, a * 1024, 1024))
        eb = parse_dir_page(read_at(path, b * 1024, 1024))
        assert ea is not None and eb is not None, "both copies of a new block must be valid"
        assert ea == eb
        assert ea[0]["in_use"] == 1
        # a second block (33 entries per block at 1024)
        p.alloc_protected_bulk(33)
        refs = dir_blocks_on_disk(path)
        assert len(refs) == 2
        a, b, _ = refs[1]
        ea = parse_dir_page(read_at(path, a * 1024, 1024))
        eb = parse_dir_page(read_at(path, b * 1024, 1024))
        assert ea is not None and eb is not None
        assert ea[0]["in_use"] == 1
        assert [e["in_use"] for e in ea] == [e["in_use"] for e in eb]
    check_crate_readable(path, allocated=[])


def test_commit_updates_entry_on_disk(tmp_path):
    path = tmp_path / "e.mpp"
    with Pager.create(path) as p:
        pid = p.alloc_protected()
        e0 = disk_entry(path, pid)
        assert e0["in_use"] == 1
        assert e0["active"] == 0
        assert e0["gen"] == 0
        assert e0["crc"] == zlib.crc32(bytes(PS))
        (_, _, act0) = dir_blocks_on_disk(path)[0]
        commit_bytes(p, pid, b"\x01" * PS)
        e1 = disk_entry(path, pid)
        assert e1["active"] == 1
        assert e1["gen"] == 1
        assert e1["crc"] == zlib.crc32(b"\x01" * PS)
        assert (e1["a"], e1["b"]) == (e0["a"], e0["b"])
        (_, _, act1) = dir_blocks_on_disk(path)[0]
        assert act1 != act0, "a directory commit flips the block's active copy"
        assert read_at(path, e1["b"] * PS, PS) == b"\x01" * PS
        commit_bytes(p, pid, b"\x02" * PS)
        e2 = disk_entry(path, pid)
        assert e2["active"] == 0 and e2["gen"] == 2
        # discard changes nothing on disk in the directory
        before = read_at(path, 0, PS)
        w = p.write_protected(pid)
        w.page[0] = 0
        w.discard()
        assert read_at(path, 0, PS) == before
        assert disk_entry(path, pid) == e2
    check_crate_readable(path, allocated=[])


def test_free_protected_clears_in_use_on_disk(tmp_path):
    path = tmp_path / "f.mpp"
    with Pager.create(path) as p:
        p.alloc_protected_bulk(3)
        p.free_protected(1)
        assert disk_entry(path, 1)["in_use"] == 0
        assert disk_entry(path, 0)["in_use"] == 1
        view = check_crate_readable(path, allocated=[])
        e1 = disk_entry(path, 1)
        assert e1["a"] not in view["bits"] and e1["b"] not in view["bits"]


def test_verify_protected_detects_changed_data(tmp_path):
    path = tmp_path / "v.mpp"
    with Pager.create(path) as p:
        a, b = p.alloc_protected_bulk(2)
        commit_bytes(p, a, b"\x11" * PS)
        commit_bytes(p, b, b"\x22" * PS)
        assert p.verify_protected(a) and p.verify_protected(b)
        e = disk_entry(path, a)
    active = e["b"] if e["active"] else e["a"]
    patch(path, active * PS + 17, b"\x99")
    with Pager.open(path) as p:
        assert p.verify_protected(a) is False
        assert p.verify_protected(b) is True
        assert read_protected(p, a)[17] == 0x99
        # a new commit records the new CRC
        commit_bytes(p, a, b"\x33" * PS)
        assert p.verify_protected(a) is True


def test_file_stays_valid_v02(tmp_path):
    path = tmp_path / "ok.mpp"
    with Pager.create(path, page_size=1024) as p:
        regs = p.alloc_bulk(5)
        prot = p.alloc_protected_bulk(40)
        for pid in prot[::3]:
            commit_bytes(p, pid, bytes([pid]) * 1024)
        p.free_protected_bulk(prot[1::4])
        p.free(regs[0])
        live_regs = list(p.allocated_pages())
    check_crate_readable(path, allocated=live_regs)
    assert len(dir_blocks_on_disk(path)) == 2


# --------------------------------------------------------------------------
# past page 0's directory capacity (the extended layout)
# --------------------------------------------------------------------------


def _chosen_copy(path, ps: int, pages: tuple, index: int, meta_gen: int) -> bytes:
    """The copy of a 0.3 free-map or directory-index page that a reader takes:
    good CRC, its own index at @8, generation <= the metadata's; highest generation."""
    best = None
    for q in pages:
        raw = read_at(path, q * ps, ps)
        if crc32(raw[: ps - 4]) != struct.unpack_from("<I", raw, ps - 4)[0]:
            continue
        gen, idx = struct.unpack_from("<QI", raw, 0)
        if idx != index or gen > meta_gen:
            continue
        if best is None or gen > best[0]:
            best = (gen, raw)
    assert best is not None, f"no valid copy among pages {pages}"
    return best[1]


def extended_dir_blocks(path) -> list[tuple[int, int, int]]:
    """(page_a, page_b, active) of every directory block of a 0.3 file, read from
    chunk 1's free-map page (the block count) and the directory-index pages."""
    ps = read_image(path).page_size
    chunk = layout(ps).chunk_pages
    per_index = max_dir_blocks(ps)
    page0 = read_at(path, 0, ps)
    assert page0[5] == 3 and page0[13:16] == b"EXT"
    metas = []
    for i in (1, 2):
        raw = read_at(path, i * ps, ps)
        if crc32(raw[: ps - 4]) == struct.unpack_from("<I", raw, ps - 4)[0]:
            metas.append(struct.unpack_from("<QQ", raw, 0))
    total, gen = max(metas, key=lambda m: m[1])
    assert total > chunk
    fmap = _chosen_copy(path, ps, (chunk, chunk + 1), 1, gen)
    blocks = struct.unpack_from("<I", fmap, 12)[0]
    refs = []
    for k in range(-(-blocks // per_index)):
        at = (k + 1) * chunk
        assert at + 3 < total, f"directory-index page {k} lies past the end of the file"
        raw = _chosen_copy(path, ps, (at + 2, at + 3), k, gen)
        count = struct.unpack_from("<I", raw, 12)[0]
        assert count == min(per_index, blocks - k * per_index)
        for j in range(count):
            refs.append(struct.unpack_from("<QQB", raw, 24 + DIR_REF_SIZE * j))
    return refs


def protected_content(pid: int, size: int, salt: int = 0) -> bytes:
    """Content unique to each protected id: the id, then a pattern."""
    return pid.to_bytes(4, "little") + pattern(pid, size - 4, salt)


def test_directory_grows_past_page0_at_1024(tmp_path):
    """Page 0 indexes 58 blocks of 33 entries at 1 KiB; past that, the file moves
    to the 0.3 layout and the directory goes on in directory-index pages."""
    path = tmp_path / "big.mpp"
    ps = 1024
    blocks, epp = max_dir_blocks(ps), entries_per_dir_page(ps)
    assert (blocks, epp) == (58, 33)
    cap = blocks * epp
    assert cap == 1914
    total = 2000
    with Pager.create(path, page_size=ps) as p:
        reg = p.alloc()
        ids = p.alloc_protected_bulk(cap - 5)
        assert ids == list(range(cap - 5))
        last = p.alloc_protected_bulk(5)
        assert last == list(range(cap - 5, cap))
        # every slot page 0 can index is in use: still v0.2, and the crate reads it
        assert p.format_version == "0.2"
        assert len(dir_blocks_on_disk(path)) == blocks
        check_crate_readable(path, allocated=[reg])
        before = _state(p)
        # one bulk call past page 0's capacity (it commits page by page)
        more = p.alloc_protected_bulk(6)
        assert more == list(range(cap, cap + 6))
        assert p.format_version == "0.3"
        assert read_at(path, 5, 1) == b"\x03" and read_at(path, 13, 3) == b"EXT"
        after = _state(p)
        assert after[2] == before[2] == [reg]
        assert after[3] == list(range(cap + 6))
        assert after[0] > before[0], "the file grew"
        rest = p.alloc_protected_bulk(total - cap - 6)
        assert rest == list(range(cap + 6, total))
        assert list(p.allocated_protected_pages()) == list(range(total))
        for pid in range(total):
            commit_bytes(p, pid, protected_content(pid, ps))
        assert list(p.allocated_pages()) == [reg]
        # no page leaked: reserved, regular, protected copies, directory pages, layout pages
        n_blocks = -(-total // epp)
        chunks_past_0 = (p.page_count - 1) // layout(ps).chunk_pages
        assert chunks_past_0 >= 2  # index page 1 lives in chunk 2
        used = p.page_count - p.free_page_count
        # + the 2 root pages the first one-flush protected write took
        assert used == 3 + 1 + 2 * total + 2 * n_blocks + 4 * chunks_past_0 + 2
        backing = set()
        for pid in (0, cap - 1, cap, total - 1):
            pages = set(p._backing(pid))
            assert len(pages) == 2 and not pages & backing
            backing |= pages
            for page in pages:
                with pytest.raises(ReservedPage):
                    p.page(page)
    assert issubclass(DirectoryFull, MappedPageError)

    # on disk: the directory is where the 0.3 layout says, and every entry is right
    check_valid_v03(path, allocated=[reg])
    refs = extended_dir_blocks(path)
    assert len(refs) == n_blocks
    for pid in range(total):
        a, b, act = refs[pid // epp]
        assert act in (0, 1)
        entries = parse_dir_page(read_at(path, (b if act else a) * ps, ps))
        assert entries is not None, f"directory page of block {pid // epp}"
        e = entries[pid % epp]
        assert e["in_use"] == 1, pid
        live = e["b"] if e["active"] else e["a"]
        assert read_at(path, live * ps, ps) == protected_content(pid, ps), pid

    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert list(p.allocated_protected_pages()) == list(range(total))
        assert list(p.allocated_pages()) == [reg]
        bad = [pid for pid in range(total) if read_protected(p, pid) != protected_content(pid, ps)]
        assert bad == []
        assert all(p.verify_protected(pid) for pid in range(total))
        # freed slots are reused lowest first, on both sides of page 0's capacity
        freed = [0, 700, cap - 1, cap, total - 1]
        p.free_protected_bulk(freed)
        assert len(list(p.allocated_protected_pages())) == total - len(freed)
        assert p.alloc_protected_bulk(len(freed)) == freed
        assert p.alloc_protected() == total
        for pid in freed + [total]:
            assert read_protected(p, pid) == bytes(ps), pid
            commit_bytes(p, pid, protected_content(pid, ps, salt=1))
    with Pager.open(path) as p:
        assert list(p.allocated_protected_pages()) == list(range(total + 1))
        changed = set(freed) | {total}
        for pid in range(total + 1):
            want = protected_content(pid, ps, salt=1 if pid in changed else 0)
            assert read_protected(p, pid) == want, pid
    assert len(extended_dir_blocks(path)) == -(-(total + 1) // epp)
    check_valid_v03(path, allocated=[reg])


# --------------------------------------------------------------------------
# read-only pagers, asyncio, threads
# --------------------------------------------------------------------------


def test_read_only_pager_reads_protected_pages(tmp_path):
    path = tmp_path / "ro.mpp"
    p = Pager.create(path)
    try:
        a, b = p.alloc_protected_bulk(2)
        commit_bytes(p, a, b"first")
        r = ReadOnlyPager.open(path)
        try:
            assert list(r.allocated_protected_pages()) == [a, b]
            v = r.protected_page(a)
            assert v.readonly
            assert bytes(v[:5]) == b"first"
            v.release()
            assert r.verify_protected(a)
            assert not hasattr(r, "write_protected")
            backing = set(p._backing(a)) | set(p._backing(b))
            for page in backing:
                with pytest.raises(ReservedPage):
                    r.page(page)
            commit_bytes(p, a, b"second")
            p.free_protected(b)
            r.refresh()
            assert list(r.allocated_protected_pages()) == [a]
            assert read_protected(r, a)[:6] == b"second"
        finally:
            force_close(r)
    finally:
        force_close(p)


def test_async_protected_calls(pager):
    async def main():
        pid = await pager.alloc_protected_async()
        ids = await pager.alloc_protected_bulk_async(3)
        await pager.free_protected_async(pid)
        await pager.free_protected_bulk_async(ids[:2])
        return pid, ids

    pid, ids = asyncio.run(main())
    assert pid == 0 and ids == [1, 2, 3]
    assert list(pager.allocated_protected_pages()) == [3]


def test_threads_commit_different_pages(pager):
    ids = pager.alloc_protected_bulk(4)
    errors = []

    def work(pid):
        try:
            for k in range(25):
                with pager.write_protected(pid) as w:
                    w.page[0:8] = k.to_bytes(8, "little")
                    w.page[8:16] = pid.to_bytes(8, "little")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(pid,)) for pid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for pid in ids:
        data = read_protected(pager, pid)
        assert int.from_bytes(data[:8], "little") == 24
        assert int.from_bytes(data[8:16], "little") == pid
        assert pager.verify_protected(pid)


# --------------------------------------------------------------------------
# fixtures written by the crate
# --------------------------------------------------------------------------


def _open_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Pager.open(path, **kw)


def _check_protected_contents(p, expected):
    assert list(p.allocated_protected_pages()) == expected["iter_allocated_protected_pages"]
    for rec in expected["protected_page_contents"]:
        data = read_protected(p, rec["protected_id"])
        assert data[:16].hex() == rec["first_16_bytes_hex"], rec["protected_id"]
        assert crc32(data) == rec["crc32"], rec["protected_id"]
        assert p.verify_protected(rec["protected_id"])


@pytest.mark.parametrize("name", ["f3_protected_4096", "f4_regular_65536"])
def test_fixture_protected_contents(tmp_path, name):
    m = load_manifest(name)
    exp = m["expected"]
    path = copy_fixture(name, tmp_path)
    p = _open_quiet(path)
    try:
        assert p.page_size == exp["page_size"]
        assert list(p.allocated_pages()) == exp["iter_allocated_pages"]
        assert p.free_page_count == exp["free_page_count"]
        _check_protected_contents(p, exp)
        # the documented pattern, too
        k = 2 if name.startswith("f3") else 1
        for pid in exp["iter_allocated_protected_pages"]:
            assert read_protected(p, pid) == fixture_pattern(pid, k, exp["page_size"])
        assert_accounting(p)
    finally:
        force_close(p)


def test_f3_backing_pages_are_reserved(tmp_path):
    m = load_manifest("f3_protected_4096")
    path = copy_fixture("f3_protected_4096", tmp_path)
    with _open_quiet(path) as p:
        for c in m["protected_copies"]:
            assert p._backing(c["protected_id"]) in (
                (c["active_physical_page"], c["inactive_physical_page"]),
                (c["inactive_physical_page"], c["active_physical_page"]),
            )
            for page in (c["active_physical_page"], c["inactive_physical_page"]):
                with pytest.raises(ReservedPage):
                    p.free(page)
        for page in (6, 7):  # the directory pages
            with pytest.raises(ReservedPage):
                p.free(page)


def test_f3_writer_starts_from_committed_not_stale_copy(tmp_path):
    """Protected 4's inactive copy holds 0xEE (an uncommitted write of the crate)."""
    path = copy_fixture("f3_protected_4096", tmp_path)
    assert read_at(path, 17 * PS, 16) == b"\xee" * 16
    with _open_quiet(path) as p:
        w = p.write_protected(4)
        assert bytes(w.page) == fixture_pattern(4, 2, PS)
        w.page[0:10] = b"0123456789"
        w.commit()
        expect = b"0123456789" + fixture_pattern(4, 2, PS)[10:]
        assert read_protected(p, 4) == expect
        assert p.verify_protected(4)
        assert p.alloc_protected() == 2  # the freed slot
        assert read_protected(p, 2) == bytes(PS)
        live = list(p.allocated_pages())
    check_crate_readable(path, allocated=live)
    with _open_quiet(path) as p:
        assert read_protected(p, 4) == expect
        assert list(p.allocated_protected_pages()) == [0, 1, 2, 3, 4]
        for page in (12, 13):
            v = p.page(page)
            assert bytes(v) == regular_pattern(page, PS)
            v.release()


def test_f4_commit_and_reopen(tmp_path):
    path = copy_fixture("f4_regular_65536", tmp_path)
    ps = 65536
    with _open_quiet(path) as p:
        w = p.write_protected(0)
        assert bytes(w.page) == fixture_pattern(0, 1, ps)
        w.page[:] = fixture_pattern(0, 2, ps)
        w.commit()
        live = list(p.allocated_pages())
    check_crate_readable(path, allocated=live)
    with _open_quiet(path) as p:
        assert read_protected(p, 0) == fixture_pattern(0, 2, ps)
        assert p.verify_protected(0)


def test_e12_does_not_resurrect_freed_protected_page(tmp_path):
    name = "e12_active_dir_page_corrupt_4096"
    path = copy_fixture(name, tmp_path)
    f3 = load_manifest("f3_protected_4096")["expected"]
    with pytest.warns(RecoveryWarning):
        p = Pager.open(path)
    try:
        assert list(p.allocated_protected_pages()) == [0, 1, 3, 4]
        assert list(p.allocated_pages()) == [3, 5, 12, 13, 18]
        assert p.page_count == 32
        assert p.free_page_count == 14
        for page in (12, 13):
            v = p.page(page)
            assert bytes(v) == regular_pattern(page, PS), page
            v.release()
        with pytest.raises(OutOfBounds):
            p.protected_page(2)
        # the fallback copy holds the other four entries as committed
        _check_protected_contents(
            p,
            {
                "iter_allocated_protected_pages": [0, 1, 3, 4],
                "protected_page_contents": f3["protected_page_contents"],
            },
        )
        assert_accounting(p)
    finally:
        force_close(p)
    # the writer repaired the file: it opens silently, in the same state
    check_crate_readable(path, allocated=[3, 5, 12, 13, 18])
    with _open_quiet(path) as p:
        assert list(p.allocated_protected_pages()) == [0, 1, 3, 4]
        assert list(p.allocated_pages()) == [3, 5, 12, 13, 18]


def test_e12_read_only_does_not_resurrect(tmp_path):
    path = copy_fixture("e12_active_dir_page_corrupt_4096", tmp_path)
    before = path.read_bytes()
    with pytest.warns(RecoveryWarning):
        r = ReadOnlyPager.open(path)
    try:
        assert list(r.allocated_protected_pages()) == [0, 1, 3, 4]
        assert list(r.allocated_pages()) == [3, 5, 12, 13, 18]
    finally:
        force_close(r)
    assert path.read_bytes() == before


def test_e14_verify_detects_modified_data(tmp_path):
    name = "e14_protected_data_modified_4096"
    exp = load_manifest(name)["expected"]
    path = copy_fixture(name, tmp_path)
    p = _open_quiet(path)
    try:
        assert list(p.allocated_protected_pages()) == exp["iter_allocated_protected_pages"]
        assert list(p.allocated_pages()) == exp["iter_allocated_pages"]
        assert p.verify_protected(0) is False
        assert p.verify_protected(1) is True
        assert p.verify_protected(3) is True
        assert p.verify_protected(4) is True
        data = read_protected(p, 0)
        expect = bytearray(fixture_pattern(0, 2, PS))
        expect[100] = 0xCE
        assert data == bytes(expect)
    finally:
        force_close(p)


@pytest.mark.parametrize(
    "name, exc",
    [
        ("e11_page0_dircrc_bad_4096", mappedpages.CorruptDirectoryIndex),
        ("e13_both_dir_pages_corrupt_4096", mappedpages.CorruptProtectedDirectory),
    ],
)
def test_e_directory_damage_refused(tmp_path, name, exc):
    path = copy_fixture(name, tmp_path)
    before = path.read_bytes()
    with pytest.raises(exc) as info:
        Pager.open(path)
    assert isinstance(info.value, CorruptFileError)
    with pytest.raises(exc):
        ReadOnlyPager.open(path)
    assert path.read_bytes() == before
