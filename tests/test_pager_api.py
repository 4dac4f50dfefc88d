"""Unit tests of the Pager API: each operation, each error, the on-disk commit."""

from __future__ import annotations

import errno
import os
import struct
import warnings
from pathlib import Path

import pytest
from support.edit import read_at
from support.format_v02 import CRC_RESIDUE, MAGIC, check_valid_v02, crc32, pattern, read_image
from support.format_v03 import check_valid_v03, inspect_v03
from support.geometry import layout
from support.pagers import pager_state

import mappedpages
from mappedpages import Pager

PS = 4096


def next_pow2_above(k: int) -> int:
    n = 4
    while n <= k:
        n *= 2
    return n


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


def test_exception_hierarchy():
    m = mappedpages
    assert issubclass(m.MappedPageError, Exception)
    assert issubclass(m.InvalidPageSize, m.MappedPageError)
    assert issubclass(m.InvalidPageSize, ValueError)
    assert issubclass(m.CorruptFileError, m.MappedPageError)
    for name in (
        "CorruptSuperblock",
        "CorruptMetadata",
        "CorruptDirectoryIndex",
        "CorruptProtectedDirectory",
    ):
        cls = getattr(m, name)
        assert issubclass(cls, m.CorruptFileError), name
        assert issubclass(cls, m.MappedPageError), name
    assert issubclass(m.OutOfBounds, m.MappedPageError)
    assert issubclass(m.OutOfBounds, IndexError)
    for name in ("ReservedPage", "DoubleFree", "Unavailable", "FileFull"):
        assert issubclass(getattr(m, name), m.MappedPageError), name
    assert issubclass(m.RecoveryWarning, UserWarning)
    # distinct classes
    names = [
        "InvalidPageSize",
        "CorruptSuperblock",
        "CorruptMetadata",
        "CorruptDirectoryIndex",
        "CorruptProtectedDirectory",
        "OutOfBounds",
        "ReservedPage",
        "DoubleFree",
        "Unavailable",
        "FileFull",
    ]
    assert len({getattr(m, n) for n in names}) == len(names)


# --------------------------------------------------------------------------
# create / open
# --------------------------------------------------------------------------


