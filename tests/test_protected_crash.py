"""Protected pages under damage and under SIGKILL.

Damage: bytes of a directory page or of page 0's directory section are
changed in copies of the crate's f3 and in files made here. One bad copy of a
directory page falls back to the other (with a RecoveryWarning) and must give
a consistent state; two bad copies, or a bad directory index, are refused.

Crashes: a child process commits protected writes, or allocates and frees
protected and regular pages, in a loop and is killed with SIGKILL at a random
moment. The child reports each operation after it returns (and, for
alloc/free, before it starts); after the kill the file must open and hold the
acknowledged state or that state plus the one operation in flight.
Set MAPPEDPAGES_KILL_ROUNDS to run more rounds than the default.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from support.edit import flip_byte, patch, read_at, reseal_dir_index
from support.format_v02 import (
    DIR_ENTRY_SIZE,
    DIR_PAGE_HEADER,
    DIR_REF_SIZE,
    OFF_DIR_COUNT,
    crc32,
    entries_per_dir_page,
    max_dir_blocks,
    pattern,
    read_image,
)
from support.format_v03 import inspect_v03
from support.geometry import layout
from support.pagers import commit_bytes, force_close, kill_when_ready, read_page, read_protected
from support.rust_fixtures import copy_fixture, load_manifest

from mappedpages import (
    CorruptDirectoryIndex,
    CorruptFileError,
    CorruptProtectedDirectory,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
)
from mappedpages._core import ffi, lib

KILL_ROUNDS = int(os.environ.get("MAPPEDPAGES_KILL_ROUNDS", "20"))
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def dir_refs(path) -> list[tuple[int, int, int]]:
    ps = read_image(path).page_size
    page0 = read_at(path, 0, ps)
    count = struct.unpack_from("<I", page0, OFF_DIR_COUNT)[0]
    return [struct.unpack_from("<QQB", page0, 24 + DIR_REF_SIZE * i) for i in range(count)]


def dir_page_ok(raw: bytes) -> bool:
    ps = len(raw)
    return crc32(raw[: ps - 4]) == struct.unpack_from("<I", raw, ps - 4)[0]





def system_pages(path) -> set[int]:
    return set(read_image(path).system_pages)


def assert_accounting(p) -> None:
    """Allocated pages = reserved + regular + 2 per protected page + 2 per block,
    and, once the file is past v0.2's cap (a long run grows it there), the
    extended layout's own pages: each chunk's four and the root pages."""
    protected = list(p.allocated_protected_pages())
    stats = ffi.new("mp_stats *")
    assert lib.mp_pager_stats(p._handle, stats) == 0
    # Page 0's index holds the blocks as of the move to the extended layout:
    # the count comes from the state, and it must agree with page 0 before.
    blocks = int(stats.dir_blocks)
    if p.format_version == "0.2":
        assert blocks == len(dir_refs(p.path))
    root = ffi.new("uint64_t *")
    assert lib.mp_pager_root_pages(p._handle, root) == 0
    roots = 2 if int(root[0]) else 0
    # A file created in the extended layout keeps index page 0 on pages 6-7.
    index0 = 2 if read_at(p.path, 13, 3) == b"EXA" else 0
    own = int(stats.layout_pages) - 3 + roots + index0
    regular = list(p.allocated_pages())
    assert p.page_count - 3 - p.free_page_count == (
        len(regular) + 2 * len(protected) + 2 * blocks + own
    ), "allocated pages are not accounted for by regular, backing, directory and layout pages"
    if p.format_version == "0.2":
        system = system_pages(p.path)
        assert len(system) == 2 * len(protected) + 2 * blocks
    else:  # the extended layout's reader (page 0's index is not read there)
        system = inspect_v03(p.path).system_pages
        assert len(system) == 2 * len(protected) + 2 * blocks + roots + index0
    both = set(regular) & system
    assert not both, f"pages {sorted(both)} are regular and behind a protected page"


def state(p):
    return (
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
        list(p.allocated_protected_pages()),
    )


def open_recording(path, cls=Pager):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = cls.open(path)
    return p, [w for w in rec if issubclass(w.category, RecoveryWarning)]


def open_quiet(path, cls=Pager):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cls.open(path)


def open_fails(path, exc):
    before = Path(path).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            Pager.open(path)
        with pytest.raises(exc):
            ReadOnlyPager.open(path)
    assert isinstance(info.value, CorruptFileError)
    assert Path(path).read_bytes() == before, "a failed open must not change the file"


# --------------------------------------------------------------------------
# files to damage
# --------------------------------------------------------------------------

MPS = 1024  # page size of the files made here: 33 entries per directory block


def v1(pid: int) -> bytes:
    return pattern(pid, MPS, salt=1)


def v2(pid: int) -> bytes:
    return pattern(pid, MPS, salt=2)


@pytest.fixture
def made(tmp_path):
    """A 1024-byte-page file with two directory blocks.

    Regular pages REGS hold pattern(i); protected 0..39 hold v1(pid), and 0..4
    hold v2(pid). Scratch protected pages 40 (block 1) and 5 (block 0) were
    allocated and freed last, so each block's last directory commit is a free
    whose fallback copy only differs by an entry whose pages are free now.
    """
    path = tmp_path / "made.mpp"
    with Pager.create(path, page_size=MPS) as p:
        regs = p.alloc_bulk(3)
        for r in regs:
            v = p.page(r)
            v[:] = pattern(r, MPS)
            v.release()
        ids = p.alloc_protected_bulk(40)
        assert ids == list(range(40))
        for pid in ids:
            commit_bytes(p, pid, v1(pid))
        for pid in range(5):
            commit_bytes(p, pid, v2(pid))
        p.free_protected(5)
        assert p.alloc_protected() == 5
        assert p.alloc_protected() == 40
        p.free_protected(40)
        p.free_protected(5)
        p.sync()
        live_regs = list(p.allocated_pages())
    assert live_regs == regs
    refs = dir_refs(path)
    assert len(refs) == 2
    return path


MADE_PROTECTED = [pid for pid in range(40) if pid != 5]


def made_expected(pid: int) -> bytes:
    return v2(pid) if pid < 5 else v1(pid)


def check_made_state(p, protected=MADE_PROTECTED, expected=made_expected):
    assert list(p.allocated_protected_pages()) == protected
    for pid in protected:
        assert read_protected(p, pid) == expected(pid), pid
        assert p.verify_protected(pid), pid
    for r in p.allocated_pages():
        assert read_page(p, r) == pattern(r, MPS), r
    assert_accounting(p)


def active_dir_page(path, block: int) -> int:
    a, b, act = dir_refs(path)[block]
    return b if act else a


def inactive_dir_page(path, block: int) -> int:
    a, b, act = dir_refs(path)[block]
    return a if act else b


# --------------------------------------------------------------------------
# directory pages: one copy bad falls back, both bad refused
# --------------------------------------------------------------------------


def test_made_file_opens_clean(made):
    with open_quiet(made) as p:
        check_made_state(p)
        assert len(list(p.allocated_pages())) == 3


# offsets inside a directory page: capacity field, an entry's in_use byte, an
# entry's page id, an entry's CRC, the padding, the page's own CRC
DIR_OFFSETS = {
    "capacity": 0,
    "in_use": DIR_PAGE_HEADER + 3 * DIR_ENTRY_SIZE,
    "page_id": DIR_PAGE_HEADER + 7 * DIR_ENTRY_SIZE + 1,
    "entry_crc": DIR_PAGE_HEADER + 2 * DIR_ENTRY_SIZE + 27,
    "padding": MPS - 40,
    "page_crc": MPS - 2,
}


@pytest.mark.parametrize("where", list(DIR_OFFSETS))
@pytest.mark.parametrize("block", [0, 1])
def test_made_active_dir_page_bad_falls_back(made, where, block):
    page = active_dir_page(made, block)
    other = inactive_dir_page(made, block)
    assert dir_page_ok(read_at(made, other * MPS, MPS))
    flip_byte(made, page * MPS + DIR_OFFSETS[where], 0x5A)
    p, rec = open_recording(made)
    try:
        assert rec, "falling back to the other directory copy must warn"
        check_made_state(p)
        # still fully usable: write, alloc, free
        commit_bytes(p, 7, b"after")
        new = p.alloc_protected()
        assert new == 5
        p.free_protected(new)
    finally:
        force_close(p)
    # the writer repaired the block: the next open is silent
    with open_quiet(made) as p:
        assert list(p.allocated_protected_pages()) == MADE_PROTECTED
        assert read_protected(p, 7)[:5] == b"after"
        assert_accounting(p)


def test_made_fallback_after_write_gives_previous_version(tmp_path):
    """When a block's last commit was a write, its fallback copy is the version before."""
    path = tmp_path / "w.mpp"
    with Pager.create(path, page_size=MPS) as p:
        a, b = p.alloc_protected_bulk(2)
        commit_bytes(p, a, v1(a))
        commit_bytes(p, b, v1(b))
        commit_bytes(p, b, v2(b))
    flip_byte(path, active_dir_page(path, 0) * MPS + 100)
    p, rec = open_recording(path)
    try:
        assert rec
        assert list(p.allocated_protected_pages()) == [a, b]
        assert read_protected(p, a) == v1(a)
        assert read_protected(p, b) == v1(b), "a whole, earlier committed version"
        assert p.verify_protected(a) and p.verify_protected(b)
        assert_accounting(p)
    finally:
        force_close(p)


