"""The ``backup`` and ``compact`` commands of the ``mappedpages`` tool.

``backup SRC DST``
    Copies one commit of SRC (the latest when it starts) to DST, a new path,
    while a writer may keep committing to SRC: the copy holds a snapshot like a
    reader, free pages are holes, and DST appears only once whole. A progress
    bar goes to stderr when the copy takes over a second (``--quiet``: none);
    a one-line summary goes to stdout.
``compact FILE``
    Trims FILE past its last page in use and punches the blocks of its free
    pages, as a writer: it needs a file no writer holds, else it fails with
    ``Locked`` (naming the holder's pid when it can be known).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from functools import partial
from typing import Any, Callable

from mappedpages._core import ffi, lib
from mappedpages._errors import Locked, Unavailable, error_for
from mappedpages._pager import Pager
from mappedpages._readers import inspect_table
from mappedpages._readonly import ReadOnlyPager

_BAR_AFTER = 1.0  # seconds before a copy shows a progress bar
_BAR_WIDTH = 30
_ATTEMPTS = 16


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _disk(path: str) -> int:
    return os.stat(path).st_blocks * 512


def _bar(done: int, total: int) -> str:
    share = min(1.0, done / total) if total else 1.0
    filled = int(share * _BAR_WIDTH)
    return f"\rbackup [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {share:4.0%} {_mib(done)}"


def _with_progress(work: Callable[[Any], int], quiet: bool) -> int:
    """Run work(progress) in a thread; draw a bar on stderr once it takes a second."""
    progress = ffi.new("uint64_t[2]")
    result: list[int] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work(progress))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    drawn = False
    while worker.is_alive():
        worker.join(0.1)
        if not quiet and time.monotonic() - t0 > _BAR_AFTER:
            sys.stderr.write(_bar(int(progress[0]), int(progress[1])))
            sys.stderr.flush()
            drawn = True
    if drawn:
        sys.stderr.write(_bar(int(progress[1]), int(progress[1])) + "\n")
    if error:
        raise error[0]
    return result[0]


def _open_source(path: str) -> ReadOnlyPager:
    try:
        return ReadOnlyPager.open(path)
    except PermissionError:
        # No reader table can be made beside the file: copy without pinning.
        return ReadOnlyPager.open(path, snapshot=False)


def cmd_backup(args: argparse.Namespace) -> int:
    """``backup SRC DST``: a consistent copy of one commit of a live file."""
    t0 = time.monotonic()
    for attempt in range(_ATTEMPTS):
        reader = _open_source(args.src)
        try:
            pages, free, size = reader.page_count, reader.free_page_count, reader.page_size
            written = _with_progress(partial(reader._backup, args.dst), args.quiet)
            generation = reader.generation
            break
        except Unavailable:
            # The writer rewrote the commit's structure under the copy: a newer one.
            if attempt == _ATTEMPTS - 1:
                raise
        finally:
            reader.close()
    elapsed = time.monotonic() - t0
    print(
        f"{args.src} -> {args.dst}: commit {generation}, {pages - free} of {pages} pages in use; "
        f"wrote {_mib(written)} in {elapsed:.2f} s, {_mib(_disk(args.dst))} on disk "
        f"(a {_mib(pages * size)} file)"
    )
    return 0


def _lock_holder(path: str) -> str:
    """Who holds the writer lock: the pid the reader table records, else /proc/locks."""
    try:
        table = inspect_table(path)
    except OSError:
        table = None
    if table and table.get("writer_pid"):
        return f"pid {table['writer_pid']}"
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                dev_ino = parts[5].split(":")
                if len(dev_ino) == 3 and int(dev_ino[2]) == st.st_ino:
                    return f"pid {parts[4]}"
    except (OSError, ValueError):
        pass
    return "pid not known (the writer lock is an flock, which does not record its holder)"


def cmd_compact(args: argparse.Namespace) -> int:
    """``compact FILE``: trim and punch a file no writer holds."""
    try:
        pager = Pager.open(args.file)
    except Locked as exc:
        holder = f"{_lock_holder(args.file)}; compact needs it closed"
        raise error_for(lib.MP_ELOCKED, args.file, detail=holder) from exc
    with pager:
        before_size, before_disk = os.path.getsize(args.file), _disk(args.file)
        trimmed = pager.trim()
        punched = pager.punch_free()
        pages = pager.page_count
    after_size, after_disk = os.path.getsize(args.file), _disk(args.file)
    print(
        f"{args.file}: gave back {trimmed} pages ({_mib(before_size - after_size)}) by trim and "
        f"{_mib(punched)} of free pages' blocks; now {pages} pages, "
        f"{_mib(after_disk)} on disk (was {_mib(before_disk)})"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add ``backup`` and ``compact`` to the tool's subcommands."""
    p = sub.add_parser("backup", help="copy one commit of a live file to a new path (sparse)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("compact", help="trim and punch the free space of a file no writer holds")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_compact)
