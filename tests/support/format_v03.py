"""An independent reader of the extended layout (file format 0.3), byte by byte."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from mappedpages._core import lib

from .edit import read_at
from .format_v02 import (
    CRC_RESIDUE,
    DIR_INDEX_OFFSET,
    DIR_REF_SIZE,
    MAGIC,
    META_HEADER,
    OFF_DIR_COUNT,
    OFF_LOG2,
    OFF_MAJOR,
    OFF_META_CHECKSUM,
    OFF_MINOR,
    OFF_SELECTOR,
    DirRef,
    _parse_dir_page,
    check_valid_v02,
    crc32,
    entries_per_dir_page,
    max_dir_blocks,
    parse_meta,
    regular_allocated,
)
from .geometry import CHUNK_PAGE_KINDS, chunk_page, layout, page_kind

# --------------------------------------------------------------------------
# The extended layout (file format 0.3)
# --------------------------------------------------------------------------
#
# A file whose page 0 says minor version 3 and whose chosen metadata copy
# counts more than C pages (the v0.2 cap, geometry.layout(PS).chunk_pages) is in the extended
# state: chunk 0 is the metadata copies' bitmap, as in v0.2, and every chunk
# i >= 1 (pages [i*C, (i+1)*C)) keeps four layout pages at its start: its
# free-map page in copies A and B, then directory-index page i-1 in copies A
# and B. Each copy carries the generation of the commit that wrote it; a
# chunk's state is the valid copy with the highest generation not above the
# chosen metadata copy's. A minor-3 file whose chosen copy counts at most C
# pages (a crash inside the upgrade) reads exactly like v0.2, unless page 0
# carries the mark "EXA" instead of "EXT": such a file was created in the
# extended layout and is extended at every page count; its root pages are
# pages 4 and 5 (q = 1) and directory-index page 0 is pages 6 and 7 (copies A
# and B), where chunk 1's index slots stay unused; with no chunk 1 the block
# count is index page 0's count.
#
# The reader below follows the extended layout's design spec byte by byte and,
# like read_image, never goes through the pager. It reads with pread, one page
# or one chunk's layout pages at a time, so it also works on huge sparse files
# (want_sets=False skips building Python sets of page ids).

MINOR_V02 = 2
MINOR_EXTENDED = 3
MARK_ALWAYS = b"EXA"  # bytes 13-15: extended from creation
ALWAYS_INDEX_PAGE = 6  # index page 0's copies A and B in such a file
CHUNK_HEADER = 24
LAYOUT_PAGES = layout(1024).layout_pages_per_chunk  # 4 at every page size
MAX_MAPPED_BYTES = 16 << 40  # the pager maps at most 16 TiB


def chunk_pages(page_size: int) -> int:
    """C: pages per chunk, the v0.2 cap (7968 at 1 KiB, 32544 at 4 KiB)."""
    return layout(page_size).chunk_pages


def chunk_count(total_pages: int, page_size: int) -> int:
    """Chunks i >= 1 that start below total_pages (each has 4 layout pages)."""
    return max(0, (total_pages - 1) // chunk_pages(page_size))


def is_layout_page(page_id: int, page_size: int) -> bool:
    """Pages 0-2, or one of the first four pages of a chunk i >= 1 (as the core places them)."""
    return page_kind(page_size, page_id) != lib.MP_PAGE_DATA


def layout_page_ids(total_pages: int, page_size: int) -> list:
    """The layout pages of the chunks i >= 1 below total_pages (pages 0-2 excluded)."""
    return [
        chunk_page(page_size, i, kind)
        for i in range(1, chunk_count(total_pages, page_size) + 1)
        for kind in CHUNK_PAGE_KINDS
    ]


def regular_page_total(total_pages: int, page_size: int) -> int:
    """Pages of a file of total_pages that are neither 0-2 nor layout pages."""
    return total_pages - 3 - LAYOUT_PAGES * chunk_count(total_pages, page_size)


def regular_page_id(index: int, page_size: int) -> int:
    """The index-th page (from 0) that is neither 0-2 nor a layout page."""
    c = chunk_pages(page_size)
    if index < c - 3:
        return 3 + index
    rest = index - (c - 3)
    return (1 + rest // (c - LAYOUT_PAGES)) * c + LAYOUT_PAGES + rest % (c - LAYOUT_PAGES)


def regular_page_index(page_id: int, page_size: int) -> int:
    """Inverse of regular_page_id (page_id must not be a layout page)."""
    assert not is_layout_page(page_id, page_size), page_id
    c = chunk_pages(page_size)
    if page_id < c:
        return page_id - 3
    chunk, off = divmod(page_id, c)
    return (c - 3) + (chunk - 1) * (c - LAYOUT_PAGES) + off - LAYOUT_PAGES


def expected_free_count(total_pages: int, page_size: int, used: int) -> int:
    """Free pages of a file with `used` allocated regular + directory/protected pages."""
    return regular_page_total(total_pages, page_size) - used


if hasattr(int, "bit_count"):

    def popcount(data: bytes) -> int:
        return int.from_bytes(data, "little").bit_count()

else:  # Python 3.9

    def popcount(data: bytes) -> int:
        return bin(int.from_bytes(data, "little")).count("1")


def _bits_of(data: bytes, base: int, first: int = 0):
    """Page ids base + j of the set bits j >= first of a bitmap."""
    for byte_i, byte in enumerate(data):
        if byte:
            for bit in range(8):
                j = byte_i * 8 + bit
                if byte >> bit & 1 and j >= first:
                    yield base + j


@dataclass
class LayoutCopy:
    """One copy of a free-map page or of a directory-index page (same header shape)."""

    page: int  # page id
    crc_ok: bool
    generation: int  # @0
    index: int  # @8: chunk index (free map) or k (index page)
    field12: int  # @12: dir_blocks (free map) or count (index page)
    field16: int  # @16: the chunk's free count (free map) or zero (index page)
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw[CHUNK_HEADER : len(self.raw) - 4]


def parse_layout_copy(raw: bytes, page_id: int) -> LayoutCopy:
    ps = len(raw)
    gen, idx, f12, f16 = struct.unpack_from("<QIIQ", raw, 0)
    stored = struct.unpack_from("<I", raw, ps - 4)[0]
    return LayoutCopy(page_id, crc32(raw[: ps - 4]) == stored, gen, idx, f12, f16, raw)


def seal(raw) -> bytes:
    """raw (a page) with its trailing CRC of [0, PS-4) rewritten."""
    page = bytearray(raw)
    ps = len(page)
    struct.pack_into("<I", page, ps - 4, crc32(bytes(page[: ps - 4])))
    return bytes(page)


def free_map_problems(
    copy: LayoutCopy, chunk: int, total_pages: int, page_size: int, meta_generation: int
) -> list:
    """Why COPY is not a valid free-map copy of CHUNK (empty list: valid)."""
    if not copy.crc_ok:
        return ["bad CRC"]
    out = []
    if copy.index != chunk:
        out.append(f"chunk index {copy.index}")
    if copy.generation > meta_generation:
        out.append(f"generation {copy.generation} > metadata generation {meta_generation}")
    bm = copy.body
    c = chunk_pages(page_size)
    assert len(bm) * 8 == c
    if bm[0] & 0x0F != 0x0F:
        out.append("layout pages (bits 0-3) not marked allocated")
    span = min(c, total_pages - chunk * c)
    whole, rem = divmod(span, 8)
    past = bm[whole + 1 :] if rem else bm[whole:]
    if (rem and bm[whole] >> rem) or any(past):
        out.append("bit set for a page at or past total_pages")
    if copy.field16 != span - popcount(bm):
        out.append(f"free count {copy.field16} != {span} - {popcount(bm)} set bits")
    return out


def index_copy_problems(copy: LayoutCopy, k: int, page_size: int, meta_generation: int) -> list:
    """Why COPY is not a valid copy of directory-index page K (empty list: valid)."""
    if not copy.crc_ok:
        return ["bad CRC"]
    out = []
    if copy.index != k:
        out.append(f"index page number {copy.index}")
    if copy.generation > meta_generation:
        out.append(f"generation {copy.generation} > metadata generation {meta_generation}")
    if copy.field12 > max_dir_blocks(page_size):
        out.append(f"count {copy.field12} > {max_dir_blocks(page_size)}")
    else:
        for j in range(copy.field12):
            if copy.raw[CHUNK_HEADER + DIR_REF_SIZE * j + 16] > 1:
                out.append(f"reference {j}: active byte not 0/1")
    return out


def choose_copy(a: LayoutCopy, a_why: list, b: LayoutCopy, b_why: list):
    """The valid copy with the highest generation (ties: A), or None."""
    best = None
    for copy, why in ((a, a_why), (b, b_why)):
        if not why and (best is None or copy.generation > best.generation):
            best = copy
    return best


@dataclass
class V03Image:
    """What read_v03 found. `problems` empty means the file is well formed."""

    path: Path
    page_size: int
    file_len: int
    minor: int
    state: str  # "small" (read like v0.2) or "extended"
    meta_index: int  # chosen metadata copy: 0 = A (page 1), 1 = B (page 2)
    generation: int
    total_pages: int
    meta_free_count: int
    allocated_count: int  # set bits below total_pages, every kind of page
    chunk_copy: dict  # chunk i >= 1 -> 0 (A) or 1 (B): the chosen free-map copy
    chunk_generation: dict  # chunk i >= 1 -> generation of the chosen copy
    chunk_free: dict  # chunk i >= 1 -> its free count
    dir_blocks: int
    index_copy: dict  # index page k -> 0 (A) or 1 (B)
    index_generation: dict  # index page k -> generation of the chosen copy
    dir_refs: list  # DirRef per directory block
    system_pages: set  # directory pages and in-use protected backing pages
    leftovers: list  # layout pages with a valid CRC and generation > the chosen copy's
    regular: set | None  # allocated pages minus 0-2, layout pages and system pages
    regular_count: int
    problems: list
    roots_page: int = 0  # copy A of the root pages (bytes 20-23 of the metadata copy, * 4)
    roots: tuple = (0,) * 8  # from the chosen root page copy (extended state)
    record: list = ()  # (first, count, crc) of that copy, if written by the chosen commit

    @property
    def free_count(self) -> int:
        return self.total_pages - self.allocated_count


def _pread(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    return data + bytes(n - len(data))  # past the end reads as zero (reported elsewhere)


def _meta_order(metas: list, selector: int) -> list:
    """CRC-valid copies, newest first; at equal generations the selector's, else A."""
    first = selector if selector in (0, 1) else 0
    ok = [m for m in metas if m.crc_ok]
    return sorted(ok, key=lambda m: (-m.generation, m.index != first))


