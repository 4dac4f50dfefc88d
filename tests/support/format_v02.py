"""An independent reader of the v0.2 file layout (FORMAT.md), byte by byte.

Tests use it to check what the pager leaves on disk without going through the
pager itself: a second reader of the format, written from its specification.
The geometry that depends on the page size comes from the core's layout
export (``layout``), the byte layout of each structure from FORMAT.md.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .geometry import layout

# --------------------------------------------------------------------------
# The v0.2 layout
# --------------------------------------------------------------------------

MAGIC = b"MPPG"
CRC_RESIDUE = 0x2144DF1C
META_HEADER = 24
DIR_INDEX_OFFSET = 20
DIR_REF_SIZE = 17
DIR_ENTRY_SIZE = 30
DIR_PAGE_HEADER = 8

OFF_MAJOR = 4
OFF_MINOR = 5
OFF_PATCH = 6
OFF_BUILD = 7
OFF_LOG2 = 8
OFF_SELECTOR = 12
OFF_META_CHECKSUM = 16
OFF_DIR_COUNT = 20


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def max_pages(page_size: int) -> int:
    """The most pages of a v0.2 file: what one metadata bitmap describes."""
    return layout(page_size).v02_max_pages


def max_dir_blocks(page_size: int) -> int:
    """Directory blocks page 0 (or one directory-index page) can name."""
    return layout(page_size).dir_refs_per_index


def entries_per_dir_page(page_size: int) -> int:
    """Protected-page entries one directory page holds."""
    return layout(page_size).dir_entries_per_page


def pattern(page_id: int, size: int, salt: int = 0) -> bytes:
    """A page-specific byte pattern (the fixtures' regular pattern when salt=0)."""
    base = (page_id * 31 + salt * 7) % 251
    return bytes((base + i) % 251 for i in range(size))


@dataclass
class Meta:
    index: int  # 0 = A (page 1), 1 = B (page 2)
    total_pages: int
    generation: int
    free_count: int
    crc_ok: bool
    bits: set = field(default_factory=set)  # every set bit that fits in the page
    bitmap_fits: bool = True

    def problems(self, page_size: int, file_len: int) -> list[str]:
        """Why this copy is not a valid metadata copy (empty list: valid)."""
        out = []
        if not self.crc_ok:
            out.append("bad CRC")
            return out
        if not self.bitmap_fits:
            out.append("bitmap does not fit")
            return out
        if not {0, 1, 2} <= self.bits:
            out.append("reserved pages not marked")
        if any(b >= self.total_pages for b in self.bits):
            out.append("bit set past total_pages")
        if self.total_pages * page_size > file_len:
            out.append("total_pages past the end of the file")
        in_range = sum(1 for b in self.bits if b < self.total_pages)
        if self.free_count != self.total_pages - in_range:
            out.append("free_count disagrees with the bitmap")
        return out


@dataclass
class DirRef:
    page_a: int
    page_b: int
    active: int


@dataclass
class Image:
    path: Path
    file_len: int
    magic: bytes
    major: int
    minor: int
    patch: int
    build: int
    log2: int
    selector: int
    meta_checksum: int
    dir_count: int
    dir_crc_ok: bool
    dir_refs: list
    page_size: int
    metas: list  # [Meta A, Meta B]
    system_pages: set  # directory pages and in-use protected backing pages

    def valid_metas(self) -> list:
        return [m for m in self.metas if not m.problems(self.page_size, self.file_len)]

    def newest(self) -> Meta:
        valid = self.valid_metas()
        assert valid, "no valid metadata copy"
        top = max(m.generation for m in valid)
        best = [m for m in valid if m.generation == top]
        if len(best) == 2 and self.selector in (0, 1):
            return self.metas[self.selector]
        return best[0]

    def selected(self) -> Meta:
        assert self.selector in (0, 1), f"selector byte {self.selector}"
        return self.metas[self.selector]


def parse_meta(page: bytes, index: int) -> Meta:
    ps = len(page)
    total, gen, free = struct.unpack_from("<QQQ", page, 0)
    stored = struct.unpack_from("<I", page, ps - 4)[0]
    crc_ok = crc32(page[: ps - 4]) == stored
    bits = set()
    region = page[META_HEADER : ps - 4]
    for byte_i, byte in enumerate(region):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    bits.add(byte_i * 8 + bit)
    fits = total <= max_pages(ps)
    return Meta(index, total, gen, free, crc_ok, bits, fits)


def _parse_dir_page(page: bytes):
    ps = len(page)
    if crc32(page[: ps - 4]) != struct.unpack_from("<I", page, ps - 4)[0]:
        return None
    cap = struct.unpack_from("<I", page, 0)[0]
    if DIR_PAGE_HEADER + cap * DIR_ENTRY_SIZE > ps - 4:
        return None
    entries = []
    for s in range(cap):
        off = DIR_PAGE_HEADER + s * DIR_ENTRY_SIZE
        in_use = page[off]
        a, b = struct.unpack_from("<QQ", page, off + 1)
        entries.append((in_use, a, b))
    return entries


def read_image(path) -> Image:
    """Parse a v0.2 file. Asserts only what is needed to parse it at all."""
    path = Path(path)
    data = path.read_bytes()
    assert len(data) >= 20, "file shorter than the superblock"
    log2 = struct.unpack_from("<I", data, OFF_LOG2)[0]
    assert 10 <= log2 <= 30, f"page_size_log2 {log2}"
    ps = 1 << log2
    assert len(data) >= 3 * ps, "file shorter than three pages"
    page0 = data[:ps]
    dir_count = struct.unpack_from("<I", page0, OFF_DIR_COUNT)[0]
    dir_crc_ok = (
        crc32(page0[DIR_INDEX_OFFSET : ps - 4]) == struct.unpack_from("<I", page0, ps - 4)[0]
    )
    refs = []
    if dir_count and dir_count <= max_dir_blocks(ps):
        for i in range(dir_count):
            off = 24 + DIR_REF_SIZE * i
            a, b = struct.unpack_from("<QQ", page0, off)
            refs.append(DirRef(a, b, page0[off + 16]))
    metas = [parse_meta(data[ps : 2 * ps], 0), parse_meta(data[2 * ps : 3 * ps], 1)]
    system = set()
    npages = len(data) // ps
    for r in refs:
        system.update((r.page_a, r.page_b))
        order = (r.page_a, r.page_b) if r.active == 0 else (r.page_b, r.page_a)
        for pid in order:
            if pid < npages:
                entries = _parse_dir_page(data[pid * ps : (pid + 1) * ps])
                if entries is not None:
                    for in_use, a, b in entries:
                        if in_use:
                            system.update((a, b))
                    break
    return Image(
        path=path,
        file_len=len(data),
        magic=data[0:4],
        major=data[OFF_MAJOR],
        minor=data[OFF_MINOR],
        patch=data[OFF_PATCH],
        build=data[OFF_BUILD],
        log2=log2,
        selector=data[OFF_SELECTOR],
        meta_checksum=struct.unpack_from("<I", data, OFF_META_CHECKSUM)[0],
        dir_count=dir_count,
        dir_crc_ok=dir_crc_ok,
        dir_refs=refs,
        page_size=ps,
        metas=metas,
        system_pages=system,
    )


def check_valid_v02(path, allocated=None, require_both_valid=True) -> Image:
    """Assert that PATH is a well-formed v0.2 file that the Rust crate can open.

    allocated: when given, the regular allocated pages the file must record
    (the selected bitmap minus pages 0-2 minus directory/protected pages).
    """
    img = read_image(path)
    ps = img.page_size
    assert img.magic == MAGIC
    assert img.major == 0
    assert img.minor <= 2
    assert img.selector in (0, 1), f"selector byte {img.selector}"
    assert img.meta_checksum == CRC_RESIDUE, hex(img.meta_checksum)
    assert img.file_len >= 4 * ps
    assert img.dir_crc_ok, "directory index CRC is wrong"
    assert img.dir_count <= max_dir_blocks(ps)
    sel = img.selected()
    assert sel.problems(ps, img.file_len) == [], (
        f"selected metadata copy {'AB'[sel.index]} is invalid: {sel.problems(ps, img.file_len)}"
    )
    other = img.metas[1 - img.selector]
    if require_both_valid:
        why = other.problems(ps, img.file_len)
        assert why == [], f"other metadata copy {'AB'[other.index]} is invalid: {why}"
    if not other.problems(ps, img.file_len):
        assert sel.generation >= other.generation, (
            f"page 0 selects generation {sel.generation} but the other copy has {other.generation}"
        )
    assert sel.total_pages >= 4
    assert img.file_len >= sel.total_pages * ps
    if allocated is not None:
        regular = sorted(sel.bits - {0, 1, 2} - img.system_pages)
        assert regular == sorted(allocated)
    return img


def regular_allocated(img: Image) -> list:
    sel = img.newest()
    return sorted(sel.bits - {0, 1, 2} - img.system_pages)
