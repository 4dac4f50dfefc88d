"""Exceptions of mappedpages, and the one table that maps C error codes to them.

The C core returns 0 for success, a positive ``MP_E*`` code for a library
error, or a negative errno for a failure of the operating system. Every call
site turns a non-zero code into an exception through :func:`raise_for`, so the
mapping from codes to classes lives here and nowhere else.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, NoReturn

from mappedpages._core import ffi, lib


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


class ReadersFull(MappedPageError):
    """Every slot of the reader table is held by a live reader (see ``max_readers``)."""


class RecoveryWarning(UserWarning):
    """Open found damage and recovered from it (what was discarded is in the message)."""


class InternalError(MappedPageError):
    """A pager invariant does not hold (a bug in mappedpages); the pager is unusable.

    Raised only by builds with the core's checks compiled in (``MAPPEDPAGES_CHECK``).
    """


# The one table: C error code -> exception class. The messages are the core's
# (mp_strerror in csrc/errors.c), so they live in one place.
ERRORS: dict[int, type[Exception]] = {
    lib.MP_EINVALID_PAGE_SIZE: InvalidPageSize,
    lib.MP_ECORRUPT_SUPERBLOCK: CorruptSuperblock,
    lib.MP_ECORRUPT_METADATA: CorruptMetadata,
    lib.MP_ECORRUPT_DIRECTORY_INDEX: CorruptDirectoryIndex,
    lib.MP_ECORRUPT_PROTECTED_DIRECTORY: CorruptProtectedDirectory,
    lib.MP_EOUT_OF_BOUNDS: OutOfBounds,
    lib.MP_ERESERVED_PAGE: ReservedPage,
    lib.MP_EDOUBLE_FREE: DoubleFree,
    lib.MP_EUNAVAILABLE: Unavailable,
    lib.MP_EFILE_FULL: FileFull,
    lib.MP_EDIRECTORY_FULL: DirectoryFull,
    lib.MP_ELOCKED: Locked,
    lib.MP_EWRITER_OPEN: WriterOpen,
    lib.MP_EINVALID_ARGUMENT: ValueError,
    lib.MP_ENO_MEMORY: MemoryError,
    lib.MP_EREAD_ONLY: Unavailable,
    lib.MP_ENO_WRITER: ValueError,
    lib.MP_ESUBPAGE_OWNED: ValueError,
    lib.MP_EFILE_TRUNCATED: FileTruncated,
    lib.MP_EINTERNAL: InternalError,
    lib.MP_EREADERS_FULL: ReadersFull,
    lib.MP_ESNAPSHOT_MOVED: Unavailable,
    lib.MP_ECLOSED: ValueError,
}


def _c_text(fn: Any, value: int) -> str | None:
    out = ffi.new("char **")
    if fn(value, out) != lib.MP_OK:
        return None
    return str(ffi.string(out[0]).decode())


def message_for(code: int) -> str:
    """The core's message for an ``MP_E*`` code (``strerror`` for a negative errno)."""
    if code < 0:
        return os.strerror(-code)
    text = _c_text(lib.mp_strerror, code)
    return text if text is not None else f"unknown error code {code}"


def recovery_flag_names(flags: int) -> list[str]:
    """The core's names of the ``MP_REC_*`` bits set in ``flags``, sorted."""
    names = []
    for bit in range(32):
        if flags & (1 << bit):
            name = _c_text(lib.mp_recovery_flag_name, 1 << bit)
            names.append(name if name is not None else f"flag_{1 << bit}")
    return sorted(names)


def meta_problem_text(problem: int) -> str | None:
    """What an ``MP_META_*`` problem code means; None for a valid copy."""
    if problem == lib.MP_META_OK:
        return None
    return _c_text(lib.mp_meta_problem_text, problem)


def error_for(
    code: int,
    context: str = "",
    path: str | None = None,
    detail: str = "",
    cls: type[Exception] | None = None,
) -> Exception:
    """Return the exception for a non-zero C error code.

    The one place a message for a C error code is worded:
    ``"{context}: {meaning} ({detail})"``, where ``meaning`` is the core's
    (``mp_strerror``), ``context`` names the call or the value involved (an
    id, a path) and ``detail`` adds the other values involved (the file's page
    size, the page count, the duplicate id) or what to do about it. ``cls``
    picks a subclass of the code's exception class (``ReservedSubPageId``).
    """
    if code < 0:
        err = -code
        extra = f" ({context})" if context and context != path else ""
        return OSError(err, os.strerror(err) + extra, path)
    if code == lib.MP_ECLOSED:
        # Worded as Python's own closed files are, whatever the call.
        return ValueError(message_for(code))
    base = ERRORS.get(code, MappedPageError)
    if cls is None or not issubclass(cls, base):
        cls = base
    meaning = message_for(code)
    message = f"{context}: {meaning}" if context else meaning
    if detail:
        message = f"{message} ({detail})"
    if cls is Locked:
        return Locked(_errno.EWOULDBLOCK, message)
    return cls(message)


def raise_for(
    code: int,
    context: str = "",
    path: str | None = None,
    detail: str = "",
    cls: type[Exception] | None = None,
) -> NoReturn:
    """Raise the exception for a non-zero C error code (worded by :func:`error_for`)."""
    raise error_for(code, context, path, detail, cls)


def raise_error(cls: type[Exception], message: str) -> NoReturn:
    """Raise a library error worded by the Python layer (the values involved).

    The one raise helper for checks the Python layer makes before calling the
    core; C error codes go through :func:`raise_for`.
    """
    raise cls(message)
