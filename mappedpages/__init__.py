"""mappedpages: a crash-consistent, memory-mapped, file-backed page allocator.

Pages of a fixed power-of-two size live in one file whose layout is that of
the Rust crate ``mappedpages`` 0.2. Allocation state is committed with
double-buffered, CRC-checked metadata, so no crash loses an acknowledged
commit. Pages are handed out as zero-copy ``memoryview`` objects.
"""

from mappedpages._errors import (
    CorruptDirectoryIndex,
    CorruptFileError,
    CorruptMetadata,
    CorruptProtectedDirectory,
    CorruptSuperblock,
    DirectoryFull,
    DoubleFree,
    FileFull,
    InvalidPageSize,
    Locked,
    MappedPageError,
    OutOfBounds,
    RecoveryWarning,
    ReservedPage,
    Unavailable,
    WriterOpen,
)
from mappedpages._pager import Pager
from mappedpages._protected import ProtectedWriter
from mappedpages._readonly import ReadOnlyPager
from mappedpages._subpage import SubPageAllocator
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
    "InvalidPageSize",
    "Locked",
    "MappedPageError",
    "OutOfBounds",
    "PageId",
    "ProtectedPageId",
    "SubPageId",
    "Pager",
    "SubPageAllocator",
    "ProtectedWriter",
    "ReadOnlyPager",
    "RecoveryWarning",
    "ReservedPage",
    "Unavailable",
    "WriterOpen",
    "__version__",
]