def test_made_fallback_drops_entry_whose_pages_were_reused(tmp_path):
    """The e12 case on a file made here: a freed page's backing pages are regular now."""
    path = tmp_path / "r.mpp"
    with Pager.create(path, page_size=MPS) as p:
        ids = p.alloc_protected_bulk(3)
        for pid in ids:
            commit_bytes(p, pid, v1(pid))
        back = set(p._backing(1))
        p.free_protected(1)
        regs = [p.alloc(), p.alloc()]
        assert set(regs) == back
        for r in regs:
            v = p.page(r)
            v[:] = pattern(r, MPS)
            v.release()
        p.sync()
    flip_byte(path, active_dir_page(path, 0) * MPS + 5)
    p, rec = open_recording(path)
    try:
        assert rec
        assert list(p.allocated_protected_pages()) == [0, 2], "protected 1 was resurrected"
        assert list(p.allocated_pages()) == sorted(regs)
        for r in regs:
            assert read_page(p, r) == pattern(r, MPS)
        for pid in (0, 2):
            assert read_protected(p, pid) == v1(pid)
        assert_accounting(p)
    finally:
        force_close(p)


@pytest.mark.parametrize("block", [0, 1])
def test_made_both_dir_pages_bad(made, block):
    a, b, _ = dir_refs(made)[block]
    flip_byte(made, a * MPS + 50)
    flip_byte(made, b * MPS + MPS - 1)
    open_fails(made, CorruptProtectedDirectory)


