"""The ``mappedpages`` command line (``python -m mappedpages``, or the ``mappedpages`` script).

Commands:

``info FILE``
    Format version and layout (the Rust crate's v0.2, or this library's
    extended layout 0.3), page size, page count, free count, both metadata
    copies (generation, valid or not, which one is in use), the free-map
    chunks of an extended file, directory blocks, protected pages, the largest
    free run and fragmentation. ``--json`` prints the same as one JSON object.
``check FILE``
    Opens the file as a reader and reports every problem the library finds:
    metadata copies, page 0, directory pages, protected pages whose content no
    longer matches its recorded CRC, pages claimed twice or named past the end.
    Exit status 0 when clean, 1 when problems were found, 2 when the file
    cannot be read at all (missing, not a pager file, no permission).
    ``--repair`` then opens the file as a writer, which rewrites page 0 to
    name the state in use and commits the directory repairs open made, and
    nothing more. A file that open refuses because keeping it would need
    acknowledged state it no longer has (a file cut shorter than its newest
    commit, a directory block with no copy inside the file) is opened with
    ``salvage=True`` instead, and every thing that discards is printed.
``map FILE``
    One cell per page (or per run of pages in a large file), coloured by what
    the page is: reserved, metadata, free map and directory index (the
    extended layout's pages), directory, protected backing, allocated or free.
    A cell for a run of regular pages shows how full the run is (how many of
    its pages are allocated or protected backing), not its majority kind.
    In the terminal with block characters (and colour when the terminal has
    it), or as an SVG picture with ``--svg OUT.svg`` (OUT must not be empty).
``--version``
    Prints ``mappedpages`` and the library's version, and exits 0.
``demo``
    Creates a pager file in a temporary directory, allocates, writes, frees,
    reopens and verifies.
``bench``
    Runs the benchmark suite, when this installation has it.
``backup SRC DST`` and ``compact FILE``
    A consistent, sparse copy of a live file; trim and hole punching of a file
    no writer holds (mappedpages/_cli_space.py).

The tool reads page 0's 20-byte superblock itself (to name the format version
and to tell a file that is not a pager file from a damaged one); everything
else it learns from the library, as any reader would.

A file stays in the v0.2 layout while it has at most C = (page_size - 28) * 8
pages (what one metadata bitmap describes). A file that grows past that moves
to the extended layout (superblock minor 3 and the mark ``EXT`` at bytes
13-15): the metadata copies then hold the bitmap of chunk 0 (pages [0, C)),
and every further chunk i (pages [i*C, (i+1)*C)) starts with four layout pages
of its own: free-map copies A and B (i*C, i*C+1) and directory-index copies A
and B (i*C+2, i*C+3).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO, TypeVar

from mappedpages import __version__, _cli_space
from mappedpages._core import ffi, lib
from mappedpages._errors import (
    CorruptFileError,
    CorruptProtectedDirectory,
    FileTruncated,
    MappedPageError,
    RecoveryWarning,
)
from mappedpages._pager import Pager
from mappedpages._readers import inspect_table
from mappedpages._readonly import ReadOnlyPager
from mappedpages._types import ProtectedPageId

PROG = "mappedpages"

# Exit statuses of ``check`` (and of every command: 2 when the file cannot be read).
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNREADABLE = 2

_SUPERBLOCK_SIZE = 20
_MAGIC = b"MPPG"
_CRC_RESIDUE = 0x2144DF1C
_RESERVED_PAGES = 3
_MIN_LOG2, _MAX_LOG2 = 10, 30
_MINOR_V02, _MINOR_EXTENDED = 2, 3
_EXTENDED_MARK = b"EXT"  # page 0 bytes 13-15 of an extended-layout (0.3) file
_LAYOUT_PAGES = 4  # per chunk past the first: free map A, B; directory index A, B
_MAX_LISTED = 8  # chunks named one by one in `info`

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
# The extended layout's pages take the colours of their v0.2 relatives, lighter:
# a free-map page is a chunk's metadata bitmap, a directory-index page the
# directory's list of blocks.
_SVG_COLOURS = (
    "#4b5563", "#8b5cf6", "#c4b5fd", "#fcd34d", "#f59e0b", "#10b981", "#3b82f6", "#e5e7eb"
)
_ANSI_COLOURS = ("90", "35", "95", "93", "33", "32", "34", "37")
_GLYPHS = ("▚", "▞", "▜", "▙", "▒", "▓", "█", "░")
_ASCII_GLYPHS = ("R", "M", "F", "I", "D", "P", "#", ".")
# A cell that stands for a run of regular pages shows how full the run is: the
# share of its pages in use (allocated or protected backing), from the free
# glyph (none) to the allocated glyph (all). Partly full runs never round to
# either end, so a half-full run looks neither full nor empty, and a run is
# drawn from its own count, not from its majority kind (which turned an
# every-other-page pattern into false stripes).
_FILL_GLYPHS = "░▁▂▃▄▅▆▇█"
_ASCII_FILL_GLYPHS = ".123456789#"  # tenths in use, as digits
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
        """Page 0 says the extended layout: minor 3 with the ``EXT`` mark."""
        return self.version[1] == _MINOR_EXTENDED and self.mark == _EXTENDED_MARK


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
    if minor == _MINOR_EXTENDED and mark != _EXTENDED_MARK:
        # Minor 3 alone may be the Rust crate's own next version, not this library's.
        raise CliError(
            EXIT_UNREADABLE,
            f"{name}: format version 0.3 without the extended-layout mark (page 0 bytes "
            f"13-15 are {mark.hex(' ')}, not 'EXT') is not a version this library reads",
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
    layout_pages: int = _RESERVED_PAGES

    def count(self, kind: int) -> int:
        """Pages of one kind."""
        return self.kinds.count(kind)

    @property
    def chunks(self) -> int:
        """Free-map chunks of ``chunk_pages`` pages that hold a page of the file.

        1 in the v0.2 layout (the metadata bitmap is chunk 0); in the extended
        layout every chunk past the first has free-map and directory-index pages.
        """
        if self.chunk_pages <= 0 or self.page_count <= self.chunk_pages:
            return 1
        return (self.page_count - 1) // self.chunk_pages + 1

    @property
    def extended(self) -> bool:
        """The file is in the extended state: past v0.2's cap, so chunks past the first."""
        return self.chunks > 1

    def chunk_layout_pages(self, chunk: int) -> tuple[int, int, int, int]:
        """Chunk ``chunk``'s (>= 1) free-map copies A, B and directory-index copies A, B."""
        first = chunk * self.chunk_pages
        return first, first + 1, first + 2, first + 3

    def free_runs(self) -> list[tuple[int, int]]:
        """Every run of free pages as (first page, length), in page order."""
        return [
            (m.start(), m.end() - m.start())
            for m in re.finditer(re.escape(bytes([FREE])) + b"+", self.kinds)
        ]


