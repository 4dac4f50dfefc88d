"""Reader snapshots: the reader table beside a pager file, seen from Python.

A reader (:class:`~mappedpages.ReadOnlyPager` opened with ``snapshot=True``,
or :meth:`~mappedpages.Pager.snapshot`) holds a slot in ``<path>-readers``
for its life, recording its process, the generation of the commit it sees
and when it registered. The writer hands out again a page freed after that
commit only once no live reader's snapshot has it allocated; a slot whose
process died is cleared by whoever looks next (the C core's readers.c holds
the rules). Protected pages are copied into the reader's own memory when it
loads a commit, checked against the CRC their directory entry records, so
they show that commit's content however often the writer rewrites them.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import tempfile
import time
import zlib
from typing import Any, NamedTuple

from mappedpages._core import ffi, lib

# Mirrors the C core's bound on slots (readers.c, RD_MAX_SLOTS).
MAX_READERS_LIMIT = 65536
DEFAULT_MAX_READERS = 126
# Loads of a newer commit before a protected page that keeps failing its CRC
# is believed damaged rather than rewritten under the reader.
PROTECTED_LOOKS = 50
_PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


class ReaderInfo(NamedTuple):
    """A live reader of a pager file, as the reader table records it."""

    pid: int
    """The reader's process id."""
    generation: int
    """The generation of the commit its snapshot holds."""
    age: float
    """Seconds since it registered."""
    page_count: int
    """The file's page count in its snapshot."""


_NAME_MAX = 255
_SUFFIX = b"-readers"


def table_path(raw: bytes) -> bytes:
    """The reader table's path for a data file's path: ``<path>-readers``.

    When that name would pass the file system's 255-byte limit, the table is
    ``.mp-<hash of the name>-readers`` in the same folder instead.
    """
    folder, name = os.path.split(raw)
    if len(name) + len(_SUFFIX) <= _NAME_MAX:
        return raw + _SUFFIX
    digest = hashlib.sha256(name).hexdigest()[:24].encode()
    return os.path.join(folder, b".mp-" + digest + _SUFFIX)


def check_max_readers(max_readers: object) -> int:
    """Validate the ``max_readers`` option."""
    if isinstance(max_readers, bool) or not isinstance(max_readers, int):
        raise TypeError(f"max_readers must be an int, not {type(max_readers).__name__}")
    if not 0 <= max_readers <= MAX_READERS_LIMIT:
        raise ValueError(f"max_readers must be in 0..{MAX_READERS_LIMIT}, not {max_readers}")
    return max_readers


def table_error(rc: int, path: str) -> Exception | None:
    """A ``PermissionError`` naming the table for a permission failure, else None."""
    if rc < 0 and -rc in _PERMISSION_ERRNOS:
        table = os.fsdecode(table_path(os.fsencode(path)))
        return PermissionError(
            -rc,
            f"the reader table {table!r} cannot be created or written; open with "
            "snapshot=False to read without a snapshot",
            table,
        )
    return None


def list_readers(handle: Any) -> list[ReaderInfo]:
    """The live readers in the table the handle holds open (dead slots are cleared)."""
    cap = 256
    while True:
        pids = ffi.new("uint64_t[]", cap)
        gens = ffi.new("uint64_t[]", cap)
        pages = ffi.new("uint64_t[]", cap)
        start = ffi.new("uint64_t[]", cap)
        n = ffi.new("uint64_t *")
        rc = lib.mp_readers_list(handle, pids, gens, pages, start, cap, n)
        if rc != 0:
            from mappedpages._errors import raise_for

            raise_for(rc, "readers")
        if int(n[0]) < cap or cap >= MAX_READERS_LIMIT:
            break
        cap = MAX_READERS_LIMIT
    now = time.time_ns()
    out = [
        ReaderInfo(int(pids[i]), int(gens[i]), max(0, now - int(start[i])) / 1e9, int(pages[i]))
        for i in range(int(n[0]))
    ]
    out.sort(key=lambda r: (r.generation, r.pid))
    return out