def test_made_dir_page_wrong_capacity_both(made):
    """A directory page whose capacity field is wrong (CRC resealed) is not valid."""
    for page in dir_refs(made)[0][:2]:
        raw = bytearray(read_at(made, page * MPS, MPS))
        struct.pack_into("<I", raw, 0, entries_per_dir_page(MPS) + 1)
        struct.pack_into("<I", raw, MPS - 4, crc32(bytes(raw[: MPS - 4])))
        patch(made, page * MPS, bytes(raw))
    open_fails(made, CorruptProtectedDirectory)


def test_made_entry_impossible_in_active_copy(made):
    """An in-use entry naming page 1 (CRC resealed) can only be damage."""
    page = active_dir_page(made, 0)
    raw = bytearray(read_at(made, page * MPS, MPS))
    off = DIR_PAGE_HEADER + 2 * DIR_ENTRY_SIZE
    struct.pack_into("<Q", raw, off + 1, 1)
    struct.pack_into("<I", raw, MPS - 4, crc32(bytes(raw[: MPS - 4])))
    patch(made, page * MPS, bytes(raw))
    open_fails(made, CorruptProtectedDirectory)


F3 = "f3_protected_4096"
F3_PS = 4096


def _f3_expected():
    return load_manifest(F3)["expected"]


@pytest.mark.parametrize("offset", [9, 100, 2000, F3_PS - 1])
def test_f3_active_dir_page_bad(tmp_path, offset):
    path = copy_fixture(F3, tmp_path)
    a, b, act = dir_refs(path)[0]
    assert (a, b, act) == (6, 7, 0)
    flip_byte(path, 6 * F3_PS + offset, 0x81)
    exp = _f3_expected()
    p, rec = open_recording(path)
    try:
        assert rec, "expected a RecoveryWarning"
        assert list(p.allocated_protected_pages()) == [0, 1, 3, 4]
        assert list(p.allocated_pages()) == [3, 5, 12, 13, 18]
        for item in exp["protected_page_contents"]:
            data = read_protected(p, item["protected_id"])
            assert crc32(data) == item["crc32"]
            assert data[:16].hex() == item["first_16_bytes_hex"]
        for item in exp["regular_page_contents"]:
            assert crc32(read_page(p, item["page_id"])) == item["crc32"]
        assert_accounting(p)
    finally:
        force_close(p)