def read_layout(reader: ReadOnlyPager) -> Layout:
    """Classify every page of an open file, noting any page claimed twice or past the end."""
    handle = reader._handle
    stats = ffi.new("mp_stats *")
    if lib.mp_pager_stats(handle, stats) != 0:
        raise CliError(EXIT_UNREADABLE, "cannot read the pager's statistics")
    count = int(stats.page_count)
    kinds = bytearray([FREE]) * count
    conflicts: list[str] = []
    owner: dict[int, str] = {}

    def claim(page: int, kind: int, what: str) -> None:
        if page < _RESERVED_PAGES and kind not in _LAYOUT_KINDS:
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
    chunk_pages = int(stats.chunk_pages)
    # Chunks past the first exist only in the extended state (count > chunk_pages);
    # each starts with its layout pages, none of which the library lists.
    chunks = (count - 1) // chunk_pages + 1 if 0 < chunk_pages < count else 1
    for chunk in range(1, chunks):
        first = chunk * chunk_pages
        claim(first, FREEMAP, f"the free-map page of chunk {chunk} (copy A)")
        claim(first + 1, FREEMAP, f"the free-map page of chunk {chunk} (copy B)")
        claim(first + 2, DIRINDEX, f"directory-index page {chunk - 1} (copy A)")
        claim(first + 3, DIRINDEX, f"directory-index page {chunk - 1} (copy B)")
    layout_pages = int(stats.layout_pages)
    if layout_pages != _RESERVED_PAGES + _LAYOUT_PAGES * (chunks - 1):
        conflicts.append(
            f"the library counts {layout_pages} layout pages, but {chunks} chunk(s) of "
            f"{chunk_pages} pages have {_RESERVED_PAGES + _LAYOUT_PAGES * (chunks - 1)}"
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
        if _RESERVED_PAGES <= p < count and kinds[p] == FREE:
            kinds[p] = ALLOCATED
        else:
            claim(p, ALLOCATED, f"allocated page {p}")
        allocated += 1
    layout = Layout(
        page_size=int(stats.page_size),
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
    )
    free_seen = layout.count(FREE)
    if not conflicts and free_seen != layout.free_count:
        conflicts.append(
            f"the metadata counts {layout.free_count} free pages, but {free_seen} pages "
            "are neither the layout's, allocated nor the pager's own"
        )
    return layout


# ---------------------------------------------------------------- info


def _size_text(n_bytes: int) -> str:
    """A byte count in the largest binary unit it fills: ``16.0 TiB``."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.1f} {unit}"
    return f"{n_bytes} bytes"


def _layout_name(minor: int, extended: bool) -> str:
    """The file's layout in a few words, for ``check``'s summary."""
    if minor < _MINOR_EXTENDED:
        return "v0.2 layout"
    return "extended layout" if extended else "extended layout, still within v0.2's cap"


def _format_text(data: dict[str, Any]) -> str:
    """``info``'s format row: the layout, what reads it, and the version bytes."""
    version = f"version bytes {data['format_version']}"
    if data["format_layout"] != "0.3":
        return f"mappedpages v0.2 layout (the Rust crate's); {version}"
    if data["extended"]:
        return (
            f"extended layout 0.3 (past v0.2's cap; the Rust crate refuses it); "
            f"{version}, mark 'EXT'"
        )
    return (
        "extended layout 0.3, still within v0.2's cap (an upgrade cut short: its pages are "
        f"read as v0.2's; the Rust crate refuses it); {version}, mark 'EXT'"
    )


def _ids_text(ids: list[int], limit: int = 16) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def info_data(path: str) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (what ``info --json`` prints)."""
    sb = read_superblock(path)
    reader, notes = open_reader(path, sb)
    try:
        report = dict(reader._open_report)
        layout = read_layout(reader)
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
        "directory_index_pages": [list(layout.chunk_layout_pages(c)[2:]) for c in chunks],
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
        "reader_table": _reader_table_data(path),
    }


def _reader_table_data(path: str) -> dict[str, Any] | None:
    """``info``'s view of the reader table beside the file (None when there is none)."""
    try:
        table = inspect_table(path)
    except (OSError, MappedPageError) as exc:
        return {"error": str(exc)}
    if table is None:
        return None
    table["readers"] = [r._asdict() for r in table["readers"]]
    return table


def _reader_table_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``info``'s lines on snapshot readers: who holds which commit, what it costs."""
    table = data.get("reader_table")
    if table is None:
        return [("readers", "none (no reader table)")]
    if "error" in table:
        return [("readers", f"reader table unreadable: {table['error']}")]
    readers = table["readers"]
    rows = []
    if not readers:
        rows.append(("readers", "none live"))
    for r in readers:
        rows.append(
            (
                "reader",
                f"pid {r['pid']}, generation {r['generation']}, age {r['age']:.1f} s, "
                f"{r['page_count']} pages",
            )
        )
    who = f"writer pid {table['writer_pid']}" if table["writer_pid"] else "no writer open"
    rows.append(
        (
            "pinned free pages",
            f"{table['pinned_free_pages']} (freed, held back for readers; {who})",
        )
    )
    return rows


def _print_info(data: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, str]] = []
    ps = data["page_size"]
    rows.append(("file", _display(data["path"])))
    rows.append(("format", _format_text(data)))
    extra = data["file_size"] - data["page_count"] * ps
    size = f"{data['file_size']} bytes"
    if extra > 0:
        size += f" ({extra} bytes past the last page: growth cut short, reused by the next)"
    rows.append(("file size", size))
    rows.append(("page size", f"{ps} bytes"))
    counts = data["counts"]
    layout_kinds = {KIND_NAMES[FREEMAP], KIND_NAMES[DIRINDEX]}
    shown = [n for n in KIND_NAMES if counts[n] or n not in layout_kinds or data["extended"]]
    rows.append(
        (
            "pages",
            f"{data['page_count']}: " + ", ".join(f"{counts[name]} {name}" for name in shown),
        )
    )
    rows.append(("free pages", str(data["free_count"])))
    chunk = data["chunk_pages"]
    capacity = (
        f"{data['max_pages']} pages ({_size_text(data['max_pages'] * ps)}): the address range "
        "a pager reserves for the file here"
    )
    if not data["extended"]:
        move = (
            "finishes its move to the extended layout"
            if data["format_layout"] == "0.3"
            else "moves to the extended layout 0.3"
        )
        capacity += (
            f"; the v0.2 layout holds at most {chunk} pages: a file that grows past that {move}"
        )
    rows.append(("capacity", capacity))
    for copy in ("A", "B"):
        m = data["metadata"][copy]
        state = "valid" if m["valid"] else f"DAMAGED: {m['problem']}"
        use = ", in use (the newest valid copy)" if m["in_use"] else ""
        rows.append((f"metadata {copy}", f"page {m['page']}, generation {m['generation']}, "
                     f"{state}{use}"))
    if data["extended"]:
        maps = data["free_map_pages"]
        listed = "; ".join(
            f"chunk {i} on pages {a} and {b}" for i, (a, b) in enumerate(maps[:_MAX_LISTED], 1)
        )
        more = f"; ... ({len(maps) - _MAX_LISTED} more)" if len(maps) > _MAX_LISTED else ""
        rows.append(
            (
                "free map",
                f"{data['chunks']} chunks of {chunk} pages: chunk 0's bitmap (pages 0-"
                f"{chunk - 1}) in the metadata copies; {listed}{more}",
            )
        )
        index = data["directory_index_pages"]
        listed = "; ".join(
            f"index page {k} on pages {a} and {b}"
            for k, (a, b) in enumerate(index[:_MAX_LISTED])
        )
        more = f"; ... ({len(index) - _MAX_LISTED} more)" if len(index) > _MAX_LISTED else ""
        rows.append(
            (
                "directory index",
                f"{len(index)} page pair(s), one per chunk past the first: {listed}{more}; "
                "the index in page 0 (as of the upgrade) is not read",
            )
        )
        rows.append(
            (
                "page 0 selects",
                f"copy {data['page0_selects']} (not kept current in the extended layout: "
                "the copy in use is the valid one with the newest generation)",
            )
        )
    else:
        rows.append(("free map", f"in the metadata copies (one bitmap of up to {chunk} pages)"))
        rows.append(("page 0 selects", f"copy {data['page0_selects']}"))
    blocks = data["directory_blocks"]
    if blocks:
        listed = "; ".join(f"block {i} on pages {a} and {b}" for i, (a, b) in enumerate(blocks))
        rows.append(("directory", f"{len(blocks)} block(s): {listed}"))
    else:
        rows.append(("directory", "no blocks"))
    prot = sorted(int(k) for k in data["protected_pages"])
    listed_ids = f": ids {_ids_text(prot)}" if prot else ""
    rows.append(("protected", f"{len(prot)} page(s){listed_ids}"))
    run = data["largest_free_run"]
    if run["length"]:
        last = run["first"] + run["length"] - 1
        rows.append(
            (
                "free runs",
                f"{data['free_runs']}; largest {run['length']} page(s), ids {run['first']}-{last}",
            )
        )
    else:
        rows.append(("free runs", "none (no free page)"))
    rows.append(
        (
            "fragmentation",
            f"{data['fragmentation'] * 100:.1f}% (1 - largest free run / free pages)",
        )
    )
    rows.extend(_reader_table_rows(data))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    for note in data["recovered_on_open"]:
        print(f"recovered on open: {note}", file=out)
    for conflict in data["conflicts"]:
        print(f"conflict: {conflict}", file=out)


