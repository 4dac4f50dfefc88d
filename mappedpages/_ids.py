"""Page ids as C arrays: what the bulk calls accept and how they check it.

``_ids_array`` turns any iterable of ids into a ``uint64_t[]`` (refusing
bools, negatives and ids past 2**64 before the core sees them);
``_u64_buffer`` takes a caller's ``array('Q')`` or NumPy ``uint64`` array
without a copy. Both are the Pager's (``_pager``, ``_pager_protected``).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from mappedpages._base import _U64_LIMIT, as_id
from mappedpages._core import ffi, lib
from mappedpages._errors import error_for

_T = TypeVar("_T")

_U64_FORMATS = frozenset(
    {"Q", "<Q", "=Q", "@Q"}
    | ({"L", "<L", "=L", "@L"} if ffi.sizeof("unsigned long") == 8 else set())
)


def new_out_slot() -> Any:
    """A fresh ``uint64_t *`` for a caller that found ``out_slots`` empty."""
    return ffi.new("uint64_t *")


POOL_FLOOR = 4


def new_pool(make: Callable[[], _T], keep: int = POOL_FLOOR) -> list[_T]:
    """A pool of out-parameters or buffers for the hot calls, seeded with ``keep`` of them.

    A call pops one and pushes it back: list.pop and list.append are atomic
    under the GIL, so two threads never hold the same one (a threading.local
    costs about three times as much per call), and the pool grows to as many as
    calls were ever in flight at once. It starts at four because a list shrinks
    its storage when a pop leaves it under half full: a pool of one would free
    its array at every pop and allocate it again at the push, two reallocs (about
    300 instructions, a third of what the Python layer adds to ``alloc()``);
    from four, one call in flight pops to three and never reallocates.
    """
    return [make() for _ in range(keep)]


# The out-parameters of the single-id calls (alloc, sub-page alloc), shared by all pagers.
out_slots: list[Any] = new_pool(new_out_slot)


def _has_buffer(obj: object) -> bool:
    try:
        memoryview(obj).release()  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _u64_buffer(obj: Any, writable: bool) -> Any:
    """Return a uint64_t[] over obj's memory, or None if obj is not such a buffer."""
    if isinstance(obj, (list, tuple, range, str, bytes)):
        return None
    try:
        mv = memoryview(obj)
    except TypeError:
        return None
    with mv:
        ok = mv.format in _U64_FORMATS and mv.itemsize == 8 and mv.c_contiguous
        if writable and mv.readonly:
            raise TypeError("out must be a writable buffer")
    if not ok:
        if writable:
            raise TypeError("out must be a contiguous buffer of unsigned 64-bit integers")
        return None
    return ffi.from_buffer("uint64_t[]", obj, require_writable=writable)


def _ids_array(ids: Iterable[object], what: str) -> tuple[array[int], Any]:
    """Return the ids and a uint64 C array over them, or raise TypeError/OutOfBounds."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what}s must be an iterable of ints")
    values = ids if isinstance(ids, (list, tuple)) else list(ids)
    try:
        # array('Q') checks every item is an integer in [0, 2**64) at C speed.
        packed = array("Q", values)
    except (TypeError, OverflowError):
        checked = [as_id(i, what) for i in values]
        bad = next((v for v in checked if v < 0 or v >= _U64_LIMIT), None)
        if bad is not None:
            raise error_for(lib.MP_EOUT_OF_BOUNDS, f"{what} {bad}") from None
        raise
    # array('Q') takes True as 1; bool is no id. Only 0 and 1 can be bools,
    # so the Python-speed scan runs only when one of them is there.
    if packed and min(packed) <= 1:
        for v in values:
            as_id(v, what)
    return packed, ffi.from_buffer("uint64_t[]", packed)
