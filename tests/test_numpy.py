"""Page views work zero-copy with NumPy and with memoryview.cast.

NumPy is a test dependency only (the ``test`` extra), never a runtime one.
"""

from __future__ import annotations

import gc

import pytest

from mappedpages import OutOfBounds, Pager, ReadOnlyPager, ReservedPage, SubPageAllocator

np = pytest.importorskip("numpy")


@pytest.fixture
def pager(tmp_path):
    p = Pager.create(tmp_path / "np.mpp")
    yield p
    gc.collect()
    p.close()


def test_frombuffer_is_zero_copy(pager):
    pid = pager.alloc(zero=True)
    arr = np.frombuffer(pager.page(pid), dtype=np.uint64)
    assert arr.flags.writeable
    assert arr.shape == (pager.page_size // 8,)
    arr[:] = np.arange(arr.size, dtype=np.uint64) * 3
    # The same memory, seen through a fresh view and a second array.
    view = pager.page(pid)
    assert bytes(view[:16]) == (0).to_bytes(8, "little") + (3).to_bytes(8, "little")
    other = np.frombuffer(view, dtype=np.uint8)
    assert np.shares_memory(arr, other)
    other[8] = 0xFF
    assert arr[1] == 0xFF
    del arr, other, view


def test_array_writes_reach_the_file(pager, tmp_path):
    pid = pager.alloc(zero=True)
    arr = np.frombuffer(pager.page(pid), dtype="<f8")
    arr[:4] = [1.5, -2.0, 3.25, 1e300]
    del arr
    pager.sync()
    with open(pager.path, "rb") as fh:
        fh.seek(pid * pager.page_size)
        raw = fh.read(32)
    assert np.frombuffer(raw, dtype="<f8").tolist() == [1.5, -2.0, 3.25, 1e300]


def test_structured_records_over_a_page(pager):
    pid = pager.alloc(zero=True)
    rec = np.dtype([("key", "<u8"), ("value", "<f8")])
    table = np.frombuffer(pager.page(pid), dtype=rec)
    assert len(table) == pager.page_size // 16
    table["key"][:3] = [7, 8, 9]
    table["value"][:3] = [0.5, 0.25, 0.125]
    raw = bytes(pager.page(pid)[:48])
    assert np.frombuffer(raw, dtype=rec)["key"].tolist() == [7, 8, 9]
    del table


def test_memoryview_cast(pager):
    pid = pager.alloc(zero=True)
    q = pager.page(pid).cast("Q")
    assert len(q) == pager.page_size // 8 and q.format == "Q" and not q.readonly
    q[0] = 2**64 - 1
    q[1] = 42
    assert bytes(pager.page(pid)[:16]) == b"\xff" * 8 + (42).to_bytes(8, "little")
    grid = pager.page(pid).cast("I", shape=[pager.page_size // 16, 4])
    assert grid.shape == (pager.page_size // 16, 4)
    assert grid[0, 2] == 42
    arr = np.asarray(grid)
    assert arr.shape == (pager.page_size // 16, 4) and np.shares_memory(arr, np.asarray(q))
    del q, grid, arr


def test_an_array_keeps_the_pager_open(pager):
    arr = np.frombuffer(pager.page(pager.alloc()), dtype=np.uint8)
    with pytest.raises(BufferError):
        pager.close()
    assert not pager.closed
    arr[0] = 1  # still usable memory
    del arr
    gc.collect()
    pager.close()
    assert pager.closed


def test_run_view_of_consecutive_pages(pager):
    ids = pager.alloc_bulk(8, zero=True)
    assert ids == list(range(ids[0], ids[0] + 8))
    ps = pager.page_size
    run = pager.view(ids[0], 8)
    assert len(run) == 8 * ps and not run.readonly
    block = np.frombuffer(run, dtype=np.uint8).reshape(8, ps)
    block[:, 0] = np.arange(8, dtype=np.uint8) + 100
    for i, pid in enumerate(ids):
        assert pager.page(pid)[0] == 100 + i
    pager.page(ids[3])[1] = 7
    assert block[3, 1] == 7
    wide = np.frombuffer(pager.view(ids[0], 8), dtype=np.uint64)
    assert wide.size == 8 * ps // 8 and np.shares_memory(wide, block)
    del run, block, wide


def test_run_view_refuses_pager_pages_and_the_end(pager):
    pager.alloc_bulk(4)
    prot = pager.alloc_protected()
    backing = pager._backing(prot)
    with pytest.raises(ReservedPage):
        pager.view(2, 2)
    with pytest.raises(ReservedPage):
        pager.view(min(backing) - 1, 3)
    with pytest.raises(OutOfBounds):
        pager.view(pager.page_count - 1, 2)
    with pytest.raises(ValueError):
        pager.view(3, 0)


def test_readers_give_read_only_arrays(tmp_path):
    path = tmp_path / "ro.mpp"
    with Pager.create(path) as p:
        ids = p.alloc_bulk(2, zero=True)
        p.page(ids[0])[:8] = (12345).to_bytes(8, "little")
        prot = p.alloc_protected()
        with p.write_protected(prot) as w:
            np.frombuffer(w.page, dtype=np.uint32)[:2] = [11, 22]
        assert np.frombuffer(p.protected_page(prot), dtype=np.uint32)[:2].tolist() == [11, 22]
        p.sync()
    with ReadOnlyPager.open(path) as r:
        arr = np.frombuffer(r.page(ids[0]), dtype=np.uint64)
        assert arr[0] == 12345 and not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        both = np.frombuffer(r.view(ids[0], 2), dtype=np.uint8)
        assert not both.flags.writeable and both.size == 2 * r.page_size
        parr = np.frombuffer(r.protected_page(prot), dtype=np.uint32)
        assert parr[:2].tolist() == [11, 22] and not parr.flags.writeable
        del arr, both, parr


def test_alloc_bulk_into_a_numpy_array(pager):
    out = np.zeros(100, dtype=np.uint64)
    assert pager.alloc_bulk(100, out=out) is None
    ids = out.tolist()
    assert len(set(ids)) == 100 and min(ids) >= 3
    assert sorted(ids) == sorted(pager.allocated_pages())
    pager.free_bulk(out)
    assert list(pager.allocated_pages()) == []
    with pytest.raises(ValueError):
        pager.alloc_bulk(5, out=np.zeros(4, dtype=np.uint64))
    with pytest.raises(TypeError):
        pager.alloc_bulk(5, out=np.zeros(5, dtype=np.int32))


def test_sub_page_views(pager):
    subs = SubPageAllocator(pager, 512)
    sid = subs.alloc()
    arr = np.frombuffer(subs.page(sid), dtype=np.uint16)
    assert arr.size == 256 and arr.flags.writeable
    arr[:] = 0xABCD
    big, slot = divmod(sid, subs.slots_per_page)
    assert bytes(pager.page(big)[slot * 512 : slot * 512 + 2]) == b"\xcd\xab"
    del arr
    subs.detach()
