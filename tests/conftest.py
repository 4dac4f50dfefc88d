"""Shared helpers for the test suite.

Besides the pytest fixtures, this module holds a small, independent reader of
the v0.2 file layout (see shared/format/mappedpages-v0.2.md). Tests use it to
check what the pager leaves on disk without going through the pager itself,
and to build damaged files byte by byte.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# --------------------------------------------------------------------------
# Fixture location
# --------------------------------------------------------------------------

DEFAULT_FIXTURES_DIR = TESTS_DIR.parents[0].parent / "shared" / "fixtures" / "rust-v0.2"


def fixtures_dir() -> Path:
    """The folder of the Rust v0.2 fixtures (MAPPEDPAGES_FIXTURES overrides)."""
    env = os.environ.get("MAPPEDPAGES_FIXTURES")
    return Path(env) if env else DEFAULT_FIXTURES_DIR


def require_fixtures_dir() -> Path:
    d = fixtures_dir()
    assert d.is_dir(), (
        f"fixture folder {d} is missing: expected shared/fixtures/rust-v0.2 beside the "
        "repository, or MAPPEDPAGES_FIXTURES pointing at it"
    )
    return d


def load_manifest(name: str) -> dict:
    d = require_fixtures_dir()
    path = d / f"{name}.json"
    assert path.is_file(), f"fixture manifest {path} is missing"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def copy_fixture(name: str, dest_dir: Path) -> Path:
    """Copy fixture NAME.mpp into dest_dir (writable) and return the copy's path."""
    d = require_fixtures_dir()
    src = d / f"{name}.mpp"
    assert src.is_file(), f"fixture file {src} is missing"
    dst = Path(dest_dir) / f"{name}.mpp"
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst


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
    return (page_size - 28) * 8


def max_dir_blocks(page_size: int) -> int:
    return (page_size - 28) // 17


def entries_per_dir_page(page_size: int) -> int:
    return (page_size - 12) // 30


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


# --------------------------------------------------------------------------
# Pager helpers
# --------------------------------------------------------------------------


def force_close(p) -> None:
    """Close P, dropping any view a failed test may have left behind."""
    for _ in range(3):
        try:
            p.close()
            return
        except BufferError:
            gc.collect()
    p.close()


def pager_state(p) -> tuple:
    return (p.page_size, p.page_count, p.free_page_count, list(p.allocated_pages()))


@pytest.fixture
def mp():
    import mappedpages

    return mappedpages


@pytest.fixture
def new_pager(tmp_path):
    """A fresh 4096-byte-page pager; closed at teardown."""
    import mappedpages

    p = mappedpages.Pager.create(tmp_path / "pager.mpp")
    yield p
    force_close(p)


@pytest.fixture
def small_pager(tmp_path):
    """A fresh 1024-byte-page pager; closed at teardown."""
    import mappedpages

    p = mappedpages.Pager.create(tmp_path / "small.mpp", page_size=1024)
    yield p
    force_close(p)


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path_factory, monkeypatch):
    """Run every test (and the child interpreters it starts) outside the source tree.

    A child started with ``python -c`` puts its working directory first on
    sys.path; from the repository root that would import the uninstalled
    source package (which has no compiled core) instead of the installed one.
    """
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def kill_when_ready(argv: list, delay: float) -> bytes:
    """Start a child that prints "ready", SIGKILL it `delay` seconds later.

    Fails the test if the child does not start or ends on its own; returns its stderr.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child did not start: {line!r} {err.decode(errors='replace')}")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        f"child ended on its own (rc {proc.returncode}) before the kill:\n"
        + err.decode(errors="replace")
    )
    return err