def _read_dir_pages(fd, ps, refs, total, is_allocated, strict, problems):
    """System pages named by the directory REFS (v0.2 directory pages)."""
    epp = entries_per_dir_page(ps)
    system: set = set()
    dir_pages: set = set()
    for n, r in enumerate(refs):
        pair = (r.page_a, r.page_b)
        if strict:
            if r.page_a == r.page_b or min(pair) < 3 or max(pair) >= total:
                problems.append(f"directory block {n}: impossible pages {pair}")
                continue
            if any(is_layout_page(x, ps) for x in pair):
                problems.append(f"directory block {n}: pages {pair} include a layout page")
            if set(pair) & dir_pages:
                problems.append(f"directory block {n}: pages {pair} claimed twice")
            if not all(is_allocated(x) for x in pair):
                problems.append(f"directory block {n}: pages {pair} not allocated")
        dir_pages.update(pair)
        system.update(pair)
        order = (r.page_a, r.page_b) if r.active == 0 else (r.page_b, r.page_a)
        for attempt, pid in enumerate(order):
            if pid >= total:
                continue
            raw = _pread(fd, ps, pid * ps)
            entries = _parse_dir_page(raw)
            if entries is not None and len(entries) != epp:
                entries = None
            if entries is None:
                if strict and attempt == 0:
                    problems.append(f"directory block {n}: live page {pid} is damaged")
                continue
            for slot, (in_use, a, b) in enumerate(entries):
                if not in_use:
                    continue
                if strict:
                    pid_p = n * epp + slot
                    if a == b or min(a, b) < 3 or max(a, b) >= total:
                        problems.append(f"protected page {pid_p}: impossible pages {(a, b)}")
                    elif any(is_layout_page(x, ps) for x in (a, b)):
                        problems.append(f"protected page {pid_p}: layout page in {(a, b)}")
                    elif {a, b} & system:
                        problems.append(f"protected page {pid_p}: pages {(a, b)} claimed twice")
                    elif not (is_allocated(a) and is_allocated(b)):
                        problems.append(f"protected page {pid_p}: pages {(a, b)} not allocated")
                system.update((a, b))
            break
    return system


