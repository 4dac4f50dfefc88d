"""What ``Pager.create``, ``Pager.open`` and ``ReadOnlyPager.open`` accept.

The options are checked here and handed to the core as one ``mp_options``;
a failed open is raised here, naming the values involved.
"""

from __future__ import annotations

import math
from typing import Any

from mappedpages._base import open_error
from mappedpages._core import ffi, lib
from mappedpages._errors import raise_for


def _check_page_size(page_size: object, allow_none: bool) -> int:
    if page_size is None and allow_none:
        return 0
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, not {type(page_size).__name__}")
    if page_size < 1024 or page_size > (1 << 30) or page_size & (page_size - 1):
        rule = "it must be a power of two from 1024 to 2**30"
        raise_for(lib.MP_EINVALID_PAGE_SIZE, f"page_size={page_size}", detail=rule)
    return page_size


DURABILITY_MODES = {
    "compat": lib.MP_DURABILITY_COMPAT,
    "fast": lib.MP_DURABILITY_FAST,
    "none": lib.MP_DURABILITY_NONE,
}


DEFAULT_GROW_STEP = 1 << 30


def _options(
    page_size: int,
    lock_timeout: float,
    read_only: bool,
    durability: str = "compat",
    grow_step: int = DEFAULT_GROW_STEP,
    preallocate: bool = True,
    layout: str = "0.2",
) -> Any:
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)):
        raise TypeError(
            f"lock_timeout must be a number of seconds, not {type(lock_timeout).__name__}"
        )
    if not math.isfinite(lock_timeout):
        raise ValueError(f"lock_timeout must be a finite number of seconds, not {lock_timeout}")
    if lock_timeout < 0:
        raise ValueError(f"lock_timeout must not be negative, not {lock_timeout}")
    if not isinstance(durability, str):
        raise TypeError("durability must be 'compat', 'fast' or 'none'")
    if durability not in DURABILITY_MODES:
        raise ValueError(f"durability must be 'compat', 'fast' or 'none', not {durability!r}")
    opts = ffi.new("mp_options *")
    opts.page_size = page_size
    opts.read_only = 1 if read_only else 0
    opts.lock_timeout = float(lock_timeout)
    opts.durability = DURABILITY_MODES[durability]
    if isinstance(grow_step, bool) or not isinstance(grow_step, int):
        raise TypeError(f"grow_step must be an int (bytes), not {type(grow_step).__name__}")
    if grow_step < 1 or grow_step >= 1 << 64:
        raise ValueError(f"grow_step must be a positive number of bytes, not {grow_step}")
    opts.grow_step = grow_step
    opts.sparse = 0 if preallocate else 1
    if not isinstance(layout, str):
        raise TypeError("layout must be '0.2' or '0.3'")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be '0.2' or '0.3', not {layout!r}")
    opts.layout = LAYOUTS[layout]
    return opts


LAYOUTS = {"0.2": 2, "0.3": 3}


def raise_for_open(rc: int, report: Any, text: str, raw: bytes, page_size: int) -> None:
    """Raise for an open's return code; a page-size mismatch names both sizes."""
    if rc == lib.MP_EINVALID_PAGE_SIZE and page_size:
        found = int(report.page_size)  # the core reads the file's superblock
        if found and found != page_size:
            detail = f"the file's page size is {found}, not page_size={page_size}"
            raise_for(rc, text, text, detail)
    open_error(rc, report, text)


def _salvage_flag(salvage: bool) -> int:
    if not isinstance(salvage, bool):
        raise TypeError(f"salvage must be True or False, not {type(salvage).__name__}")
    return 1 if salvage else 0
