"""ProtectedWriter: one staged update of a protected page.

A protected page is backed by two physical pages. The writer's view is over a
buffer the writer owns, filled with a copy of the committed content when the
writer opens; commit copies it into the inactive page, flushes that and flips
the directory entry, so after a crash the page is entirely the old or entirely
the new content. The view never points into the file: a slice of it kept past
commit or discard writes only into the spent buffer, never into a committed
copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mappedpages._pager import Pager


class ProtectedWriter:
    """A staged copy of a protected page; commit it or discard it, once."""

    def __init__(self, pager: Pager, pid: int, content: memoryview) -> None:
        self._pager = pager
        self._pid = pid
        # The staged bytes live here, not in the mapping, until commit copies
        # them in: what a caller's slice writes after that reaches no page.
        self._buf = bytearray(content)
        self._view: memoryview | None = memoryview(self._buf)

    @property
    def pid(self) -> int:
        """The protected page's id."""
        return self._pid

    @property
    def spent(self) -> bool:
        """True after commit or discard."""
        return self._view is None

    @property
    def page(self) -> memoryview:
        """Writable view of the staged copy; ``ValueError`` once the writer is spent."""
        if self._view is None:
            raise ValueError("this protected-page writer was already committed or discarded")
        return self._view

    def _finish(self, commit: bool) -> None:
        view = self.page
        self._pager._writer_finish(self, commit)
        self._view = None
        try:
            # Stop writes through the view we handed out; slices the caller
            # made of it cannot be recalled, and must not be written after this.
            view.release()
        except BufferError:
            pass

    def _abandon(self) -> None:
        """Mark the writer spent without telling the C core (after a rollback)."""
        view, self._view = self._view, None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass

    def commit(self) -> None:
        """Make the staged copy the page's committed content, durably and atomically."""
        self._finish(commit=True)

    def discard(self) -> None:
        """Drop the staged copy; the committed content stays as it was."""
        self._finish(commit=False)

    def __enter__(self) -> ProtectedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._view is None:
            return
        self._finish(commit=exc_type is None)

    def __del__(self) -> None:
        # An abandoned writer is discarded, so the page can be written again;
        # unless the pager's C state went first (both in one collected cycle):
        # then there is nothing left to discard in, and the handle dangles.
        if getattr(self, "_view", None) is not None and not self._pager._freed[0]:
            try:
                self._finish(commit=False)
            except Exception:
                pass

    def __repr__(self) -> str:
        state = "spent" if self.spent else "open"
        return f"<ProtectedWriter pid={self._pid} {state}>"