def cmd_info(args: argparse.Namespace) -> int:
    """``info FILE``: print what the file holds."""
    data = info_data(args.file)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        _print_info(data, sys.stdout)
    return EXIT_OK


# ---------------------------------------------------------------- check


@dataclass
class CheckResult:
    """The problems ``check`` found, and whether a writer's open would repair any."""

    problems: list[str]
    repairable: bool
    summary: list[str]
    notes: list[str] = field(default_factory=list)
    # What a salvaging open would discard, when only salvage opens the file.
    salvage: list[str] = field(default_factory=list)


def check_file(path: str) -> CheckResult:
    """Validate a file as far as the library can; raise CliError(2) if it cannot be read.

    A file that the library refuses to open (damaged metadata, superblock,
    directory) gives one problem; otherwise every recovery open made, page 0
    naming a copy other than the one in use, protected pages whose content
    fails its CRC, and pages claimed twice or named past the end.
    """
    sb = read_superblock(path)
    log2 = sb.page_size_log2
    size = f"page size {1 << log2}" if _MIN_LOG2 <= log2 <= _MAX_LOG2 else "page size unknown"
    summary = [f"format version {sb.version_text}, {size} (as page 0 says)"]
    try:
        reader, found = open_reader(path, sb)
    except Damaged as exc:
        discards = salvage_preview(path, sb) if exc.salvageable else []
        return CheckResult([exc.detail], bool(discards), summary, salvage=discards)
    problems = list(found)
    try:
        report = reader._open_report
        layout = read_layout(reader)
        flags = set(report.get("flags", ()))
        chosen = report.get("chosen_copy", "A")
        gens = report.get("generation", {})
        other = "B" if chosen == "A" else "A"
        other_valid = report.get("problem", {}).get(other) is None
        if "selector_stale" in flags:
            detail = (
                "; the Rust crate would read the older state (normal after a crash between "
                "the two flushes of a commit, or while a writer in 'fast' durability mode "
                "has the file open)"
                if other_valid
                else ""
            )
            problems.append(
                f"page 0 names metadata copy {other}, not the copy in use "
                f"({chosen}, generation {gens.get(chosen)}){detail}"
            )
        if "meta_checksum_mismatch" in flags:
            problems.append(
                f"page 0's meta_checksum is {sb.meta_checksum:#010x}, not {_CRC_RESIDUE:#010x} "
                "(the value every valid metadata copy gives); the Rust crate would not "
                "accept the copy page 0 names"
            )
        bad_crc = []
        for pid, (a, b) in layout.protected.items():
            if not reader.verify_protected(ProtectedPageId(pid)):
                bad_crc.append(pid)
                problems.append(
                    f"protected page {pid} (backing pages {a} and {b}): its committed content "
                    "does not match the CRC recorded at its last commit"
                )
        problems.extend(layout.conflicts)
        repairable = bool(flags & _REPAIRABLE_FLAGS)
        notes = []
        if f"meta_{other.lower()}_damaged" in flags:
            notes.append(
                f"metadata copy {other} is the inactive copy: the next commit by a writer "
                "overwrites it (until then there is no older state to fall back to)"
            )
        summary = [
            f"format version {sb.version_text} "
            f"({_layout_name(layout.format_minor, layout.extended)}), page size "
            f"{layout.page_size}, {layout.page_count} pages, {layout.free_count} free",
            f"metadata: copy A generation {gens.get('A')}, copy B generation {gens.get('B')}; "
            f"copy {chosen} in use",
            f"directory: {len(layout.dir_blocks)} block(s); protected pages: "
            f"{len(layout.protected)}"
            + (
                f", {len(layout.protected) - len(bad_crc)} with a matching CRC"
                if layout.protected
                else ""
            ),
        ]
        if layout.extended:
            past = layout.chunks - 1
            summary.insert(
                2,
                f"free map: {layout.chunks} chunks of {layout.chunk_pages} pages; chunk 0 in "
                f"the metadata copies, {past} more with {_LAYOUT_PAGES * past} free-map and "
                "directory-index pages",
            )
    finally:
        reader.close()
    return CheckResult(problems, repairable, summary, notes)


