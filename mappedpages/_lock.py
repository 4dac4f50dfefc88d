"""The pager's lock, held in the C core: ``with pager.lock():`` groups calls.

Every call of the core takes the pager's recursive mutex for its own run
(``csrc/lock.c``), so a single call needs no lock on the Python side. This
object holds that same mutex across several calls (``mp_pager_lock`` /
``mp_pager_unlock``), re-entrant in the owning thread, as ``threading.RLock``
is: other threads' calls wait meanwhile. cffi releases the GIL around both
calls, so a thread waiting for the mutex blocks no other Python thread.
"""

from __future__ import annotations

from typing import Any

from mappedpages._core import lib

_lock = lib.mp_pager_lock
_brief = lib.mp_pager_lock_brief
_unlock = lib.mp_pager_unlock


class CoreLock:
    """The re-entrant lock of one pager, held in the C core.

    It keeps the handle's memory alive (``keep``, the object that frees it
    when collected), so it stays safe to use after the pager object is gone.
    """

    __slots__ = ("_handle", "_keep")

    def __init__(self, handle: Any, keep: Any) -> None:
        self._handle = handle
        self._keep = keep

    def acquire(self, blocking: bool = True, timeout: float = -1, brief: bool = False) -> bool:
        """Wait for the pager's mutex and hold it; True. Only blocking waits are offered.

        ``brief``: do not also wait for another thread's group flush in flight
        (for a look that makes no commit, before a call of one's own).
        """
        if not blocking or timeout != -1:
            raise ValueError("the pager's lock offers only blocking acquire()")
        (_brief if brief else _lock)(self._handle)
        return True

    def release(self) -> None:
        """Let go of one hold; ``RuntimeError`` if this thread does not hold the lock."""
        if _unlock(self._handle):
            raise RuntimeError("cannot release un-acquired lock")

    def __enter__(self) -> bool:
        _lock(self._handle)
        return True

    def __exit__(self, *exc: object) -> None:
        if _unlock(self._handle):
            raise RuntimeError("cannot release un-acquired lock")

    def __repr__(self) -> str:
        return f"<CoreLock of pager {self._handle}>"
