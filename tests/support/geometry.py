"""The layout's geometry and page placement, asked of the core: the one place tests learn it.

The C core owns the layout (format.c) and exports it through the public
header: ``mp_layout_get`` (the numbers that depend on the page size),
``mp_layout_page_kind`` (what the page at an id is) and
``mp_layout_chunk_page`` (where a chunk's free-map and index copies are) and
``mp_layout_pages_below`` (how many pages the layout keeps).
The independent readers (``format_v02``, ``format_v03``) parse the bytes of
each structure themselves; how many there are and where they sit comes from
here, so that the tests and the library never hold two copies of the rule.
tests/test_layout.py checks the export against FORMAT.md's formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mappedpages._core import ffi, lib


@dataclass(frozen=True)
class Layout:
    """``mp_layout`` at one page size, as plain ints."""

    page_size: int
    reserved_pages: int  # pages 0-2
    chunk_pages: int  # pages per free-map chunk; v0.2's cap
    v02_max_pages: int  # the most pages of a v0.2 file
    max_pages: int  # the most pages a pager maps
    layout_pages_per_chunk: int  # free-map A/B, directory-index A/B
    dir_entries_per_page: int  # protected-page entries per directory page
    dir_refs_per_index: int  # directory blocks page 0 or one index page names


@cache
def layout(page_size: int) -> Layout:
    """The core's geometry at ``page_size``; ValueError for a size it refuses."""
    out = ffi.new("mp_layout *")
    rc = lib.mp_layout_get(page_size, out)
    if rc != 0:
        raise ValueError(f"the core refuses page size {page_size} (error {rc})")
    return Layout(
        page_size=page_size,
        reserved_pages=int(out.reserved_pages),
        chunk_pages=int(out.chunk_pages),
        v02_max_pages=int(out.v02_max_pages),
        max_pages=int(out.max_pages),
        layout_pages_per_chunk=int(out.layout_pages_per_chunk),
        dir_entries_per_page=int(out.dir_entries_per_page),
        dir_refs_per_index=int(out.dir_refs_per_index),
    )


def page_kind(page_size: int, page_id: int) -> int:
    """The ``MP_PAGE_*`` kind of ``page_id`` by position (``lib.MP_PAGE_DATA`` for data)."""
    out = ffi.new("int *")
    rc = lib.mp_layout_page_kind(page_size, page_id, out)
    if rc != 0:
        raise ValueError(f"no page kind for page {page_id} at page size {page_size} ({rc})")
    return int(out[0])


def chunk_page(page_size: int, chunk: int, kind: int) -> int:
    """The id of chunk ``chunk``'s (>= 1) layout page of ``kind`` (``MP_PAGE_FREE_MAP_A``...)."""
    out = ffi.new("uint64_t *")
    rc = lib.mp_layout_chunk_page(page_size, chunk, kind, out)
    if rc != 0:
        raise ValueError(f"no page {kind} in chunk {chunk} at page size {page_size} ({rc})")
    return int(out[0])


def layout_pages_below(page_size: int, total: int) -> int:
    """Pages of the layout (0-2 and each chunk's own) in a file of ``total`` pages."""
    out = ffi.new("uint64_t *")
    rc = lib.mp_layout_pages_below(page_size, total, out)
    if rc != 0:
        raise ValueError(f"no layout page count for {total} pages of {page_size} ({rc})")
    return int(out[0])


# The four layout pages of a chunk past the first, in the order they sit.
CHUNK_PAGE_KINDS = (
    lib.MP_PAGE_FREE_MAP_A,
    lib.MP_PAGE_FREE_MAP_B,
    lib.MP_PAGE_INDEX_A,
    lib.MP_PAGE_INDEX_B,
)
