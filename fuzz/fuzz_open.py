#!/usr/bin/env python3
"""Atheris fuzz target: Pager.open and ReadOnlyPager.open on arbitrary bytes.

Each input is written to a file and opened read-only, then writable. Opening
may raise a CorruptFileError subclass and nothing else; a file that opens is
exercised through the public API, closed, and reopened (a file the library
has just written must open again). Any other exception is a finding.

    python fuzz/fuzz_open.py -max_total_time=60 -max_len=65536 CORPUS_DIR [SEED_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
import zlib

import atheris

with atheris.instrument_imports():
    import mappedpages
    from mappedpages import (
        CorruptFileError,
        DirectoryFull,
        FileFull,
        Pager,
        ReadOnlyPager,
    )

# fuzz/run.sh points FUZZ_TMPDIR at a directory it removes afterwards (libFuzzer
# ends the process without running atexit handlers).
_DIR = os.environ.get("FUZZ_TMPDIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
PATH = os.path.join(_DIR or tempfile.gettempdir(), f"mp-atheris-{os.getpid()}.mpp")


def exercise(p: mappedpages.Pager | mappedpages.ReadOnlyPager) -> None:
    """Read everything the open file describes."""
    allocated = list(p.allocated_pages())
    for pid in p.allocated_protected_pages():
        v = p.protected_page(pid)
        bytes(v[:16])
        v.release()
        p.verify_protected(pid)
    for i in allocated[:64]:
        v = p.page(i)
        bytes(v[:1])
        bytes(v[-1:])
        v.release()
    assert p.free_page_count <= p.page_count


def writer_session(p: Pager) -> None:
    """One commit of each kind."""
    try:
        i = p.alloc()
        p.free(i)
        pid = p.alloc_protected()
        with p.write_protected(pid) as w:
            w.page[:4] = b"fuzz"
        p.free_protected(pid)
    except (FileFull, DirectoryFull):
        pass


def reader_session() -> None:
    """Open the input read-only, refresh, read."""
    try:
        r = ReadOnlyPager.open(PATH)
    except CorruptFileError:
        return
    try:
        exercise(r)
        r.refresh()
        exercise(r)
    finally:
        r.close()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    """Open DATA as a file, as a writer and as a reader."""
    with open(PATH, "wb") as fh:
        fh.write(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A reader retries a failed load for 10 ms (it may have caught a writer
        # mid-commit), so readers run on every input a writer accepts and on
        # 1 in 16 of the others.
        try:
            p = Pager.open(PATH)
        except CorruptFileError:
            if zlib.crc32(data) & 15 == 0:
                reader_session()
            return
        p.close()
        with open(PATH, "wb") as fh:
            fh.write(data)
        reader_session()
        p = Pager.open(PATH)
        try:
            exercise(p)
            writer_session(p)
            exercise(p)
        finally:
            p.close()
        with Pager.open(PATH) as again:  # must open: the library wrote it
            exercise(again)


def main() -> None:
    """Run atheris with the command line's libFuzzer options."""
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
