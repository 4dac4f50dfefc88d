"""pytest fixtures for the suite (the shared helpers are the ``support`` package).

tests/support/ holds the helpers by job: ``format_v02`` and ``format_v03``
(an independent reader of the file formats), ``edit`` (byte editing),
``rust_fixtures`` (the Rust crate's files), ``pagers`` (live pagers and child
processes), ``iohooks``, ``workloads`` and ``powerloss`` (the I/O hooks and
the power-loss model).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.pagers import force_close  # noqa: E402


@pytest.fixture
def mp():
    import mappedpages

    return mappedpages


@pytest.fixture
def new_pager(tmp_path):
    """A fresh 4096-byte-page pager; closed at teardown."""
    import mappedpages

    p = mappedpages.Pager.create(tmp_path / "pager.mpp")
    yield p
    force_close(p)


@pytest.fixture
def small_pager(tmp_path):
    """A fresh 1024-byte-page pager; closed at teardown."""
    import mappedpages

    p = mappedpages.Pager.create(tmp_path / "small.mpp", page_size=1024)
    yield p
    force_close(p)


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path_factory, monkeypatch):
    """Run every test (and the child interpreters it starts) outside the source tree.

    A child started with ``python -c`` puts its working directory first on
    sys.path; from the repository root that would import the uninstalled
    source package (which has no compiled core) instead of the installed one.
    """
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
