"""What a mappedpages file holds, read through the library: the CLI's model of a file.

This module owns the inspection the ``mappedpages`` command renders:

- ``read_superblock``: page 0's 20 bytes as found, only to name the format
  version and to tell a file that is not a pager file (exit status 2) from a
  damaged one (the library's open says why);
- ``open_reader``: a ``ReadOnlyPager`` with the recovery warnings its open gave;
- ``read_layout``: what every page is (``Layout``), from the library's own
  statistics, directory and protected-page lists, and the placement of the
  extended layout's pages as the C layout functions define it
  (``chunk_layout_pages``); a page claimed twice or named past the end is a
  conflict, never an exception;
- ``info_data``: everything ``info`` shows, as plain data.

Checking and repair (``_check``) and the pictures (``_render``) build on it.
Errors are ``CliError`` (one line and an exit status); nothing here prints.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from typing import Any

from mappedpages._core import ffi, lib
from mappedpages._errors import (
    CorruptFileError,
    CorruptProtectedDirectory,
    FileTruncated,
    MappedPageError,
    RecoveryWarning,
    error_for,
)
from mappedpages._readers import reader_table_data
from mappedpages._readonly import ReadOnlyPager

# Exit statuses of ``check`` (and of every command: 2 when the file cannot be read).
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNREADABLE = 2

_SUPERBLOCK_SIZE = 20
_MAGIC = b"MPPG"
_CRC_RESIDUE = 0x2144DF1C
_MIN_LOG2, _MAX_LOG2 = 10, 30
_MINOR_V02, _MINOR_EXTENDED = 2, 3
_EXTENDED_MARK = b"EXT"  # page 0 bytes 13-15 of an extended-layout (0.3) file
# ... of a file created in the extended layout: extended at every page count, its
# directory-index page 0 on pages 6 and 7 (FORMAT.md, "Extended from creation").
_EXTENDED_ALWAYS_MARK = b"EXA"
_ALWAYS_INDEX_PAGES = (6, 7)

# Kinds of page, in the order of the legend. The code is the index.
RESERVED, METADATA, FREEMAP, DIRINDEX, DIRECTORY, PROTECTED, ALLOCATED, FREE = range(8)
KIND_NAMES = (
    "reserved",
    "metadata",
    "free map",
    "directory index",
    "directory",
    "protected backing",
    "allocated",
    "free",
)
# Kinds a page of the layout itself can be (not handed out by alloc).
_LAYOUT_KINDS = (RESERVED, METADATA, FREEMAP, DIRINDEX)

# Report flags that a writer's open repairs (page 0 rewritten, directory repairs committed).
_REPAIRABLE_FLAGS = frozenset(
    {
        "selector_invalid",
        "selector_stale",
        "meta_checksum_mismatch",
        "dir_index_torn",
        "dir_fallback",
        "dir_entry_dropped",
        "dir_block_dropped",
    }
)


# ---------------------------------------------------------------- layout placement
# Where the layout puts its own pages is the C core's (format.c): these ask it.

_RESERVED = 3  # pages 0-2: the superblock and metadata copies A, B, in both layouts

# Which mp_layout_page kinds a chunk's own pages are, as ``chunk_layout_pages`` lists them.
_CHUNK_PAGE_KINDS = (
    lib.MP_PAGE_FREE_MAP_A,
    lib.MP_PAGE_FREE_MAP_B,
    lib.MP_PAGE_INDEX_A,
    lib.MP_PAGE_INDEX_B,
)


def layout_geometry(page_size: int) -> Any:
    """The core's geometry of both layouts at ``page_size`` (an ``mp_layout``)."""
    out = ffi.new("mp_layout *")
    rc = lib.mp_layout_get(page_size, out)
    if rc != 0:
        raise error_for(rc, f"page size {page_size}")
    return out


def chunk_count(page_count: int, chunk_pages: int) -> int:
    """Free-map chunks of ``chunk_pages`` pages that hold a page of a ``page_count``-page file.

    1 while the file is within v0.2's cap (the metadata bitmap is chunk 0).
    """
    if chunk_pages <= 0 or page_count <= chunk_pages:
        return 1
    return (page_count - 1) // chunk_pages + 1


