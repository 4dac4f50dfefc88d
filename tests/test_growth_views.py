"""Growth of the file, the v0.2 cap and the move past it, and the lifetime of page views."""

from __future__ import annotations

import gc
import os
import struct

import pytest
from support.edit import read_at
from support.format_v02 import check_valid_v02, crc32, max_pages, pattern
from support.format_v03 import check_valid_v03
from support.pagers import force_close

import mappedpages
from mappedpages import Pager

PS = 1024
CAP = max_pages(PS)  # 7968


def expected_count(highest_id: int) -> int:
    n = 4
    while n <= highest_id:
        n = min(n * 2, CAP)
    return n


def write_pattern(p, pid, salt=0):
    v = p.page(pid)
    v[:] = pattern(pid, p.page_size, salt)
    v.release()


def has_pattern(p, pid, salt=0):
    v = p.page(pid)
    ok = bytes(v) == pattern(pid, p.page_size, salt)
    v.release()
    return ok


# --------------------------------------------------------------------------
# growth
# --------------------------------------------------------------------------


def test_growth_many_doublings_data_intact(tmp_path):
    path = tmp_path / "g.mpp"
    counts = []
    with Pager.create(path, page_size=PS) as p:
        for k in range(3, 1100):  # 4 -> 8 -> ... -> 2048: nine doublings
            assert p.alloc() == k
            write_pattern(p, k)
            assert p.page_count == expected_count(k)
            if not counts or counts[-1] != p.page_count:
                counts.append(p.page_count)
        assert counts == [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        bad = [k for k in range(3, 1100) if not has_pattern(p, k)]
        assert bad == []
    assert os.path.getsize(path) == 2048 * PS
    check_valid_v02(path, allocated=list(range(3, 1100)))
    with Pager.open(path) as p:
        assert p.page_count == 2048
        assert p.free_page_count == 2048 - 1100
        bad = [k for k in range(3, 1100) if not has_pattern(p, k)]
        assert bad == []
        # pages past the last allocation read as zero
        v = p.page(2047)
        assert bytes(v) == bytes(PS)
        v.release()


def test_growth_by_bulk_data_intact(tmp_path):
    path = tmp_path / "g.mpp"
    with Pager.create(path, page_size=PS) as p:
        first = p.alloc_bulk(10)
        for i in first:
            write_pattern(p, i)
        second = p.alloc_bulk(500)  # several doublings in one commit
        assert second == list(range(13, 513))
        assert p.page_count == 1024
        for i in second:
            write_pattern(p, i, salt=1)
        assert all(has_pattern(p, i) for i in first)
    with Pager.open(path) as p:
        assert all(has_pattern(p, i) for i in first)
        assert all(has_pattern(p, i, salt=1) for i in second)


def test_growth_with_frees_and_reuse(tmp_path):
    path = tmp_path / "g.mpp"
    live = {}
    with Pager.create(path, page_size=PS) as p:
        for round_ in range(6):
            ids = p.alloc_bulk(40 + 30 * round_)
            for i in ids:
                write_pattern(p, i, salt=round_)
                live[i] = round_
            for i in sorted(live)[::3]:
                p.free(i)
                del live[i]
        assert list(p.allocated_pages()) == sorted(live)
    with Pager.open(path) as p:
        assert list(p.allocated_pages()) == sorted(live)
        for i, salt in live.items():
            assert has_pattern(p, i, salt), i
    check_valid_v02(path, allocated=sorted(live))


# --------------------------------------------------------------------------
# views across growth
# --------------------------------------------------------------------------


def test_view_survives_growth(new_pager):
    p = new_pager
    a = p.alloc()  # page 3, file of 4 pages
    old = p.page(a)
    old[:] = pattern(a, 4096)
    p.alloc_bulk(300)  # 4 -> 512 pages
    assert p.page_count == 512
    assert bytes(old) == pattern(a, 4096)
    old[:8] = b"OLDVIEW!"
    new = p.page(a)
    assert bytes(new[:8]) == b"OLDVIEW!"
    assert bytes(new[8:]) == pattern(a, 4096)[8:]
    new[-4:] = b"NEW!"
    assert bytes(old[-4:]) == b"NEW!"
    old.release()
    new.release()


def test_many_views_survive_several_doublings(tmp_path):
    path = tmp_path / "v.mpp"
    with Pager.create(path, page_size=PS) as p:
        views = {}
        for k in range(3, 600):
            assert p.alloc() == k
            v = p.page(k)
            v[:] = pattern(k, PS)
            views[k] = v
        # every old view still shows its own page, after 8 doublings
        for k, v in views.items():
            assert bytes(v) == pattern(k, PS), k
        # write through the old views, read through new ones
        for k, v in views.items():
            v[0:4] = k.to_bytes(4, "little")
        for k in views:
            w = p.page(k)
            assert bytes(w[0:4]) == k.to_bytes(4, "little")
            assert bytes(w[4:]) == pattern(k, PS)[4:]
            w.release()
        for v in views.values():
            v.release()
        views.clear()
        p.sync()
        for k in (3, 4, 100, 599):
            assert read_at(path, k * PS, 4) == k.to_bytes(4, "little")


def test_view_of_free_page_survives_growth(new_pager):
    p = new_pager
    v = p.page(3)  # free page
    v[0] = 42
    p.alloc_bulk(20)
    assert v[0] == 42
    w = p.page(3)
    assert w[0] == 42
    v.release()
    w.release()


# --------------------------------------------------------------------------
# the cap of the layout
# --------------------------------------------------------------------------


def committed_meta(path) -> tuple:
    """(total_pages, generation, free_count) of the newest metadata copy with a good CRC.

    Read straight from pages 1 and 2, whose header is the same in both layouts
    (conftest's reader refuses a v0.2 bitmap longer than a page, i.e. 0.3 files).
    """
    copies = []
    for i in (1, 2):
        page = read_at(path, i * PS, PS)
        if crc32(page[: PS - 4]) == struct.unpack_from("<I", page, PS - 4)[0]:
            copies.append(struct.unpack_from("<QQQ", page, 0))
    assert copies, "no metadata copy with a good CRC"
    return max(copies, key=lambda c: c[1])


def layout_pages(total: int) -> list:
    """The layout pages of every chunk past chunk 0 that starts below `total`."""
    return [c * CAP + j for c in range(1, (total - 1) // CAP + 1) for j in range(4)]


def assert_v02_on_disk(path) -> None:
    assert read_at(path, 5, 1) == b"\x02"
    assert read_at(path, 13, 3) != b"EXT"


def assert_extended_on_disk(path, total: int) -> None:
    assert read_at(path, 5, 1) == b"\x03", "superblock minor byte"
    assert read_at(path, 13, 3) == b"EXT", "extended-layout mark"
    assert committed_meta(path)[0] == total
    assert os.path.getsize(path) >= total * PS


def assert_layout_pages_reserved(p, total: int) -> None:
    lay = layout_pages(total)
    assert lay, "no layout page to check"
    allocated = set(p.allocated_pages())
    for q in lay:
        assert q not in allocated, q
        with pytest.raises(mappedpages.ReservedPage):
            p.page(q)
        with pytest.raises(mappedpages.ReservedPage):
            p.free(q)


def test_cap_reached_then_upgrade(tmp_path):
    """Growth stops once exactly at the v0.2 cap (the file stays v0.2, readable by
    the crate); the next growth moves it to the extended layout, whose layout pages
    (CAP .. CAP + 3) are never handed out."""
    assert CAP == 7968
    path = tmp_path / "cap.mpp"
    with Pager.create(path, page_size=PS) as p:
        assert p.format_version == "0.2"
        ids = p.alloc_bulk(4000)
        assert ids == list(range(3, 4003))
        assert p.page_count == 4096
        rest = CAP - 4003
        gen = committed_meta(path)[1]
        more = p.alloc_bulk(rest)
        assert more == list(range(4003, CAP))
        assert p.page_count == CAP  # the last v0.2 growth stops at the cap, not 8192
        assert p.free_page_count == 0
        assert p.format_version == "0.2"
        assert committed_meta(path)[1] == gen + 1
        assert os.path.getsize(path) == CAP * PS
        assert_v02_on_disk(path)
        check_valid_v02(path, allocated=list(range(3, CAP)))
        written = [3, 4002, 4003, CAP - 2, CAP - 1]
        for k in written:
            write_pattern(p, k)
        assert p.alloc_bulk(0) == []
        assert p.page_count == CAP and p.format_version == "0.2"

        # The file is full: the next allocation grows it past the cap, in one commit.
        gen = committed_meta(path)[1]
        new = p.alloc_bulk(20)
        assert new == list(range(CAP + 4, CAP + 24))  # CAP .. CAP + 3 skipped
        assert p.format_version == "0.3"
        assert p.page_count == 2 * CAP  # doubling goes on from the cap
        assert p.free_page_count == 2 * CAP - CAP - 4 - 20
        assert committed_meta(path)[1] == gen + 1
        assert_extended_on_disk(path, 2 * CAP)
        assert os.path.getsize(path) == 2 * CAP * PS
        assert list(p.allocated_pages()) == list(range(3, CAP)) + new
        assert_layout_pages_reserved(p, 2 * CAP)
        assert all(has_pattern(p, k) for k in written)
        for k in new:
            write_pattern(p, k, salt=1)
        assert p.alloc() == CAP + 24
        p.free(CAP + 24)

    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert p.page_count == 2 * CAP
        assert p.free_page_count == 2 * CAP - CAP - 4 - 20
        assert list(p.allocated_pages()) == list(range(3, CAP)) + new
        assert all(has_pattern(p, k) for k in written)
        assert all(has_pattern(p, k, salt=1) for k in new)
        assert_layout_pages_reserved(p, 2 * CAP)
        # lowest first, in both chunks
        p.free(1234)
        assert p.alloc() == 1234
        p.free_bulk([7000, CAP + 10, 5])
        assert p.alloc_bulk(2) == [5, 7000]
        assert p.alloc() == CAP + 10
        assert p.alloc() == CAP + 24
        # fill chunk 1: the next growth doubles again and skips chunk 2's layout pages
        left = p.free_page_count
        tail = p.alloc_bulk(left)
        assert tail == list(range(CAP + 25, 2 * CAP))
        assert p.free_page_count == 0 and p.page_count == 2 * CAP
        assert p.alloc() == 2 * CAP + 4
        assert p.page_count == 4 * CAP
        assert_layout_pages_reserved(p, 4 * CAP)
        expected = list(range(3, CAP)) + list(range(CAP + 4, 2 * CAP)) + [2 * CAP + 4]
        assert list(p.allocated_pages()) == expected
    assert_extended_on_disk(path, 4 * CAP)
    check_valid_v03(path, allocated=expected)
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert p.page_count == 4 * CAP
        assert list(p.allocated_pages()) == expected
        assert p.free_page_count == 4 * CAP - 3 - 3 * 4 - len(expected)
        assert all(has_pattern(p, k) for k in written)


def test_cap_one_by_one_near_the_end(tmp_path):
    path = tmp_path / "cap.mpp"
    with Pager.create(path, page_size=PS) as p:
        p.alloc_bulk(4093)  # 3..4095, full at 4096 pages
        assert p.page_count == 4096 and p.free_page_count == 0
        assert p.alloc() == 4096
        assert p.page_count == CAP  # not 8192
        p.alloc_bulk(CAP - 4097 - 1)
        assert p.alloc() == CAP - 1
        assert p.page_count == CAP and p.free_page_count == 0
        assert p.format_version == "0.2"
        assert_v02_on_disk(path)
        check_valid_v02(path, allocated=list(range(3, CAP)))
        write_pattern(p, CAP - 1)
        gen = committed_meta(path)[1]
        assert p.alloc() == CAP + 4  # the upgrade; the layout pages are skipped
        assert committed_meta(path)[1] == gen + 1
        assert p.format_version == "0.3"
        assert p.page_count == 2 * CAP
        assert p.alloc() == CAP + 5
        assert_extended_on_disk(path, 2 * CAP)
        assert_layout_pages_reserved(p, 2 * CAP)
        p.free(CAP + 4)
        assert p.alloc() == CAP + 4
        p.free(CAP - 1)
        p.free(CAP + 4)
        assert p.alloc() == CAP - 1  # lowest first across the chunk boundary
        assert p.alloc() == CAP + 4
        assert has_pattern(p, CAP - 1)
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert p.page_count == 2 * CAP
        assert list(p.allocated_pages()) == list(range(3, CAP)) + [CAP + 4, CAP + 5]
        assert has_pattern(p, CAP - 1)
    check_valid_v03(path, allocated=list(range(3, CAP)) + [CAP + 4, CAP + 5])


def test_bulk_across_the_cap_skips_layout_pages(tmp_path):
    """One bulk call from below the cap to past it: one commit, v0.2 -> 0.3."""
    path = tmp_path / "cap.mpp"
    with Pager.create(path, page_size=PS) as p:
        p.alloc_bulk(4093)  # full at 4096 pages
        write_pattern(p, 4095)
        gen = committed_meta(path)[1]
        rest = CAP - 4096
        ids = p.alloc_bulk(rest + 10)
        assert ids == list(range(4096, CAP)) + list(range(CAP + 4, CAP + 14))
        assert committed_meta(path)[1] == gen + 1
        assert p.format_version == "0.3"
        assert p.page_count == 2 * CAP
        assert p.free_page_count == CAP - 4 - 10
        assert has_pattern(p, 4095)
    assert_extended_on_disk(path, 2 * CAP)
    check_valid_v03(path, allocated=list(range(3, CAP)) + list(range(CAP + 4, CAP + 14)))
    with Pager.open(path) as p:
        assert list(p.allocated_pages()) == list(range(3, CAP)) + list(range(CAP + 4, CAP + 14))
        assert_layout_pages_reserved(p, 2 * CAP)


# --------------------------------------------------------------------------
# close while views are alive
# --------------------------------------------------------------------------


def test_close_with_live_view_raises_buffer_error(tmp_path):
    path = tmp_path / "b.mpp"
    p = Pager.create(path)
    a = p.alloc()
    v = p.page(a)
    with pytest.raises(BufferError):
        p.close()
    assert not p.closed
    # the pager and the view still work
    v[0:5] = b"still"
    assert p.alloc() == 4
    w = p.page(a)
    assert bytes(w[0:5]) == b"still"
    w.release()
    with pytest.raises(BufferError):
        p.close()
    v.release()
    p.close()
    assert p.closed
    with Pager.open(path) as q:
        assert list(q.allocated_pages()) == [3, 4]


def test_close_after_del(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    v = p.page(3)
    with pytest.raises(BufferError):
        p.close()
    del v
    p.close()
    assert p.closed


def test_slice_of_view_keeps_pager_open(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    a = p.alloc()
    v = p.page(a)
    s = v[10:20]
    v.release()
    with pytest.raises(BufferError):
        p.close()
    assert not p.closed
    s[0] = 9
    w = p.page(a)
    assert w[10] == 9
    w.release()
    s.release()
    p.close()
    assert p.closed


def test_cast_of_view_keeps_pager_open(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    v = p.page(3)
    c = v.cast("Q")
    del v
    with pytest.raises(BufferError):
        p.close()
    c[0] = 2**64 - 1
    del c
    p.close()
    assert p.closed


def test_nested_memoryview_keeps_pager_open(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    v = p.page(3)
    m = memoryview(v)
    v.release()
    with pytest.raises(BufferError):
        p.close()
    m.release()
    p.close()


def test_numpy_array_keeps_pager_open(tmp_path):
    np = pytest.importorskip("numpy")
    p = Pager.create(tmp_path / "b.mpp")
    a = p.alloc()
    arr = np.frombuffer(p.page(a), dtype=np.uint8)
    assert arr.shape == (4096,)
    gc.collect()
    with pytest.raises(BufferError):
        p.close()
    assert not p.closed
    arr[:] = 7
    w = p.page(a)
    assert bytes(w) == b"\x07" * 4096
    w.release()
    del arr
    gc.collect()
    p.close()
    assert p.closed


def test_numpy_view_survives_growth(tmp_path):
    np = pytest.importorskip("numpy")
    with Pager.create(tmp_path / "b.mpp") as p:
        a = p.alloc()
        arr = np.frombuffer(p.page(a), dtype=np.uint32)
        arr[:] = np.arange(1024, dtype=np.uint32)
        p.alloc_bulk(100)
        assert (arr == np.arange(1024, dtype=np.uint32)).all()
        w = p.page(a)
        assert bytes(w) == np.arange(1024, dtype=np.uint32).tobytes()
        w.release()
        del arr


def test_bytes_copy_does_not_hold(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    v = p.page(3)
    data = bytes(v)
    v.release()
    p.close()
    assert data == bytes(4096)


def test_released_view_after_close_raises(tmp_path):
    p = Pager.create(tmp_path / "b.mpp")
    v = p.page(3)
    v.release()
    p.close()
    with pytest.raises(ValueError):
        v[0]
    with pytest.raises(ValueError):
        bytes(v)


def test_view_outlives_dropped_pager(tmp_path):
    path = tmp_path / "b.mpp"
    p = Pager.create(path)
    a = p.alloc()
    v = p.page(a)
    del p
    gc.collect()
    v[0:4] = b"live"
    assert bytes(v[0:4]) == b"live"
    v.release()
    gc.collect()
    with Pager.open(path) as q:
        assert list(q.allocated_pages()) == [3]


def test_context_exit_after_views_released(tmp_path):
    with Pager.create(tmp_path / "b.mpp") as p:
        views = [p.page(3) for _ in range(5)]
        for v in views:
            v.release()
    assert p.closed


def test_close_with_view_then_more_growth(tmp_path):
    path = tmp_path / "b.mpp"
    p = Pager.create(path, page_size=PS)
    v = p.page(3)
    with pytest.raises(BufferError):
        p.close()
    ids = p.alloc_bulk(100)
    v[:] = pattern(3, PS)
    assert ids[0] == 3
    v.release()
    p.close()
    with Pager.open(path) as q:
        assert has_pattern(q, 3)
        assert q.page_count == 128
    force_close(q)


def test_page_in_the_middle_of_a_refresh_is_never_short(tmp_path):
    # page()'s fast path reads the cached page count and the view buffer
    # without the lock, so another thread may run it at any point of the
    # refresh that follows a growth. A count published before the larger
    # buffer let such a call slice past the old buffer's end: Python clamps
    # the slice, and page() returned a view shorter than a page (seen under
    # AddressSanitizer in the four-thread stress test). Here the call runs at
    # the worst point: as the refresh binds the larger buffer.
    with Pager.create(tmp_path / "r.mpp", PS) as p:
        old_count = p.page_count
        seen: list[int] = []
        real = p._bind_views

        def bind_then_look(*args, **kwargs):
            if not seen:
                seen.append(-1)  # (the look below may refresh, and come back here)
                seen[0] = len(p.page(old_count + 1))
            return real(*args, **kwargs)

        p._bind_views = bind_then_look  # type: ignore[method-assign]
        ids = p.alloc_bulk(2 * old_count)
        assert max(ids) > old_count + 1 and p.page_count > old_count + 1
        assert seen == [PS], f"page() returned {seen[0]} bytes in the middle of a refresh"
        del p._bind_views
        assert len(p.page(old_count + 1)) == PS
