"""Damaged files: every field of page 0 and of both metadata copies.

The base file (1024-byte pages) is written by the library itself:
create, alloc 10 pages (ids 3..12, 16 pages), then free page 5. Copy B holds
the newest state (generation 11, page 5 free); copy A the state before the
last commit (generation 10, page 5 allocated). When a field is changed, the
copy's CRC is recomputed unless the test is about the CRC, so that the
consistency checks are exercised and not only the checksum.
"""

from __future__ import annotations

import os
import struct
import warnings

import pytest
from support.edit import edit_meta, flip_byte, patch, reseal_dir_index
from support.format_v02 import (
    OFF_BUILD,
    OFF_DIR_COUNT,
    OFF_LOG2,
    OFF_MAJOR,
    OFF_META_CHECKSUM,
    OFF_MINOR,
    OFF_PATCH,
    OFF_SELECTOR,
    check_valid_v02,
    max_dir_blocks,
    pattern,
    read_image,
)
from support.geometry import layout
from support.pagers import force_close

import mappedpages
from mappedpages import Pager

PS = 1024
NEW_IDX, OLD_IDX = 1, 0  # copy B is the newest in the base file
NEW_LIVE = [3, 4, 6, 7, 8, 9, 10, 11, 12]
OLD_LIVE = list(range(3, 13))
NEW_STATE = (PS, 16, 16 - 3 - len(NEW_LIVE), NEW_LIVE)
OLD_STATE = (PS, 16, 16 - 3 - len(OLD_LIVE), OLD_LIVE)


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.mpp"
    with Pager.create(path, page_size=PS) as p:
        ids = [p.alloc() for _ in range(10)]
        assert ids == OLD_LIVE
        for i in ids:
            v = p.page(i)
            v[:] = pattern(i, PS)
            v.release()
        p.free(5)
        p.sync()
    img = check_valid_v02(path, allocated=NEW_LIVE)
    assert img.selector == NEW_IDX
    assert img.metas[NEW_IDX].generation == 11
    assert img.metas[OLD_IDX].generation == 10
    return path


def state_of(p):
    return (p.page_size, p.page_count, p.free_page_count, list(p.allocated_pages()))