def chunk_layout_pages(page_size: int, chunk: int) -> tuple[int, int, int, int]:
    """Chunk ``chunk``'s (>= 1) free-map copies A, B and directory-index copies A, B."""
    out = ffi.new("uint64_t *")
    pages = []
    for kind in _CHUNK_PAGE_KINDS:
        rc = lib.mp_layout_chunk_page(page_size, chunk, kind, out)
        if rc != 0:
            raise error_for(rc, f"chunk {chunk} at page size {page_size}")
        pages.append(int(out[0]))
    return pages[0], pages[1], pages[2], pages[3]


def layout_page_total(page_size: int, page_count: int) -> int:
    """Pages the layout itself keeps (pages 0-2 and each chunk's own) in ``page_count`` pages."""
    out = ffi.new("uint64_t *")
    rc = lib.mp_layout_pages_below(page_size, page_count, out)
    if rc != 0:
        raise error_for(rc, f"{page_count} pages of {page_size} bytes")
    return int(out[0])


class CliError(Exception):
    """An error the tool reports as one line on stderr, with an exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Damaged(CliError):
    """The file is a pager file that the library refuses to open: damaged beyond recovery."""

    def __init__(self, path: str, detail: str, salvageable: bool = False) -> None:
        super().__init__(
            EXIT_PROBLEMS,
            f"{_display(path)}: damaged: {detail} (`mappedpages check` lists the problems)",
        )
        self.detail = detail
        # Open refused to discard acknowledged state; a salvaging open may not.
        self.salvageable = salvageable


# ---------------------------------------------------------------- reading


@dataclass
class Superblock:
    """Page 0's first 20 bytes, as found (not validated beyond the tag and version)."""

    file_size: int
    version: tuple[int, int, int, int]
    page_size_log2: int
    selector: int
    meta_checksum: int
    mark: bytes = b"\0\0\0"

    @property
    def version_text(self) -> str:
        """The four version bytes, dotted: ``0.2.0.0``."""
        return ".".join(str(v) for v in self.version)

    @property
    def extended(self) -> bool:
        """Page 0 says the extended layout: minor 3 with the ``EXT`` or ``EXA`` mark."""
        return self.version[1] == _MINOR_EXTENDED and self.mark in (
            _EXTENDED_MARK,
            _EXTENDED_ALWAYS_MARK,
        )

    @property
    def extended_always(self) -> bool:
        """The file was created in the extended layout (``EXA``): extended at every size."""
        return self.version[1] == _MINOR_EXTENDED and self.mark == _EXTENDED_ALWAYS_MARK


