"""The C pagers alive in this process: who frees each, and the fork rule.

A C pager (``mp_pager *``) is freed by its owner: a cffi object over the start
of its mapping, whose destructor calls ``mp_pager_release``. Views keep the
owner alive (their buffer holds it), so the struct outlives every object that
can pass its pointer, but for one case: the garbage collector runs the
finalizers of a reference cycle in any order, so an object collected in one
cycle with the owner may be finalized after it. Such a finalizer (an abandoned
``ProtectedWriter``'s) asks the pager's ``freed`` flag before calling the core.

After ``fork()`` the child marks every live pager unusable and lets go of every
C pager (``mp_pager_forget``): never writes again, and makes the mutex afresh.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from mappedpages._core import ffi, lib

# Pagers alive in this process (objects with a ``_forked`` flag), so a fork
# child can mark them unusable.
LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
# Open C handles, by the object that owns each (and frees it when collected):
# a pager object may be gone while views keep its handle, mapping and lock
# alive, and a fork child must let go of those too.
_HANDLES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    for pager in list(LIVE):
        pager._forked = True
    for handle in list(_HANDLES.values()):
        # Never writes again; inherited views turn read-only but keep reading
        # the file (a store through one faults in the child). The mutex, which
        # a parent's thread may have held, is made afresh.
        lib.mp_pager_forget(handle)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new_owner(handle: Any, base: Any) -> tuple[Any, list[bool]]:
    """The owner of ``handle`` (a cffi pointer to ``base``), and its ``freed`` flag.

    The flag turns true when the owner's destructor frees the C pager.
    """
    freed = [False]

    def release(_ptr: Any) -> None:
        freed[0] = True
        lib.mp_pager_release(handle)

    owner = ffi.gc(base, release)
    _HANDLES[owner] = handle
    return owner, freed
