"""The Python layer caches the page count; ``alloc()`` does not refresh it.

Every view of a page past the cached count must refresh it first, whatever
call handed out the page: a view bound to the old length would be short (a
slice of a memoryview past its end is empty, not an error).
"""

from __future__ import annotations

import pytest

from mappedpages import Pager, SubPageAllocator


@pytest.fixture
def grown(tmp_path):
    """A pager whose file grew under ``alloc()`` after the counts were cached."""
    p = Pager.create(tmp_path / "g.mpp", 4096, durability="none")
    cached = p.page_count  # (reading the property caches it)
    ids = [p.alloc() for _ in range(cached + 8)]
    assert max(ids) >= cached
    yield p, ids, cached
    p.close()


def test_page_and_view_past_the_cached_count(grown):
    p, ids, _ = grown
    last = ids[-1]
    assert len(p.page(last)) == 4096
    assert len(p.view(last - 1, 2)) == 8192
    with p.transaction() as tx:
        assert len(tx.page(last)) == 4096
        assert len(tx.view(last, 1)) == 4096


def test_view_of_a_run_refreshes_before_refusing(grown):
    p, ids, _ = grown
    assert len(p.view(ids[-1], 1)) == 4096  # (the first call after the growth)


def test_protected_page_in_the_grown_part(grown):
    p, ids, cached = grown
    pid = p.alloc_protected()
    with p.write_protected(pid) as w:
        w.page[:5] = b"hello"
    view = p.protected_page(pid)
    assert len(view) == 4096 and bytes(view[:5]) == b"hello"


def test_sub_page_in_the_grown_part(grown):
    p, ids, cached = grown
    sub = SubPageAllocator(p, 512)
    sid = sub.alloc()
    assert sid // sub.slots_per_page >= cached  # a page the growth made
    view = sub.page(sid)
    assert len(view) == 512
    view[:3] = b"abc"
    assert bytes(sub.page(sid)[:3]) == b"abc"