def salvage_discards(report: dict[str, Any]) -> list[str]:
    """What a salvaging open discarded, from its report, one line each."""
    done = []
    flags = set(report.get("flags", ()))
    if "cut_rolled_back" in flags:
        chosen = report.get("chosen_copy", "A")
        gen = report.get("generation", {}).get(chosen)
        done.append(
            f"generation {report['cut_generation']} (the newest commit, counting "
            f"{report['cut_pages']} pages; the file is {report['file_bytes']} bytes): every "
            f"allocation and free it made; the file is rolled back to metadata copy {chosen} "
            f"at generation {gen}"
        )
    if "salvage_dropped" in flags:
        done.append(
            f"{report['salvaged_blocks']} protected-page directory block(s) with no copy inside "
            "the file, and every protected page they held"
        )
    return done


def salvage_preview(path: str, sb: Superblock) -> list[str]:
    """What ``check --repair`` would discard: a salvaging reader's report (nothing written)."""
    try:
        reader, _ = open_reader(path, sb, salvage=True)
    except CliError:
        return []
    try:
        return salvage_discards(reader._open_report)
    finally:
        reader.close()


def _report_check(path: str, result: CheckResult, out: TextIO) -> None:
    print(f"{_display(path)}:", file=out)
    for line in result.summary:
        print(f"  {line}", file=out)
    for problem in result.problems:
        print(f"problem: {problem}", file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    if result.problems:
        print(f"{len(result.problems)} problem(s) found", file=out)
    else:
        print("ok: no problems found", file=out)


def repair_file(path: str, salvage: bool = False) -> list[str]:
    """Open ``path`` as a writer, which repairs page 0 and the directory; say what it did.

    With ``salvage``, the open may discard acknowledged state it cannot keep;
    each thing discarded is a line starting with ``discarded:``.
    """
    with warnings.catch_warnings():
        # What open found was reported by the check before; here only what it changed counts.
        warnings.simplefilter("ignore", RecoveryWarning)
        try:
            pager = Pager.open(path, salvage=salvage)
        except OSError as exc:
            if isinstance(exc, BlockingIOError):
                raise CliError(
                    EXIT_PROBLEMS,
                    f"{_display(path)}: cannot repair: another writer has the file open",
                ) from None
            raise CliError(
                EXIT_PROBLEMS, f"{_display(path)}: cannot repair: {exc.strerror or exc}"
            ) from None
        except MappedPageError as exc:
            raise CliError(EXIT_PROBLEMS, f"{_display(path)}: cannot repair: {exc}") from None
    try:
        report = pager._open_report
    finally:
        pager.close()
    flags = set(report.get("flags", ()))
    done = [f"discarded: {line}" for line in salvage_discards(report)]
    if report.get("kept_protected"):
        done.append(
            f"{report['kept_protected']} protected page(s) newer than the metadata copy in "
            "use kept: their pages marked allocated again"
        )
    if report.get("dir_fallbacks"):
        done.append(
            f"{report['dir_fallbacks']} damaged directory page(s) rewritten from their good copy"
        )
    if report.get("dropped_entries"):
        done.append(
            f"{report['dropped_entries']} directory entr(y/ies) that did not match the file "
            "removed"
        )
    if report.get("dropped_blocks"):
        done.append(f"{report['dropped_blocks']} unfinished directory block(s) removed")
    if "page0_rewritten" in flags:
        chosen = report.get("chosen_copy", "A")
        gen = report.get("generation", {}).get(chosen)
        done.append(
            f"page 0 rewritten: it names metadata copy {chosen} (generation {gen}), "
            "with a sealed directory index"
        )
    return done


def cmd_check(args: argparse.Namespace) -> int:
    """``check FILE [--repair]``: report problems; exit 0 clean, 1 problems, 2 unreadable."""
    result = check_file(args.file)
    _report_check(args.file, result, sys.stdout)
    if not result.problems:
        return EXIT_OK
    if not args.repair:
        if result.salvage:
            print("run `mappedpages check --repair` to open with salvage, which discards "
                  "acknowledged state:", file=sys.stdout)
            for line in result.salvage:
                print(f"  would discard: {line}", file=sys.stdout)
        elif result.repairable:
            print("run `mappedpages check --repair` to rewrite page 0 as a writer's open "
                  "would", file=sys.stdout)
        return EXIT_PROBLEMS
    if not result.repairable:
        print("repair: nothing here that a writer's open repairs; the file is unchanged")
        return EXIT_PROBLEMS
    done = repair_file(args.file, salvage=bool(result.salvage))
    for line in done:
        if line.startswith("discarded: "):
            print(line)
        else:
            print(f"repaired: {line}")
    if not done:
        print("repair: the writer's open found nothing to change")
    after = check_file(args.file)
    print("after repair:")
    _report_check(args.file, after, sys.stdout)
    return EXIT_PROBLEMS if after.problems else EXIT_OK


# ---------------------------------------------------------------- map


def cells_of(layout: Layout, max_cells: int) -> tuple[list[int], int]:
    """Cut the pages into at most ``max_cells`` runs; return each run's kind and the run length.

    A run that holds one of the pager's few pages of its own (reserved,
    metadata, directory, and an extended file's free-map and directory-index
    pages) shows it, so that none disappears in a large file; any other run
    shows the kind of its pages in use (allocated or protected backing,
    whichever it has more of), and free only when none is in use: how many are
    in use is the cell's fill (``cell_fill``). A run that holds a chunk's four
    layout pages shows them as free map.
    """
    n = layout.page_count
    per = max(1, math.ceil(n / max(1, max_cells)))
    kinds = layout.kinds
    if per == 1:
        return list(kinds), 1
    out = []
    for start in range(0, n, per):
        chunk = bytes(kinds[start : start + per])
        rare = next(
            (k for k in (DIRECTORY, FREEMAP, DIRINDEX, RESERVED, METADATA) if k in chunk), None
        )
        if rare is not None:
            out.append(rare)
        elif ALLOCATED in chunk or PROTECTED in chunk:
            out.append(max((ALLOCATED, PROTECTED), key=chunk.count))
        else:
            out.append(FREE)
    return out, per


def cell_fill(layout: Layout, per: int) -> list[tuple[int, int]]:
    """Each run of ``per`` pages (as ``cells_of`` cuts them): (pages in use, pages in the run).

    In use means allocated or protected backing: what a run of regular pages
    is made of besides free pages.
    """
    kinds = layout.kinds
    out = []
    for start in range(0, layout.page_count, per):
        chunk = bytes(kinds[start : start + per])
        out.append((chunk.count(ALLOCATED) + chunk.count(PROTECTED), len(chunk)))
    return out


def fill_level(used: int, total: int, steps: int) -> int:
    """``used`` of ``total`` pages as a level from 0 (none in use) to ``steps`` (all).

    Only an empty run is level 0 and only a full one level ``steps``: a run
    partly in use rounds to a level in between, never to either end.
    """
    if used <= 0 or total <= 0:
        return 0
    if used >= total:
        return steps
    return min(steps - 1, max(1, round(used * steps / total)))


def _shows_fill(kind: int, per: int) -> bool:
    """A cell shows its fill when it stands for a run of regular pages only."""
    return per > 1 and kind in (ALLOCATED, PROTECTED, FREE)


def _map_title(layout: Layout, unit: str) -> str:
    """The line under a map's file name: pages, free pages, layout, what a cell is."""
    extended = (
        f"extended layout, {layout.chunks} chunks of {layout.chunk_pages} pages; "
        if layout.extended
        else ""
    )
    return (
        f"{layout.page_count} pages of {layout.page_size} bytes, {layout.free_count} free; "
        f"{extended}one {unit}"
    )


_Cell = TypeVar("_Cell")


def _rows(cells: list[_Cell], columns: int) -> list[list[_Cell]]:
    return [cells[i : i + columns] for i in range(0, len(cells), columns)]


_FILL_LEGEND = "a run is shaded by how many of its pages are in use: none to all"


def _mix(low: str, high: str, share: float) -> str:
    """The colour ``share`` of the way from ``low`` to ``high`` (both ``#rrggbb``)."""
    a = [int(low[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(high[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b))


def _xml(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def render_svg(path: str, layout: Layout, max_cells: int = 4096, columns: int = 64) -> str:
    """The file as an SVG picture: one square per page or run of pages, a legend and counts.

    Squares of one kind next to each other in a row share a tooltip naming
    their pages. A square for a run of regular pages is shaded from the free
    colour to its kind's colour by how many of its pages are in use, and its
    tooltip gives the count. Written by hand: no dependency beyond the
    standard library.
    """
    kinds, per = cells_of(layout, max_cells)
    steps = len(_FILL_GLYPHS) - 1
    fills = cell_fill(layout, per)
    cells: list[tuple[int, int | None]] = [
        (kind, fill_level(*fills[i], steps) if _shows_fill(kind, per) else None)
        for i, kind in enumerate(kinds)
    ]
    columns = max(1, min(columns, len(cells)))
    pitch, size = 12, 10
    label_w = 7 * len(str(layout.page_count)) + 10
    left, top = 16 + label_w, 64
    rows = _rows(cells, columns)
    legend_top = top + len(rows) * pitch + 24
    shown = _display(path)
    name = _xml(shown)
    unit = "page" if per == 1 else f"run of {per} pages"
    subtitle = _map_title(layout, f"square per {unit}")
    width = max(left + columns * pitch + 16, 16 + 9 * len(shown) + 16, 16 + 7 * len(subtitle))
    if per > 1:
        width = max(width, 16 + 10 * (steps + 1) + 8 + 7 * len(_FILL_LEGEND))
    height = legend_top + 20 * (len(KIND_NAMES) + (per > 1)) + 16
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f"<title>mappedpages map of {name}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="24" font-size="15" font-weight="bold">{name}</text>',
        f'<text x="16" y="44" fill="#374151">{_xml(subtitle)}</text>',
        '<g id="pages">',
    ]
    for r, row in enumerate(rows):
        y = top + r * pitch
        parts.append(
            f'<text x="{left - 6}" y="{y + size - 1}" text-anchor="end" font-size="9" '
            f'fill="#6b7280">{r * columns * per}</text>'
        )
        c = 0
        while c < len(row):
            kind, level = row[c]
            end = c
            while end < len(row) and row[end] == (kind, level):
                end += 1
            lo = (r * columns + c) * per
            hi = min((r * columns + end) * per, layout.page_count) - 1
            span = f"page {lo}" if lo == hi else f"pages {lo}-{hi}"
            if level is None:
                colour, what = _SVG_COLOURS[kind], KIND_NAMES[kind]
            else:
                used = layout.kinds.count(ALLOCATED, lo, hi + 1)
                used += layout.kinds.count(PROTECTED, lo, hi + 1)
                colour = _mix(_SVG_COLOURS[FREE], _SVG_COLOURS[kind], level / steps)
                what = f"{used} of {hi + 1 - lo} pages in use"
                if used:
                    what += f" ({KIND_NAMES[kind]})"
            squares = "".join(
                f'<rect x="{left + i * pitch}" y="{y}" width="{size}" height="{size}"/>'
                for i in range(c, end)
            )
            parts.append(f'<g fill="{colour}"><title>{span}: {what}</title>{squares}</g>')
            c = end
    parts.append("</g>")
    parts.append('<g id="legend">')
    for k, label in enumerate(KIND_NAMES):
        y = legend_top + 20 * k
        n = layout.count(k)
        parts.append(
            f'<rect x="16" y="{y}" width="14" height="14" fill="{_SVG_COLOURS[k]}" '
            'stroke="#9ca3af" stroke-width="0.5"/>'
        )
        parts.append(f'<text x="38" y="{y + 11}">{_xml(label)}: {n} page{"" if n == 1 else "s"}'
                     "</text>")
    if per > 1:
        # One swatch per fill level, from free (none in use) to allocated (all).
        y = legend_top + 20 * len(KIND_NAMES)
        for level in range(steps + 1):
            colour = _mix(_SVG_COLOURS[FREE], _SVG_COLOURS[ALLOCATED], level / steps)
            parts.append(
                f'<rect x="{16 + 10 * level}" y="{y}" width="10" height="14" fill="{colour}"/>'
            )
        parts.append(
            f'<text x="{16 + 10 * (steps + 1) + 8}" y="{y + 11}">{_xml(_FILL_LEGEND)}</text>'
        )
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _use_colour(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("", "dumb")


def _glyphs(stream: TextIO, ascii_only: bool) -> tuple[str, ...]:
    if ascii_only:
        return _ASCII_GLYPHS
    try:
        ("".join(_GLYPHS) + _FILL_GLYPHS).encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return _ASCII_GLYPHS
    return _GLYPHS


def render_text(
    path: str,
    layout: Layout,
    *,
    columns: int = 64,
    max_cells: int = 2048,
    colour: bool = False,
    glyphs: tuple[str, ...] = _GLYPHS,
) -> str:
    """The file as lines of block characters, one per page or run of pages, with a legend.

    A cell for a run of regular pages shows how full the run is (``fill_level``):
    with block characters a bar from ``░`` (none in use) through ``▁``-``▇`` to
    ``█`` (all); with ASCII letters ``.``, a digit for tenths in use, ``#``.
    """
    kinds, per = cells_of(layout, max_cells)
    fill = _ASCII_FILL_GLYPHS if glyphs == _ASCII_GLYPHS else _FILL_GLYPHS
    steps = len(fill) - 1
    fills = cell_fill(layout, per)
    cells = [
        (kind, fill[fill_level(*fills[i], steps)] if _shows_fill(kind, per) else glyphs[kind])
        for i, kind in enumerate(kinds)
    ]
    columns = max(1, min(columns, len(cells)))

    def paint(kind: int, text: str) -> str:
        return f"\x1b[{_ANSI_COLOURS[kind]}m{text}\x1b[0m" if colour else text

    unit = "page" if per == 1 else f"run of {per} pages"
    lines = [f"{_display(path)}: {_map_title(layout, f'cell per {unit}')}"]
    label = len(str(layout.page_count))
    for r, row in enumerate(_rows(cells, columns)):
        text = []
        c = 0
        while c < len(row):
            end = c
            while end < len(row) and row[end][0] == row[c][0]:
                end += 1
            text.append(paint(row[c][0], "".join(g for _, g in row[c:end])))
            c = end
        lines.append(f"{r * columns * per:>{label}} " + "".join(text))
    legend = [
        f"{paint(k, glyphs[k])} {name} {layout.count(k)}" for k, name in enumerate(KIND_NAMES)
    ]
    if per > 1:
        how = "tenths" if fill == _ASCII_FILL_GLYPHS else "partly"
        legend.append(
            f"| runs by pages in use: {fill[0]} none, {fill[1:-1]} {how}, {fill[-1]} all"
        )
    lines.append("  ".join(legend))
    return "\n".join(lines) + "\n"


def cmd_map(args: argparse.Namespace) -> int:
    """``map FILE [--svg OUT]``: picture the file in the terminal or as SVG."""
    sb = read_superblock(args.file)
    reader, notes = open_reader(args.file, sb)
    try:
        layout = read_layout(reader)
    finally:
        reader.close()
    for note in notes:
        print(f"{PROG}: recovered on open: {note}", file=sys.stderr)
    if args.svg is not None:
        svg = render_svg(args.file, layout, max_cells=args.cells or 4096)
        try:
            with open(args.svg, "w", encoding="utf-8") as fh:
                fh.write(svg)
        except OSError as exc:
            raise CliError(
                EXIT_UNREADABLE, f"{_display(args.svg)}: cannot write: {exc.strerror or exc}"
            ) from None
        cells, per = cells_of(layout, args.cells or 4096)
        print(f"wrote {_display(args.svg)}: {len(cells)} cells, {per} page(s) per cell")
        return EXIT_OK
    columns = args.width
    if columns is None:
        term = shutil.get_terminal_size((80, 24)).columns
        columns = max(8, min(64, term - len(str(layout.page_count)) - 2))
    text = render_text(
        args.file,
        layout,
        columns=columns,
        max_cells=args.cells or columns * 32,
        colour=_use_colour(args.color, sys.stdout),
        glyphs=_glyphs(sys.stdout, args.ascii),
    )
    sys.stdout.write(text)
    return EXIT_OK


# ---------------------------------------------------------------- demo


def _pattern(page_id: int, size: int) -> bytes:
    return bytes((page_id * 31 + i) % 251 for i in range(size))


def demo(directory: Path | None = None, page_size: int = 4096) -> int:
    """Run the demo in ``directory`` (a fresh temporary one by default)."""
    with tempfile.TemporaryDirectory(prefix="mappedpages-demo-") as tmp:
        path = (directory or Path(tmp)) / "demo.mpp"
        print(f"mappedpages demo: {path}")
        t0 = time.perf_counter()
        with Pager.create(path, page_size=page_size) as pager:
            print(f"created: page_size={pager.page_size} pages={pager.page_count} "
                  f"free={pager.free_page_count}")
            ids = [pager.alloc() for _ in range(50)]
            print(f"alloc x50 (one durable commit each): ids {ids[0]}..{ids[-1]}, "
                  f"file grew to {pager.page_count} pages")
            for pid in ids:
                pager.page(pid)[:] = _pattern(pid, pager.page_size)
            bulk = pager.alloc_bulk(100)
            print(f"alloc_bulk(100) in one commit: ids {bulk[0]}..{bulk[-1]}, "
                  f"pages={pager.page_count}")
            freed = ids[::5]
            for pid in freed:
                pager.free(pid)
            pager.free_bulk(bulk)
            print(f"free x{len(freed)}, free_bulk x{len(bulk)}: free={pager.free_page_count}")
            prot = pager.alloc_protected()
            with pager.write_protected(prot) as writer:
                writer.page[:12] = b"hello, world"
            print(f"protected page {prot} committed atomically")
            pager.sync()
            print("sync(): page data flushed to disk")
            expected = sorted(set(ids) - set(freed))
            checksums = {pid: zlib.crc32(pager.page(pid)) for pid in expected}
        elapsed = time.perf_counter() - t0
        with Pager.open(path) as pager:
            live = list(pager.allocated_pages())
            ok = live == expected and all(
                zlib.crc32(pager.page(pid)) == crc for pid, crc in checksums.items()
            )
            ok = ok and bytes(pager.protected_page(prot)[:12]) == b"hello, world"
            ok = ok and pager.verify_protected(prot)
            print(f"reopened: pages={pager.page_count} free={pager.free_page_count} "
                  f"allocated={len(live)} protected={list(pager.allocated_protected_pages())}")
            print(f"file size: {path.stat().st_size} bytes; work took {elapsed * 1000:.1f} ms")
        print("verified: every surviving page holds its data" if ok else "VERIFY FAILED")
        return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: run the demo."""
    return demo(page_size=args.page_size)


# ---------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    """``bench [ARGS...]``: run ``mappedpages._bench.main`` when it is installed."""
    if importlib.util.find_spec("mappedpages._bench") is None:
        print(f"{PROG}: the benchmark suite is not available in this installation",
              file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        module = importlib.import_module("mappedpages._bench")
    except ImportError as exc:
        print(f"{PROG}: the benchmark suite cannot be loaded: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    entry: Callable[..., Any] | None = getattr(module, "main", None)
    if entry is None:
        print(f"{PROG}: the benchmark suite has no main()", file=sys.stderr)
        return EXIT_UNREADABLE
    rest = list(args.args)
    try:
        takes_args = len(inspect.signature(entry).parameters) > 0
    except (TypeError, ValueError):
        takes_args = False
    if takes_args:
        result = entry(rest)
    else:
        saved = sys.argv
        sys.argv = [f"{PROG} bench", *rest]
        try:
            result = entry()
        finally:
            sys.argv = saved
    return result if isinstance(result, int) else EXIT_OK


# ---------------------------------------------------------------- main


def _svg_path(text: str) -> str:
    """``--svg OUT``: a file name, never empty (an empty one is a mistake, not the terminal map)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a file name to write the SVG picture to, not ''")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mappedpages`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, check and picture mappedpages files; run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="format, page counts, metadata copies, directory, free space")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "check",
        help="validate the file; exit 0 clean, 1 problems found, 2 cannot be read",
        description="Validate everything the library can. Exit status 0 when clean, 1 when "
        "problems were found, 2 when the file cannot be read.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--repair",
        action="store_true",
        help="open as a writer, which rewrites page 0 to name the state in use and commits "
        "the directory repairs open makes; a file open refuses (cut short, a directory block "
        "with no copy in the file) is opened with salvage, printing all it discards",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("map", help="a picture of the file: in the terminal, or --svg OUT.svg")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--svg", metavar="OUT", type=_svg_path, help="write an SVG picture to OUT")
    p.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour in the terminal (default: when the output is a terminal)",
    )
    p.add_argument("--ascii", action="store_true", help="ASCII letters instead of blocks")
    p.add_argument("--width", type=int, metavar="N", help="cells per line in the terminal")
    p.add_argument(
        "--cells", type=int, metavar="N", help="at most N cells (runs of pages share a cell)"
    )
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("demo", help="run a demo on a real file in a temporary directory")
    p.add_argument("--page-size", type=int, default=4096)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run the benchmark suite (when installed; `bench --help`)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark suite")
    p.set_defaults(func=cmd_bench)

    _cli_space.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mappedpages`` and the ``mappedpages`` script."""
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] == ["bench"]:
        # Every argument after `bench`, options and --help included, is the suite's.
        return _run(cmd_bench, argparse.Namespace(args=raw[1:]))
    args = build_parser().parse_args(raw)
    for name in ("width", "cells"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"{PROG}: --{name} must be at least 1", file=sys.stderr)
            return EXIT_UNREADABLE
    func: Callable[[argparse.Namespace], int] = args.func
    return _run(func, args)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; turn every expected failure into one line on stderr."""
    try:
        status = func(args)
        sys.stdout.flush()
        return status
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`mappedpages map f | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEMS
    except OSError as exc:
        where = f"{_display(str(exc.filename))}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (MappedPageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