def record_sum(data: bytes, first: int) -> int:
    """The record sum of a run of pages starting at page FIRST (FORMAT.md, "Root pages")."""
    mask, prime = 0xFFFFFFFFFFFFFFFF, 0x100000001B3
    lanes = [0xCBF29CE484222325 ^ first ^ j for j in range(4)]
    for i, (w,) in enumerate(struct.iter_unpack("<Q", data)):
        lanes[i % 4] = ((lanes[i % 4] ^ w) * prime) & mask
    s = lanes[0]
    for h in lanes[1:]:
        s = ((s ^ h) * prime) & mask
    return (s ^ (s >> 32)) & 0xFFFFFFFF


def _read_roots_pages(fd, ps, at, total, gen, is_allocated, problems) -> dict:
    """The extended layout's root pages (FORMAT.md, "Root pages"): each copy is
    @0 generation, @8 record count n, @12 zero, @16 eight u64 roots, @80 n
    entries (first u64, count u32, crc u32), CRC at PS-4; the valid copy with the
    highest generation not above the metadata copy's is used."""
    out: dict = {"copies": [], "chosen": None, "roots": (0,) * 8, "record": []}
    if at == 0:
        return out
    if at % 4 or at + 1 >= total or is_layout_page(at, ps) or is_layout_page(at + 1, ps):
        problems.append(f"root pages at {at} are not a pair of data pages of the file")
        return out
    if not (is_allocated(at) and is_allocated(at + 1)):
        problems.append(f"root pages {at}, {at + 1} not allocated")
    room = min(256, (ps - 84) // 16)
    best = None
    for w in range(2):
        raw = _pread(fd, ps, (at + w) * ps)
        g, n, zero = struct.unpack_from("<QII", raw, 0)
        why = []
        if crc32(raw[: ps - 4]) != struct.unpack_from("<I", raw, ps - 4)[0]:
            why = ["bad CRC"]
        elif g > gen or n > room or zero:
            why = [f"generation {g}, count {n}, field @12 {zero}"]
        cp = (g, n, why, at + w, raw)
        out["copies"].append((cp, why))
        if not why and (best is None or g > best[0]):
            best = cp
    if best is None:
        problems.append(f"root pages {at}, {at + 1}: no valid copy")
        return out
    out["chosen"] = best
    out["roots"] = struct.unpack_from("<8Q", best[4], 16)
    if best[0] == gen:
        out["record"] = [struct.unpack_from("<QII", best[4], 80 + 16 * i) for i in range(best[1])]
    return out


def read_v03(path, *, want_sets: bool = True, after_crash: bool = False) -> V03Image:
    """Parse a minor-2 or minor-3 file by the extended layout's rules; collect problems.

    after_crash: the file may hold what a crash leaves (page 0's selector
    stale, the other metadata copy torn); otherwise page 0 must select the
    chosen copy in the small state. The newest metadata copy with a valid CRC
    must always be valid: a commit writes everything it names before it.
    """
    path = Path(path)
    problems: list = []
    with open(path, "rb") as fh:
        fd = fh.fileno()
        file_len = os.fstat(fd).st_size
        head = _pread(fd, 20, 0)
        assert file_len >= 20, "file shorter than the superblock"
        assert head[:4] == MAGIC, f"magic {head[:4]!r}"
        assert head[OFF_MAJOR] == 0, f"major {head[OFF_MAJOR]}"
        minor = head[OFF_MINOR]
        assert minor in (MINOR_V02, MINOR_EXTENDED), f"minor {minor}"
        log2 = struct.unpack_from("<I", head, OFF_LOG2)[0]
        assert 10 <= log2 <= 30, f"page_size_log2 {log2}"
        ps = 1 << log2
        c = chunk_pages(ps)
        assert file_len >= 4 * ps, "file shorter than four pages"
        selector = head[OFF_SELECTOR]
        always = minor == MINOR_EXTENDED and head[13:16] == MARK_ALWAYS
        raw_metas = [_pread(fd, ps, ps), _pread(fd, ps, 2 * ps)]
        metas = [parse_meta(raw_metas[0], 0), parse_meta(raw_metas[1], 1)]
        file_pages = file_len // ps

        chosen = None
        state = ""
        first_why = ["no metadata copy has a valid CRC"]
        for rank, m in enumerate(_meta_order(metas, selector)):
            if always:
                why = []
                if not m.crc_ok:
                    why = ["bad CRC"]
                elif not 8 <= m.total_pages <= file_pages:
                    why = [f"total_pages {m.total_pages}"]
                elif m.free_count >> 32 != 1:
                    why = [f"root pages at {(m.free_count >> 32) * 4}, not 4"]
                kind = "extended"
            elif m.total_pages <= c:
                why = m.problems(ps, file_len)
                kind = "small"
            elif minor != MINOR_EXTENDED:
                why = [f"total_pages {m.total_pages} past the v0.2 cap in a minor-{minor} file"]
                kind = "extended"
            else:
                why = []
                kind = "extended"
            if not why:
                chosen, state = m, kind
                if rank > 0:
                    problems.append(
                        "the newest metadata copy with a valid CRC is not valid: "
                        + "; ".join(first_why)
                    )
                break
            if rank == 0:
                first_why = [f"copy {'AB'[m.index]} (generation {m.generation}): " + ", ".join(why)]
        assert chosen is not None, f"no valid metadata copy: {first_why}"

        total = chosen.total_pages
        gen = chosen.generation
        info = dict(
            chunk_copy={}, chunk_generation={}, chunk_free={}, index_copy={},
            index_generation={}, leftovers=[],
        )
        if state == "small":
            # Exactly v0.2: page 0's directory index, the bitmap in the metadata copy.
            page0 = _pread(fd, ps, 0)
            if not after_crash:
                if selector != chosen.index:
                    problems.append(f"page 0 selects {selector}, the chosen copy is {chosen.index}")
                meta_checksum = struct.unpack_from("<I", page0, OFF_META_CHECKSUM)[0]
                if meta_checksum != CRC_RESIDUE:
                    problems.append(f"meta_checksum {meta_checksum:#x}")
            dir_count = struct.unpack_from("<I", page0, OFF_DIR_COUNT)[0]
            dir_crc = struct.unpack_from("<I", page0, ps - 4)[0]
            if crc32(page0[DIR_INDEX_OFFSET : ps - 4]) != dir_crc:
                problems.append("page 0's directory index CRC is wrong")
            refs = []
            if dir_count > max_dir_blocks(ps):
                problems.append(f"directory count {dir_count}")
            else:
                for i in range(dir_count):
                    off = 24 + DIR_REF_SIZE * i
                    a, b = struct.unpack_from("<QQ", page0, off)
                    refs.append(DirRef(a, b, page0[off + 16]))
            bits = chosen.bits
            system = _read_dir_pages(fd, ps, refs, total, bits.__contains__, False, problems)
            allocated = sum(1 for b in bits if b < total)
            regular = set(bits) - {0, 1, 2} - system
            return V03Image(
                path, ps, file_len, minor, "small", chosen.index, gen, total,
                chosen.free_count, allocated, dir_blocks=len(refs), dir_refs=refs,
                system_pages=system, regular=regular if want_sets else None,
                regular_count=len(regular), problems=problems, **info,
            )

        # ---- the extended state
        if total > file_pages:
            problems.append(f"total_pages {total} past the end of the file ({file_pages} pages)")
        if total * ps > MAX_MAPPED_BYTES:
            problems.append(f"total_pages {total} past the 16 TiB mapping")
        meta_bm = raw_metas[chosen.index][META_HEADER : ps - 4]
        if meta_bm[0] & 7 != 7:
            problems.append("pages 0-2 not marked allocated in the metadata copy")
        allocated = popcount(meta_bm)
        bitmaps = [meta_bm]
        nchunks = chunk_count(total, ps)
        dir_blocks = 0
        nidx = 0
        index_raw: dict = {}
        # The commit's seal: the stored CRCs of the copies it wrote (generation
        # equal to the metadata copy's), free-map pages by chunk, then index
        # pages by number (FORMAT.md, "Commits: one commit point").
        sealed: list = []
        for i in range(1, nchunks + 1):
            base = i * c
            if total < base + LAYOUT_PAGES:
                problems.append(f"chunk {i} has {total - base} pages, fewer than 4 layout pages")
                bitmaps.append(bytes(c // 8))
                continue
            block = _pread(fd, LAYOUT_PAGES * ps, base * ps)
            copies = [parse_layout_copy(block[j * ps : (j + 1) * ps], base + j) for j in range(4)]
            for cp in copies:
                if cp.crc_ok and cp.generation > gen:
                    info["leftovers"].append(cp.page)
            why = [free_map_problems(cp, i, total, ps, gen) for cp in copies[:2]]
            fm = choose_copy(copies[0], why[0], copies[1], why[1])
            if fm is None:
                problems.append(f"chunk {i}: no valid free-map copy (A: {why[0]}; B: {why[1]})")
                bitmaps.append(bytes(c // 8))
                continue
            info["chunk_copy"][i] = fm.page - base
            info["chunk_generation"][i] = fm.generation
            if fm.generation == gen:
                sealed.append(fm.raw[ps - 4 :])
            info["chunk_free"][i] = fm.field16
            if i == 1:
                dir_blocks = fm.field12
                nidx = -(-dir_blocks // max_dir_blocks(ps))
            elif fm.field12 != 0:
                problems.append(f"chunk {i}: dir_blocks field {fm.field12}, not 0")
            if i - 1 < nidx:
                index_raw[i - 1] = copies[2:]
            allocated += popcount(fm.body)
            bitmaps.append(fm.body)
        if always:
            block = _pread(fd, 2 * ps, ALWAYS_INDEX_PAGE * ps)
            index_raw[0] = [
                parse_layout_copy(block[j * ps : (j + 1) * ps], ALWAYS_INDEX_PAGE + j)
                for j in range(2)
            ]
            for cp in index_raw[0]:
                if cp.crc_ok and cp.generation > gen:
                    info["leftovers"].append(cp.page)
            if nchunks == 0:
                # No chunk 1: index page 0 holds the block count.
                why = [index_copy_problems(cp, 0, ps, gen) for cp in index_raw[0]]
                ix0 = choose_copy(index_raw[0][0], why[0], index_raw[0][1], why[1])
                dir_blocks = ix0.field12 if ix0 is not None else 0
            nidx = max(nidx, 1)
        # bytes 16-19: the seal; 20-23: q, the root pages at 4q and 4q + 1 (0: none)
        seal_field = chosen.free_count & 0xFFFFFFFF
        roots_page = (chosen.free_count >> 32) * 4

        def is_allocated(pid: int) -> bool:
            if pid >= total:
                return False
            ch, j = divmod(pid, c)
            if ch >= len(bitmaps):
                return False
            return bool(bitmaps[ch][j // 8] >> (j % 8) & 1)

        r_cap = max_dir_blocks(ps)
        refs = []
        for k in range(nidx):
            if k not in index_raw:
                problems.append(f"directory-index page {k}: chunk {k + 1} is not in the file")
                continue
            a, b = index_raw[k]
            why = [index_copy_problems(cp, k, ps, gen) for cp in (a, b)]
            ix = choose_copy(a, why[0], b, why[1])
            if ix is None:
                problems.append(
                    f"directory-index page {k}: no valid copy (A: {why[0]}; B: {why[1]})"
                )
                continue
            info["index_copy"][k] = ix.page - (
                ALWAYS_INDEX_PAGE if always and k == 0 else (k + 1) * c + 2
            )
            info["index_generation"][k] = ix.generation
            if ix.generation == gen:
                sealed.append(ix.raw[ps - 4 :])
            want = min(r_cap, dir_blocks - k * r_cap)
            if ix.field12 != want:
                problems.append(
                    f"directory-index page {k} holds {ix.field12} references, not {want}"
                )
            if ix.field16 != 0:
                problems.append(f"directory-index page {k}: field @16 is {ix.field16}, not 0")
            for j in range(min(ix.field12, want)):
                off = CHUNK_HEADER + DIR_REF_SIZE * j
                pa, pb = struct.unpack_from("<QQ", ix.raw, off)
                refs.append(DirRef(pa, pb, ix.raw[off + 16]))
        roots_found = _read_roots_pages(fd, ps, roots_page, total, gen, is_allocated, problems)
        for cp, why in roots_found["copies"]:
            if cp is not None and not why[:1] == ["bad CRC"] and cp[0] > gen:
                info["leftovers"].append(cp[3])
        if roots_found["chosen"] is not None and roots_found["chosen"][0] == gen:
            sealed.append(roots_found["chosen"][4][ps - 4 :])
        want_seal = crc32(b"".join(sealed))
        if seal_field != want_seal:
            problems.append(
                f"metadata seal {seal_field:#x} != {want_seal:#x} (the CRC of the "
                f"{len(sealed)} page copies of generation {gen})"
            )
        system = _read_dir_pages(fd, ps, refs, total, is_allocated, True, problems)
        if roots_page:
            if system & {roots_page, roots_page + 1}:
                problems.append("a root page is also a directory or protected page")
            system |= {roots_page, roots_page + 1}
        if always:
            if not all(is_allocated(i) for i in (6, 7)):
                problems.append("index page 0's pages 6-7 are not allocated")
            system |= {ALWAYS_INDEX_PAGE, ALWAYS_INDEX_PAGE + 1}
        nlayout = LAYOUT_PAGES * nchunks
        regular_count = allocated - 3 - nlayout - len(system)
        regular = None
        if want_sets:
            regular = set(_bits_of(meta_bm, 0, 3))
            for i in range(1, len(bitmaps)):
                regular.update(_bits_of(bitmaps[i], i * c, LAYOUT_PAGES))
            regular -= system
            if len(regular) != regular_count:
                problems.append(
                    f"{len(regular)} regular pages in the bitmaps, {regular_count} by the counts"
                )
        return V03Image(
            path, ps, file_len, minor, "extended", chosen.index, gen, total, chosen.free_count,
            allocated, dir_blocks=dir_blocks, dir_refs=refs, system_pages=system,
            regular=regular, regular_count=regular_count, problems=problems,
            roots_page=roots_page, roots=roots_found["roots"], record=roots_found["record"],
            **info,
        )


def inspect_v03(
    path, *, want_sets: bool = True, after_crash: bool = False, allow_leftovers=None
) -> V03Image:
    """read_v03, asserting that the file is well formed; returns what it read.

    allow_leftovers: whether copies newer than the committed state may be
    present (default: only after a crash; a writer's open clears them).
    """
    img = read_v03(path, want_sets=want_sets, after_crash=after_crash)
    problems = list(img.problems)
    if allow_leftovers is None:
        allow_leftovers = after_crash
    if img.state == "extended" and img.leftovers and not allow_leftovers:
        problems.append(f"leftover copies (generation > {img.generation}) at {img.leftovers}")
    assert not problems, f"{img.path} ({img.state} state, minor {img.minor}):\n" + "\n".join(
        f"- {p}" for p in problems
    )
    return img


def check_valid_v03(path, allocated=None, *, after_crash: bool = False, allow_leftovers=None):
    """Assert PATH is a well-formed file by the extended layout's rules (minor 2 or 3).

    Returns the set of allocated regular page ids (what allocated_pages() lists:
    pages 0-2, layout pages, directory pages and protected backing pages excluded).
    allocated: when given, the set that must be returned.
    """
    img = inspect_v03(path, after_crash=after_crash, allow_leftovers=allow_leftovers)
    if allocated is not None:
        assert img.regular == set(allocated), (
            f"allocated pages differ: file only {sorted(img.regular - set(allocated))[:20]}, "
            f"expected only {sorted(set(allocated) - img.regular)[:20]}"
        )
    return img.regular


def check_valid_any(path, allocated=None, *, after_crash: bool = False):
    """check_valid_v02 for a minor-2 file (after_crash: the lenient v0.3 reading
    of it), check_valid_v03 for a minor-3 file; returns the allocated regular pages."""
    minor = read_at(path, OFF_MINOR, 1)[0]
    if minor <= MINOR_V02 and not after_crash:
        img = check_valid_v02(path)
        got = set(regular_allocated(img))
        if allocated is not None:
            assert got == set(allocated)
        return got
    return check_valid_v03(path, allocated, after_crash=after_crash)