def test_f3_both_dir_pages_bad(tmp_path):
    path = copy_fixture(F3, tmp_path)
    flip_byte(path, 6 * F3_PS + 300)
    flip_byte(path, 7 * F3_PS + 4000)
    open_fails(path, CorruptProtectedDirectory)


def test_f3_inactive_dir_page_bad_is_ignored(tmp_path):
    path = copy_fixture(F3, tmp_path)
    flip_byte(path, 7 * F3_PS + 300)
    p, _ = open_recording(path)
    try:
        exp = _f3_expected()
        assert list(p.allocated_protected_pages()) == exp["iter_allocated_protected_pages"]
        assert list(p.allocated_pages()) == exp["iter_allocated_pages"]
        # the next directory commit writes the damaged copy whole again
        with p.write_protected(0) as w:
            w.page[0] = 1
    finally:
        force_close(p)
    assert dir_page_ok(read_at(path, 6 * F3_PS, F3_PS))
    assert dir_page_ok(read_at(path, 7 * F3_PS, F3_PS))
    with open_quiet(path) as p:
        assert read_protected(p, 0)[0] == 1


# --------------------------------------------------------------------------
# page 0's directory section
# --------------------------------------------------------------------------


def _set_ref(path, i, page_a=None, page_b=None, active=None, reseal=True):
    off = 24 + DIR_REF_SIZE * i
    if page_a is not None:
        patch(path, off, struct.pack("<Q", page_a))
    if page_b is not None:
        patch(path, off + 8, struct.pack("<Q", page_b))
    if active is not None:
        patch(path, off + 16, bytes([active]))
    if reseal:
        reseal_dir_index(path)


@pytest.fixture
def made_at_cap(tmp_path):
    """A 1024-byte-page file grown to the layout's page cap, with protected pages.

    Its bitmap fills its metadata pages, so page 0's directory index is the
    only record of the directory, as in the crate's own files.
    """
    path = tmp_path / "cap.mpp"
    with Pager.create(path, page_size=MPS) as p:
        filler = p.alloc_bulk(4093)  # pages 3..4095: the file is full
        ids = p.alloc_protected_bulk(3)  # grows the file to the cap
        for pid in ids:
            commit_bytes(p, pid, v1(pid))
        p.free_bulk(filler[10:])
        assert p.page_count == layout(MPS).v02_max_pages
    return path


@pytest.fixture(params=["f3", "made", "made_at_cap"])
def dfile(request, tmp_path):
    if request.param == "f3":
        return copy_fixture(F3, tmp_path)
    return request.getfixturevalue(request.param)


def _ps(path):
    return read_image(path).page_size


def has_directory_record(path) -> bool:
    """Whether the newest metadata copy also records the directory index.

    Such a copy (this library's addition in the padding the crate leaves zero)
    makes page 0's directory index a copy kept for the crate, which open can
    rebuild; without it (the crate's files, a file at the page cap) page 0's
    index is the only one, and damage to it is CorruptDirectoryIndex.
    """
    ps = read_image(path).page_size
    raw = newest_meta(path)["raw"]
    return raw[ps - 8 : ps - 4] == b"MPX1"


