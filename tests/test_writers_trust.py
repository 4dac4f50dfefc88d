"""Who owns what: sub-page ownership, protected writers staged in library
memory, cancelled async calls, and messages that name the values involved.

- A page held by a SubPageAllocator cannot be freed through the pager, and two
  allocators on one pager cannot hold the same page (ReservedPage, nothing
  changed).
- A ProtectedWriter's page lives in memory the library owns until commit: a
  slice kept past commit or discard reaches nothing on disk, and a transaction
  that ends with a writer opened inside it still open raises WriterOpen and
  rolls back.
- A *_async allocation cancelled by its caller leaves no page allocated.
"""

from __future__ import annotations

import gc

import pytest
from conftest import pager_state, read_image

import mappedpages
from mappedpages import (
    MappedPageError,
    OutOfBounds,
    Pager,
    ReservedPage,
    SubPageAllocator,
)

PS = 4096


def generation(pager: Pager) -> int:
    """The committed generation, read from the file itself."""
    return read_image(pager.path).newest().generation


def full_state(p: Pager) -> tuple:
    return (*pager_state(p), generation(p))


# --------------------------------------------------------------------------
# Sub-page ownership
# --------------------------------------------------------------------------


def test_reserved_page_is_exported_and_a_mapped_page_error():
    assert mappedpages.ReservedPage is ReservedPage
    assert issubclass(ReservedPage, MappedPageError)


def test_pager_free_refuses_a_page_an_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(9)  # pages 3 (full) and 4 (one slot)
    assert a.big_pages() == [3, 4]
    before = full_state(p)
    for page in (3, 4):
        with pytest.raises(ReservedPage, match=f"page {page} is held by a SubPageAllocator"):
            p.free(page)
        assert full_state(p) == before
    assert a.live_ids() == sorted(ids)
    # The pages are still the allocator's: its sub-pages free normally, and the
    # last one gives the page back to the pager.
    a.free_bulk(ids)
    assert a.big_pages() == []
    assert list(p.allocated_pages()) == []


def test_pager_free_bulk_refuses_a_page_an_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 1024)
    a.alloc()  # page 3
    mine = p.alloc_bulk(3)  # 4, 5, 6
    before = full_state(p)
    with pytest.raises(ReservedPage, match="page 3 is held by a SubPageAllocator"):
        p.free_bulk(mine + [3])
    assert full_state(p) == before
    p.free_bulk(mine)  # the pages nobody else holds still free
    assert list(p.allocated_pages()) == [3]


def test_a_detached_or_collected_allocator_holds_nothing(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    a.alloc()  # page 3
    a.detach()
    p.free(3)  # the caller owns the page again
    b = SubPageAllocator(p, 512)
    b.alloc()  # page 3 again
    del b
    gc.collect()
    p.free(3)
    assert list(p.allocated_pages()) == []


def test_restore_refuses_a_page_another_allocator_holds(new_pager):
    p = new_pager
    a = SubPageAllocator(p, 512)
    ids = a.alloc_bulk(3)  # page 3
    before = full_state(p)
    # Same sub-page size: the very same sub-pages would be handed out twice.
    with pytest.raises(ReservedPage, match=f"sub-page id {ids[0]} lies in page 3"):
        SubPageAllocator.restore(p, 512, [ids[0]])
    # Another size: the bytes would still overlap.
    with pytest.raises(ReservedPage, match="another SubPageAllocator"):
        SubPageAllocator.restore(p, 1024, [3 * 4 + 3])
    assert full_state(p) == before
    assert a.live_ids() == ids
    assert len(p._subs) == 1  # the refused allocators are gone
    # Once a lets go, the page may be restored.
    a.detach()
    b = SubPageAllocator.restore(p, 512, ids)
    assert b.live_ids() == ids
    with pytest.raises(ReservedPage):
        p.free(3)


def test_restore_messages_name_the_id(new_pager):
    p = new_pager
    page = p.alloc()  # 3
    before = full_state(p)
    with pytest.raises(ValueError, match=f"sub-page id {page * 8 + 1} is given twice"):
        SubPageAllocator.restore(p, 512, [page * 8, page * 8 + 1, page * 8 + 1])
    with pytest.raises(OutOfBounds, match=r"sub-page id 9 lies in page 1, which is reserved"):
        SubPageAllocator.restore(p, 512, [page * 8, 9])
    with pytest.raises(OutOfBounds, match=r"sub-page id 800 lies in page 100, past the end"):
        SubPageAllocator.restore(p, 512, [800])
    with pytest.raises(OutOfBounds, match=r"sub-page id 5 lies in page 1, which is reserved"):
        SubPageAllocator.restore(p, 1024, [5])
    assert full_state(p) == before
    pid = p.alloc_protected()
    backing = p._backing(pid)[0]
    with pytest.raises(OutOfBounds, match=f"lies in page {backing}, which is reserved"):
        SubPageAllocator.restore(p, 512, [backing * 8])
    p.free(page)
    with pytest.raises(OutOfBounds, match=f"lies in page {page}, which is free in the pager"):
        SubPageAllocator.restore(p, 512, [page * 8])


@pytest.mark.parametrize("size", [True, False])
def test_sub_size_bool_is_a_type_error(new_pager, size):
    with pytest.raises(TypeError, match="bool"):
        SubPageAllocator(new_pager, size)
    assert len(new_pager._subs) == 0
