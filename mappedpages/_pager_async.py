"""The Pager's awaitable calls: each runs its blocking twin off the event loop.

``_AsyncCalls._run`` hands a call to the loop's default executor and makes a
cancelled await leave nothing behind: a call not started does not run, and
one that ran is undone (a page allocated is freed again). The awaitable
twins are the part of :class:`mappedpages.Pager` built on it.

``alloc_async`` and ``free_async`` are grouped instead: each puts its request
in the pager's queue and awaits a future; one executor thread at a time takes
every request queued, applies them in one transaction (one commit, one flush,
whatever the number of tasks) and hands the results back to each loop with one
callback per batch. So many tasks share a flush without a thread each, and the
loop pays a future and a list append per call.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections import defaultdict
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

    async def _grouped(self, op: int, arg: Any) -> Any:
        """Queue one alloc or free for the batch committer and await its result.

        Cancelled before its batch takes it, the request does not run; an
        alloc cancelled later is freed again (in its own batch when it has not
        committed yet, else by a free queued after it), so it allocates nothing.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue_request((op, arg, fut, loop))
        try:
            return await fut
        except asyncio.CancelledError:
            # The task can be cancelled after its batch set the result and
            # before the task resumed: the future then holds a page that no
            # one will be handed. Free it like any other cancelled alloc.
            if op == _ALLOC and fut.done() and not fut.cancelled() and fut.exception() is None:
                self._queue_request((_FREE, fut.result(), None, loop))
            raise

    def _queue_request(self, request: tuple[int, Any, Any, Any]) -> None:
        queue = self._batch_queue()
        with queue.lock:
            queue.items.append(request)
            if queue.running:
                return
            queue.running = True
        loop = request[3]
        loop.run_in_executor(None, self._drain_requests, queue)

    def _batch_queue(self) -> _RequestQueue:
        queue: _RequestQueue | None = getattr(self, "_requests", None)
        if queue is None:
            queue = self._requests = _RequestQueue()
        return queue

    def _drain_requests(self, queue: _RequestQueue) -> None:
        """The committer: takes every queued request, one transaction per batch."""
        while True:
            with queue.lock:
                batch, queue.items = queue.items, []
                if not batch:
                    queue.running = False
                    return
            self._commit_requests(batch)

    def _commit_requests(self, batch: list[tuple[int, Any, Any, Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.transaction():  # type: ignore[attr-defined]
                for op, arg, fut, _loop in batch:
                    if fut is not None and fut.cancelled():
                        outcomes.append((False, None))  # never ran
                        continue
                    try:
                        if op == _ALLOC:
                            outcomes.append((True, self.alloc(arg)))
                        else:
                            self.free(arg)
                            outcomes.append((True, None))
                    except Exception as exc:  # this request's error, not the batch's
                        outcomes.append((False, exc))
                    # An alloc cancelled meanwhile goes back in the same commit.
                    if op == _ALLOC and fut is not None and fut.cancelled() and outcomes[-1][0]:
                        self.free(outcomes[-1][1])
                        outcomes[-1] = (False, None)
        except BaseException as exc:  # the commit failed: nothing of the batch happened
            outcomes = [(False, exc)] * len(batch)
        by_loop: defaultdict[Any, list[tuple[Any, int, bool, Any]]] = defaultdict(list)
        for (op, _arg, fut, loop), (ok, value) in zip(batch, outcomes):
            if fut is not None:
                by_loop[loop].append((fut, op, ok, value))
            elif not ok:  # the undo of a cancelled alloc: nobody awaits it
                _undo_quietly(_raise, value)
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, results)
            except RuntimeError:  # the loop closed: nobody awaits these
                self._deliver(results)

    def _deliver(self, results: list[tuple[Any, int, bool, Any]]) -> None:
        for fut, op, ok, value in results:
            if fut.cancelled():
                if ok and op == _ALLOC:  # committed, then cancelled: free it again
                    self._queue_request((_FREE, value, None, fut.get_loop()))
                continue
            if ok:
                fut.set_result(value)
            elif value is not None:
                fut.set_exception(value)
            else:
                fut.cancel()

    async def alloc_async(self, zero: bool = False) -> PageId:
        """Awaitable :meth:`alloc`; runs off the event loop.

        Cancelled, it allocates nothing: the page is freed again if it was.
        """
        return await self._grouped(_ALLOC, bool(zero))  # type: ignore[no-any-return]

    async def free_async(self, page_id: PageId) -> None:
        """Awaitable :meth:`free`; runs off the event loop.

        Cancelled before it started (queued, or waiting for the pager), it does
        not run; cancelled while it runs, it still frees the page (a free
        cannot be taken back).
        """
        await self._grouped(_FREE, page_id)

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


_ALLOC = 0
_FREE = 1


def _raise(exc: BaseException) -> None:
    raise exc


class _RequestQueue:
    """The grouped awaitable calls of one pager waiting for its committer."""

    __slots__ = ("lock", "items", "running")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[int, Any, Any, Any]] = []
        self.running = False
