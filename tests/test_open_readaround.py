"""Open of a big sparse file reads only the pages it touches (csrc/pager.c, map_random).

Open (and a reader's refresh) touch a few layout pages in every chunk of the extended
layout, chunk_pages apart. With the kernel's read-around on, each of those faults
brought a window of the file around it into the page cache (read, or zeroed in a
sparse file): seconds for a cold 2^27-page file. Counted here with mincore(2): after a
cold open, the file's resident pages are a few per chunk, not a window per chunk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from array import array
from pathlib import Path

import pytest
from support.geometry import layout

from mappedpages import Pager, ReadOnlyPager

PS = 4096


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore of a fresh read-only mapping)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["writer", "reader"])
def test_a_cold_open_reads_a_few_pages_per_chunk(tmp_path: Path, kind: str) -> None:
    chunk = layout(PS).chunk_pages
    path = tmp_path / "sparse.mpp"
    chunks = 12
    with Pager.create(path, PS, durability="none", layout="0.3", preallocate=False,
                      grow_step=chunk * PS) as pager:
        buf = array("Q", bytes(8 * chunk))
        while pager.page_count < chunks * chunk:
            free = pager.free_page_count
            if free:
                pager.alloc_bulk(min(free, chunk), out=buf)
            else:
                pager.alloc()
        pager.sync()
        found = pager.page_count // chunk
    evict(path)
    assert resident_pages(path) <= 4
    if kind == "writer":
        Pager.open(path, PS, preallocate=False).close()
    else:
        ReadOnlyPager.open(path, PS).close()
    # Pages 0-2 and each chunk's four layout pages (free-map and index copies),
    # and the reader table's neighbour pages: well under a read-around window each.
    assert resident_pages(path) <= 8 + 8 * found, (resident_pages(path), found)
