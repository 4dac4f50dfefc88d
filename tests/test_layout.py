"""The layout API exported by the C core (format.c owns page placement)."""

from __future__ import annotations

import pytest

from mappedpages._core import ffi, lib


def layout(page_size: int) -> object:
    out = ffi.new("mp_layout *")
    assert lib.mp_layout_get(page_size, out) == lib.MP_OK
    return out


def kind(page_size: int, page_id: int) -> int:
    out = ffi.new("int *")
    assert lib.mp_layout_page_kind(page_size, page_id, out) == lib.MP_OK
    return int(out[0])


@pytest.mark.parametrize("page_size", [1024, 4096, 65536, 1 << 30])
def test_layout_geometry(page_size: int) -> None:
    lay = layout(page_size)
    assert lay.page_size == page_size
    assert lay.reserved_pages == 3
    assert lay.bits_per_map_page == (page_size - 28) * 8
    assert lay.chunk_pages == lay.bits_per_map_page == lay.v02_max_pages
    assert lay.layout_pages_per_chunk == 4
    assert lay.dir_refs_per_index == (page_size - 28) // 17
    assert lay.dir_entries_per_page == (page_size - 12) // 30
    assert lay.max_pages <= (1 << 44) // page_size
    # A cap never cuts a chunk inside its layout pages.
    assert lay.max_pages <= lay.chunk_pages or lay.max_pages % lay.chunk_pages >= 4 or (
        lay.max_pages % lay.chunk_pages == 0
    )
    assert (lay.meta_header_bytes, lay.chunk_header_bytes, lay.dir_index_offset) == (24, 24, 20)


@pytest.mark.parametrize("bad", [0, 512, 1000, 4097, 1 << 31])
def test_layout_refuses_bad_page_size(bad: int) -> None:
    out = ffi.new("mp_layout *")
    assert lib.mp_layout_get(bad, out) == lib.MP_EINVALID_PAGE_SIZE
    k = ffi.new("int *")
    assert lib.mp_layout_page_kind(bad, 5, k) == lib.MP_EINVALID_PAGE_SIZE


def test_page_kinds() -> None:
    c = int(layout(4096).chunk_pages)
    assert [kind(4096, i) for i in range(4)] == [
        lib.MP_PAGE_SUPERBLOCK,
        lib.MP_PAGE_META_A,
        lib.MP_PAGE_META_B,
        lib.MP_PAGE_DATA,
    ]
    assert kind(4096, c - 1) == lib.MP_PAGE_DATA
    for chunk in (1, 2, 7):
        assert [kind(4096, chunk * c + i) for i in range(5)] == [
            lib.MP_PAGE_FREE_MAP_A,
            lib.MP_PAGE_FREE_MAP_B,
            lib.MP_PAGE_INDEX_A,
            lib.MP_PAGE_INDEX_B,
            lib.MP_PAGE_DATA,
        ]


def test_chunk_page_ids() -> None:
    c = int(layout(4096).chunk_pages)
    out = ffi.new("uint64_t *")
    for k, off in (
        (lib.MP_PAGE_FREE_MAP_A, 0),
        (lib.MP_PAGE_FREE_MAP_B, 1),
        (lib.MP_PAGE_INDEX_A, 2),
        (lib.MP_PAGE_INDEX_B, 3),
    ):
        assert lib.mp_layout_chunk_page(4096, 3, k, out) == lib.MP_OK
        assert out[0] == 3 * c + off
        assert kind(4096, int(out[0])) == k
    out[0] = 12345
    assert lib.mp_layout_chunk_page(4096, 0, lib.MP_PAGE_FREE_MAP_A, out) == lib.MP_EOUT_OF_BOUNDS
    assert lib.mp_layout_chunk_page(4096, 1, lib.MP_PAGE_DATA, out) == lib.MP_EINVALID_ARGUMENT
    assert lib.mp_layout_chunk_page(4096, 1 << 62, lib.MP_PAGE_INDEX_A, out) == (
        lib.MP_EOUT_OF_BOUNDS
    )
    assert out[0] == 12345  # nothing written on failure


def test_layout_pages_below() -> None:
    c = int(layout(4096).chunk_pages)
    out = ffi.new("uint64_t *")

    def below(total: int) -> int:
        assert lib.mp_layout_pages_below(4096, total, out) == lib.MP_OK
        return int(out[0])

    assert below(2) == 2
    assert below(4) == 3
    assert below(c) == 3
    assert below(c + 2) == 5
    assert below(c + 4) == 7
    assert below(3 * c + 10) == 3 + 4 * 3
    # Agrees with counting page kinds one by one.
    assert below(c + 9) == sum(kind(4096, i) != lib.MP_PAGE_DATA for i in range(c + 9))


def test_pager_uses_layout(tmp_path: object) -> None:
    import mappedpages

    path = str(tmp_path) + "/f.mp"
    with mappedpages.Pager.create(path, page_size=4096) as pg:
        lay = layout(4096)
        assert pg._chunk == lay.chunk_pages
        # Past the first chunk the pager asks the core which pages are the layout's.
        first_layout_page = lay.chunk_pages
        assert not pg._is_data_position(first_layout_page)
        assert pg._is_data_position(first_layout_page + lay.layout_pages_per_chunk)
