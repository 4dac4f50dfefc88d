"""Exceptions of mappedpages, and the one table that maps C error codes to them.

The C core returns 0 for success, a positive ``MP_E*`` code for a library
error, or a negative errno for a failure of the operating system. Every call
site turns a non-zero code into an exception through :func:`raise_for`, so the
mapping from codes to classes lives here and nowhere else.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import NoReturn

from mappedpages._core import lib


class MappedPageError(Exception):
    """Base class of every error raised by mappedpages."""


class InvalidPageSize(MappedPageError, ValueError):
    """The page size is not a power of two of at least 1024, or not the file's."""


class CorruptFileError(MappedPageError):
    """The file is damaged beyond what open can recover from."""


class CorruptSuperblock(CorruptFileError):
    """Page 0 does not hold a mappedpages superblock, or the file is too short."""


class CorruptMetadata(CorruptFileError):
    """Neither metadata copy (page 1 or page 2) is valid."""


class FileTruncated(CorruptFileError):
    """The file is shorter than its newest commit: it was cut after the commit.

    Growth is made durable before any commit counts it, so no crash leaves a
    valid commit reaching past the end of the file. The message gives the
    committed length and the actual length in bytes. Nothing was changed;
    ``Pager.open(path, salvage=True)`` (or ``mappedpages check --repair``)
    rolls back to the older metadata copy, discarding the newest commit.
    """


class CorruptDirectoryIndex(CorruptFileError):
    """Page 0's directory index (the protected-page block references) is damaged."""


class CorruptProtectedDirectory(CorruptFileError):
    """Both copies of a protected-page directory page are damaged."""


class OutOfBounds(MappedPageError, IndexError):
    """The id names no page (or no live protected page) of this file."""


class ReservedPage(MappedPageError):
    """The page belongs to the pager (pages 0-2, directory, backing) or to a SubPageAllocator."""


class ReservedSubPageId(ReservedPage, OutOfBounds):
    """A sub-page id whose big page is reserved (``SubPageAllocator.restore``).

    A ``ReservedPage`` that is still an ``OutOfBounds``, which restore raised
    before its message said why.
    """


class DoubleFree(MappedPageError):
    """The page is already free, or an id was given twice in one bulk call."""


class Unavailable(MappedPageError):
    """The pager cannot be used: a flush failed, or this process is a fork child."""


class FileFull(MappedPageError):
    """The file cannot grow further: past ``max_pages`` (16 TiB, the most a pager maps)."""


class DirectoryFull(MappedPageError):
    """No room for another protected-page directory block (the file cannot grow to hold it)."""


class WriterOpen(MappedPageError):
    """A writer is open on that protected page, or was left open when its transaction ended."""


class Locked(MappedPageError, BlockingIOError):
    """Another writer holds the file's lock."""


class RecoveryWarning(UserWarning):
    """Open found damage and recovered from it (what was discarded is in the message)."""


# The one table: C error code -> (exception class, what it means).
ERRORS: dict[int, tuple[type[Exception], str]] = {
    lib.MP_EINVALID_PAGE_SIZE: (InvalidPageSize, "invalid page size"),
    lib.MP_ECORRUPT_SUPERBLOCK: (CorruptSuperblock, "not a mappedpages file, or truncated"),
    lib.MP_ECORRUPT_METADATA: (CorruptMetadata, "both metadata copies are damaged"),
    lib.MP_ECORRUPT_DIRECTORY_INDEX: (
        CorruptDirectoryIndex,
        "the directory index in page 0 is damaged",
    ),
    lib.MP_ECORRUPT_PROTECTED_DIRECTORY: (
        CorruptProtectedDirectory,
        "both copies of a protected-page directory page are damaged",
    ),
    lib.MP_EOUT_OF_BOUNDS: (OutOfBounds, "out of bounds"),
    lib.MP_ERESERVED_PAGE: (ReservedPage, "reserved page"),
    lib.MP_EDOUBLE_FREE: (DoubleFree, "already free"),
    lib.MP_EUNAVAILABLE: (
        Unavailable,
        "a flush failed earlier, so the on-disk state is unknown; reopen the file",
    ),
    lib.MP_EFILE_FULL: (
        FileFull,
        "the file cannot grow further (past max_pages: 16 TiB, the most a pager maps)",
    ),
    lib.MP_EDIRECTORY_FULL: (
        DirectoryFull,
        "no room for another directory block (the file cannot grow to hold it)",
    ),
    lib.MP_ELOCKED: (Locked, "another writer holds the file's lock"),
    lib.MP_EWRITER_OPEN: (WriterOpen, "a writer is open on this protected page"),
    lib.MP_EINVALID_ARGUMENT: (ValueError, "invalid argument"),
    lib.MP_ENO_MEMORY: (MemoryError, "out of memory"),
    lib.MP_EREAD_ONLY: (Unavailable, "the pager is read-only"),
    lib.MP_ENO_WRITER: (ValueError, "no writer is open on this protected page"),
    lib.MP_ESUBPAGE_OWNED: (
        ValueError,
        "the pager handed out a page a SubPageAllocator holds; it was freed in the pager "
        "while sub-pages in it were in use",
    ),
    lib.MP_EFILE_TRUNCATED: (
        FileTruncated,
        "the file is shorter than its newest commit: it was cut",
    ),
}


def error_for(code: int, context: str = "", path: str | None = None) -> Exception:
    """Return the exception for a non-zero C error code."""
    if code < 0:
        err = -code
        detail = f" ({context})" if context and context != path else ""
        return OSError(err, os.strerror(err) + detail, path)
    cls, meaning = ERRORS.get(code, (MappedPageError, f"unknown error code {code}"))
    message = f"{context}: {meaning}" if context else meaning
    if cls is Locked:
        return Locked(_errno.EWOULDBLOCK, message)
    return cls(message)


def raise_for(code: int, context: str = "", path: str | None = None) -> NoReturn:
    """Raise the exception for a non-zero C error code."""
    raise error_for(code, context, path)
