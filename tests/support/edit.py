"""Byte editing of pager files: patch, read back, and rewrite metadata copies."""

from __future__ import annotations

import struct

from .format_v02 import DIR_INDEX_OFFSET, META_HEADER, OFF_LOG2, crc32

# --------------------------------------------------------------------------
# Byte editing
# --------------------------------------------------------------------------


def patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def read_at(path, offset: int, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def file_page_size(path) -> int:
    return 1 << struct.unpack("<I", read_at(path, OFF_LOG2, 4))[0]


def reseal_dir_index(path) -> None:
    ps = file_page_size(path)
    page0 = bytearray(read_at(path, 0, ps))
    struct.pack_into("<I", page0, ps - 4, crc32(bytes(page0[DIR_INDEX_OFFSET : ps - 4])))
    patch(path, 0, bytes(page0))


def edit_meta(
    path,
    index: int,
    *,
    total_pages=None,
    generation=None,
    free_count=None,
    set_bits=(),
    clear_bits=(),
    raw=None,
    fix_crc=True,
) -> None:
    """Change fields of metadata copy INDEX (0 = A, 1 = B), then reseal its CRC."""
    ps = file_page_size(path)
    off = (1 + index) * ps
    page = bytearray(read_at(path, off, ps))
    if total_pages is not None:
        struct.pack_into("<Q", page, 0, total_pages)
    if generation is not None:
        struct.pack_into("<Q", page, 8, generation)
    if free_count is not None:
        struct.pack_into("<Q", page, 16, free_count)
    for b in set_bits:
        page[META_HEADER + b // 8] |= 1 << (b % 8)
    for b in clear_bits:
        page[META_HEADER + b // 8] &= ~(1 << (b % 8)) & 0xFF
    if raw is not None:
        for o, v in raw.items():
            page[o] = v
    if fix_crc:
        struct.pack_into("<I", page, ps - 4, crc32(bytes(page[: ps - 4])))
    patch(path, off, bytes(page))


def flip_byte(path, offset: int, mask: int = 0xFF) -> None:
    b = read_at(path, offset, 1)[0]
    patch(path, offset, bytes([b ^ mask]))
