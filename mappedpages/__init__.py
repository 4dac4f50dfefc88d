"""mappedpages: a crash-consistent, memory-mapped, file-backed page allocator.

Pages of a fixed power-of-two size live in one file whose layout is that of
the Rust crate ``mappedpages`` 0.2. Allocation state is committed with
double-buffered, CRC-checked metadata, so no crash loses an acknowledged
commit. Pages are handed out as zero-copy ``memoryview`` objects.
"""

import importlib.machinery as _machinery
import os as _os
import sys as _sys


def _use_installed_core() -> None:
    """Find the compiled core when this package is imported from a source checkout.

    ``python -m mappedpages`` run in a checkout puts the checkout first on
    sys.path, and the checkout has no compiled core (``pip install .`` puts it
    in site-packages). Then the installed copy's directory is added to this
    package's search path, so ``mappedpages._core`` is found there.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    suffixes = _machinery.EXTENSION_SUFFIXES

    def has_core(folder: str) -> bool:
        return any(_os.path.exists(_os.path.join(folder, "_core" + s)) for s in suffixes)

    if has_core(here):
        return
    for entry in _sys.path:
        candidate = _os.path.abspath(_os.path.join(entry or _os.getcwd(), "mappedpages"))
        if candidate != here and has_core(candidate):
            __path__.append(candidate)
            return


_use_installed_core()

from mappedpages._errors import (
    CorruptDirectoryIndex,
    CorruptFileError,
    CorruptMetadata,
    CorruptProtectedDirectory,
    CorruptSuperblock,
    DirectoryFull,
    DoubleFree,
    FileFull,
    FileTruncated,
    InternalError,
    InvalidPageSize,
    Locked,
    MappedPageError,
    OutOfBounds,
    ReadersFull,
    RecoveryWarning,
    ReservedPage,
    Unavailable,
    WriterOpen,
)
from mappedpages._pager import Pager
from mappedpages._protected import ProtectedWriter
from mappedpages._readers import ReaderInfo
from mappedpages._readonly import ReadOnlyPager
from mappedpages._records import (
    RECORD_BRANCH,
    RECORD_DELETE,
    RECORD_LEAF,
    pack_record,
    pack_records,
    tree_max_record,
)
from mappedpages._subpage import SubPageAllocator
from mappedpages._transaction import Transaction
from mappedpages._types import PageId, ProtectedPageId, SubPageId

__version__ = "0.1.0"

__all__ = [
    "CorruptDirectoryIndex",
    "CorruptFileError",
    "CorruptMetadata",
    "CorruptProtectedDirectory",
    "CorruptSuperblock",
    "DirectoryFull",
    "DoubleFree",
    "FileFull",
    "FileTruncated",
    "InternalError",
    "InvalidPageSize",
    "Locked",
    "MappedPageError",
    "OutOfBounds",
    "PageId",
    "ProtectedPageId",
    "SubPageId",
    "Pager",
    "SubPageAllocator",
    "Transaction",
    "ProtectedWriter",
    "ReadOnlyPager",
    "ReaderInfo",
    "RECORD_BRANCH",
    "RECORD_DELETE",
    "RECORD_LEAF",
    "pack_record",
    "pack_records",
    "tree_max_record",
    "ReadersFull",
    "RecoveryWarning",
    "ReservedPage",
    "Unavailable",
    "WriterOpen",
    "__version__",
]
