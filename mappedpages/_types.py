"""Distinct id types, so a type checker can tell the kinds of id apart.

At run time each is a plain ``int``; to mypy a ``ProtectedPageId`` passed where
a ``PageId`` is expected is an error, the counterpart of the Rust crate's
handle types. Wrap an int you stored yourself: ``PageId(n)``.
"""

from typing import NewType

PageId = NewType("PageId", int)
"""Id of a regular page (3 and up)."""

ProtectedPageId = NewType("ProtectedPageId", int)
"""Id of a protected page (a directory slot, stable across reopen)."""

SubPageId = NewType("SubPageId", int)
"""Id of a sub-page: ``big_page_id * slots_per_page + slot``."""