def test_create_new_file_state(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        assert p.page_size == 4096
        assert p.page_count == 4
        assert p.free_page_count == 1
        assert list(p.allocated_pages()) == []
        assert Path(p.path).resolve() == path.resolve()
        assert not p.closed
    assert path.stat().st_size == 4 * 4096


def test_create_new_file_bytes(tmp_path):
    path = tmp_path / "a.mpp"
    Pager.create(path, page_size=1024).close()
    data = path.read_bytes()
    ps = 1024
    assert len(data) == 4 * ps
    assert data[0:4] == MAGIC
    assert data[4:8] == bytes([0, 2, 0, 0])
    assert int.from_bytes(data[8:12], "little") == 10
    assert data[12] == 0  # selector on copy A
    assert int.from_bytes(data[16:20], "little") == CRC_RESIDUE
    assert int.from_bytes(data[20:24], "little") == 0  # no directory blocks
    assert crc32(data[20 : ps - 4]) == int.from_bytes(data[ps - 4 : ps], "little")
    meta_a = data[ps : 2 * ps]
    meta_b = data[2 * ps : 3 * ps]
    assert meta_a == meta_b
    assert int.from_bytes(meta_a[0:8], "little") == 4
    assert int.from_bytes(meta_a[8:16], "little") == 0
    assert int.from_bytes(meta_a[16:24], "little") == 1
    assert meta_a[24] == 0b0000_0111
    assert meta_a[25 : ps - 4] == bytes(ps - 4 - 25)
    assert crc32(meta_a[: ps - 4]) == int.from_bytes(meta_a[ps - 4 :], "little")
    check_valid_v02(path, allocated=[])


@pytest.mark.parametrize("ps", [1024, 2048, 4096, 8192, 65536])
def test_create_valid_page_sizes(tmp_path, ps):
    path = tmp_path / "a.mpp"
    with Pager.create(path, page_size=ps) as p:
        assert p.page_size == ps
        assert p.page_count == 4
        assert p.free_page_count == 1
        assert p.alloc() == 3
    assert path.stat().st_size == 4 * ps
    with Pager.open(path) as p:
        assert p.page_size == ps
        assert list(p.allocated_pages()) == [3]
    with Pager.open(path, page_size=ps) as p:
        assert p.page_size == ps


@pytest.mark.parametrize(
    "ps", [0, 1, 512, 1000, 1023, 1025, 3000, 4095, 4097, 6144, -4096, 2**31, 2**32, 2**40]
)
def test_create_invalid_page_size(tmp_path, ps):
    path = tmp_path / "a.mpp"
    with pytest.raises(mappedpages.InvalidPageSize):
        Pager.create(path, page_size=ps)
    with pytest.raises(ValueError):
        Pager.create(path, page_size=ps)
    assert not path.exists(), "a failed create must not leave a file behind"


@pytest.mark.parametrize("bad", ["4096", 4096.0, b"4096"])
def test_create_page_size_wrong_type(tmp_path, bad):
    path = tmp_path / "a.mpp"
    with pytest.raises(TypeError):
        Pager.create(path, page_size=bad)
    assert not path.exists()


def test_create_existing_file(tmp_path):
    path = tmp_path / "a.mpp"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        Pager.create(path)
    assert path.read_bytes() == b"precious"


def test_create_existing_pager_file(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        p.alloc()
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        Pager.create(path)
    assert path.read_bytes() == before


def test_create_in_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        Pager.create(tmp_path / "no" / "such" / "dir.mpp")
    assert ei.value.errno == errno.ENOENT


def test_open_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        Pager.open(tmp_path / "missing.mpp")
    assert ei.value.errno == errno.ENOENT
    assert not (tmp_path / "missing.mpp").exists()


def test_open_directory_is_oserror(tmp_path):
    with pytest.raises(OSError) as ei:
        Pager.open(tmp_path)
    assert ei.value.errno in (errno.EISDIR, errno.EINVAL, errno.EACCES, errno.EPERM)


def test_create_accepts_str_and_pathlike(tmp_path):
    p1 = Pager.create(str(tmp_path / "s.mpp"))
    p1.close()
    p2 = Pager.create(tmp_path / "p.mpp")
    p2.close()
    Pager.open(str(tmp_path / "p.mpp")).close()
    Pager.open(tmp_path / "s.mpp").close()


def test_open_page_size_mismatch(tmp_path):
    path = tmp_path / "a.mpp"
    Pager.create(path, page_size=4096).close()
    before = path.read_bytes()
    for ps in (1024, 2048, 8192, 65536):
        with pytest.raises(mappedpages.InvalidPageSize):
            Pager.open(path, page_size=ps)
    with pytest.raises(ValueError):
        Pager.open(path, page_size=1024)
    assert path.read_bytes() == before


@pytest.mark.parametrize("ps", [0, 1000, 4095, 512])
def test_open_invalid_page_size_arg(tmp_path, ps):
    path = tmp_path / "a.mpp"
    Pager.create(path).close()
    with pytest.raises(mappedpages.InvalidPageSize):
        Pager.open(path, page_size=ps)


def test_open_page_size_none_and_explicit(tmp_path):
    path = tmp_path / "a.mpp"
    Pager.create(path, page_size=2048).close()
    with Pager.open(path, page_size=None) as p:
        assert p.page_size == 2048
    with Pager.open(path, page_size=2048) as p:
        assert p.page_size == 2048


@pytest.mark.parametrize("size", [0, 1, 19, 20, 100, 4095, 4096, 3 * 4096, 4 * 4096 - 1])
def test_open_short_file_is_corrupt_superblock(tmp_path, size):
    path = tmp_path / "a.mpp"
    Pager.create(path).close()
    os.truncate(path, size)
    with pytest.raises(mappedpages.CorruptSuperblock):
        Pager.open(path)


def test_open_garbage_file(tmp_path):
    path = tmp_path / "a.mpp"
    path.write_bytes(bytes(range(256)) * 256)
    with pytest.raises(mappedpages.CorruptSuperblock):
        Pager.open(path)


def test_open_zero_file(tmp_path):
    path = tmp_path / "a.mpp"
    path.write_bytes(bytes(4 * 4096))
    with pytest.raises(mappedpages.CorruptSuperblock):
        Pager.open(path)


def test_reopen_keeps_state(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        ids = [p.alloc() for _ in range(10)]
        p.free(ids[2])
        p.free(ids[7])
        state = pager_state(p)
    with Pager.open(path) as p:
        assert pager_state(p) == state
    assert state[3] == [3, 4, 6, 7, 8, 9, 11, 12]
    assert state[1] == 16
    assert state[2] == 16 - 3 - 8


def test_clean_open_emits_no_warning(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        p.alloc_bulk(5)
        p.free(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pager.open(path).close()


# --------------------------------------------------------------------------
# close / context manager / closed pager
# --------------------------------------------------------------------------


def test_context_manager_closes(tmp_path):
    with Pager.create(tmp_path / "a.mpp") as p:
        assert not p.closed
        inner = p
    assert inner.closed


def test_context_manager_returns_pager(tmp_path):
    p = Pager.create(tmp_path / "a.mpp")
    with p as q:
        assert q is p
    assert p.closed


def test_context_manager_closes_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with Pager.create(tmp_path / "a.mpp") as p:
            raise RuntimeError("boom")
    assert p.closed


def test_close_idempotent(tmp_path):
    p = Pager.create(tmp_path / "a.mpp")
    p.alloc()
    assert p.closed is False
    assert p.close() is None
    assert p.closed is True
    p.close()
    p.close()
    assert p.closed is True
    with Pager.open(tmp_path / "a.mpp") as q:
        assert list(q.allocated_pages()) == [3]


CLOSED_CALLS = {
    "alloc": lambda p: p.alloc(),
    "alloc_zero": lambda p: p.alloc(zero=True),
    "free": lambda p: p.free(3),
    "alloc_bulk": lambda p: p.alloc_bulk(2),
    "alloc_bulk_0": lambda p: p.alloc_bulk(0),
    "free_bulk": lambda p: p.free_bulk([3]),
    "free_bulk_empty": lambda p: p.free_bulk([]),
    "page": lambda p: p.page(3),
    "page_reserved": lambda p: p.page(0),
    "page_oob": lambda p: p.page(10**6),
    "sync": lambda p: p.sync(),
    "allocated_pages": lambda p: list(p.allocated_pages()),
    "page_count": lambda p: p.page_count,
    "free_page_count": lambda p: p.free_page_count,
}


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_pager_raises_value_error(tmp_path, call):
    p = Pager.create(tmp_path / "a.mpp")
    p.alloc()
    p.close()
    with pytest.raises(ValueError):
        CLOSED_CALLS[call](p)
    assert p.closed


def test_page_size_after_close(tmp_path):
    """page_size is a constant of the file: after close it either raises
    ValueError like every other call, or still tells the page size."""
    p = Pager.create(tmp_path / "a.mpp", page_size=2048)
    p.close()
    try:
        got = p.page_size
    except ValueError:
        return
    assert got == 2048


def test_closed_error_is_not_library_error(tmp_path):
    """A closed pager raises plain ValueError semantics, not e.g. InvalidPageSize confusion."""
    p = Pager.create(tmp_path / "a.mpp")
    p.close()
    with pytest.raises(ValueError) as ei:
        p.alloc()
    assert not isinstance(ei.value, mappedpages.InvalidPageSize)


def test_allocated_pages_iterator_after_close(tmp_path):
    p = Pager.create(tmp_path / "a.mpp")
    p.alloc_bulk(3)
    it = p.allocated_pages()
    p.close()
    # iterating an iterator made before close must not read freed memory:
    # either raise ValueError or give the ids that were allocated
    try:
        got = list(it)
    except ValueError:
        return
    assert got == [3, 4, 5]


# --------------------------------------------------------------------------
# alloc
# --------------------------------------------------------------------------


def test_alloc_first_ids_and_growth(new_pager):
    p = new_pager
    a = p.alloc()
    assert a == 3 and type(a) is int
    assert p.page_count == 4
    assert p.free_page_count == 0
    assert p.alloc() == 4
    assert p.page_count == 8
    assert p.free_page_count == 3
    for expect in range(5, 8):
        assert p.alloc() == expect
    assert p.free_page_count == 0
    assert p.alloc() == 8
    assert p.page_count == 16


def test_fifty_allocs(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        ids = [p.alloc() for _ in range(50)]
        assert ids == list(range(3, 53))
        assert p.page_count == 64
        assert p.free_page_count == 64 - 53
        assert list(p.allocated_pages()) == ids
    assert path.stat().st_size == 64 * 4096
    check_valid_v02(path, allocated=list(range(3, 53)))


def test_page_count_doubles(small_pager):
    p = small_pager
    for k in range(3, 300):
        assert p.alloc() == k
        assert p.page_count == next_pow2_above(k)
        assert p.free_page_count == p.page_count - k - 1


def test_alloc_lowest_free(new_pager):
    p = new_pager
    ids = [p.alloc() for _ in range(10)]  # 3..12, 16 pages
    for i in (9, 5, 7):
        p.free(i)
    assert p.alloc() == 5
    assert p.alloc() == 7
    assert p.alloc() == 9
    assert p.alloc() == 13
    assert list(p.allocated_pages()) == list(range(3, 14))
    assert ids == list(range(3, 13))


def test_alloc_after_reopen_reuses_lowest(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        p.alloc_bulk(20)
        p.free_bulk([10, 4, 15])
    with Pager.open(path) as p:
        assert p.alloc() == 4
        assert p.alloc() == 10
        assert p.alloc() == 15
        assert p.alloc() == 23


def test_alloc_reused_page_keeps_bytes(new_pager):
    p = new_pager
    a = p.alloc()
    v = p.page(a)
    v[:] = pattern(a, PS)
    v.release()
    p.free(a)
    assert p.alloc() == a
    v = p.page(a)
    assert bytes(v) == pattern(a, PS)
    v.release()


def test_alloc_zero(new_pager):
    p = new_pager
    a = p.alloc()
    v = p.page(a)
    v[:] = b"\xff" * PS
    v.release()
    p.free(a)
    assert p.alloc(zero=True) == a
    v = p.page(a)
    assert bytes(v) == bytes(PS)
    v.release()


def test_alloc_zero_false_explicit(new_pager):
    p = new_pager
    a = p.alloc()
    v = p.page(a)
    v[:4] = b"abcd"
    v.release()
    p.free(a)
    assert p.alloc(zero=False) == a
    v = p.page(a)
    assert bytes(v[:4]) == b"abcd"
    v.release()


def test_new_pages_read_zero(small_pager):
    p = small_pager
    ids = p.alloc_bulk(40)
    for i in ids:
        v = p.page(i)
        assert bytes(v) == bytes(1024), i
        v.release()


# --------------------------------------------------------------------------
# free
# --------------------------------------------------------------------------


def test_free_updates_counts(new_pager):
    p = new_pager
    p.alloc_bulk(6)  # 3..8, 16 pages
    assert p.free_page_count == 16 - 9
    assert p.free(5) is None
    assert p.free_page_count == 16 - 8
    assert list(p.allocated_pages()) == [3, 4, 6, 7, 8]
    assert p.page_count == 16


@pytest.mark.parametrize("pid", [0, 1, 2])
def test_free_reserved(new_pager, pid):
    p = new_pager
    p.alloc()
    img_before = read_image(p.path)
    with pytest.raises(mappedpages.ReservedPage):
        p.free(pid)
    assert pager_state(p) == (4096, 4, 0, [3])
    assert read_image(p.path).newest().generation == img_before.newest().generation


@pytest.mark.parametrize("pid", ["oob", -1, -2, -(2**63), 2**63, 2**64, 2**64 + 3, 2**70])
def test_free_out_of_bounds(new_pager, pid):
    p = new_pager
    p.alloc()
    if pid == "oob":
        pid = p.page_count
    with pytest.raises(mappedpages.OutOfBounds):
        p.free(pid)
    with pytest.raises(IndexError):
        p.free(pid)
    assert pager_state(p) == (4096, 4, 0, [3])


def test_free_never_allocated_is_double_free(new_pager):
    p = new_pager
    with pytest.raises(mappedpages.DoubleFree):
        p.free(3)
    assert pager_state(p) == (4096, 4, 1, [])


def test_double_free(new_pager):
    p = new_pager
    ids = p.alloc_bulk(3)
    p.free(ids[1])
    gen = read_image(p.path).newest().generation
    with pytest.raises(mappedpages.DoubleFree):
        p.free(ids[1])
    assert list(p.allocated_pages()) == [ids[0], ids[2]]
    assert read_image(p.path).newest().generation == gen


@pytest.mark.parametrize("bad", ["3", 3.0, None, b"3", [3], 3 + 0j])
def test_free_wrong_type(new_pager, bad):
    p = new_pager
    p.alloc()
    with pytest.raises(TypeError):
        p.free(bad)
    assert pager_state(p) == (4096, 4, 0, [3])


# --------------------------------------------------------------------------
# alloc_bulk
# --------------------------------------------------------------------------


def test_alloc_bulk_zero(new_pager):
    p = new_pager
    assert p.alloc_bulk(0) == []
    assert pager_state(p) == (4096, 4, 1, [])


def test_alloc_bulk_basic(new_pager):
    p = new_pager
    ids = p.alloc_bulk(20)
    assert ids == list(range(3, 23))
    assert all(type(i) is int for i in ids)
    assert p.page_count == 32
    assert p.free_page_count == 32 - 23
    assert list(p.allocated_pages()) == ids


def test_alloc_bulk_fills_holes_first(new_pager):
    p = new_pager
    p.alloc_bulk(10)  # 3..12, 16 pages
    p.free_bulk([11, 5, 7])
    assert p.alloc_bulk(5) == [5, 7, 11, 13, 14]


def test_alloc_bulk_one_commit(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        g0 = read_image(path).newest().generation
        p.alloc_bulk(37)  # grows several times
        img = read_image(path)
        assert img.newest().generation == g0 + 1
        assert img.selector == 1
        p.free_bulk(range(3, 20))
        img = read_image(path)
        assert img.newest().generation == g0 + 2
        assert img.selector == 0
    check_valid_v02(path, allocated=list(range(20, 40)))


def test_alloc_bulk_zero_fill(new_pager):
    p = new_pager
    ids = p.alloc_bulk(5)
    for i in ids:
        v = p.page(i)
        v[:] = b"\xab" * PS
        v.release()
    p.free_bulk(ids)
    again = p.alloc_bulk(5, zero=True)
    assert again == ids
    for i in again:
        v = p.page(i)
        assert bytes(v) == bytes(PS)
        v.release()


def test_alloc_bulk_no_zero_keeps_bytes(new_pager):
    p = new_pager
    ids = p.alloc_bulk(3)
    for i in ids:
        v = p.page(i)
        v[:] = pattern(i, PS)
        v.release()
    p.free_bulk(ids)
    assert p.alloc_bulk(3) == ids
    for i in ids:
        v = p.page(i)
        assert bytes(v) == pattern(i, PS)
        v.release()


@pytest.mark.parametrize("bad", ["2", 2.0, None, b"2", [2]])
def test_alloc_bulk_wrong_type(new_pager, bad):
    p = new_pager
    with pytest.raises(TypeError):
        p.alloc_bulk(bad)
    assert pager_state(p) == (4096, 4, 1, [])


@pytest.mark.parametrize("n", [-1, -(2**63), -(2**70)])
def test_alloc_bulk_negative(new_pager, n):
    p = new_pager
    with pytest.raises((ValueError, OverflowError, mappedpages.MappedPageError)):
        p.alloc_bulk(n)
    assert pager_state(p) == (4096, 4, 1, [])


def committed_meta(path, page_size: int) -> tuple:
    """(total_pages, generation, free_count) of the newest metadata copy with a good CRC.

    Pages 1 and 2 have the same header in both layouts; conftest's reader
    refuses a 0.3 file's metadata (its bitmap does not describe every page).
    """
    copies = []
    for i in (1, 2):
        page = read_at(path, i * page_size, page_size)
        if crc32(page[: page_size - 4]) == struct.unpack_from("<I", page, page_size - 4)[0]:
            copies.append(struct.unpack_from("<QQQ", page, 0))
    assert copies, "no metadata copy with a good CRC"
    return max(copies, key=lambda c: c[1])


SMALL_CAP = layout(1024).v02_max_pages  # the v0.2 cap at 1 KiB, and the size of a chunk past it


@pytest.mark.parametrize("n", [10**6, 2**40, 2**63, 2**64, 2**70])
def test_alloc_bulk_too_many(small_pager, n):
    """Past the v0.2 cap the file grows on (1,000,000 pages of 1 KiB fit); past
    max_pages, the reserved address range, nothing changes."""
    p = small_pager
    p.alloc()
    gen = read_image(p.path).newest().generation
    assert 10**6 < p.max_pages < 2**40
    if n < p.max_pages:
        ids = p.alloc_bulk(n)
        # every page from 4 up but the four layout pages at the start of each chunk
        last = ids[-1]
        expected = [i for i in range(4, last + 1) if i < SMALL_CAP or i % SMALL_CAP >= 4]
        assert len(ids) == n
        assert ids == expected
        chunks = 128  # doubling from the cap: 7968 * 2**7 pages hold 4 + 10**6 + layout
        assert p.page_count == chunks * SMALL_CAP
        assert p.free_page_count == p.page_count - 3 - 1 - n - 4 * (chunks - 1)
        assert p.format_version == "0.3"
        # In the extended layout bytes 16-23 of the metadata copy hold the
        # commit's seal, not the free count; the checker below verifies both.
        assert committed_meta(p.path, 1024)[:2] == (p.page_count, gen + 1)
        assert os.path.getsize(p.path) == p.page_count * 1024
        path = p.path
        free = p.free_page_count
        p.close()
        check_valid_v03(path, allocated=[3] + ids)
        assert inspect_v03(path, want_sets=False).free_count == free
        os.unlink(path)  # 1 GB
        return
    with pytest.raises((mappedpages.FileFull, OverflowError)):
        p.alloc_bulk(n)
    assert pager_state(p) == (1024, 4, 0, [3])
    assert p.format_version == "0.2"
    assert read_image(p.path).newest().generation == gen
    assert os.path.getsize(p.path) == 4 * 1024


def test_alloc_bulk_file_full_is_all_or_nothing(small_pager):
    """FileFull only past max_pages: nothing is allocated, grown or committed."""
    p = small_pager
    path = p.path
    assert p.max_pages > SMALL_CAP

    def unchanged(state, meta, size):
        assert pager_state(p) == state
        assert committed_meta(path, 1024) == meta
        assert os.path.getsize(path) == size

    # a v0.2 file
    state, meta, size = pager_state(p), committed_meta(path, 1024), os.path.getsize(path)
    assert state == (1024, 4, 1, [])
    for n in (p.max_pages + 1, p.max_pages):  # max_pages counts pages 0-2 too
        with pytest.raises(mappedpages.FileFull):
            p.alloc_bulk(n)
        unchanged(state, meta, size)
    assert p.format_version == "0.2"
    assert read_image(path).newest().generation == meta[1]
    assert p.alloc() == 3

    # an extended (0.3) file with free pages in both chunks
    ids = p.alloc_bulk(SMALL_CAP)
    assert p.format_version == "0.3"
    p.free_bulk([10, ids[-1]])
    state, meta, size = pager_state(p), committed_meta(path, 1024), os.path.getsize(path)
    with pytest.raises(mappedpages.FileFull):
        p.alloc_bulk(p.max_pages + 1)
    unchanged(state, meta, size)
    assert p.alloc_bulk(2) == [10, ids[-1]]
    check_valid_v03(path, allocated=[3] + ids)


# --------------------------------------------------------------------------
# free_bulk
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: list(ids),
        lambda ids: tuple(ids),
        lambda ids: set(ids),
        lambda ids: frozenset(ids),
        lambda ids: (i for i in ids),
        lambda ids: iter(list(reversed(ids))),
        lambda ids: dict.fromkeys(ids),
    ],
    ids=["list", "tuple", "set", "frozenset", "generator", "iterator", "dict"],
)
def test_free_bulk_iterables(new_pager, make):
    p = new_pager
    p.alloc_bulk(10)  # 3..12
    assert p.free_bulk(make([4, 9, 12])) is None
    assert list(p.allocated_pages()) == [3, 5, 6, 7, 8, 10, 11]
    assert p.free_page_count == 16 - 3 - 7


def test_free_bulk_range(new_pager):
    p = new_pager
    p.alloc_bulk(10)
    p.free_bulk(range(5, 10))
    assert list(p.allocated_pages()) == [3, 4, 10, 11, 12]


def test_free_bulk_empty(new_pager):
    p = new_pager
    p.alloc_bulk(2)
    p.free_bulk([])
    p.free_bulk(iter(()))
    assert list(p.allocated_pages()) == [3, 4]


def _bulk_error_case(p, bad_list, exc):
    p.alloc_bulk(10)  # 3..12, 16 pages
    p.free(8)
    state = pager_state(p)
    gen = read_image(p.path).newest().generation
    with pytest.raises(exc):
        p.free_bulk(bad_list)
    assert pager_state(p) == state
    assert read_image(p.path).newest().generation == gen


@pytest.mark.parametrize(
    "bad_list",
    [[3, 4, 4], [4, 3, 4], [5, 5], [8], [3, 8], [8, 3], [3, 4, 5, 6, 7, 9, 10, 11, 12, 12]],
)
def test_free_bulk_double_free(new_pager, bad_list):
    _bulk_error_case(new_pager, bad_list, mappedpages.DoubleFree)


@pytest.mark.parametrize("bad_list", [[3, 0], [1], [4, 5, 2, 6]])
def test_free_bulk_reserved(new_pager, bad_list):
    _bulk_error_case(new_pager, bad_list, mappedpages.ReservedPage)


@pytest.mark.parametrize("bad_list", [[3, 16], [3, -1], [2**64, 3], [4, 2**70], [5, 100]])
def test_free_bulk_out_of_bounds(new_pager, bad_list):
    _bulk_error_case(new_pager, bad_list, mappedpages.OutOfBounds)


@pytest.mark.parametrize("bad_list", [[3, "4"], [3, 4.0], [None], "34", [3, None], None, 5])
def test_free_bulk_wrong_type(new_pager, bad_list):
    _bulk_error_case(new_pager, bad_list, TypeError)


def test_free_bulk_iterable_raising(new_pager):
    p = new_pager
    p.alloc_bulk(5)

    def gen():
        yield 3
        yield 4
        raise KeyError("from the iterable")

    with pytest.raises(KeyError):
        p.free_bulk(gen())
    assert list(p.allocated_pages()) == [3, 4, 5, 6, 7]


def test_free_bulk_one_commit_and_reopen(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        p.alloc_bulk(30)
        gen = read_image(path).newest().generation
        p.free_bulk([3, 10, 20, 30, 32])
        assert read_image(path).newest().generation == gen + 1
    expected = [i for i in range(3, 33) if i not in (3, 10, 20, 30, 32)]
    with Pager.open(path) as p:
        assert list(p.allocated_pages()) == expected
    check_valid_v02(path, allocated=expected)


# --------------------------------------------------------------------------
# page()
# --------------------------------------------------------------------------


def test_page_view_properties(new_pager):
    p = new_pager
    a = p.alloc()
    v = p.page(a)
    assert isinstance(v, memoryview)
    assert len(v) == PS
    assert v.nbytes == PS
    assert v.format == "B"
    assert v.itemsize == 1
    assert v.ndim == 1
    assert v.readonly is False
    assert v.c_contiguous
    v.release()


def test_page_view_zero_copy(new_pager):
    p = new_pager
    a, b = p.alloc_bulk(2)
    v1 = p.page(a)
    v2 = p.page(a)
    v1[100:104] = b"wxyz"
    assert bytes(v2[100:104]) == b"wxyz"
    v2[0] = 7
    assert v1[0] == 7
    w = p.page(b)
    assert bytes(w[100:104]) == bytes(4)
    for x in (v1, v2, w):
        x.release()


def test_pages_do_not_overlap(small_pager):
    p = small_pager
    ids = p.alloc_bulk(12)
    views = [p.page(i) for i in ids]
    for i, v in zip(ids, views):
        v[:] = bytes([i]) * 1024
    for i, v in zip(ids, views):
        assert bytes(v) == bytes([i]) * 1024
    for v in views:
        v.release()


def test_page_writes_land_at_file_offset(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(9)
        for i in ids:
            v = p.page(i)
            v[:] = pattern(i, 1024)
            v.release()
        p.sync()
        for i in ids:
            assert read_at(path, i * 1024, 1024) == pattern(i, 1024)
    for i in ids:
        assert read_at(path, i * 1024, 1024) == pattern(i, 1024)
    with Pager.open(path) as p:
        for i in ids:
            v = p.page(i)
            assert bytes(v) == pattern(i, 1024)
            v.release()


def test_page_writes_do_not_touch_metadata(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(4)
        for i in ids:
            v = p.page(i)
            v[:] = b"\xff" * 1024
            v.release()
    check_valid_v02(path, allocated=ids)


def test_page_of_free_page_allowed(new_pager):
    p = new_pager
    v = p.page(3)  # free in a new file
    assert len(v) == PS
    v[0] = 1
    assert v[0] == 1
    v.release()
    assert list(p.allocated_pages()) == []


@pytest.mark.parametrize("pid", [0, 1, 2])
def test_page_reserved(new_pager, pid):
    with pytest.raises(mappedpages.ReservedPage):
        new_pager.page(pid)


@pytest.mark.parametrize("pid", ["count", -1, -4, -(2**63), 2**63, 2**64, 2**64 + 3, 2**70, 10**30])
def test_page_out_of_bounds(new_pager, pid):
    p = new_pager
    if pid == "count":
        pid = p.page_count
    with pytest.raises(mappedpages.OutOfBounds):
        p.page(pid)
    with pytest.raises(IndexError):
        p.page(pid)


def test_page_bounds_follow_growth(new_pager):
    p = new_pager
    with pytest.raises(mappedpages.OutOfBounds):
        p.page(4)
    p.alloc_bulk(2)
    v = p.page(7)  # page_count is 8 now
    v.release()
    with pytest.raises(mappedpages.OutOfBounds):
        p.page(8)


@pytest.mark.parametrize("bad", ["3", 3.0, None, b"3", [3]])
def test_page_wrong_type(new_pager, bad):
    p = new_pager
    p.alloc()
    with pytest.raises(TypeError):
        p.page(bad)


# --------------------------------------------------------------------------
# allocated_pages(), properties
# --------------------------------------------------------------------------


def test_allocated_pages_is_iterator(new_pager):
    p = new_pager
    p.alloc_bulk(3)
    it = p.allocated_pages()
    assert iter(it) is it
    assert next(it) == 3
    assert list(it) == [4, 5]


def test_allocated_pages_ascending_and_excludes_reserved(new_pager):
    p = new_pager
    p.alloc_bulk(40)
    p.free_bulk([40, 3, 17, 29])
    got = list(p.allocated_pages())
    assert got == sorted(got)
    assert got == [i for i in range(3, 43) if i not in (3, 17, 29, 40)]
    assert all(type(i) is int for i in got)


def test_properties_are_ints(new_pager):
    p = new_pager
    p.alloc_bulk(5)
    assert type(p.page_size) is int
    assert type(p.page_count) is int
    assert type(p.free_page_count) is int
    assert p.page_count == 8
    assert p.free_page_count == 0


def test_free_page_count_identity(new_pager):
    p = new_pager
    p.alloc_bulk(70)
    p.free_bulk(range(10, 50, 3))
    assert p.free_page_count == p.page_count - 3 - len(list(p.allocated_pages()))


# --------------------------------------------------------------------------
# Commit protocol on disk
# --------------------------------------------------------------------------


def test_commit_flips_selector_and_bumps_generation(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path, page_size=1024) as p:
        img = read_image(path)
        assert img.selector == 0
        assert [m.generation for m in img.metas] == [0, 0]
        live = []
        ops = ["alloc"] * 6 + ["free"] * 3 + ["alloc"] * 2
        for step, op in enumerate(ops, start=1):
            if op == "alloc":
                live.append(p.alloc())
            else:
                p.free(live.pop(0))
            img = read_image(path)
            assert img.selector == step % 2, step
            sel = img.selected()
            other = img.metas[1 - img.selector]
            assert sel.generation == step
            assert other.generation == step - 1
            assert sel.crc_ok and other.crc_ok
            assert sorted(sel.bits - {0, 1, 2}) == sorted(live)
            assert sel.total_pages == p.page_count
            assert sel.free_count == p.free_page_count
            assert img.meta_checksum == CRC_RESIDUE
    check_valid_v02(path, allocated=sorted(live))


def test_failed_operations_do_not_commit(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        p.alloc_bulk(5)
        before = path.read_bytes()
        for call, exc in [
            (lambda: p.free(0), mappedpages.ReservedPage),
            (lambda: p.free(100), mappedpages.OutOfBounds),
            (lambda: p.free(-1), mappedpages.OutOfBounds),
            (lambda: p.free_bulk([3, 3]), mappedpages.DoubleFree),
            (lambda: p.free_bulk([3, 1]), mappedpages.ReservedPage),
            (lambda: p.free("3"), TypeError),
        ]:
            with pytest.raises(exc):
                call()
        assert path.read_bytes() == before


def test_sync(tmp_path):
    path = tmp_path / "a.mpp"
    with Pager.create(path) as p:
        a = p.alloc()
        v = p.page(a)
        v[:] = pattern(a, PS)
        assert p.sync() is None
        assert read_at(path, a * PS, PS) == pattern(a, PS)
        v.release()
        p.sync()


def test_sync_with_nothing_to_do(new_pager):
    new_pager.sync()
    new_pager.sync()
    assert new_pager.page_count == 4


def test_path_attribute(tmp_path):
    path = tmp_path / "x.mpp"
    with Pager.create(str(path)) as p:
        assert os.path.abspath(os.fspath(p.path)) == os.path.abspath(str(path))
    with Pager.open(path) as p:
        assert os.path.abspath(os.fspath(p.path)) == os.path.abspath(str(path))


def test_two_files_are_independent(tmp_path):
    with (
        Pager.create(tmp_path / "a.mpp") as a,
        Pager.create(tmp_path / "b.mpp", page_size=1024) as b,
    ):
        a.alloc_bulk(10)
        b.alloc()
        va = a.page(3)
        vb = b.page(3)
        va[0] = 1
        vb[0] = 2
        assert va[0] == 1 and vb[0] == 2
        va.release()
        vb.release()
        assert a.page_count == 16 and b.page_count == 4