def open_and_check(path, state, warn, page_size=None, salvage=False):
    """Open PATH, compare its state, check data pages, close. warn: True = a
    RecoveryWarning is required, False = forbidden, None = either."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = Pager.open(path, page_size=page_size, salvage=salvage)
    try:
        assert state_of(p) == state
        for i in state[3]:
            v = p.page(i)
            assert bytes(v) == pattern(i, PS), i
            v.release()
    finally:
        force_close(p)
    recovery = [w for w in rec if issubclass(w.category, mappedpages.RecoveryWarning)]
    if warn is True:
        assert recovery, "expected a RecoveryWarning"
    elif warn is False:
        assert not recovery, [str(w.message) for w in recovery]


def open_fails(path, exc, page_size=None):
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc):
            Pager.open(path, page_size=page_size)
    assert path.read_bytes() == before, "a failed open must not change the file"


# --------------------------------------------------------------------------
# page 0: superblock
# --------------------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"XPPG", b"mppg", b"\0\0\0\0", b"MPPH", b"GPPM"])
def test_bad_magic(base, magic):
    patch(base, 0, magic)
    open_fails(base, mappedpages.CorruptSuperblock)


@pytest.mark.parametrize("major", [1, 2, 255])
def test_bad_major(base, major):
    patch(base, OFF_MAJOR, bytes([major]))
    open_fails(base, mappedpages.CorruptSuperblock)


@pytest.mark.parametrize("minor", [3, 4, 255])
def test_newer_minor_refused(base, minor):
    patch(base, OFF_MINOR, bytes([minor]))
    open_fails(base, mappedpages.CorruptSuperblock)


@pytest.mark.parametrize("minor", [0, 1, 2])
def test_older_minor_accepted(base, minor):
    patch(base, OFF_MINOR, bytes([minor]))
    open_and_check(base, NEW_STATE, warn=None)


@pytest.mark.parametrize("off", [OFF_PATCH, OFF_BUILD])
def test_patch_build_ignored(base, off):
    patch(base, off, b"\x09")
    open_and_check(base, NEW_STATE, warn=False)


@pytest.mark.parametrize("log2", [0, 1, 9, 31, 32, 63, 0xFFFF, 0xFFFFFFFF])
def test_page_size_log2_out_of_range(base, log2):
    patch(base, OFF_LOG2, struct.pack("<I", log2))
    open_fails(base, mappedpages.CorruptSuperblock)
    open_fails(base, mappedpages.CorruptSuperblock, page_size=PS)


@pytest.mark.parametrize("log2", [11, 12, 13, 16])
def test_page_size_log2_other_valid_size(base, log2):
    patch(base, OFF_LOG2, struct.pack("<I", log2))
    open_fails(base, mappedpages.InvalidPageSize, page_size=PS)
    # without a page size asked, the file's pages make no sense at that size
    open_fails(base, (mappedpages.CorruptFileError, mappedpages.InvalidPageSize))


@pytest.mark.parametrize("sel", [2, 3, 0x80, 0xFF])
def test_bad_selector_recovers_by_generation(base, sel):
    patch(base, OFF_SELECTOR, bytes([sel]))
    open_and_check(base, NEW_STATE, warn=True)
    # the writer repaired page 0 to name the newest copy
    img = check_valid_v02(base, allocated=NEW_LIVE)
    assert img.selector == NEW_IDX
    open_and_check(base, NEW_STATE, warn=False)


def test_stale_selector_newest_wins_and_is_repaired(base):
    patch(base, OFF_SELECTOR, bytes([OLD_IDX]))
    open_and_check(base, NEW_STATE, warn=None)
    img = check_valid_v02(base, allocated=NEW_LIVE)
    assert img.selector == NEW_IDX


def test_stale_selector_then_commit(base):
    patch(base, OFF_SELECTOR, bytes([OLD_IDX]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(base)
    try:
        assert p.alloc() == 5
        # the commit must not overwrite the newest copy it was built on
        assert list(p.allocated_pages()) == OLD_LIVE
    finally:
        force_close(p)
    img = check_valid_v02(base, allocated=OLD_LIVE)
    assert img.newest().generation == 12


@pytest.mark.parametrize("value", [0, 0xFFFFFFFF, 0x2144DF1D, 0x12345678])
def test_meta_checksum_ignored(base, value):
    patch(base, OFF_META_CHECKSUM, struct.pack("<I", value))
    open_and_check(base, NEW_STATE, warn=None)


def test_padding_ignored(base):
    patch(base, 13, b"\xaa\xbb\xcc")
    open_and_check(base, NEW_STATE, warn=False)


# --------------------------------------------------------------------------
# page 0: directory index
# --------------------------------------------------------------------------


def test_dir_crc_bad_with_zero_count_ignored(base):
    flip_byte(base, PS - 1)
    open_and_check(base, NEW_STATE, warn=None)


def test_dir_crc_bad_with_zero_count_padding(base):
    patch(base, 500, b"junk")  # inside the directory section, count still 0
    open_and_check(base, NEW_STATE, warn=None)


def test_dir_count_one_with_stale_crc(base):
    patch(base, OFF_DIR_COUNT, struct.pack("<I", 1))
    open_fails(base, mappedpages.CorruptDirectoryIndex)


@pytest.mark.parametrize("count", ["max+1", 0xFFFF, 0xFFFFFFFF])
def test_dir_count_too_large(base, count):
    if count == "max+1":
        count = max_dir_blocks(PS) + 1
    patch(base, OFF_DIR_COUNT, struct.pack("<I", count))
    reseal_dir_index(base)
    open_fails(base, mappedpages.CorruptDirectoryIndex)


def test_dir_count_too_large_stale_crc(base):
    patch(base, OFF_DIR_COUNT, struct.pack("<I", 0xFFFFFFFF))
    open_fails(base, mappedpages.CorruptDirectoryIndex)


@pytest.mark.parametrize("active", [2, 0xFF])
def test_dir_ref_bad_active_byte(base, active):
    patch(base, OFF_DIR_COUNT, struct.pack("<I", 1))
    patch(base, 24, struct.pack("<QQB", 13, 14, active))
    reseal_dir_index(base)
    open_fails(base, mappedpages.CorruptDirectoryIndex)


# --------------------------------------------------------------------------
# metadata copies: damage that makes one copy invalid
# --------------------------------------------------------------------------

# each entry: name -> edit(path, index)
INVALIDATING = {
    "crc_field": lambda path, i: flip_byte(path, (2 + i) * PS - 1, 0x01),
    "bitmap_no_reseal": lambda path, i: flip_byte(path, (1 + i) * PS + 24 + 1, 0x02),
    "total_no_reseal": lambda path, i: flip_byte(path, (1 + i) * PS + 0, 0x10),
    "total_huge": lambda path, i: edit_meta(path, i, total_pages=2**64 - 1),
    "total_2_63": lambda path, i: edit_meta(path, i, total_pages=2**63),
    "total_past_cap": lambda path, i: edit_meta(path, i, total_pages=layout(PS).v02_max_pages + 1),
    "total_past_file": lambda path, i: edit_meta(
        path, i, total_pages=32, free_count=read_image(path).metas[i].free_count + 16
    ),
    "total_past_file_by_one": lambda path, i: edit_meta(
        path, i, total_pages=17, free_count=read_image(path).metas[i].free_count + 1
    ),
    "total_below_bits": lambda path, i: edit_meta(path, i, total_pages=8, free_count=0),
    "total_zero": lambda path, i: edit_meta(path, i, total_pages=0, free_count=0),
    "free_count_plus_one": lambda path, i: edit_meta(
        path, i, free_count=read_image(path).metas[i].free_count + 1
    ),
    "free_count_minus_one": lambda path, i: edit_meta(
        path, i, free_count=read_image(path).metas[i].free_count - 1
    ),
    "free_count_huge": lambda path, i: edit_meta(path, i, free_count=2**64 - 1),
    "free_count_zero": lambda path, i: edit_meta(path, i, free_count=0),
    "reserved_bit0_cleared": lambda path, i: edit_meta(
        path, i, clear_bits=[0], free_count=read_image(path).metas[i].free_count + 1
    ),
    "reserved_bit2_cleared": lambda path, i: edit_meta(
        path, i, clear_bits=[2], free_count=read_image(path).metas[i].free_count + 1
    ),
    "bit_past_total": lambda path, i: edit_meta(path, i, set_bits=[16]),
    "bit_at_bitmap_end": lambda path, i: edit_meta(
        path, i, set_bits=[layout(PS).v02_max_pages - 1]
    ),
    "bitmap_bit_no_free_fix": lambda path, i: edit_meta(path, i, set_bits=[13]),
    "bitmap_bit_cleared_no_free_fix": lambda path, i: edit_meta(path, i, clear_bits=[3]),
    "all_ones_page": lambda path, i: patch(path, (1 + i) * PS, b"\xff" * PS),
    "all_zero_page": lambda path, i: patch(path, (1 + i) * PS, bytes(PS)),
}


# A valid copy whose page count reaches past the end of the file: no crash
# leaves one (growth is durable before the commit that counts it), so when it
# is the newest copy the file was cut, and open refuses unless salvaging.
PAST_FILE = ("total_past_file", "total_past_file_by_one")


@pytest.mark.parametrize("damage", sorted(set(INVALIDATING) - set(PAST_FILE)))
def test_newest_copy_invalid_falls_back(base, damage):
    INVALIDATING[damage](base, NEW_IDX)
    img = read_image(base)
    assert img.metas[NEW_IDX].problems(PS, img.file_len), "the edit should invalidate the copy"
    open_and_check(base, OLD_STATE, warn=True)


@pytest.mark.parametrize("damage", PAST_FILE)
def test_newest_copy_past_file_is_a_cut_file(base, damage):
    INVALIDATING[damage](base, NEW_IDX)
    img = read_image(base)
    assert img.metas[NEW_IDX].problems(PS, img.file_len), "the edit should invalidate the copy"
    open_fails(base, mappedpages.FileTruncated)
    open_and_check(base, OLD_STATE, warn=True, salvage=True)
    # the salvage is durable: a plain open now finds the rolled-back state
    open_and_check(base, OLD_STATE, warn=None)


@pytest.mark.parametrize("damage", sorted(INVALIDATING))
def test_older_copy_invalid_keeps_newest(base, damage):
    INVALIDATING[damage](base, OLD_IDX)
    img = read_image(base)
    assert img.metas[OLD_IDX].problems(PS, img.file_len)
    open_and_check(base, NEW_STATE, warn=True)


@pytest.mark.parametrize("damage", sorted(INVALIDATING))
def test_both_copies_invalid(base, damage):
    INVALIDATING[damage](base, NEW_IDX)
    INVALIDATING[damage](base, OLD_IDX)
    exc = mappedpages.FileTruncated if damage in PAST_FILE else mappedpages.CorruptMetadata
    open_fails(base, exc)


def test_mixed_damage_both_invalid(base):
    INVALIDATING["crc_field"](base, NEW_IDX)
    INVALIDATING["free_count_plus_one"](base, OLD_IDX)
    open_fails(base, mappedpages.CorruptMetadata)


@pytest.mark.parametrize(
    "damage", ["crc_field", "total_huge", "free_count_plus_one", "bit_past_total"]
)
def test_recovery_then_commit(base, damage):
    """After falling back to the older copy, the next commit must not destroy
    it: the file ends valid, with both copies good and no warning on reopen."""
    INVALIDATING[damage](base, NEW_IDX)
    with pytest.warns(mappedpages.RecoveryWarning):
        p = Pager.open(base)
    try:
        assert state_of(p) == OLD_STATE
        assert p.alloc() == 13
        p.free(4)
        live = [3] + list(range(5, 14))
        assert list(p.allocated_pages()) == live
    finally:
        force_close(p)
    check_valid_v02(base, allocated=live)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(base) as q:
            assert list(q.allocated_pages()) == live


def test_recovery_open_close_repairs_selector(base):
    INVALIDATING["crc_field"](base, NEW_IDX)
    with pytest.warns(mappedpages.RecoveryWarning):
        Pager.open(base).close()
    img = read_image(base)
    assert img.selector == OLD_IDX


# --------------------------------------------------------------------------
# metadata copies: consistent edits (the copy stays valid)
# --------------------------------------------------------------------------


def test_generation_decides_not_selector(base):
    # make the older copy carry the higher generation
    edit_meta(base, OLD_IDX, generation=12)
    open_and_check(base, OLD_STATE, warn=None)
    assert read_image(base).selector == OLD_IDX


def test_generation_lowered_on_newest(base):
    edit_meta(base, NEW_IDX, generation=9)
    open_and_check(base, OLD_STATE, warn=None)


def test_generation_huge(base):
    edit_meta(base, OLD_IDX, generation=2**64 - 1)
    open_and_check(base, OLD_STATE, warn=None)


def test_generation_top_bit_unsigned(base):
    edit_meta(base, NEW_IDX, generation=2**63)
    edit_meta(base, OLD_IDX, generation=2**63 - 1)
    open_and_check(base, NEW_STATE, warn=None)


@pytest.mark.parametrize("commits", [1, 2, 3])
@pytest.mark.parametrize("gen", [2**64 - 1, 2**64 - 2])
def test_generation_near_max_then_commit(base, gen, commits):
    """A commit that returned must be what the next open sees. When the
    generation cannot go up any more, the commit must fail and change nothing,
    rather than wrap to 0 and be rolled back by the next open."""
    edit_meta(base, NEW_IDX, generation=gen)
    committed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(base)
    try:
        assert state_of(p) == NEW_STATE
        for _ in range(commits):
            try:
                committed.append(p.alloc())
            except mappedpages.MappedPageError:
                break
        live = sorted(NEW_LIVE + committed)
        assert list(p.allocated_pages()) == live
    finally:
        force_close(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Pager.open(base) as q:
            assert list(q.allocated_pages()) == live, f"committed {committed}, then lost"


def test_generation_tie_selector_decides_new(base):
    edit_meta(base, OLD_IDX, generation=11)
    open_and_check(base, NEW_STATE, warn=None)


def test_generation_tie_selector_decides_old(base):
    edit_meta(base, OLD_IDX, generation=11)
    patch(base, OFF_SELECTOR, bytes([OLD_IDX]))
    open_and_check(base, OLD_STATE, warn=None)


def test_generation_tie_bad_selector(base):
    edit_meta(base, OLD_IDX, generation=11)
    patch(base, OFF_SELECTOR, b"\x07")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(base)
    try:
        assert state_of(p) in (NEW_STATE, OLD_STATE)
    finally:
        force_close(p)
    check_valid_v02(base)


def test_bitmap_edit_with_free_count_is_read(base):
    """A consistent edit of the newest bitmap is taken as it is."""
    free = read_image(base).metas[NEW_IDX].free_count
    edit_meta(base, NEW_IDX, set_bits=[14], clear_bits=[12], free_count=free)
    img = read_image(base)
    assert img.metas[NEW_IDX].problems(PS, img.file_len) == []
    live = [3, 4, 6, 7, 8, 9, 10, 11, 14]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = Pager.open(base)
    try:
        assert list(p.allocated_pages()) == live
        assert p.free_page_count == free
        assert p.alloc() == 5
        assert p.alloc() == 12
        assert p.alloc() == 13
        assert p.alloc() == 15
    finally:
        force_close(p)


def test_shrunk_total_consistent(base):
    """A copy describing 8 pages (bits within range) is valid: its state is used."""
    edit_meta(base, NEW_IDX, total_pages=8, clear_bits=range(8, 13), free_count=1)
    img = read_image(base)
    assert img.metas[NEW_IDX].problems(PS, img.file_len) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = Pager.open(base)
    try:
        assert p.page_count == 8
        assert list(p.allocated_pages()) == [3, 4, 6, 7]
        assert p.free_page_count == 1
        assert p.alloc() == 5
        # growth beyond the recorded total must work although the file is longer
        assert p.alloc() == 8
        assert p.page_count == 16
    finally:
        force_close(p)
    check_valid_v02(base, allocated=[3, 4, 5, 6, 7, 8])


# --------------------------------------------------------------------------
# file length
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 20, PS, 3 * PS, 4 * PS - 1])
def test_truncated_below_four_pages(base, size):
    os.truncate(base, size)
    open_fails(base, mappedpages.CorruptSuperblock)


def test_truncated_inside_last_page(base):
    os.truncate(base, 16 * PS - 1)
    open_fails(base, mappedpages.FileTruncated)


def test_truncated_below_newest_total(tmp_path):
    path = tmp_path / "grow.mpp"
    with Pager.create(path, page_size=PS) as p:
        for i in range(3, 8):
            assert p.alloc() == i
            v = p.page(i)
            v[:] = pattern(i, PS)
            v.release()
        assert p.page_count == 8
        assert p.alloc() == 8  # grows to 16 in the last commit
        assert p.page_count == 16
    os.truncate(path, 8 * PS)
    img = read_image(path)
    newest = max(img.metas, key=lambda m: m.generation)
    assert newest.total_pages == 16
    open_fails(path, mappedpages.FileTruncated)
    open_and_check(path, (PS, 8, 0, [3, 4, 5, 6, 7]), warn=True, salvage=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(path)
    try:
        assert p.alloc() == 8
        assert p.page_count == 16
        v = p.page(15)
        assert bytes(v) == bytes(PS)
        v.release()
    finally:
        force_close(p)
    check_valid_v02(path, allocated=[3, 4, 5, 6, 7, 8])
    assert os.path.getsize(path) >= 16 * PS


def test_file_longer_than_total(base):
    with open(base, "ab") as fh:
        fh.write(b"\x5a" * (10 * PS + 17))
    open_and_check(base, NEW_STATE, warn=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(base)
    try:
        assert p.alloc_bulk(5) == [5, 13, 14, 15, 16]
        assert p.page_count == 32
        v = p.page(16)
        v[:] = pattern(16, PS)
        v.release()
    finally:
        force_close(p)
    check_valid_v02(base, allocated=list(range(3, 17)))
    with Pager.open(base) as p:
        v = p.page(16)
        assert bytes(v) == pattern(16, PS)
        v.release()


def test_huge_total_in_both_copies_no_crash(base):
    for i in (0, 1):
        edit_meta(base, i, total_pages=2**62, free_count=2**62 - 13)
    open_fails(base, mappedpages.CorruptMetadata)


def test_total_past_file_in_both_copies(base):
    for i in (0, 1):
        edit_meta(base, i, total_pages=64, free_count=read_image(base).metas[i].free_count + 48)
    open_fails(base, mappedpages.FileTruncated)


def test_file_of_pages_all_ff(tmp_path):
    path = tmp_path / "ff.mpp"
    path.write_bytes(b"\xff" * (8 * PS))
    open_fails(path, mappedpages.CorruptSuperblock)


def test_superblock_only_rest_zero(base):
    data = base.read_bytes()
    base.write_bytes(data[:PS] + bytes(15 * PS))
    open_fails(base, mappedpages.CorruptMetadata)