def _display(path: str) -> str:
    """A path as text that can be printed or put in XML (undecodable bytes replaced)."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c >= " " or c == "\t" else "?" for c in text)


def _os_error(path: str, exc: OSError) -> CliError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    return CliError(EXIT_UNREADABLE, f"{_display(path)}: {reason}")


def read_superblock(path: str) -> Superblock:
    """Read page 0's superblock, or raise CliError(2) when the file is no pager file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    name = _display(path)
    if stat.S_ISDIR(st.st_mode):
        raise CliError(EXIT_UNREADABLE, f"{name}: is a directory, not a pager file")
    if not stat.S_ISREG(st.st_mode):
        raise CliError(EXIT_UNREADABLE, f"{name}: not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SUPERBLOCK_SIZE)
    except OSError as exc:
        raise _os_error(path, exc) from None
    if not head:
        raise CliError(EXIT_UNREADABLE, f"{name}: empty file, not a mappedpages file")
    if head[:4] != _MAGIC:
        raise CliError(
            EXIT_UNREADABLE, f"{name}: not a mappedpages file (it does not start with 'MPPG')"
        )
    if len(head) < _SUPERBLOCK_SIZE:
        raise CliError(
            EXIT_UNREADABLE,
            f"{name}: only {len(head)} bytes, shorter than a mappedpages superblock",
        )
    major, minor, mark = head[4], head[5], head[13:16]
    if major != 0 or minor > _MINOR_EXTENDED:
        raise CliError(
            EXIT_UNREADABLE,
            f"{name}: format version {major}.{minor} is not a version this library reads "
            "(0.2 and older, and its extended layout 0.3)",
        )
    if minor == _MINOR_EXTENDED and mark not in (_EXTENDED_MARK, _EXTENDED_ALWAYS_MARK):
        # Minor 3 alone may be the Rust crate's own next version, not this library's.
        raise CliError(
            EXIT_UNREADABLE,
            f"{name}: format version 0.3 without the extended-layout mark (page 0 bytes "
            f"13-15 are {mark.hex(' ')}, not 'EXT' or 'EXA') is not a version this library "
            "reads",
        )
    return Superblock(
        file_size=st.st_size,
        version=(head[4], head[5], head[6], head[7]),
        page_size_log2=int.from_bytes(head[8:12], "little"),
        selector=head[12],
        meta_checksum=int.from_bytes(head[16:20], "little"),
        mark=bytes(mark),
    )


def _strip_path(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _damage_detail(exc: CorruptFileError, sb: Superblock, path: str) -> str:
    """What a CorruptFileError means for this file, in one line."""
    text = _strip_path(str(exc), path)
    log2 = sb.page_size_log2
    if not _MIN_LOG2 <= log2 <= _MAX_LOG2:
        return (
            f"page 0's page-size field is {log2} (2**{log2} bytes), outside 2**10 to 2**30: "
            "the superblock is damaged"
        )
    page_size = 1 << log2
    if sb.file_size < 4 * page_size:
        return (
            f"the file is {sb.file_size} bytes, shorter than the 4 pages of {page_size} bytes "
            "every pager file has: it was truncated"
        )
    return text


def open_reader(
    path: str, sb: Superblock, salvage: bool = False
) -> tuple[ReadOnlyPager, list[str]]:
    """Open ``path`` read-only; return the reader and the recovery warnings, path stripped.

    A file the library finds damaged beyond recovery raises CliError(1);
    one that cannot be read at all, CliError(2).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecoveryWarning)
        try:
            reader = ReadOnlyPager.open(path, snapshot=False, salvage=salvage)
        except CorruptFileError as exc:
            salvageable = isinstance(exc, (FileTruncated, CorruptProtectedDirectory))
            raise Damaged(path, _damage_detail(exc, sb, path), salvageable) from None
        except OSError as exc:
            raise _os_error(path, exc) from None
        except (MappedPageError, ValueError) as exc:
            raise CliError(EXIT_UNREADABLE, f"{_display(path)}: {exc}") from None
    notes = [
        _strip_path(str(w.message), path) for w in caught if issubclass(w.category, RecoveryWarning)
    ]
    return reader, notes


@dataclass
class Layout:
    """What every page of an open pager file is, and how the pager's own pages are placed."""

    page_size: int
    page_count: int
    free_count: int
    max_pages: int
    kinds: bytearray
    dir_blocks: list[tuple[int, int]]
    protected: dict[int, tuple[int, int]]
    allocated: int
    conflicts: list[str] = field(default_factory=list)
    format_minor: int = _MINOR_V02
    chunk_pages: int = 0
    layout_pages: int = _RESERVED
    always: bool = False  # created in the extended layout: extended at every size

    def count(self, kind: int) -> int:
        """Pages of one kind."""
        return self.kinds.count(kind)

    @property
    def chunks(self) -> int:
        """Free-map chunks of ``chunk_pages`` pages that hold a page of the file.

        1 in the v0.2 layout (the metadata bitmap is chunk 0); in the extended
        layout every chunk past the first has free-map and directory-index pages.
        """
        return chunk_count(self.page_count, self.chunk_pages)

    @property
    def extended(self) -> bool:
        """The file is in the extended state: created in it, or past v0.2's cap."""
        return self.always or self.chunks > 1

    def index_pages(self) -> list[tuple[int, int]]:
        """Each directory-index page's copies A and B, by index page number."""
        pairs = [tuple(self.chunk_layout_pages(c)[2:]) for c in range(1, self.chunks)]
        if self.always:
            pairs = [_ALWAYS_INDEX_PAGES] + pairs[1:]
        return [(int(a), int(b)) for a, b in pairs]

    def chunk_layout_pages(self, chunk: int) -> tuple[int, int, int, int]:
        """Chunk ``chunk``'s (>= 1) free-map copies A, B and directory-index copies A, B."""
        return chunk_layout_pages(self.page_size, chunk)

    def free_runs(self) -> list[tuple[int, int]]:
        """Every run of free pages as (first page, length), in page order."""
        return [
            (m.start(), m.end() - m.start())
            for m in re.finditer(re.escape(bytes([FREE])) + b"+", self.kinds)
        ]


def read_layout(reader: ReadOnlyPager, always: bool = False) -> Layout:
    """Classify every page of an open file, noting any page claimed twice or past the end.

    ``always``: the file was created in the extended layout (its superblock's
    ``EXA`` mark), so its directory-index page 0 is on pages 6 and 7.
    """
    handle = reader._handle
    stats = ffi.new("mp_stats *")
    if lib.mp_pager_stats(handle, stats) != 0:
        raise CliError(EXIT_UNREADABLE, "cannot read the pager's statistics")
    count = int(stats.page_count)
    kinds = bytearray([FREE]) * count
    conflicts: list[str] = []
    owner: dict[int, str] = {}

    def claim(page: int, kind: int, what: str) -> None:
        if page < _RESERVED and kind not in _LAYOUT_KINDS:
            conflicts.append(f"{what} names page {page}, one of the reserved pages 0-2")
            return
        if page >= count:
            conflicts.append(f"{what} names page {page}, past the end ({count} pages)")
            return
        if kinds[page] != FREE:
            first = owner.get(page, KIND_NAMES[kinds[page]] + " page")
            conflicts.append(f"page {page} is claimed twice: by {first} and by {what}")
            return
        kinds[page] = kind
        owner[page] = what  # only the few pager pages: regular pages take the fast path

    claim(0, RESERVED, "the superblock")
    claim(1, METADATA, "metadata copy A")
    claim(2, METADATA, "metadata copy B")
    page_size = int(stats.page_size)
    chunk_pages = int(stats.chunk_pages)
    # Chunks past the first exist only in the extended state (count > chunk_pages);
    # each starts with its layout pages, none of which the library lists.
    chunks = chunk_count(count, chunk_pages)
    for chunk in range(1, chunks):
        map_a, map_b, index_a, index_b = chunk_layout_pages(page_size, chunk)
        claim(map_a, FREEMAP, f"the free-map page of chunk {chunk} (copy A)")
        claim(map_b, FREEMAP, f"the free-map page of chunk {chunk} (copy B)")
        what = f"directory-index page {chunk - 1}"
        if always and chunk == 1:
            what = "chunk 1's directory-index slot (unused: index page 0 is on pages 6-7)"
        claim(index_a, DIRINDEX, f"{what} (copy A)")
        claim(index_b, DIRINDEX, f"{what} (copy B)")
    if always and count > _ALWAYS_INDEX_PAGES[1]:
        claim(_ALWAYS_INDEX_PAGES[0], DIRINDEX, "directory-index page 0 (copy A)")
        claim(_ALWAYS_INDEX_PAGES[1], DIRINDEX, "directory-index page 0 (copy B)")
    root = ffi.new("uint64_t *")
    if lib.mp_pager_root_pages(handle, root) == 0 and int(root[0]):
        # The extended layout's roots and commit record: metadata of their own.
        claim(int(root[0]), METADATA, "the root pages (copy A)")
        claim(int(root[0]) + 1, METADATA, "the root pages (copy B)")
    layout_pages = int(stats.layout_pages)
    expected = layout_page_total(page_size, count)
    if layout_pages != expected:
        conflicts.append(
            f"the library counts {layout_pages} layout pages, but {chunks} chunk(s) of "
            f"{chunk_pages} pages have {expected}"
        )
    pair = ffi.new("uint64_t[2]")
    blocks: list[tuple[int, int]] = []
    for block in range(int(stats.dir_blocks)):
        if lib.mp_pager_dir_block_pages(handle, block, pair, pair + 1) != 0:
            conflicts.append(f"directory block {block} cannot be read back")
            continue
        a, b = int(pair[0]), int(pair[1])
        blocks.append((a, b))
        claim(a, DIRECTORY, f"directory block {block} (copy A)")
        claim(b, DIRECTORY, f"directory block {block} (copy B)")
    protected: dict[int, tuple[int, int]] = {}
    for ppid in reader.allocated_protected_pages():
        pid = int(ppid)
        if lib.mp_protected_backing(handle, pid, pair, pair + 1) != 0:
            conflicts.append(f"protected page {pid} has no backing pages")
            continue
        a, b = int(pair[0]), int(pair[1])
        protected[pid] = (a, b)
        claim(a, PROTECTED, f"protected page {pid} (copy A)")
        claim(b, PROTECTED, f"protected page {pid} (copy B)")
    allocated = 0
    for page in reader.allocated_pages():
        p = int(page)
        if _RESERVED <= p < count and kinds[p] == FREE:
            kinds[p] = ALLOCATED
        else:
            claim(p, ALLOCATED, f"allocated page {p}")
        allocated += 1
    layout = Layout(
        page_size=page_size,
        page_count=count,
        free_count=int(stats.free_count),
        max_pages=int(stats.max_pages),
        kinds=kinds,
        dir_blocks=blocks,
        protected=protected,
        allocated=allocated,
        conflicts=conflicts,
        format_minor=int(stats.format_minor),
        chunk_pages=chunk_pages,
        layout_pages=layout_pages,
        always=always,
    )
    free_seen = layout.count(FREE)
    if not conflicts and free_seen != layout.free_count:
        conflicts.append(
            f"the metadata counts {layout.free_count} free pages, but {free_seen} pages "
            "are neither the layout's, allocated nor the pager's own"
        )
    return layout



# ---------------------------------------------------------------- info


def _layout_name(minor: int, extended: bool, always: bool = False) -> str:
    """The file's layout in a few words, for ``check``'s summary."""
    if minor < _MINOR_EXTENDED:
        return "v0.2 layout"
    if always:
        return "extended layout, since its creation"
    return "extended layout" if extended else "extended layout, still within v0.2's cap"


def info_data(path: str) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (what ``info --json`` prints)."""
    sb = read_superblock(path)
    reader, notes = open_reader(path, sb)
    try:
        report = dict(reader._open_report)
        layout = read_layout(reader, sb.extended_always)
        roots = [int(r) for r in reader.roots]
        at = ffi.new("uint64_t *")
        lib.mp_pager_root_pages(reader._handle, at)
        root_pages = [int(at[0]), int(at[0]) + 1] if int(at[0]) else None
    finally:
        reader.close()
    runs = layout.free_runs()
    largest = max(runs, key=lambda r: r[1]) if runs else (None, 0)
    free = layout.free_count
    fragmentation = 0.0 if free == 0 else 1.0 - largest[1] / free
    chosen = report.get("chosen_copy", "A")
    generations = report.get("generation", {})
    problems = report.get("problem", {})
    copies = {}
    for copy, page in (("A", 1), ("B", 2)):
        copies[copy] = {
            "page": page,
            "generation": generations.get(copy),
            "valid": problems.get(copy) is None,
            "problem": problems.get(copy),
            "in_use": copy == chosen,
        }
    chunks = range(1, layout.chunks)
    return {
        "path": path,
        "format_version": sb.version_text,
        "format_layout": f"0.{layout.format_minor}",
        "extended": layout.extended,
        "extended_from_creation": layout.always,
        "format_mark": sb.mark.decode("latin-1") if sb.extended else "",
        "file_size": sb.file_size,
        "page_size": layout.page_size,
        "page_count": layout.page_count,
        "free_count": free,
        "max_pages": layout.max_pages,
        "chunk_pages": layout.chunk_pages,
        "chunks": layout.chunks,
        "layout_pages": layout.layout_pages,
        "counts": {KIND_NAMES[k]: layout.count(k) for k in range(len(KIND_NAMES))},
        "metadata": copies,
        "free_map_pages": [list(layout.chunk_layout_pages(c)[:2]) for c in chunks],
        "directory_index_pages": [list(pair) for pair in layout.index_pages()],
        "roots": roots,
        "root_pages": root_pages,
        "page0_selects": "AB"[sb.selector] if sb.selector in (0, 1) else sb.selector,
        # The extended layout does not keep page 0's selector current (only the crate,
        # which refuses such a file, would read it).
        "page0_selector_kept": not layout.extended,
        "directory_blocks": [list(pair) for pair in layout.dir_blocks],
        "protected_pages": {str(pid): list(pair) for pid, pair in layout.protected.items()},
        "free_runs": len(runs),
        "largest_free_run": {"first": largest[0], "length": largest[1]},
        "fragmentation": round(fragmentation, 4),
        "recovered_on_open": notes,
        "conflicts": layout.conflicts,
        "reader_table": reader_table_data(path),
    }

