"""The Pager's awaitable calls: each runs its blocking twin off the event loop.

``_AsyncCalls._run`` hands a call to the loop's default executor and makes a
cancelled await leave nothing behind: a call not started does not run, and
one that ran is undone (a page allocated is freed again). The awaitable
twins are the part of :class:`mappedpages.Pager` built on it. ``alloc_async``
and ``free_async`` run their call outside the pager's lock, so that calls from
several tasks share one flush (group commit, ``csrc/group.c``).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from mappedpages._types import PageId, ProtectedPageId

_T = TypeVar("_T")


class _AsyncCalls:
    """Awaitable calls of :class:`mappedpages.Pager`, over its blocking ones."""

    if TYPE_CHECKING:
        _lock: Any

        def alloc(self, zero: bool = False) -> PageId: ...
        def free(self, page_id: PageId) -> None: ...
        def alloc_bulk(self, n: int, zero: bool = False) -> list[PageId]: ...
        def free_bulk(self, ids: Iterable[PageId] | Any) -> None: ...
        def alloc_protected(self) -> ProtectedPageId: ...
        def free_protected(self, pid: ProtectedPageId) -> None: ...
        def alloc_protected_bulk(self, n: int) -> list[ProtectedPageId]: ...
        def free_protected_bulk(self, pids: Iterable[ProtectedPageId]) -> None: ...

    async def _run(
        self,
        fn: Callable[..., _T],
        *args: Any,
        undo: Callable[[_T], object] | None = None,
        group: bool = False,
    ) -> _T:
        """Run ``fn(*args)`` in the loop's default executor and await it.

        A caller that stops waiting (cancellation, ``asyncio.wait_for``'s
        timeout) would otherwise never learn what the call did. So: a call not
        started yet (queued, or waiting for the pager's lock) does not run; one
        already running finishes, and then ``undo(result)`` takes its effect
        back in the worker thread, before the lock is let go; one that finished
        just before the cancellation arrived is undone here. With ``group``
        the lock is let go once the call may start, and the call holds the
        core's mutex only for itself: its commit may share a flush with other
        threads' (no other thread is handed what it allocated, but one may see
        it allocated until the undo).
        """
        loop = asyncio.get_running_loop()
        handoff = _Handoff()

        def call() -> Any:
            result = fn(*args)
            with handoff.lock:
                if not handoff.abandoned:
                    handoff.delivered = True
                    handoff.result = result
                    return result
            if undo is not None:
                _undo_quietly(undo, result)
            return None

        def work() -> Any:
            # The pager's lock is held from the call through its undo, so no
            # other thread sees what a cancelled call allocated; a grouped
            # call holds it only to look (not waiting for a group flush in
            # flight, which its own change may then join) and lets it go.
            lock = self._lock
            lock.acquire(brief=group)
            try:
                with handoff.lock:
                    if handoff.abandoned:
                        return None
                if not group:
                    return call()
            finally:
                lock.release()
            return call()

        try:
            result: _T = await loop.run_in_executor(None, work)
            return result
        except asyncio.CancelledError:
            with handoff.lock:
                handoff.abandoned = True
                delivered = handoff.delivered
            if delivered and undo is not None:
                # Rare: the worker finished while the cancellation was on its
                # way. One commit on the loop's thread beats a leaked page.
                _undo_quietly(undo, handoff.result)
            raise

    async def alloc_async(self, zero: bool = False) -> PageId:
        """Awaitable :meth:`alloc`; runs off the event loop.

        Cancelled, it allocates nothing: the page is freed again if it was.
        """
        return await self._run(self.alloc, zero, undo=self.free, group=True)

    async def free_async(self, page_id: PageId) -> None:
        """Awaitable :meth:`free`; runs off the event loop.

        Cancelled before it started (queued, or waiting for the pager), it does
        not run; cancelled while it runs, it still frees the page (a free
        cannot be taken back).
        """
        await self._run(self.free, page_id, group=True)

    async def alloc_bulk_async(self, n: int, zero: bool = False) -> list[PageId]:
        """Awaitable :meth:`alloc_bulk`; runs off the event loop.

        Cancelled, it allocates nothing: the pages are freed again if they were.
        """
        return await self._run(self.alloc_bulk, n, zero, undo=self.free_bulk)

    async def free_bulk_async(self, ids: Iterable[PageId]) -> None:
        """Awaitable :meth:`free_bulk`; runs off the event loop.

        Cancelled while it runs, it still frees the pages (see :meth:`free_async`).
        """
        await self._run(self.free_bulk, list(ids))

    async def alloc_protected_async(self) -> ProtectedPageId:
        """Awaitable :meth:`alloc_protected`; runs off the event loop.

        Cancelled, it allocates nothing: the page is freed again if it was.
        """
        return await self._run(self.alloc_protected, undo=self.free_protected)

    async def free_protected_async(self, pid: ProtectedPageId) -> None:
        """Awaitable :meth:`free_protected`; runs off the event loop.

        Cancelled while it runs, it still frees the page (see :meth:`free_async`).
        """
        await self._run(self.free_protected, pid)

    async def alloc_protected_bulk_async(self, n: int) -> list[ProtectedPageId]:
        """Awaitable :meth:`alloc_protected_bulk`; runs off the event loop.

        Cancelled, it allocates nothing: the pages are freed again if they were.
        """
        return await self._run(self.alloc_protected_bulk, n, undo=self.free_protected_bulk)

    async def free_protected_bulk_async(self, pids: Iterable[ProtectedPageId]) -> None:
        """Awaitable :meth:`free_protected_bulk`; runs off the event loop.

        Cancelled while it runs, it still frees the pages (see :meth:`free_async`).
        """
        await self._run(self.free_protected_bulk, list(pids))


class _Handoff:
    """What an executor call and the coroutine awaiting it agree on, under a lock.

    ``abandoned``: the coroutine was cancelled; ``delivered``: the worker
    handed ``result`` over before that, so undoing it is the coroutine's job.
    """

    __slots__ = ("lock", "abandoned", "delivered", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.delivered = False
        self.result: Any = None


def _undo_quietly(undo: Callable[[Any], object], result: Any) -> None:
    """Take back a cancelled call's effect; a failure can only be reported."""
    try:
        undo(result)
    except Exception as exc:  # nobody awaits this any more: warn instead
        warnings.warn(
            f"a cancelled mappedpages call could not be undone ({exc!r}); "
            "what it allocated stays allocated",
            RuntimeWarning,
            stacklevel=2,
        )