def _read_only_buffer(data: bytes) -> Any:
    """A read-only mapping holding ``data``: writes through it raise ``TypeError``.

    Views of a reader's protected copies must behave as its page views do
    (their ``obj`` refuses writes), so the copies live in a read-only ``mmap``
    of an anonymous file rather than in a ``bytes`` object.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mappedpages-snapshot", getattr(os, "MFD_CLOEXEC", 0))
    else:  # pragma: no cover - systems without memfd
        tmp = tempfile.TemporaryFile()  # noqa: SIM115
        fd = os.dup(tmp.fileno())
        tmp.close()
    try:
        os.ftruncate(fd, len(data))
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        return mmap.mmap(fd, len(data), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def copy_protected(
    handle: Any, ro: memoryview, page_size: int, pids: list[int]
) -> tuple[dict[int, tuple[memoryview, int]], bool]:
    """Copy the committed content of each protected page, with its recorded CRC.

    Returns read-only views of the copies with the CRCs, and whether all
    matched (a mismatch means the writer rewrote a copy since the reader's
    commit, or damage).
    """
    page = ffi.new("uint64_t *")
    crc = ffi.new("uint32_t *")
    found: list[tuple[int, bytes, int]] = []
    ok = True
    for pid in pids:
        if lib.mp_protected_page(handle, pid, page) != 0:
            continue
        if lib.mp_protected_crc(handle, pid, crc) != 0:
            continue
        off = int(page[0]) * page_size
        data = bytes(ro[off : off + page_size])
        want = int(crc[0])
        if zlib.crc32(data) != want:
            ok = False
        found.append((pid, data, want))
    copies: dict[int, tuple[memoryview, int]] = {}
    if found:
        whole = memoryview(_read_only_buffer(b"".join(d for _, d, _ in found)))
        for i, (pid, _, want) in enumerate(found):
            copies[pid] = (whole[i * page_size : (i + 1) * page_size], want)
    return copies, ok


def protected_matches(copy: tuple[memoryview, int]) -> bool:
    """Whether a snapshot copy matches the CRC its directory entry recorded."""
    return zlib.crc32(copy[0]) == copy[1]


def pinned_pages(handle: Any) -> int:
    """Pages freed, durable, and held back for live readers."""
    out = ffi.new("uint64_t *")
    rc = lib.mp_readers_pinned(handle, out)
    if rc != 0:
        from mappedpages._errors import raise_for

        raise_for(rc, "pinned_free_pages")
    return int(out[0])



def inspect_table(path: str) -> dict[str, Any] | None:
    """What the reader table beside ``path`` says, looked at read-only.

    Returns None when there is no table; else ``readers`` (live ones, as
    :class:`ReaderInfo`), ``pinned_free_pages`` (as its writer last
    published it) and ``writer_pid`` (0 when no writer holds the table).
    """
    raw = table_path(os.fsencode(path))
    cap = MAX_READERS_LIMIT
    pids = ffi.new("uint64_t[]", cap)
    gens = ffi.new("uint64_t[]", cap)
    pages = ffi.new("uint64_t[]", cap)
    start = ffi.new("uint64_t[]", cap)
    n = ffi.new("uint64_t *")
    pinned = ffi.new("uint64_t *")
    writer = ffi.new("uint64_t *")
    rc = lib.mp_readers_inspect(raw, pids, gens, pages, start, cap, n, pinned, writer)
    if rc == -errno.ENOENT:
        return None
    if rc != 0:
        from mappedpages._errors import raise_for

        raise_for(rc, "reader table", os.fsdecode(raw))
    now = time.time_ns()
    readers = [
        ReaderInfo(int(pids[i]), int(gens[i]), max(0, now - int(start[i])) / 1e9, int(pages[i]))
        for i in range(int(n[0]))
    ]
    readers.sort(key=lambda r: (r.generation, r.pid))
    return {
        "readers": readers,
        "pinned_free_pages": int(pinned[0]),
        "writer_pid": int(writer[0]),
    }


def reader_table_data(path: str) -> dict[str, Any] | None:
    """``info``'s view of the reader table beside the file (None when there is none)."""
    from mappedpages._errors import MappedPageError

    try:
        table = inspect_table(path)
    except (OSError, MappedPageError) as exc:
        return {"error": str(exc)}
    if table is None:
        return None
    table["readers"] = [r._asdict() for r in table["readers"]]
    return table


def reader_table_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``info``'s lines on snapshot readers: who holds which commit, what it costs."""
    table = data.get("reader_table")
    if table is None:
        return [("readers", "none (no reader table)")]
    if "error" in table:
        return [("readers", f"reader table unreadable: {table['error']}")]
    rows = []
    if not table["readers"]:
        rows.append(("readers", "none live"))
    for r in table["readers"]:
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