def newest_meta(path) -> dict:
    """The metadata copy with a good CRC and the highest generation.

    Only the ceil(total/8) bitmap bytes are read as bits: what follows them is
    padding to the crate (this library may keep a record there).
    """
    ps = read_image(path).page_size
    best = None
    for i in (0, 1):
        raw = read_at(path, (1 + i) * ps, ps)
        if crc32(raw[: ps - 4]) != struct.unpack_from("<I", raw, ps - 4)[0]:
            continue
        total, gen, free = struct.unpack_from("<QQQ", raw, 0)
        if best is None or gen > best["generation"]:
            bits = {j for j in range(total) if raw[24 + j // 8] >> (j % 8) & 1}
            best = {"index": i, "total": total, "generation": gen, "bits": bits, "raw": raw}
    assert best is not None, "no metadata copy has a good CRC"
    return best


def snapshot(path):
    """What a reader sees: regular ids and bytes, protected ids and bytes."""
    with open_quiet(path, ReadOnlyPager) as r:
        regular = {i: read_page(r, i) for i in r.allocated_pages()}
        protected = {pid: read_protected(r, pid) for pid in r.allocated_protected_pages()}
    return regular, protected


def index_damage_outcome(path, before_snapshot, record: bool) -> None:
    """Damage to page 0's index: refused, or (when the stored CRC matches the
    state a cut-short rewrite or a damaged count leaves) read as the committed
    state with a RecoveryWarning, and page 0 repaired by the next writer."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            r = ReadOnlyPager.open(path)
        except CorruptDirectoryIndex:
            assert not record, "a file with a directory record must be rebuilt from it"
            return
    assert any(issubclass(w.category, RecoveryWarning) for w in seen), (
        "damage to page 0's index was read past without a RecoveryWarning"
    )
    try:
        regular = {i: read_page(r, i) for i in r.allocated_pages()}
        protected = {pid: read_protected(r, pid) for pid in r.allocated_protected_pages()}
    finally:
        force_close(r)
    assert (regular, protected) == before_snapshot, "a reader must see the committed state"
    p, _ = open_recording(path)
    try:
        assert list(p.allocated_pages()) == sorted(before_snapshot[0])
        assert list(p.allocated_protected_pages()) == sorted(before_snapshot[1])
        for pid, data in before_snapshot[1].items():
            assert read_protected(p, pid) == data
            assert p.verify_protected(pid)
        assert_accounting(p)
    finally:
        force_close(p)
    # the writer rewrote page 0 from the record: the crate can read the file again
    assert read_image(path).dir_crc_ok
    assert snapshot(path) == before_snapshot


def _damage(path, edit) -> None:
    record = has_directory_record(path)
    before = snapshot(path)
    edit(path)
    index_damage_outcome(path, before, record)


def test_dir_index_record_presence(dfile):
    """f3 and a file at the cap have none; whether a made file has one is the design's."""
    if dfile.name.startswith(("f3", "cap")):
        assert not has_directory_record(dfile)


def test_dir_index_crc_flipped(dfile):
    _damage(dfile, lambda path: flip_byte(path, _ps(path) - 3))


@pytest.mark.parametrize("field", ["count", "page_a", "page_b", "active", "padding"])
def test_dir_index_edit_without_reseal(dfile, field):
    ps = _ps(dfile)
    off = {
        "count": OFF_DIR_COUNT,
        "page_a": 24,
        "page_b": 24 + 8,
        "active": 24 + 16,
        "padding": ps - 100,
    }[field]
    # (0x04: the count must not become 0, which means "no directory")
    _damage(dfile, lambda path: flip_byte(path, off, 0x04))


def test_dir_index_count_past_refs(dfile):
    n = len(dir_refs(dfile))

    def edit(path):
        patch(path, OFF_DIR_COUNT, struct.pack("<I", n + 1))  # a zero ref: pages 0 and 0
        reseal_dir_index(path)

    _damage(dfile, edit)


@pytest.mark.parametrize("count", ["max+1", 0xFFFFFFFF])
def test_dir_index_count_too_large(dfile, count):
    if count == "max+1":
        count = max_dir_blocks(_ps(dfile)) + 1

    def edit(path):
        patch(path, OFF_DIR_COUNT, struct.pack("<I", count))
        reseal_dir_index(path)

    _damage(dfile, edit)


@pytest.mark.parametrize("active", [2, 0x80, 0xFF])
def test_dir_index_active_byte_bad(dfile, active):
    _damage(dfile, lambda path: _set_ref(path, 0, active=active))


@pytest.mark.parametrize(
    "which, value",
    [
        ("a", 0),
        ("a", 1),
        ("b", 2),
        ("a", "total"),
        ("b", 1 << 40),
        ("b", (1 << 64) - 1),
        ("a", "same"),
        ("a", "free"),  # one page free, the other allocated
    ],
)
def test_dir_index_ref_page_impossible(dfile, which, value):
    meta = newest_meta(dfile)
    total = meta["total"]
    a, b, _ = dir_refs(dfile)[0]
    if value == "total":
        value = total
    elif value == "same":
        value = b if which == "a" else a
    elif value == "free":
        value = next(i for i in range(3, total) if i not in meta["bits"])
    if value < 3 or value >= total:
        _one_copy_outside(dfile, which, value)
        return
    _damage(dfile, lambda path: _set_ref(path, 0, **{f"page_{which}": value}))


def _one_copy_outside(path, which, value) -> None:
    """A block copy named on a reserved page or past the end of the file: no
    crash leaves that, but the other copy is still good, so open reads it, with
    a warning (its entries checked as any fallback's), and a writer gives the
    block a new page for the missing copy."""
    _, _, active = dir_refs(path)[0]
    was_active = (which == "a") == (active == 0)
    before_protected = snapshot(path)[1]
    _set_ref(path, 0, **{f"page_{which}": value})
    r, rec = open_recording(path, ReadOnlyPager)
    try:
        assert rec, "a block copy outside the file was passed over without a RecoveryWarning"
        seen = {pid: read_protected(r, pid) for pid in r.allocated_protected_pages()}
        if not was_active:
            assert seen == before_protected, "the block's good active copy must be read"
        for pid in seen:
            assert r.verify_protected(pid)
    finally:
        force_close(r)
    p, rec = open_recording(path)
    try:
        assert rec
        na, nb, _ = dir_refs(path)[0]
        assert value not in (na, nb) and 3 <= min(na, nb) and max(na, nb) < p.page_count
        kept = {pid: read_protected(p, pid) for pid in p.allocated_protected_pages()}
        assert kept == seen
    finally:
        force_close(p)
    with open_quiet(path) as p:
        assert {pid: read_protected(p, pid) for pid in p.allocated_protected_pages()} == seen


def test_dir_index_two_blocks_share_a_page(made):
    a0, _, _ = dir_refs(made)[0]
    _damage(made, lambda path: _set_ref(path, 1, page_a=a0))


def test_dir_index_zero_count_keeps_other_damage_ignored(tmp_path):
    """count 0 is 'no directory' whatever the rest of the section holds (as the crate)."""
    path = tmp_path / "z.mpp"
    Pager.create(path, page_size=MPS).close()
    patch(path, 24, b"\xff" * 40)
    with open_quiet(path) as p:
        assert list(p.allocated_protected_pages()) == []
        assert p.alloc_protected() == 0


# --------------------------------------------------------------------------
# SIGKILL: protected writes
# --------------------------------------------------------------------------

CHILD_COMMON = """
import os, sys, random
from mappedpages import Pager

def content(pid, v, ps):
    head = v.to_bytes(8, "little") + pid.to_bytes(8, "little")
    return head + random.Random(pid * 1000003 + v).randbytes(ps - 16)

def ack(fd, text):
    os.write(fd, (text + "\\n").encode())
"""

CHILD_WRITER = """
path, log = sys.argv[1], sys.argv[2]
p = Pager.open(path)
ps = p.page_size
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
pids = list(p.allocated_protected_pages())
ver = {pid: int.from_bytes(p.protected_page(pid)[:8], "little") for pid in pids}
print("ready", flush=True)
rng = random.Random(os.getpid())
while True:
    pid = rng.choice(pids)
    v = ver[pid] + 1
    data = content(pid, v, ps)
    if rng.random() < 0.5:
        w = p.write_protected(pid)
        w.page[:] = data
        w.commit()
    else:
        with p.write_protected(pid) as w:
            w.page[:] = data
    ver[pid] = v
    ack(fd, f"{pid} {v}")
"""


def _content(pid: int, v: int, ps: int) -> bytes:
    head = v.to_bytes(8, "little") + pid.to_bytes(8, "little")
    return head + random.Random(pid * 1000003 + v).randbytes(ps - 16)


def _run_and_kill(script: str, delay: float, *args) -> None:
    code = textwrap.dedent(CHILD_COMMON) + textwrap.dedent(script)
    kill_when_ready([sys.executable, "-c", code, *map(str, args)], delay)


def _read_log(log: Path) -> list[str]:
    if not log.exists():
        return []
    text = log.read_text()
    lines = text.split("\n")
    # a kill may land inside the write of a line: keep only whole lines
    return [ln for ln in lines[:-1] if ln]


def _page0_state(path) -> str:
    ps = read_image(path).page_size
    raw = read_at(path, 0, ps)
    count = struct.unpack_from("<I", raw, OFF_DIR_COUNT)[0]
    ok = crc32(raw[20 : ps - 4]) == struct.unpack_from("<I", raw, ps - 4)[0]
    return f"page 0 directory section: count {count}, CRC {'ok' if ok else 'BAD'}"


TORN_PAGE0 = (
    "(page 0's directory section is rewritten in place on every commit - memset of "
    "the section, then count and refs, then the CRC - so a kill inside that rewrite "
    "leaves a section with a stale CRC (CorruptDirectoryIndex), or with count 0 "
    "(every protected page silently gone))"
)


def open_after_kill(path, rnd: int, expect_silent: bool):
    """Open PATH after a kill; fail with a diagnosis when it does not open."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            p = Pager.open(path)
        except CorruptFileError as e:
            pytest.fail(
                f"round {rnd}: the file does not open after SIGKILL: {e!r}; "
                f"{_page0_state(path)} {TORN_PAGE0}"
            )
    warned = [str(w.message) for w in rec if issubclass(w.category, RecoveryWarning)]
    if expect_silent:
        assert not warned, f"round {rnd}: open after a kill mid-commit warned: {warned}"
    return p, warned


# (page size, rounds, longest delay before the kill): big pages make page 0's
# rewrite a larger share of each commit, so a kill lands inside it more often.
KILL_CASES = {
    "4096": (4096, KILL_ROUNDS, 0.25),
    "1024": (1024, max(5, KILL_ROUNDS // 2), 0.25),
    "65536": (65536, max(5, KILL_ROUNDS * 3 // 2), 0.05),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_during_protected_commits(tmp_path, case):
    ps, max_rounds, max_delay = KILL_CASES[case]
    path = tmp_path / "kill.mpp"
    npids = 4
    with Pager.create(path, page_size=ps) as p:
        pids = p.alloc_protected_bulk(npids)
        regs = p.alloc_bulk(2)
        for r in regs:
            v = p.page(r)
            v[:] = pattern(r, ps)
            v.release()
        p.sync()
        for pid in pids:
            commit_bytes(p, pid, _content(pid, 0, ps))
    acked = {pid: 0 for pid in pids}
    rng = random.Random(1234 + ps)
    total_commits = 0
    budget = time.monotonic() + 12.0
    rounds = 0
    while rounds < max_rounds and (rounds < 5 or time.monotonic() < budget):
        rounds += 1
        log = tmp_path / f"ack{rounds}.log"
        _run_and_kill(CHILD_WRITER, rng.uniform(0.0, max_delay), path, log)
        for line in _read_log(log):
            pid, v = map(int, line.split())
            assert v == acked[pid] + 1, "the child acknowledges versions in order"
            acked[pid] = v
            total_commits += 1
        # (a copy torn by the kill may be reported with a RecoveryWarning)
        p, _ = open_after_kill(path, rounds, expect_silent=False)
        try:
            got = list(p.allocated_protected_pages())
            assert got == pids, (
                f"round {rounds}: protected pages {got} after the kill, not {pids}; "
                f"{_page0_state(path)} {TORN_PAGE0}"
            )
            assert list(p.allocated_pages()) == regs
            for r in regs:
                assert read_page(p, r) == pattern(r, ps)
            for pid in pids:
                data = read_protected(p, pid)
                v = int.from_bytes(data[:8], "little")
                assert v in (acked[pid], acked[pid] + 1), (
                    f"round {rounds}: protected {pid} holds version {v}, acknowledged {acked[pid]}"
                )
                assert data == _content(pid, v, ps), f"protected {pid} is torn"
                assert p.verify_protected(pid)
                acked[pid] = v
            assert_accounting(p)
        finally:
            force_close(p)
    assert total_commits > rounds, "the child committed almost nothing before the kills"


# --------------------------------------------------------------------------
# SIGKILL: alloc/free of protected and regular pages
# --------------------------------------------------------------------------

CHILD_ALLOCATOR = """
path, log, keep = sys.argv[1], sys.argv[2], set(map(int, sys.argv[3].split(",")))
keep_regs = set(map(int, sys.argv[4].split(",")))
p = Pager.open(path)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
live = set(p.allocated_protected_pages()) - keep
regs = set(p.allocated_pages()) - keep_regs
print("ready", flush=True)
rng = random.Random(os.getpid())
while True:
    r = rng.random()
    if r < 0.30 or not live:
        ack(fd, "?A 1")
        pid = p.alloc_protected()
        live.add(pid)
        ack(fd, f"A {pid}")
        if rng.random() < 0.5:
            with p.write_protected(pid) as w:
                w.page[:8] = pid.to_bytes(8, "little")
    elif r < 0.40:
        n = rng.randint(1, 12)
        ack(fd, f"?A {n}")
        got = p.alloc_protected_bulk(n)
        live.update(got)
        ack(fd, "A " + " ".join(map(str, got)))
    elif r < 0.65:
        pid = rng.choice(sorted(live))
        ack(fd, f"?F {pid}")
        p.free_protected(pid)
        live.discard(pid)
        ack(fd, f"F {pid}")
    elif r < 0.75:
        some = rng.sample(sorted(live), min(len(live), rng.randint(1, 8)))
        ack(fd, "?F " + " ".join(map(str, some)))
        p.free_protected_bulk(some)
        live.difference_update(some)
        ack(fd, "F " + " ".join(map(str, some)))
    elif r < 0.90 or not regs:
        ack(fd, "?a")
        page = p.alloc()
        regs.add(page)
        ack(fd, f"a {page}")
    else:
        page = rng.choice(sorted(regs))
        ack(fd, f"?f {page}")
        p.free(page)
        regs.discard(page)
        ack(fd, f"f {page}")
"""


def _lowest_free(live: set[int], n: int) -> list[int]:
    out, pid = [], 0
    while len(out) < n:
        if pid not in live:
            out.append(pid)
        pid += 1
    return out


def test_kill_during_alloc_and_free(tmp_path):
    ps = 1024
    path = tmp_path / "af.mpp"
    with Pager.create(path, page_size=ps) as p:
        keep = p.alloc_protected_bulk(3)
        for pid in keep:
            commit_bytes(p, pid, pattern(pid, ps, salt=9))
        keep_regs = p.alloc_bulk(3)
        for r in keep_regs:
            v = p.page(r)
            v[:] = pattern(r, ps)
            v.release()
        p.sync()
    live: set[int] = set()  # protected ids the child owns, as acknowledged
    regs: set[int] = set()
    rng = random.Random(99)
    rounds = 0
    blocks_seen = set()
    budget = time.monotonic() + 12.0
    while rounds < KILL_ROUNDS and (rounds < 5 or time.monotonic() < budget):
        rounds += 1
        log = tmp_path / f"af{rounds}.log"
        _run_and_kill(
            CHILD_ALLOCATOR,
            rng.uniform(0.0, 0.3),
            path,
            log,
            ",".join(map(str, keep)),
            ",".join(map(str, keep_regs)),
        )
        pending = None
        for line in _read_log(log):
            kind, *rest = line.split()
            nums = [int(x) for x in rest]
            if kind.startswith("?"):
                pending = (kind[1:], nums)
                continue
            pending = None
            if kind == "A":
                live.update(nums)
            elif kind == "F":
                live.difference_update(nums)
            elif kind == "a":
                regs.update(nums)
            elif kind == "f":
                regs.difference_update(nums)
        p, _ = open_after_kill(path, rounds, expect_silent=False)
        try:
            prot = set(p.allocated_protected_pages())
            assert set(keep) <= prot, (
                f"round {rounds}: protected pages {sorted(set(keep) - prot)} from before "
                f"the loop were lost; {_page0_state(path)} {TORN_PAGE0}"
            )
            for pid in keep:
                assert read_protected(p, pid) == pattern(pid, ps, salt=9)
                assert p.verify_protected(pid)
            mine = prot - set(keep)
            allowed = [live]
            if pending is not None:
                kind, nums = pending
                if kind == "A":
                    cand = _lowest_free(live | set(keep), nums[0])
                    # a bulk alloc is one commit per page: any prefix may be done
                    allowed += [live | set(cand[:k]) for k in range(1, len(cand) + 1)]
                elif kind == "F":
                    allowed.append(live - set(nums))
            assert mine in allowed, (
                f"round {rounds}: protected ids {sorted(mine)}, acknowledged "
                f"{sorted(live)}, in flight {pending}"
            )
            live = mine
            for pid in live:
                data = read_protected(p, pid)
                assert data[:8] in (bytes(8), pid.to_bytes(8, "little")), pid
                assert data[8:] == bytes(ps - 8), pid
                assert p.verify_protected(pid)
            regular = set(p.allocated_pages())
            assert set(keep_regs) <= regular
            for r in keep_regs:
                assert read_page(p, r) == pattern(r, ps), r
            mine_regs = regular - set(keep_regs)
            allowed_regs = [regs]
            if pending is not None and pending[0] == "a":
                allowed_regs += [regs | {x} for x in mine_regs - regs]
            if pending is not None and pending[0] == "f":
                allowed_regs.append(regs - set(pending[1]))
            assert mine_regs in allowed_regs, (
                f"round {rounds}: regular pages {sorted(mine_regs)}, acknowledged "
                f"{sorted(regs)}, in flight {pending}"
            )
            regs = mine_regs
            assert_accounting(p)
            blocks_seen.add(len(dir_refs(path)))
        finally:
            force_close(p)
        # whatever open repaired, the next open finds nothing to repair
        with open_quiet(path) as p:
            assert set(p.allocated_protected_pages()) == live | set(keep)
    assert rounds >= 5
